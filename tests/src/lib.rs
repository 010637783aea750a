//! Support for the end-to-end tests: privilege checks that fail loudly under CI, a lock that
//! serializes tests touching global kernel state, guards that restore it, and the `crasher`.
#![allow(unsafe_code, reason = "flock on the global test lock")]

pub mod fake_ecs;
pub mod fake_kube;
pub mod moto;
pub mod node;
pub mod programs;
pub mod prometheus;
pub mod radosgw;
pub mod seed;
pub mod tools;

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    time::Duration,
};

/// Whether we run under CI (`CI=true`), where nothing may be skipped.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that this test can use root-only features (BPF, cgroups, core_pattern), and fails
/// it loudly if not. Such tests are `#[ignore = "needs root …"]`: a plain `cargo test` reports
/// them as ignored (never as passed), and `cargo xtask test` runs them as root. Returns true
/// (kept as a guard so that a test reads the same whichever way it is run).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "{test}: needs root (BPF, cgroups, core_pattern); run it with `cargo xtask test` as root{}",
        if ci() { " (CI=true)" } else { "" }
    );
    true
}

/// An exclusive lock held while a test changes global kernel state (core_pattern, cgroups),
/// shared by every test binary, so such tests never run in parallel.
pub struct GlobalLock {
    _file: File,
}

impl GlobalLock {
    /// Blocks until the lock is ours.
    pub fn acquire() -> Self {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/coredump-agent-tests.lock")
            .expect("open the test lock file");
        // SAFETY: flock on an fd we own; blocks until acquired.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        Self { _file: f }
    }
}

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
/// The other core dump sysctls the agent may set (`--core-pipe-limit`, `--suid-dumpable`):
/// saved and restored with the pattern, so a test that fails with the agent's values in
/// place leaves the host as it found it.
const OTHER_CORE_SYSCTLS: [&str; 2] = [
    "/proc/sys/kernel/core_pipe_limit",
    "/proc/sys/fs/suid_dumpable",
];

/// Sets `kernel.core_pattern` and restores it, `kernel.core_pipe_limit` and
/// `fs.suid_dumpable` on drop, even on panic. Holds the global lock meanwhile.
pub struct CorePatternGuard {
    previous: Vec<(&'static str, String)>,
    _lock: GlobalLock,
}

impl CorePatternGuard {
    /// Takes the global lock, saves the current values and installs `pattern`.
    pub fn set(pattern: &str) -> Self {
        let lock = GlobalLock::acquire();
        let previous = std::iter::once(CORE_PATTERN)
            .chain(OTHER_CORE_SYSCTLS)
            .map(|path| {
                let value =
                    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
                (path, value.trim_end_matches('\n').to_owned())
            })
            .collect();
        std::fs::write(CORE_PATTERN, pattern).expect("write core_pattern");
        Self {
            previous,
            _lock: lock,
        }
    }
}

impl Drop for CorePatternGuard {
    fn drop(&mut self) {
        // Reverse order: fs.suid_dumpable=2 wants an absolute pattern while it is set.
        for (path, value) in self.previous.iter().rev() {
            if let Err(e) = std::fs::write(path, value) {
                eprintln!("could not restore {path} to {value:?}: {e}");
            }
        }
    }
}

/// The cgroup v2 mount (on hybrid hosts `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    coredump_agent::identity::cgroup::cgroup2_mount()
}

/// A cgroup directory removed on drop (after its processes are gone).
pub struct TempCgroup {
    /// The directory.
    pub path: PathBuf,
}

impl TempCgroup {
    /// Creates `<cgroup2 root>/<relative>` (with parents).
    pub fn create(relative: &str) -> Self {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let path = root.join(relative);
        std::fs::create_dir_all(&path).expect("create cgroup");
        Self { path }
    }

    /// Moves a process into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
    }

    /// The cgroup id: the directory's inode number.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path).expect("stat cgroup").ino()
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        // Remove leaf-first; a cgroup still populated cannot go, so retry briefly.
        let root = cgroup2_root().unwrap_or_default();
        let mut dir = Some(self.path.as_path());
        while let Some(d) = dir {
            if d == root || !d.starts_with(&root) {
                break;
            }
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            dir = d.parent();
        }
    }
}

/// A binary of this package, built by cargo beside the test binaries.
fn own_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} binary (built by cargo test)"))
}

/// The `crasher` binary.
pub fn crasher_path() -> PathBuf {
    own_binary("crasher")
}

/// The agent binary (the `coredump-agent` command line). `COREDUMP_TEST_AGENT` names another
/// one: to run a test against an earlier build and see it fail there.
pub fn agent_path() -> PathBuf {
    std::env::var_os("COREDUMP_TEST_AGENT")
        .filter(|p| !p.is_empty())
        .map_or_else(|| own_binary("agent"), PathBuf::from)
}

