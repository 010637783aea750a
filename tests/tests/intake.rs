//! Intake end to end: the kernel hands every core to the agent, through its coredump socket or
//! its pipe helper, from processes that mount nothing of the agent's (root; CI=true forbids
//! skipping). Real crashes, real kernel patterns, the agent binary and its local store.
//!
//! Each test holds the machine-wide test lock through `CorePatternGuard`, which puts
//! core_pattern, core_pipe_limit and suid_dumpable back even when the test fails.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::{fs::symlink, process::ExitStatusExt as _},
    process::Command,
    time::{Duration, Instant},
};

use coredump_tests::{
    Crasher, CrasherOpts, TempCgroup, agent_path,
    node::{Pod, dumping, node},
    record_of, require_root, store_records, wait_for_store,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// Whether `bytes` are an ELF core file.
fn is_core(bytes: &[u8]) -> bool {
    bytes.len() > 64 && &bytes[..4] == b"\x7fELF" && u16::from_le_bytes([bytes[16], bytes[17]]) == 4
}

/// The core of a process that mounts nothing of the agent's reaches it, under its pod,
/// attested, and `get` returns the kernel's bytes.
fn pod_that_mounts_nothing(intake: &str) {
    let n = node(&format!("nomount-{intake}"));
    let agent = n.start(intake, &[]);
    let pod = Pod::new(&n, "web-1", 1);
    let marker = format!("marker-{intake}-{}", std::process::id());
    // It runs where /tmp, /run and /var/lib are empty: the agent's sockets, receive and dump
    // directories do not exist for it.
    let mut crasher = Crasher::spawn_with(
        "mountns",
        Some("segv"),
        &CrasherOpts {
            // The kernel ignores RLIMIT_CORE for sockets and pipes: 0, as many images have.
            core_limit: 0,
            extra_args: &[&marker],
            ..Default::default()
        },
    );
    pod.cgroup.add(crasher.child_pid());
    let pid = crasher.host_pid;
    crasher.release();
    let st = crasher.wait();
    assert_eq!(st.signal(), Some(libc::SIGSEGV));
    // The record goes beside the dump once the dump (and its modules) are stored.
    let keys = wait_for_store(&n.store, WAIT, |k| {
        k.iter().any(|k| k.ends_with(".core.zst.json"))
    });
    let (key, record) = record_of(&store_records(&n.store), pid);
    let core_key = key.strip_suffix(".json").unwrap();
    assert!(
        core_key.starts_with(&pod.prefix()),
        "{core_key} under {}",
        pod.prefix()
    );
    assert!(keys.iter().any(|k| k == core_key), "{keys:?}");
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert_eq!(record["intake"], intake);
    assert_eq!(record["identity"]["pod"], pod.name.as_str());
    assert_eq!(record["identity"]["container"], pod.container.as_str());
    assert!(
        record["crash"]["host_pid"] == pid,
        "joined with the probe's event: {record:#}"
    );
    let core = n.get(core_key);
    assert!(is_core(&core), "an ELF core");
    assert_eq!(
        core.len() as u64,
        record["dump"]["original_size"].as_u64().unwrap(),
        "the bytes the kernel wrote"
    );
    assert!(
        core.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the crashed process's own memory (its argv)"
    );
    // Stored, then removed from the receive directory.
    let deadline = Instant::now() + WAIT;
    while !n.received_files().is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", n.received_files());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.terminate().success());
    assert_eq!(sysctl(CORE_PATTERN), "core", "restored");
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn socket_a_pod_that_mounts_nothing_gives_its_dump() {
    if require_root("intake") {
        pod_that_mounts_nothing("socket");
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn pipe_a_pod_that_mounts_nothing_gives_its_dump() {
    if require_root("intake") {
        pod_that_mounts_nothing("pipe");
    }
}

/// A pid-namespaced crash and a storm of 30 at once: each stored exactly once, attested.
fn storm(intake: &str) {
    let n = node(&format!("storm-{intake}"));
    let agent = n.start(intake, &["--max-dumps-per-hour", "0"]);
    let pidns = Crasher::spawn_with("pidns", Some("segv"), &dumping());
    let mut crashers: Vec<Crasher> = (0..30)
        .map(|_| Crasher::spawn_with("segv", None, &dumping()))
        .collect();
    let mut pids: Vec<u32> = crashers.iter().map(|c| c.host_pid).collect();
    pids.push(pidns.host_pid);
    let ns_pid = pidns.ns_pid;
    for c in &mut crashers {
        c.release();
    }
    assert!(!pidns.go().success());
    for c in crashers {
        assert!(!c.wait().success());
    }
    // Each crash's record is written last, after its dump.
    wait_for_store(&n.store, WAIT, |k| {
        k.iter().filter(|k| k.ends_with(".core.zst.json")).count() >= 31
    });
    // A moment more: a duplicate would show up now.
    std::thread::sleep(Duration::from_secs(2));
    let records = store_records(&n.store);
    let mut per_pid: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, r) in &records {
        assert_eq!(r["attestation"]["attested"], true, "{r:#}");
        *per_pid
            .entry(r["crash"]["host_pid"].as_u64().unwrap())
            .or_default() += 1;
    }
    for pid in &pids {
        assert_eq!(
            per_pid.get(&u64::from(*pid)),
            Some(&1),
            "host pid {pid}: {per_pid:?}"
        );
    }
    assert_eq!(records.len(), 31, "{per_pid:?}");
    let (_, r) = record_of(&records, pids[30]);
    assert_eq!(r["crash"]["pid"], ns_pid, "the pid inside its namespace");
    assert!(agent.terminate().success());
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn socket_pid_namespace_and_a_storm_of_30_are_each_stored_once() {
    if require_root("intake") {
        storm("socket");
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn pipe_pid_namespace_and_a_storm_of_30_are_each_stored_once() {
    if require_root("intake") {
        storm("pipe");
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn pipe_dumps_wait_in_the_receive_directory_while_no_agent_runs() {
    if !require_root("intake") {
        return;
    }
    let n = node("pipe-down");
    let agent = n.start("pipe", &[]);
    agent.kill9();
    // The pattern still runs the helper; no agent answers it.
    assert!(sysctl(CORE_PATTERN).contains(" receive %P"));
    let pids: Vec<u32> = ["segv", "abort", "segv"]
        .iter()
        .map(|mode| {
            let c = Crasher::spawn_with(mode, None, &dumping());
            let pid = c.host_pid;
            assert!(!c.go().success());
            pid
        })
        .collect();
    let files = n.received_files();
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".core.zst")).count(),
        3,
        "{files:?}"
    );
    assert!(
        !files.iter().any(|f| f.starts_with(".partial")),
        "{files:?}"
    );
    // The next start stores them, named and attested by the kernel's %P.
    let agent = n.start("pipe", &[]);
    wait_for_store(&n.store, WAIT, |k| {
        k.iter().filter(|k| k.ends_with(".core.zst.json")).count() == 3
    });
    let records = store_records(&n.store);
    for pid in pids {
        let (_, r) = record_of(&records, pid);
        assert_eq!(r["attestation"]["attested"], true);
        assert!(
            r["attestation"]["reason"]
                .as_str()
                .unwrap()
                .contains("pipe helper"),
            "{r:#}"
        );
    }
    assert!(agent.terminate().success());
    assert_eq!(sysctl(CORE_PATTERN), "core");
    assert!(
        !n.state.join("bin/coredump-agent").exists(),
        "helper removed"
    );
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn socket_kill_9_during_a_1_gib_receive_leaves_nothing_half_stored_and_records_the_crash() {
    if !require_root("intake") {
        return;
    }
    let n = node("kill-big");
    let agent = n.start("socket", &[]);
    let mut crasher = Crasher::spawn_with("big", Some("1024"), &dumping());
    let pid = crasher.host_pid;
    crasher.release();
    // Once part of the dump is in, the agent dies.
    let deadline = Instant::now() + WAIT;
    loop {
        let partial = n
            .received_files()
            .into_iter()
            .find(|f| f.starts_with(".partial"))
            .and_then(|f| std::fs::metadata(n.received.join(f)).ok())
            .is_some_and(|m| m.len() > (1 << 20));
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "no receive began");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill9();
    let st = crasher.wait();
    assert_eq!(st.signal(), Some(libc::SIGSEGV));
    // The next start: no half dump stored, the crash recorded with why.
    let agent = n.start("socket", &[]);
    let keys = wait_for_store(&n.store, WAIT, |k| {
        k.iter().any(|k| k.ends_with(".crash.json"))
    });
    assert!(!keys.iter().any(|k| k.contains(".core")), "{keys:?}");
    let (_, r) = record_of(&store_records(&n.store), pid);
    assert!(r["dump"].is_null());
    assert!(
        r["attestation"]["reason"]
            .as_str()
            .unwrap()
            .contains("incomplete"),
        "{r:#}"
    );
    let deadline = Instant::now() + WAIT;
    while !n.received_files().is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", n.received_files());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.terminate().success());
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn socket_rate_limit_makes_the_kernel_write_nothing() {
    if !require_root("intake") {
        return;
    }
    let n = node("ratelimit");
    let agent = n.start("socket", &["--max-dumps-per-hour", "1"]);
    let cgroup = TempCgroup::create(&format!("coredump-test-rate-{}", std::process::id()));
    let mut statuses = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..2 {
        let mut c = Crasher::spawn_with("segv", None, &dumping());
        cgroup.add(c.child_pid());
        pids.push(c.host_pid);
        c.release();
        statuses.push(c.wait());
        let pid = *pids.last().unwrap();
        wait_for_store(&n.store, WAIT, |k| {
            k.iter()
                .any(|k| k.contains(&format!("_{pid}_")) && k.ends_with(".json"))
        });
    }
    assert!(statuses[0].core_dumped(), "the first dump was written");
    assert!(
        !statuses[1].core_dumped(),
        "the kernel was told not to write the second"
    );
    let records = store_records(&n.store);
    let (key, r) = record_of(&records, pids[1]);
    assert!(key.ends_with(".crash.json"), "{key}");
    assert!(
        r["attestation"]["reason"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{r:#}"
    );
    assert!(
        !n.received_files()
            .iter()
            .any(|f| f.contains(&format!("-r{}-", pids[1]))),
        "no byte of it on the node"
    );
    assert!(agent.terminate().success());
}

/// SIGTERM, `kill -9` then restart, and `coredump-agent restore`: core_pattern and
/// core_pipe_limit come back and the pipe helper goes.
fn restores(intake: &str) {
    let n = node(&format!("restore-{intake}"));
    std::fs::write(CORE_PATTERN, "|/bin/false previous").unwrap();
    std::fs::write(PIPE_LIMIT, "3").unwrap();
    let helper = n.state.join("bin/coredump-agent");
    let ours = |pattern: &str| match intake {
        "pipe" => pattern.contains(" receive %P"),
        _ => pattern.starts_with("@@") && pattern.ends_with("coredump-agent.sock"),
    };
    let before = || [sysctl(CORE_PATTERN), sysctl(PIPE_LIMIT)];
    let previous = ["|/bin/false previous".to_owned(), "3".to_owned()];

    let agent = n.start(intake, &[]);
    assert!(ours(&sysctl(CORE_PATTERN)), "{}", sysctl(CORE_PATTERN));
    if intake == "pipe" {
        assert_eq!(sysctl(PIPE_LIMIT), "64", "the kernel waits for the helper");
        assert!(helper.exists());
    }
    assert!(agent.terminate().success());
    assert_eq!(before(), previous);
    assert!(!helper.exists());

    // kill -9: the pattern stays (a pipe helper keeps taking dumps), the next start keeps the
    // original backups and restores them on exit.
    let agent = n.start(intake, &[]);
    agent.kill9();
    assert!(ours(&sysctl(CORE_PATTERN)));
    let agent = n.start(intake, &[]);
    assert!(agent.terminate().success());
    assert_eq!(before(), previous);
    assert!(!helper.exists());

    // The preStop hook, while the agent runs; then the agent finds it done.
    let mut agent = n.start(intake, &[]);
    let out = Command::new(agent_path())
        .args(["restore", "--state-dir", n.state.to_str().unwrap()])
        .args(["--run-dir", n.run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(before(), previous);
    assert!(!helper.exists());
    assert!(agent.sigterm().success());
    assert!(
        agent.log_text().contains("already restored"),
        "{}",
        agent.log_text()
    );
    assert_eq!(before(), previous);
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn socket_settings_are_restored_on_sigterm_after_kill_9_and_by_restore() {
    if require_root("intake") {
        restores("socket");
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn pipe_settings_and_helper_are_restored_on_sigterm_after_kill_9_and_by_restore() {
    if require_root("intake") {
        restores("pipe");
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_symlink_planted_for_the_helper_is_never_followed() {
    if !require_root("intake") {
        return;
    }
    let n = node("planted");
    let agent = n.start("pipe", &[]);
    agent.kill9();
    // With no agent the helper writes itself: into the receive directory, which someone
    // replaced by a link to a place of their choosing.
    let victim = n.tmp.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::remove_dir_all(&n.received).unwrap();
    symlink(&victim, &n.received).unwrap();
    let c = Crasher::spawn_with("segv", None, &dumping());
    assert!(!c.go().success());
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written through the link"
    );
    // Its settings replaced by a link: refused too.
    std::fs::remove_file(&n.received).unwrap();
    let config = n.state.join("bin/helper.json");
    let real = n.tmp.join("real-helper.json");
    std::fs::rename(&config, &real).unwrap();
    symlink(&real, &config).unwrap();
    let c = Crasher::spawn_with("segv", None, &dumping());
    assert!(!c.go().success());
    assert!(!n.received.exists(), "no receive directory was even made");
    assert!(
        kernel_log().contains("coredump-agent receive"),
        "the helper says why in the kernel log"
    );
}

/// The kernel's log, as `/dev/kmsg` holds it now.
fn kernel_log() -> String {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut log = String::new();
    let Ok(mut f) = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return log;
    };
    // One record per read; EAGAIN after the last.
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = f.read(&mut buf) {
        log.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    log
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn check_names_the_intake_it_would_use_and_why() {
    if !require_root("intake") {
        return;
    }
    let n = node("check");
    let out = Command::new(agent_path())
        .args(["check", "--json", "--kube", "off"])
        .args(["--state-dir", n.state.to_str().unwrap()])
        .args(["--run-dir", n.run.to_str().unwrap()])
        .args(["--receive-dir", n.received.to_str().unwrap()])
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let intake = lines
        .iter()
        .find(|l| l["check"] == "intake")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let modes = std::fs::read_to_string("/proc/sys/kernel/core_modes").unwrap_or_default();
    let expect = if modes.contains("socket") {
        "socket"
    } else {
        "pipe"
    };
    assert!(
        intake["detail"].as_str().unwrap().starts_with(expect),
        "{intake:#}"
    );
    assert_eq!(sysctl(CORE_PATTERN), "core", "check changes nothing");
}
