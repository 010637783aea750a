//! health: `/healthz`, `/readyz` and `/metrics` over HTTP, for the kubelet's probes and
//! Prometheus, on hyper's HTTP/1 server.
//!
//! The port may be reachable from every pod, so a client gets little: one request per
//! connection (no keep-alive), a bounded time to send its request head, and a bounded number
//! of connections that have not sent anything yet. When that many are idle, the oldest idle
//! one is closed to make room: a flood of idle connections cannot keep the kubelet's probe,
//! which sends its request at once, from being answered, nor hold the agent's file
//! descriptors. Requests being answered are bounded too.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{metrics::METRICS, spool::Spool, store::Store};

/// What readiness depends on.
#[derive(Debug, Default)]
pub struct Health {
    /// The pipeline is running (probe attached, or degraded mode accepted).
    pub running: AtomicBool,
    /// The last store check succeeded.
    pub store_ok: AtomicBool,
    /// The kernel probe is attached.
    pub probe_attached: AtomicBool,
    /// The spool, for its oldest entry's age at scrape time.
    pub spool: Mutex<Option<Spool>>,
}

impl Health {
    /// Ready: running and the store reachable.
    pub fn ready(&self) -> bool {
        self.running.load(Relaxed) && self.store_ok.load(Relaxed)
    }
}

/// Connections that have not sent a byte yet, at most; beyond, the oldest is closed.
pub const MAX_IDLE: usize = 256;
/// Requests answered at once, at most.
const MAX_ACTIVE: usize = 32;
/// A connection has this long to start its request, and to finish its head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A `/metrics` answer, its content type and text: OpenMetrics for a scraper that asks for it
/// (Prometheus does), the Prometheus text format otherwise (`promtool check metrics`, curl).
fn metrics_answer(accept: Option<&str>) -> (&'static str, String) {
    let text = METRICS.render();
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::prometheus_text(&text),
        )
    }
}

fn answer(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.ready() => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => {
            let why = if health.running.load(Relaxed) {
                "store unreachable"
            } else {
                "not running yet"
            };
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            )
        }
        "/metrics" => {
            METRICS
                .probe_attached
                .set(health.probe_attached.load(Relaxed).into());
            METRICS
                .store_reachable
                .set(health.store_ok.load(Relaxed).into());
            METRICS.ready.set(health.ready().into());
            if let Some(spool) = health.spool.lock().ok().and_then(|s| s.clone()) {
                METRICS.spool_depth.set(spool.depth() as i64);
                METRICS
                    .spool_oldest_seconds
                    .set(spool.oldest_age().as_secs() as i64);
            }
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, body) = metrics_answer(accept);
            text(StatusCode::OK, content_type, body)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The connections that have not sent anything yet, oldest first.
#[derive(Default)]
struct Idle {
    next: AtomicU64,
    waiting: Mutex<VecDeque<(u64, CancellationToken)>>,
}

impl Idle {
    /// Enters a new connection, closing the oldest idle one if there are too many.
    fn enter(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Relaxed);
        let token = CancellationToken::new();
        let mut waiting = self.lock();
        while waiting.len() >= MAX_IDLE {
            if let Some((_, oldest)) = waiting.pop_front() {
                oldest.cancel();
            }
        }
        waiting.push_back((id, token.clone()));
        (id, token)
    }

    fn leave(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn connection(
    conn: TcpStream,
    health: Arc<Health>,
    idle: Arc<Idle>,
    active: Arc<tokio::sync::Semaphore>,
) {
    let (id, evicted) = idle.enter();
    // A byte to peek at, not mere readiness (which may be spurious): the request has begun.
    let mut first = [0u8; 1];
    let started = tokio::select! {
        r = conn.peek(&mut first) => r.is_ok_and(|n| n > 0),
        () = evicted.cancelled() => false,
        () = tokio::time::sleep(REQUEST_TIMEOUT) => false,
    };
    idle.leave(id);
    if !started {
        return;
    }
    let Ok(Ok(_permit)) = tokio::time::timeout(REQUEST_TIMEOUT, active.acquire_owned()).await
    else {
        return;
    };
    let service = service_fn(|req: Request<Incoming>| {
        let response = answer(&health, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(conn), service);
    if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT * 2, served).await {
        tracing::debug!(error = %e, "health connection");
    }
}

/// Serves until cancelled.
pub async fn serve(listener: TcpListener, health: Arc<Health>, cancel: CancellationToken) {
    let idle = Arc::new(Idle::default());
    let active = Arc::new(tokio::sync::Semaphore::new(MAX_ACTIVE));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let conn = tokio::select! {
            () = cancel.cancelled() => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((conn, _)) => {
                connections.spawn(connection(
                    conn,
                    health.clone(),
                    idle.clone(),
                    active.clone(),
                ));
            }
            Err(e) => {
                // EMFILE: the process is out of descriptors; do not spin.
                tracing::warn!(error = %e, "accepting a health connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for (_, token) in idle.lock().drain(..) {
        token.cancel();
    }
    connections.close();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, connections.wait()).await;
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        METRICS.reject("symlink");
        let m = get(addr, "/metrics").await;
        assert!(m.contains("content-type: text/plain; version=0.0.4"), "{m}");
        assert!(
            m.contains("# TYPE coredump_agent_files_rejected_total counter"),
            "{m}"
        );
        assert!(!m.contains("# EOF"), "{m}");
        assert!(m.contains("coredump_agent_store_reachable 1"), "{m}");
        assert!(m.contains("coredump_agent_files_rejected_total{reason=\"symlink\"}"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        cancel.cancel();
        server.await.unwrap();
    }

    /// A flood of connections that send nothing does not keep a probe from its answer: the
    /// oldest idle ones are closed to make room, and the agent holds at most MAX_IDLE.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_crowd_out_the_probe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::default(), cancel.clone()));
        let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let before = fds();
        let mut idle = Vec::new();
        for _ in 0..2000 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The test's own 2,000 ends, and at most MAX_IDLE of the server's.
        let held = fds() - before - idle.len();
        assert!(held <= MAX_IDLE + 8, "the server holds {held} descriptors");
        let answered = tokio::time::timeout(Duration::from_secs(3), get(addr, "/healthz"))
            .await
            .expect("answered within the probe's timeout");
        assert!(answered.starts_with("HTTP/1.1 200 OK"), "{answered}");
        cancel.cancel();
        server.await.unwrap();
    }
}
