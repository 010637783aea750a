//! Debian's Prometheus and `promtool`, at the major.minor `cargo xtask setup` installs
//! (`const PROMETHEUS` in xtask/src/setup.rs, read from there so the two never disagree), run
//! from their Debian paths, never from PATH. [`Prometheus`] is a real server on 127.0.0.1 with
//! its own storage in a temporary directory, killed on drop.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TempDir, ci};

/// Where Debian's package installs them.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Where Debian's package installs them.
pub const PROMTOOL: &str = "/usr/bin/promtool";

const SETUP: &str = include_str!("../../xtask/src/setup.rs");

/// The pinned major.minor (`2.42`), as `cargo xtask setup` pins it.
pub fn pinned() -> &'static str {
    SETUP
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("const PROMETHEUS: &str = \"")?
                .strip_suffix("\";")
        })
        .expect("xtask/src/setup.rs pins `const PROMETHEUS: &str = \"<major.minor>\";`")
}

/// The version `program --version` reports (`2.42.0+ds`), if it runs.
pub fn version(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text.lines().next()?;
    // "prometheus, version 2.42.0+ds (branch: …)", "promtool, version …"
    Some(
        line.split(", version ")
            .nth(1)?
            .split(' ')
            .next()?
            .to_owned(),
    )
}

/// Whether `test` can run: both programs are there, at the pinned major.minor. Outside CI
/// a missing one skips the test with a message; under CI it fails it.
pub fn require(test: &str) -> bool {
    let want = pinned();
    let wrong: Vec<String> = [PROMETHEUS, PROMTOOL]
        .into_iter()
        .filter_map(|program| match version(program) {
            Some(v) if v.strip_prefix(want).is_some_and(|r| r.starts_with('.')) => None,
            Some(v) => Some(format!("{program} is {v}, pinned {want}.x")),
            None => Some(format!("{program} ({want}.x) is missing")),
        })
        .collect();
    if wrong.is_empty() {
        return true;
    }
    let why = format!("{} (run `cargo xtask setup` as root)", wrong.join("; "));
    assert!(!ci(), "{test}: {why}, and CI=true forbids skipping");
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Runs `promtool args…` in `dir`; returns whether it succeeded and what it printed.
pub fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A free TCP port on 127.0.0.1 (bound, then released for the program that will use it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over HTTP/1.0 (so that the answer is neither chunked nor kept alive):
/// the status code and the body.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    c.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// Percent-encodes a query parameter's value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on 127.0.0.1, with its configuration and storage in a temporary
/// directory; killed on drop.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (its configuration file, as JSON: YAML reads it) and
    /// waits until it is ready.
    pub fn start(config: &Value) -> Self {
        let dir = TempDir::new("prometheus");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_json::to_string_pretty(config).unwrap()).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting prometheus");
        let mut p = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", self.log_text());
            }
            if TcpStream::connect(&self.addr).is_ok()
                && http_get(&self.addr, "/-/ready", &[]).0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What Prometheus logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the answer's JSON (`status`, `data` or `error`).
    pub fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/{path}"), &[]);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {status} {e}: {body}"))
    }

    /// An instant query: `Ok(result)` (the `data.result` array or scalar), or `Err(error)`.
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        let answer = self.api(&format!("query?query={}", url_encode(promql)));
        if answer["status"] == "success" {
            Ok(answer["data"]["result"].clone())
        } else {
            Err(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("?"),
                answer["error"].as_str().unwrap_or("?")
            ))
        }
    }

    /// A range query over the last `range` at `step`: `Ok(result)`, or `Err(error)`.
    pub fn query_range(
        &self,
        promql: &str,
        range: Duration,
        step: Duration,
    ) -> Result<Value, String> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = end - range.as_secs_f64();
        let answer = self.api(&format!(
            "query_range?query={}&start={start:.3}&end={end:.3}&step={}",
            url_encode(promql),
            step.as_secs_f64()
        ));
        if answer["status"] == "success" {
            Ok(answer["data"]["result"].clone())
        } else {
            Err(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("?"),
                answer["error"].as_str().unwrap_or("?")
            ))
        }
    }

    /// Waits until `promql` returns a vector for which `pred` holds; returns it.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        crate::wait_until(
            timeout,
            Duration::from_millis(200),
            || {
                let result = self
                    .query(promql)
                    .unwrap_or_else(|e| panic!("{promql}: {e}"));
                result.as_array().cloned().unwrap_or_default()
            },
            |vector| pred(vector),
            |vector| {
                format!(
                    "{promql} did not reach the expected value within {timeout:?}; it is {vector:#?}\nprometheus log:\n{}",
                    self.log_text()
                )
            },
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
