//! A TCP proxy on 127.0.0.1 that adds latency: every byte reaches the other side `one_way`
//! after it was read, in both directions, so each request and its answer cost a round trip of
//! twice that, as to a store in another building. This kernel has no `netem`, hence a proxy.
//!
//! Bandwidth is not limited: the proxy reads as fast as the sender writes and holds what is in
//! flight (rate × delay, a few MiB).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// The proxy; it listens until the process exits (a benchmark's lifetime).
pub struct DelayProxy {
    port: u16,
}

impl DelayProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`'s port.
    pub fn start(upstream: u16, one_way: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        pipe(from, to, one_way);
                    }
                }
            }
        });
        Ok(Self { port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to`, each chunk held until `delay` after it was read: a reader thread
/// stamps chunks, a writer thread sleeps until each one is due.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once it has delivered everything.
    });
    thread::spawn(move || {
        for (due, chunk) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
