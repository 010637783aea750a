//! A local S3 server for the tests: `moto_server` on 127.0.0.1 with a bucket, killed on drop.
//!
//! Clients reach it through a small TCP relay the test controls: [`Moto::stop`] closes the port
//! (new connections are refused, open ones are cut) and [`Moto::start`] opens it again on the
//! same port, so a test can take "the server" down in the middle of an upload and bring it
//! back. The relay, rather than killing moto, because moto keeps everything in memory: a killed
//! moto would forget the bucket and the half-done upload, which no real S3 outage does, and a
//! test could no longer check that no orphan upload was left behind.
//!
//! Tests that need moto call [`Moto::launch`]: without the pinned moto (installed by
//! `cargo xtask setup` into the tools' virtualenv, see [`crate::tools`]) it prints `SKIPPED`
//! and returns `None`, and under `CI=true` it fails.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use coredump_agent::store::{
    ConnectOptions, S3Store,
    s3::{MIN_PART_SIZE, Tuning, sdk},
};

/// The bucket every [`Moto`] starts with.
pub const BUCKET: &str = "dumps";
/// Credentials and region moto accepts (it checks no signatures unless told to).
pub const ACCESS_KEY: &str = "testing";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "testing";
/// See [`ACCESS_KEY`].
pub const REGION: &str = "us-east-1";

/// A running moto server with a bucket [`BUCKET`], behind a relay that can be stopped.
pub struct Moto {
    child: Child,
    /// moto's own port; clients use the relay's.
    moto_port: u16,
    relay: Relay,
    log: PathBuf,
}

impl Moto {
    /// Starts moto and creates [`BUCKET`]. `None` (after saying why) when `moto_server` is not
    /// installed, except under CI, where that fails the test.
    pub fn launch(test: &str) -> Option<Self> {
        if !crate::tools::require(test, &["moto"]) {
            return None;
        }
        let moto_port = free_port();
        let log = std::env::temp_dir().join(format!("coredump-test-moto-{moto_port}.log"));
        let child = Command::new(crate::tools::program("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .spawn()
            .expect("start moto_server");
        let relay = Relay::new(free_port(), moto_port);
        let mut moto = Self {
            child,
            moto_port,
            relay,
            log,
        };
        moto.wait_until_up();
        moto.create_bucket(BUCKET);
        moto.relay.start();
        Some(moto)
    }

    /// Like [`Moto::launch`], then makes moto check credentials like S3 does: from then on a
    /// request signed with keys it does not know is refused (`InvalidAccessKeyId`), and so is
    /// every other request, since moto knows no keys.
    pub fn launch_with_auth(test: &str) -> Option<Self> {
        let moto = Self::launch(test)?;
        let (status, body) = http(moto.moto_port, "POST", "/moto-api/reset-auth", b"0");
        assert_eq!(status, 200, "enabling moto's auth: {body}");
        Some(moto)
    }

    /// The endpoint clients use (through the relay).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.relay.port)
    }

    /// Environment for an agent process using this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            // Never ask an instance metadata service: there is none here.
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// SDK settings with this server's credentials and region, for [`S3Store::with_config`].
    pub fn sdk_config() -> sdk::config::Builder {
        sdk::config::Builder::new()
            .behavior_version(sdk::config::BehaviorVersion::latest())
            .region(sdk::config::Region::from_static(REGION))
            .credentials_provider(sdk::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "tests",
            ))
    }

    /// A store on `bucket` of this server through the relay, with test-sized parts (5 MiB,
    /// S3's smallest) and the given options (endpoint and path style are set here).
    pub fn store(&self, bucket: &str, options: ConnectOptions) -> S3Store {
        let options = ConnectOptions {
            s3_endpoint: Some(self.endpoint()),
            s3_path_style: true,
            ..options
        };
        S3Store::with_config(Self::sdk_config(), bucket, "", &options)
            .expect("store")
            .with_tuning(Tuning {
                min_part_size: MIN_PART_SIZE,
                ..Tuning::default()
            })
    }

    /// An SDK client that talks to moto directly, not through the relay: it works while the
    /// relay is stopped (to look at uploads in progress, say).
    pub fn direct_client(&self) -> sdk::Client {
        let config = Self::sdk_config()
            .endpoint_url(format!("http://127.0.0.1:{}", self.moto_port))
            .force_path_style(true)
            .build();
        sdk::Client::from_conf(config)
    }

    /// Creates a bucket (moto takes unsigned requests until auth is enabled).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = http(self.moto_port, "PUT", &format!("/{name}"), b"");
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// Closes the port: new connections are refused and open ones are cut.
    pub fn stop(&self) {
        self.relay.stop();
    }

    /// Opens the port again (after [`Moto::stop`] or [`Moto::stop_after`]).
    pub fn start(&self) {
        self.relay.start();
    }

    /// Stops, as [`Moto::stop`], once clients have sent `bytes` more bytes.
    pub fn stop_after(&self, bytes: u64) {
        self.relay.stop_after(bytes);
    }