/// A unique, empty temporary directory, removed on drop.
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/coredump-test-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("coredump-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    /// A path inside.
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept {} for inspection (the test failed)",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running agent (`coredump-agent run …` or another subcommand) with JSON logs captured.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with `args` and waits until it logs `agent running`.
    pub fn start(args: &[&str], log: PathBuf) -> Self {
        Self::start_with_env(args, log, &[])
    }

    /// Same, with extra environment variables.
    pub fn start_with_env(args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Self {
        let file = File::create(&log).expect("agent log");
        let child = Command::new(agent_path())
            .args(["--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("COREDUMP_LOG", "info,coredump_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        let mut agent = Self { child, log };
        agent.wait_for_log("agent running", Duration::from_secs(30));
        agent
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmHWM`: peak resident memory).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Log lines so far, parsed.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a log line's message contains `message`; panics with the log on timeout or
    /// if the agent exits first.
    pub fn wait_for_log(&mut self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .logs()
                .into_iter()
                .find(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
            {
                return line;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "agent exited ({st}) before logging {message:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {message:?} in the agent log within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The raw log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.sigterm()
    }

    /// SIGTERM, then waits for exit, keeping the log readable.
    pub fn sigterm(&mut self) -> ExitStatus {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait agent")
    }

    /// SIGKILL, then waits for exit.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Module files stored under `_modules/` (crash reports), by key.
pub fn module_keys(root: &Path) -> Vec<String> {
    let modules = root.join("_modules");
    all_keys(root)
        .into_iter()
        .filter(|k| root.join(k).starts_with(&modules))
        .collect()
}

/// Dumps and records of a local store (the module files under `_modules/` left out: see
/// [`module_keys`]), without the `.meta` sidecars.
pub fn store_keys(root: &Path) -> Vec<String> {
    let modules = root.join("_modules");
    all_keys(root)
        .into_iter()
        .filter(|k| !root.join(k).starts_with(&modules))
        .collect()
}

/// Objects of a local store: key → (data path), without the `.meta` sidecars.
fn all_keys(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name() == ".meta" {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Reads with `read` every `every` until `done` holds for what it read, and returns that;
/// after `timeout`, panics with `failure` of the last value read.
pub fn wait_until<T>(
    timeout: Duration,
    every: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
    failure: impl Fn(&T) -> String,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let value = read();
        if done(&value) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{}", failure(&value));
        std::thread::sleep(every);
    }
}

/// Waits until `pred` holds for the requests a fake server (`server`, for the message) has
/// seen, as `requests` reads them; panics after `timeout`.
pub fn wait_for_requests<R: std::fmt::Debug>(
    server: &str,
    timeout: Duration,
    requests: impl FnMut() -> Vec<R>,
    pred: impl Fn(&[R]) -> bool,
) -> Vec<R> {
    wait_until(
        timeout,
        Duration::from_millis(20),
        requests,
        |seen| pred(seen),
        |seen| format!("{server} did not see the expected requests within {timeout:?}: {seen:#?}"),
    )
}

/// Waits until `pred(keys)` holds for the local store at `root`; returns the keys.
pub fn wait_for_store(
    root: &Path,
    timeout: Duration,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    wait_until(
        timeout,
        Duration::from_millis(50),
        || store_keys(root),
        |keys| pred(keys),
        |keys| {
            format!(
                "store at {} did not reach the expected state within {timeout:?}; it has {keys:#?}",
                root.display()
            )
        },
    )
}

/// The JSON records (`*.json` objects) of a local store.
pub fn store_records(root: &Path) -> Vec<(String, serde_json::Value)> {
    store_keys(root)
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .map(|k| {
            let v = serde_json::from_slice(&std::fs::read(root.join(&k)).unwrap()).unwrap();
            (k, v)
        })
        .collect()
}

/// The record of the crash of `host_pid`: by the probe's pid, or the one the dump was named with.
pub fn record_of(
    records: &[(String, serde_json::Value)],
    host_pid: u32,
) -> (String, serde_json::Value) {
    find_record(records, host_pid)
        .unwrap_or_else(|| panic!("no record for host pid {host_pid}: {records:#?}"))
}

fn find_record(
    records: &[(String, serde_json::Value)],
    host_pid: u32,
) -> Option<(String, serde_json::Value)> {
    records
        .iter()
        .find(|(_, r)| {
            r["crash"]["host_pid"] == host_pid || r["dump"]["fields"]["host_pid"] == host_pid
        })
        .cloned()
}

/// Waits until the local store at `root` holds the record of the crash of `host_pid`, and
/// returns it. The agent writes a crash's record last, after its dump and modules, so waiting
/// for the record (not the dump's key) is waiting for the whole crash.
pub fn wait_for_record(
    root: &Path,
    timeout: Duration,
    host_pid: u32,
) -> (String, serde_json::Value) {
    let records = wait_until(
        timeout,
        Duration::from_millis(50),
        || store_records(root),
        |records| find_record(records, host_pid).is_some(),
        |records| format!("no record for host pid {host_pid} within {timeout:?}: {records:#?}"),
    );
    record_of(&records, host_pid)
}

/// [`wait_for_record`] of a crash stored with its dump: panics if it was recorded without one.
pub fn wait_for_dump_record(
    root: &Path,
    timeout: Duration,
    host_pid: u32,
) -> (String, serde_json::Value) {
    let (key, record) = wait_for_record(root, timeout, host_pid);
    assert!(
        !record["dump"].is_null() && !key.ends_with(".crash.json"),
        "the crash of {host_pid} was stored without its dump: {key} {record:#}"
    );
    (key, record)
}

/// A running crasher, stopped at its "ready" line.
pub struct Crasher {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Host pid of the task that will crash (for `pidns`, the process inside the namespace).
    pub host_pid: u32,
    /// Pid as seen in its own pid namespace.
    pub ns_pid: u32,
    /// Host tid of the thread that will receive the signal.
    pub host_tid: u32,
    /// The command line it was started with, `argv[0]` (the program's path) first.
    pub argv: Vec<String>,
    /// The program it runs.
    pub program: PathBuf,
}

/// Options for [`Crasher::spawn_with`].
#[derive(Default)]
pub struct CrasherOpts<'a> {
    /// RLIMIT_CORE for the crasher (0 = no core file, `u64::MAX` = unlimited).
    pub core_limit: u64,
    /// Rename the process first.
    pub comm: Option<&'a str>,
    /// Working directory.
    pub cwd: Option<&'a Path>,
    /// Arguments appended after `--`, which the crasher ignores: a command line to recognise.
    pub extra_args: &'a [&'a str],
    /// Run this program (a copy of the crasher under another name) instead of the crasher.
    pub program: Option<&'a Path>,
}

impl Crasher {
    /// Starts `crasher MODE [ARG]` with no core file and waits for it to be ready.
    pub fn spawn(mode: &str, arg: Option<&str>) -> Self {
        Self::spawn_with(mode, arg, &CrasherOpts::default())
    }

    /// Starts a crasher with options and waits for it to be ready.
    pub fn spawn_with(mode: &str, arg: Option<&str>, opts: &CrasherOpts<'_>) -> Self {
        let program = opts.program.map_or_else(crasher_path, Path::to_path_buf);
        let mut argv = vec![
            program.to_str().expect("UTF-8 path").to_owned(),
            mode.to_owned(),
        ];
        argv.extend(arg.map(str::to_owned));
        if !opts.extra_args.is_empty() {
            argv.push("--".to_owned());
            argv.extend(opts.extra_args.iter().map(|a| (*a).to_owned()));
        }
        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .env("CRASHER_CORE_LIMIT", opts.core_limit.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(comm) = opts.comm {
            cmd.env("CRASHER_COMM", comm);
        }
        if let Some(cwd) = opts.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().expect("spawn crasher");
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("crasher ready line");
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("ready"), "crasher said {line:?}");
        let mut next = || -> u32 { parts.next().and_then(|p| p.parse().ok()).expect("ids") };
        let (host_pid, ns_pid, host_tid) = (next(), next(), next());
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            host_pid,
            ns_pid,
            host_tid,
            argv,
            program,
        }
    }

    /// The pid of the spawned process itself (differs from `host_pid` for `pidns`).
    pub fn child_pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it act, and waits for it to end.
    pub fn go(mut self) -> ExitStatus {
        self.release();
        self.wait()
    }

    /// Lets it act, without waiting.
    pub fn release(&mut self) {
        let mut stdin = self.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("write go");
    }

    /// Waits for it to end (after [`Crasher::release`]).
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("wait crasher")
    }
}

impl Drop for Crasher {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Raises this process's soft limit of open files to `at_least` (up to the hard limit, which
/// root may raise too), for a test that opens many connections.
pub fn raise_open_files_limit(at_least: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur >= at_least {
        return;
    }
    limit.rlim_cur = at_least;
    limit.rlim_max = limit.rlim_max.max(at_least);
    // SAFETY: setrlimit reads a valid rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(
        rc,
        0,
        "raising RLIMIT_NOFILE to {at_least}: {}",
        std::io::Error::last_os_error()
    );
}
