//! The kernel crash probe against real crashing processes (root; CI=true forbids skipping).
//!
//! Each scenario runs against both hooks. "No event" is proven by ordering, not by waiting:
//! after the case under test, a sentinel process crashes; the ring buffer is FIFO, so once the
//! sentinel's event arrives, any event of the case under test would have arrived before it.

use std::time::Duration;

use coredump_agent::{
    crash::{Crash, Hook, Signal},
    probe::{self, HookChoice, Probe},
};
use coredump_tests::{Crasher, CrasherOpts, TempCgroup, TempDir, require_root};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const HOOKS: [HookChoice; 2] = [HookChoice::TpBtf, HookChoice::Tracepoint];
const TIMEOUT: Duration = Duration::from_secs(10);

/// A command line to recognise: spaces, an empty argument, non-ASCII.
const MARKER_ARGS: [&str; 5] = ["--marker=probe-argv", "with space", "", "ünïcödé", "last"];

/// The name the kernel has for the file a crasher runs (symlinks resolved, as exec does).
fn exe_name(crasher: &Crasher) -> String {
    std::fs::canonicalize(&crasher.program)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The kernel's command line and executable name are exactly the crasher's, uncut.
fn assert_argv_and_exe(crash: &Crash, argv: &[String], exe: &str, context: &str) {
    assert_eq!(crash.cmdline.as_deref(), Some(argv), "{context}: argv");
    assert!(!crash.cmdline_truncated, "{context}");
    assert_eq!(crash.exe_name.as_deref(), Some(exe), "{context}: exe name");
    assert!(!crash.exe_name_truncated, "{context}");
}

struct Running {
    rx: mpsc::Receiver<Crash>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<probe::ProbeStats, probe::ProbeError>>,
}

impl Running {
    fn start(hook: HookChoice) -> Self {
        let probe = Probe::load(hook).unwrap_or_else(|e| panic!("loading {hook:?}: {e:#}"));
        let expected = match hook {
            HookChoice::Tracepoint => Hook::Tracepoint,
            HookChoice::TpBtf | HookChoice::Auto => Hook::TpBtf,
        };
        assert_eq!(probe.hook(), expected);
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(probe::run(probe, tx, cancel.clone()));
        Self { rx, cancel, task }
    }

    /// Every event up to and including the first one of `pid`.
    async fn until_pid(&mut self, pid: u32) -> Vec<Crash> {
        let mut seen = Vec::new();
        loop {
            let crash = tokio::time::timeout(TIMEOUT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no crash event for pid {pid} within {TIMEOUT:?}"))
                .expect("probe stopped");
            let done = crash.host_pid == pid;
            seen.push(crash);
            if done {
                return seen;
            }
        }
    }

    /// Crashes a sentinel and returns every event before it (the sentinel's excluded).
    async fn drain(&mut self) -> Vec<Crash> {
        let sentinel = Crasher::spawn("segv", None);
        let pid = sentinel.host_pid;
        sentinel.go();
        let mut events = self.until_pid(pid).await;
        events.pop();
        events
    }

    /// The events of exactly one pid, checking there is exactly one.
    async fn exactly_one(&mut self, pid: u32) -> Crash {
        let mut events: Vec<Crash> = self.until_pid(pid).await;
        let crash = events.pop().expect("the event");
        let more: Vec<_> = self
            .drain()
            .await
            .into_iter()
            .chain(events)
            .filter(|c| c.host_pid == pid)
            .collect();
        assert!(
            more.is_empty(),
            "more than one event for pid {pid}: {more:?}"
        );
        crash
    }

    async fn stop(self) {
        self.cancel.cancel();
        let stats = self.task.await.unwrap().unwrap();
        assert_eq!(stats.dropped, 0);
        assert!(stats.events > 0);
    }
}

async fn crash_gives_one_event(mode: &str, signal: i32) {
    if !require_root(mode) {
        return;
    }
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let crasher = Crasher::spawn_with(
            mode,
            None,
            &CrasherOpts {
                extra_args: &MARKER_ARGS,
                ..Default::default()
            },
        );
        let (argv, exe) = (crasher.argv.clone(), exe_name(&crasher));
        assert_eq!(
            argv[1..],
            [mode, "--"]
                .into_iter()
                .chain(MARKER_ARGS)
                .collect::<Vec<_>>()[..]
        );
        let pid = crasher.host_pid;
        let status = crasher.go();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            status.signal(),
            Some(signal),
            "{mode} ended with {status:?}"
        );
        let crash = probe.exactly_one(pid).await;
        assert_eq!(crash.host_pid, pid, "{hook:?}");
        assert_eq!(crash.host_tid, pid, "{hook:?}");
        assert_eq!(crash.comm, "crasher", "{hook:?}");
        assert_eq!(crash.signal, Signal(signal as u32), "{hook:?}");
        assert_argv_and_exe(&crash, &argv, &exe, &format!("{hook:?} {mode}"));
        // SAFETY (test): getuid cannot fail.
        assert_eq!(crash.uid, unsafe { libc::getuid() });
        if hook == HookChoice::TpBtf {
            assert_eq!(crash.pid, Some(pid), "host namespace: ns pid == host pid");
            assert_eq!(crash.process_comm.as_deref(), Some("crasher"));
        }
        let age = std::time::SystemTime::now()
            .duration_since(crash.time)
            .expect("crash time in the past");
        assert!(age < TIMEOUT, "crash time is {age:?} old");
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn null_dereference_is_one_sigsegv_event() {
    crash_gives_one_event("segv", libc::SIGSEGV).await;
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn abort_is_one_sigabrt_event() {
    crash_gives_one_event("abort", libc::SIGABRT).await;
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn sigquit_is_one_event() {
    crash_gives_one_event("quit", libc::SIGQUIT).await;
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn handled_terminated_and_ignored_signals_give_no_event() {
    if !require_root("no_event") {
        return;
    }
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let mut pids = Vec::new();
        for mode in ["handled", "term", "ignored"] {
            let crasher = Crasher::spawn(mode, None);
            pids.push((mode, crasher.host_pid));
            let status = crasher.go();
            match mode {
                "handled" | "ignored" => assert!(status.success(), "{mode}: {status:?}"),
                _ => assert!(!status.success()),
            }
        }
        let events = probe.drain().await;
        for (mode, pid) in pids {
            let theirs: Vec<_> = events.iter().filter(|c| c.host_pid == pid).collect();
            assert!(
                theirs.is_empty(),
                "{hook:?} {mode}: unexpected events {theirs:?}"
            );
        }
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn crash_in_a_new_pid_namespace_reports_both_pids() {
    if !require_root("pidns") {
        return;
    }
    let mut probe = Running::start(HookChoice::TpBtf);
    let crasher = Crasher::spawn("pidns", Some("segv"));
    let (host_pid, ns_pid, outer) = (crasher.host_pid, crasher.ns_pid, crasher.child_pid());
    assert_eq!(ns_pid, 2, "pid 2 in the new namespace");
    assert_ne!(host_pid, ns_pid);
    let status = crasher.go();
    assert_eq!(status.code(), Some(128 + libc::SIGSEGV), "{status:?}");
    let crash = probe.exactly_one(host_pid).await;
    assert_eq!(crash.host_pid, host_pid);
    assert_eq!(crash.pid, Some(ns_pid));
    assert_eq!(crash.tid, Some(ns_pid));
    assert_eq!(crash.pidns_level, Some(1));
    // Inside, the crasher exec'd itself as `crasher segv`.
    let argv = ["crasher".to_owned(), "segv".to_owned()];
    assert_argv_and_exe(&crash, &argv, "crasher", "pidns");
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let host_inum = format!("pid:[{}]", crash.pidns.expect("pidns inode"));
    assert_ne!(host_ns.to_string_lossy(), host_inum, "a new namespace");
    let _ = outer;
    probe.stop().await;
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn crash_in_a_cgroup_reports_its_inode_as_cgroup_id() {
    if !require_root("cgroup") {
        return;
    }
    let _lock = coredump_tests::GlobalLock::acquire();
    let cgroup = TempCgroup::create(&format!("coredump-test-{}/crash", std::process::id()));
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let crasher = Crasher::spawn("segv", None);
        cgroup.add(crasher.host_pid);
        let pid = crasher.host_pid;
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        assert_eq!(crash.cgroup_id, cgroup.id(), "{hook:?}");
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn crash_in_a_named_thread_reports_thread_and_process() {
    if !require_root("thread") {
        return;
    }
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let crasher = Crasher::spawn("thread", Some("bad-worker"));
        let (pid, tid) = (crasher.host_pid, crasher.host_tid);
        let (argv, exe) = (crasher.argv.clone(), exe_name(&crasher));
        assert_ne!(pid, tid);
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        assert_eq!(crash.host_pid, pid, "{hook:?}");
        assert_eq!(crash.host_tid, tid, "{hook:?}");
        assert_eq!(crash.comm, "bad-worker", "{hook:?}: the thread's name");
        assert_eq!(crash.signal, Signal(11));
        assert_argv_and_exe(&crash, &argv, &exe, &format!("{hook:?}: the process's"));
        if hook == HookChoice::TpBtf {
            assert_eq!(crash.process_comm.as_deref(), Some("crasher"));
            assert_eq!((crash.pid, crash.tid), (Some(pid), Some(tid)));
        }
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn renamed_process_is_reported_by_its_new_name() {
    if !require_root("comm") {
        return;
    }
    let mut probe = Running::start(HookChoice::Auto);
    let crasher = Crasher::spawn_with(
        "abort",
        None,
        &coredump_tests::CrasherOpts {
            comm: Some("a-very-long-name-truncated"),
            ..Default::default()
        },
    );
    let pid = crasher.host_pid;
    let exe = exe_name(&crasher);
    crasher.go();
    let crash = probe.exactly_one(pid).await;
    assert_eq!(
        crash.comm, "a-very-long-nam",
        "15 bytes, as the kernel keeps"
    );
    assert_eq!(
        crash.exe_name.as_deref(),
        Some(exe.as_str()),
        "a process cannot rename its executable"
    );
    probe.stop().await;
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn long_command_line_is_cut_at_512_bytes_and_marked() {
    if !require_root("long_cmdline") {
        return;
    }
    let long = "L".repeat(600);
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let crasher = Crasher::spawn_with(
            "abort",
            None,
            &CrasherOpts {
                extra_args: &["first", &long, "never-seen"],
                ..Default::default()
            },
        );
        let (argv, exe) = (crasher.argv.clone(), exe_name(&crasher));
        let pid = crasher.host_pid;
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        // What /proc/<pid>/cmdline would show, cut after 512 bytes.
        let area: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let expected: Vec<String> = area[..512]
            .split(|&b| b == 0)
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        assert_eq!(
            expected.last().unwrap(),
            &"L".repeat(expected.last().unwrap().len())
        );
        assert_eq!(crash.cmdline.as_deref(), Some(&expected[..]), "{hook:?}");
        assert!(crash.cmdline_truncated, "{hook:?}");
        assert_eq!(crash.exe_name.as_deref(), Some(exe.as_str()), "{hook:?}");
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn unreadable_command_line_is_left_out_and_the_crash_still_reported() {
    if !require_root("unreadable_cmdline") {
        return;
    }
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        // The argument area runs into a page the probe cannot read: nothing of it.
        let crasher = Crasher::spawn("unreadable-args", None);
        let (pid, exe) = (crasher.host_pid, exe_name(&crasher));
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        assert_eq!(crash.signal, Signal(11), "{hook:?}");
        assert_eq!(
            (crash.cmdline, crash.cmdline_truncated),
            (None, false),
            "{hook:?}"
        );
        assert_eq!(crash.exe_name.as_deref(), Some(exe.as_str()), "{hook:?}");

        // Only its first 8 bytes are readable (the rest, on the next page, is not): those,
        // marked as cut. It re-executed itself by its resolved path to place them so.
        let crasher = Crasher::spawn("half-readable-args", None);
        let (pid, path) = (
            crasher.host_pid,
            std::fs::canonicalize(&crasher.program).unwrap(),
        );
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        let first = path.to_str().unwrap()[..8].to_owned();
        assert_eq!(crash.cmdline, Some(vec![first]), "{hook:?}");
        assert!(crash.cmdline_truncated, "{hook:?}");
        probe.stop().await;
    }
}

#[tokio::test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
async fn long_executable_name_is_cut_and_marked() {
    if !require_root("long_exe_name") {
        return;
    }
    let dir = TempDir::new("long-exe");
    let name = format!("crasher-{}", "n".repeat(70));
    let program = dir.join(&name);
    std::fs::copy(coredump_tests::crasher_path(), &program).unwrap();
    for hook in HOOKS {
        let mut probe = Running::start(hook);
        let crasher = Crasher::spawn_with(
            "segv",
            None,
            &CrasherOpts {
                program: Some(&program),
                ..Default::default()
            },
        );
        let (pid, argv) = (crasher.host_pid, crasher.argv.clone());
        crasher.go();
        let crash = probe.exactly_one(pid).await;
        assert_eq!(crash.exe_name.as_deref(), Some(&name[..63]), "{hook:?}");
        assert!(crash.exe_name_truncated, "{hook:?}");
        assert_eq!(crash.cmdline.as_deref(), Some(&argv[..]), "{hook:?}");
        assert_eq!(crash.comm, name[..15], "{hook:?}");
        probe.stop().await;
    }
}