    /// From now on, every `from` in moto's answers reaches clients as `to` (same length, so
    /// the framing holds): an answer a client cannot read, from a server that did the work.
    pub fn garble_answers(&self, from: &str, to: &str) {
        assert_eq!(
            from.len(),
            to.len(),
            "a same-length rewrite keeps Content-Length true"
        );
        *self.relay.shared.rewrite.lock().unwrap() = Some((from.into(), to.into()));
    }

    /// Answers reach clients as moto sent them again.
    pub fn stop_garbling(&self) {
        *self.relay.shared.rewrite.lock().unwrap() = None;
    }

    /// The requests moto answered so far, `(method, target)` (the target with its query
    /// string), from its request log: what a test counts uploads with.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let request = l.split('"').nth(1)?;
                let mut parts = request.split(' ');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            })
            .collect()
    }

    /// How many times an object was written at `path` (`/bucket/key`): `PutObject`s and
    /// `CreateMultipartUpload`s (not their parts).
    pub fn writes(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(method, target)| {
                let (p, query) = target.split_once('?').unwrap_or((target, ""));
                p == path
                    && match method.as_str() {
                        "PUT" => !query.contains("partNumber"),
                        "POST" => query.split('&').any(|q| q == "uploads"),
                        _ => false,
                    }
            })
            .count()
    }

    /// Whether the port is closed (after [`Moto::stop`], or the bytes of [`Moto::stop_after`]).
    pub fn stopped(&self) -> bool {
        self.relay.shared.stopped.load(Ordering::SeqCst)
    }

    /// Polls until moto answers HTTP, or fails with its log.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", self.moto_port)).is_ok()
                && http(self.moto_port, "GET", "/", b"").0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within a minute:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.relay.stop();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One plain HTTP/1.0 request to 127.0.0.1; the status (0 if none) and the body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// A TCP relay from a port of its own to moto's, that can be stopped and started again.
struct Relay {
    port: u16,
    upstream: u16,
    shared: Arc<RelayShared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct RelayShared {
    stopped: AtomicBool,
    /// Both ends of every relayed connection, to cut them on stop.
    connections: Mutex<Vec<TcpStream>>,
    /// Bytes clients sent since the last `stop_after`.
    sent: AtomicU64,
    /// Stop once `sent` reaches this.
    stop_at: AtomicU64,
    /// Bytes replaced in what the server answers, `(from, to)` of the same length.
    rewrite: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl RelayShared {
    /// Refuses new connections (the accept loop sees the flag) and cuts open ones.
    fn cut(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Relay {
    fn new(port: u16, upstream: u16) -> Self {
        let shared = RelayShared {
            stopped: AtomicBool::new(true),
            stop_at: AtomicU64::new(u64::MAX),
            ..RelayShared::default()
        };
        Self {
            port,
            upstream,
            shared: Arc::new(shared),
            accept: Mutex::new(None),
        }
    }

    fn start(&self) {
        self.stop();
        self.shared.stop_at.store(u64::MAX, Ordering::SeqCst);
        self.shared.stopped.store(false, Ordering::SeqCst);
        // The port was ours a moment ago; std sets SO_REUSEADDR, so TIME_WAIT does not block it.
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let (shared, upstream) = (self.shared.clone(), self.upstream);
        let accept = std::thread::spawn(move || {
            while !shared.stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => relay(&shared, client, upstream),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            // Dropping the listener closes the port.
        });
        *self.accept.lock().unwrap() = Some(accept);
    }

    fn stop(&self) {
        self.shared.cut();
        if let Some(accept) = self.accept.lock().unwrap().take() {
            let _ = accept.join();
        }
    }

    fn stop_after(&self, bytes: u64) {
        self.shared.sent.store(0, Ordering::SeqCst);
        self.shared.stop_at.store(bytes, Ordering::SeqCst);
    }
}

/// Relays one connection in both directions, each on a thread of its own.
fn relay(shared: &Arc<RelayShared>, client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    let ends = [client.try_clone(), server.try_clone()];
    let [Ok(client2), Ok(server2)] = ends else {
        return;
    };
    {
        let mut connections = shared.connections.lock().unwrap();
        for end in [&client, &server] {
            if let Ok(end) = end.try_clone() {
                connections.push(end);
            }
        }
    }
    let (up, down) = (shared.clone(), shared.clone());
    std::thread::spawn(move || pump(client, server, Some(&up), None));
    std::thread::spawn(move || pump(server2, client2, None, Some(&down)));
}

/// Copies `from` to `to` until either ends; counts what clients send, and cuts everything at
/// the `stop_after` mark; applies `garble_answers` to what the server sends.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    count: Option<&RelayShared>,
    rewrite: Option<&RelayShared>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(shared) = count {
            let sent = shared.sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if sent >= shared.stop_at.load(Ordering::SeqCst) {
                shared.cut();
                break;
            }
        }
        if let Some(shared) = rewrite
            && let Some((old, new)) = &*shared.rewrite.lock().unwrap()
        {
            let mut at = 0;
            while let Some(i) = buf[at..n].windows(old.len()).position(|w| w == &old[..]) {
                buf[at + i..at + i + new.len()].copy_from_slice(new);
                at += i + new.len();
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
