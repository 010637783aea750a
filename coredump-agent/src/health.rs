//! health: `/healthz`, `/readyz` and `/metrics` over HTTP, for the kubelet's probes and
//! Prometheus.
//!
//! Three fixed GET endpoints do not need a web framework: each connection gets one request
//! (read with a size and time bound), one response, and is closed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{metrics::METRICS, store::Store};

/// What readiness depends on.
#[derive(Debug, Default)]
pub struct Health {
    /// The pipeline is running (probe attached, or degraded mode accepted).
    pub running: AtomicBool,
    /// The last store check succeeded.
    pub store_ok: AtomicBool,
    /// The kernel probe is attached.
    pub probe_attached: AtomicBool,
}

impl Health {
    /// Ready: running and the store reachable.
    pub fn ready(&self) -> bool {
        self.running.load(Relaxed) && self.store_ok.load(Relaxed)
    }
}

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// A client has this long to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn response(health: &Health, path: &str) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" if health.ready() => ("200 OK", "text/plain", "ready\n".into()),
        "/readyz" => {
            let why = if !health.running.load(Relaxed) {
                "not running yet"
            } else {
                "store unreachable"
            };
            (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            )
        }
        "/metrics" => {
            let mut body = METRICS.render();
            body.push_str(&format!(
                "# HELP coredump_probe_attached Whether the kernel crash probe is attached.\n# TYPE coredump_probe_attached gauge\ncoredump_probe_attached {}\n# HELP coredump_store_reachable Whether the last store check succeeded.\n# TYPE coredump_store_reachable gauge\ncoredump_store_reachable {}\n",
                u8::from(health.probe_attached.load(Relaxed)),
                u8::from(health.store_ok.load(Relaxed)),
            ));
            ("200 OK", "text/plain; version=0.0.4", body)
        }
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

async fn handle(mut conn: TcpStream, health: &Health) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let head_read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while len < buf.len() {
            let n = conn.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(head_read, Ok(Ok(()))) {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method == "GET" || method == "HEAD" {
        response(health, path)
    } else {
        ("405 Method Not Allowed", "text/plain", "GET only\n".into())
    };
    let body = if method == "HEAD" {
        String::new()
    } else {
        body
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Serves until cancelled.
pub async fn serve(listener: TcpListener, health: Arc<Health>, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((conn, _)) => {
                let health = health.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(conn, &health).await {
                        tracing::debug!(error = %e, "health connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a health connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks the store every `interval`, for readiness.
pub async fn watch_store<S: Store>(
    store: Arc<S>,
    health: Arc<Health>,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        let ok = match store.ping().await {
            Ok(()) => true,
            Err(e) => {
                if health.store_ok.load(Relaxed) {
                    tracing::error!(dest = %store.describe(), error = %format!("{e:#}"), "store unreachable: not ready");
                }
                false
            }
        };
        if ok && !health.store_ok.load(Relaxed) {
            tracing::info!(dest = %store.describe(), "store reachable");
        }
        health.store_ok.store(ok, Relaxed);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_over_real_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, health.clone(), cancel.clone()));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 OK"));
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("not ready: not running yet\n"));
        health.running.store(true, Relaxed);
        assert!(
            get(addr, "/readyz")
                .await
                .ends_with("not ready: store unreachable\n")
        );
        health.store_ok.store(true, Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200 OK"));
        METRICS.dumps_stored.inc();
        let m = get(addr, "/metrics").await;
        assert!(
            m.contains("# TYPE coredump_dumps_stored_total counter"),
            "{m}"
        );
        assert!(m.contains("coredump_store_reachable 1"));
        assert!(m.contains("coredump_rejected_files_total{reason=\"symlink\"}"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        server.await.unwrap();
    }
}
