//! The dump pipeline end to end: real crashes, the real kernel writing cores through
//! core_pattern, the agent binary, and its local store (root; CI=true forbids skipping).
//!
//! Every test sets core_pattern through `CorePatternGuard`, which serializes them (one lock
//! for all test binaries) and restores the previous pattern even when a test fails.

use std::{
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::Path,
    process::Command,
    time::Duration,
};

use coredump_tests::{
    Agent, Crasher, CrasherOpts, agent_path,
    node::{self, NODE, dumping},
    record_of, require_root, store_keys, store_records, wait_for_record, wait_for_store,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A node whose kernel writes dumps into its dump directory (the file intake).
struct Node(node::Node);

impl std::ops::Deref for Node {
    type Target = node::Node;

    fn deref(&self) -> &node::Node {
        &self.0
    }
}

/// A fresh node with core_pattern set to `template` in the dump dir (`{dumps}` in a pipe
/// pattern stands for the dump dir).
fn node(tag: &str, template: &str) -> Node {
    let pattern = if template.starts_with('|') {
        template.to_owned()
    } else {
        format!("{{dumps}}/{template}")
    };
    Node(node::Node::new(tag, "dumps", &pattern))
}

impl Node {
    /// The file intake, with waits short enough for the tests.
    fn start(&self, extra: &[&str]) -> Agent {
        let args = [&node::FILE_WAITS[..], extra].concat();
        self.0.start("file", &args)
    }

    /// Names left in the dump dir (not the agent's own sub-folders).
    fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dumps)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Waits until the dump dir holds no dump: each is deleted right after its record is
    /// stored, so a moment after the store shows it.
    fn wait_until_empty(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        while !self.leftovers().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "dumps left in the dump dir: {:?}",
                self.leftovers()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spool_entries(&self) -> usize {
        std::fs::read_dir(self.state.join("spool")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
    }
}

/// Crashes a crasher with a core file; returns its host pid.
fn crash(mode: &str, opts: &CrasherOpts<'_>) -> u32 {
    let c = Crasher::spawn_with(mode, None, opts);
    let pid = c.host_pid;
    let st = c.go();
    assert!(!st.success(), "{mode} should have crashed");
    pid
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn crash_is_stored_locally_with_its_record_and_removed() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("basic", "core.%P.%I.%s.%t.%e");
    let agent = n.start(&[]);
    let crasher = Crasher::spawn_with(
        "segv",
        None,
        &CrasherOpts {
            extra_args: &["--pipeline-marker", "with space", "x=1"],
            ..dumping()
        },
    );
    let (pid, argv) = (crasher.host_pid, crasher.argv.clone());
    assert!(!crasher.go().success());
    let keys = wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    let (key, record) = record_of(&store_records(&n.store), pid);
    let core_key = key.strip_suffix(".json").unwrap();
    assert!(
        core_key.starts_with(&format!("_host/{NODE}/")),
        "{core_key}"
    );
    assert!(
        core_key.ends_with(&format!("___crasher_{pid}_SIGSEGV.core.zst")),
        "{core_key}"
    );
    assert!(keys.contains(&core_key.to_owned()));
    // Compressed with zstd by default; the record says what it was.
    assert_eq!(
        &std::fs::read(n.store.join(core_key)).unwrap()[..4],
        b"\x28\xb5\x2f\xfd"
    );
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert_eq!(record["crash"]["signal"], "SIGSEGV");
    assert_eq!(record["crash"]["comm"], "crasher");
    // The command line and executable as the kernel saw them at the signal: there even when
    // the process was gone before /proc could be read.
    assert_eq!(
        record["crash"]["cmdline"],
        serde_json::json!(argv),
        "{record:#}"
    );
    assert_eq!(record["crash"]["cmdline_truncated"], false);
    assert_eq!(record["crash"]["exe_name"], "crasher", "{record:#}");
    // The object's metadata: the kernel's command line; /proc's full path of the executable
    // if it was read (and names the same file), else the kernel's name for it.
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(n.store.join(".meta").join(format!("{core_key}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        sidecar["metadata"]["cmdline"],
        argv.join(" "),
        "{sidecar:#}"
    );
    let exe = sidecar["metadata"]["exe"].as_str().unwrap();
    match record["process"]["exe"].as_str() {
        Some(path) => assert_eq!(exe, path),
        None => assert_eq!(exe, "crasher"),
    }
    // `info` shows them.
    let info = std::process::Command::new(coredump_tests::agent_path())
        .args(["info", "--dest", n.store.to_str().unwrap(), core_key])
        .env("COREDUMP_LOG", "warn")
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&format!("  exe:         {exe}\n")), "{info}");
    assert!(
        info.contains(&format!("  cmdline:     {}\n", argv.join(" "))),
        "{info}"
    );
    assert_eq!(record["node"], NODE);
    // /proc is read best effort: a small core is written before the event is read, and the
    // process may be gone by then. What was read must be the crashing process's.
    if let Some(status) = record["process"]["status"].as_array() {
        assert!(
            status.contains(&serde_json::json!(["Name", "crasher"])),
            "{record:#}"
        );
    }
    assert!(record["identity"]["cgroup_path"].is_string(), "{record:#}");
    assert!(record["dump"]["size"].as_u64().unwrap() > 0);
    n.wait_until_empty();
    assert_eq!(n.spool_entries(), 0);
    assert!(agent.terminate().success());
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn seed_pattern_without_host_pid_joins_by_namespace_pid() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("seed", "core-%e-%t-%p-%s");
    let agent = n.start(&[]);
    let pid = crash("abort", &dumping());
    wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    let (_, record) = record_of(&store_records(&n.store), pid);
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert!(
        record["attestation"]["reason"]
            .as_str()
            .unwrap()
            .contains("namespace pid")
    );
    assert_eq!(record["dump"]["fields"]["pid"], pid);
    assert_eq!(record["crash"]["signal"], "SIGABRT");
    n.wait_until_empty();
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn gzip_pipe_pattern_is_understood() {
    if !require_root("pipeline") {
        return;
    }
    // The Amazon Linux setup of the seed project: a shell pipe helper compressing the core.
    let n = node(
        "gzip",
        "|/bin/sh -c $@ -- eval exec gzip > {dumps}/core-%e-%t-%p-%s.gz",
    );
    let agent = n.start(&[]);
    // A pipe helper receives the core whatever RLIMIT_CORE says (unless it is 1).
    let pid = crash("segv", &dumping());
    let keys = wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    let (key, record) = record_of(&store_records(&n.store), pid);
    let core_key = key.strip_suffix(".json").unwrap();
    assert!(core_key.ends_with("_SIGSEGV.core.gz"), "{keys:?}");
    assert_eq!(record["dump"]["compression"], "gzip");
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert_eq!(
        &std::fs::read(n.store.join(core_key)).unwrap()[..2],
        b"\x1f\x8b"
    );
    n.wait_until_empty();
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn pid_namespace_crash_joins_without_host_pid_in_pattern() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("pidns", "core-%e-%t-%p-%s");
    let agent = n.start(&[]);
    let c = Crasher::spawn_with("pidns", Some("segv"), &dumping());
    let (host_pid, ns_pid) = (c.host_pid, c.ns_pid);
    c.go();
    wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    let (key, record) = record_of(&store_records(&n.store), host_pid);
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert_eq!(record["crash"]["pid"], ns_pid);
    assert_eq!(record["dump"]["fields"]["pid"], ns_pid);
    assert!(
        key.contains(&format!("_crasher_{ns_pid}_SIGSEGV.core")),
        "{key}"
    );
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn fifty_same_comm_crashes_are_never_mixed_up() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("fifty", "core-%e-%t-%p-%s");
    let agent = n.start(&["--max-dumps-per-hour", "0"]);
    let opts = CrasherOpts {
        comm: Some("samecomm"),
        ..dumping()
    };
    let mut crashers: Vec<Crasher> = (0..50)
        .map(|_| Crasher::spawn_with("segv", None, &opts))
        .collect();
    let pids: Vec<u32> = crashers.iter().map(|c| c.host_pid).collect();
    let start = std::time::Instant::now();
    for c in &mut crashers {
        c.release();
    }
    for c in crashers {
        c.wait();
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "50 crashes within a second"
    );
    wait_for_store(&n.store, Duration::from_secs(60), |k| k.len() == 100);
    let records = store_records(&n.store);
    let mut joined = Vec::new();
    for (key, r) in &records {
        // Never mixed up: an attested record's kernel pid is the pid in its file name.
        if r["attestation"]["attested"] == true {
            assert_eq!(
                r["crash"]["host_pid"], r["dump"]["fields"]["pid"],
                "{key}: {r:#}"
            );
            joined.push(r["crash"]["host_pid"].as_u64().unwrap() as u32);
        } else {
            assert!(
                r["crash"].is_null(),
                "{key}: unattested records carry no crash"
            );
        }
    }
    joined.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    // In the host pid namespace nothing is ambiguous: every crash is joined to its own file.
    assert_eq!(joined, expected);
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn backlog_present_before_start_is_processed() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("backlog", "core.%P.%I.%s.%t.%e");
    // A real crash while no agent runs: the kernel writes the core, nobody sees the event.
    let pid = crash("segv", &dumping());
    std::fs::write(
        n.dumps.join("core.999999.999999.11.1700000000.planted"),
        b"not a core",
    )
    .unwrap();
    assert_eq!(n.leftovers().len(), 2);
    let agent = n.start(&[]);
    wait_for_store(&n.store, WAIT, |k| k.len() == 4);
    for (key, r) in store_records(&n.store) {
        assert!(key.starts_with(&format!("_unattested/{NODE}/")), "{key}");
        assert_eq!(r["attestation"]["attested"], false);
        assert!(
            r["attestation"]["reason"]
                .as_str()
                .unwrap()
                .contains("no kernel crash event"),
            "{r:#}"
        );
    }
    assert!(
        store_keys(&n.store)
            .iter()
            .any(|k| k.ends_with(&format!("_crasher_{pid}_SIGSEGV.core.zst")))
    );
    n.wait_until_empty();
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn kill_9_between_spool_and_store_resumes_with_full_identity() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("restart", "core.%P.%I.%s.%t.%e");
    let agent = n.start(&[]);
    // The store breaks after start-up: its folder becomes a file, so every put fails.
    std::fs::remove_dir_all(&n.store).unwrap();
    std::fs::write(&n.store, b"not a directory").unwrap();
    let pid = crash("segv", &dumping());
    let mut agent = agent;
    agent.wait_for_log("store failed", WAIT);
    assert_eq!(n.spool_entries(), 1, "the joined record is spooled");
    assert_eq!(n.leftovers().len(), 1, "the dump is still there");
    agent.kill9();

    std::fs::remove_file(&n.store).unwrap();
    let agent = n.start(&[]);
    let keys = wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".core.zst")).count(),
        1,
        "{keys:?}"
    );
    let (_, record) = record_of(&store_records(&n.store), pid);
    assert_eq!(record["attestation"]["attested"], true, "{record:#}");
    assert_eq!(record["crash"]["comm"], "crasher");
    assert!(record["identity"]["cgroup_path"].is_string(), "{record:#}");
    n.wait_until_empty();
    assert_eq!(n.spool_entries(), 0);
    agent.terminate();
}

fn sha256_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn hostile_files_are_never_read_and_never_block() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("hostile", "core.%P.%I.%s.%t.%e");
    let secret = n.tmp.join("secret");
    std::fs::write(&secret, b"top secret bytes").unwrap();
    let shadow_before = sha256_of(Path::new("/etc/shadow"));
    let agent = n.start(&[]);
    let d = &n.dumps;
    symlink("/etc/shadow", d.join("core.1.1.11.1700000000.shadow")).unwrap();
    std::fs::hard_link(&secret, d.join("core.2.2.11.1700000000.hard")).unwrap();
    let fifo = std::ffi::CString::new(d.join("core.3.3.11.1700000000.fifo").as_os_str().as_bytes())
        .unwrap();
    // SAFETY (test): mkfifo/mknod with valid NUL-terminated paths.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    std::fs::create_dir(d.join("core.4.4.11.1700000000.dir")).unwrap();
    let dev = std::ffi::CString::new(d.join("core.5.5.11.1700000000.dev").as_os_str().as_bytes())
        .unwrap();
    // SAFETY (test): as above; /dev/null's numbers (1, 3).
    assert_eq!(
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
        0
    );
    let non_utf8 = d.join(std::ffi::OsStr::from_bytes(
        b"core.6.6.11.1700000000.\xff\xfe",
    ));
    std::fs::write(&non_utf8, b"x").unwrap();
    let long = d.join("x".repeat(255));
    std::fs::write(&long, b"x").unwrap();
    let too_long = d.join("y".repeat(4000));
    assert!(
        std::fs::write(&too_long, b"x").is_err(),
        "4,000-byte names cannot exist"
    );
    std::fs::write(d.join("core.7.7.11.1700000000.unvouched"), b"not a core").unwrap();

    // The agent is not blocked: a real crash afterwards is stored, attested.
    let pid = crash("segv", &dumping());
    wait_for_store(&n.store, WAIT, |k| k.len() == 4);
    let records = store_records(&n.store);
    let (_, real) = record_of(&records, pid);
    assert_eq!(real["attestation"]["attested"], true);
    let (unvouched_key, unvouched) = records
        .iter()
        .find(|(k, _)| k.contains("_unvouched_"))
        .cloned()
        .or_else(|| records.iter().find(|(_, r)| r["crash"].is_null()).cloned())
        .expect("the unvouched file is stored");
    assert!(
        unvouched_key.starts_with(&format!("_unattested/{NODE}/")),
        "{unvouched_key}"
    );
    assert_eq!(unvouched["attestation"]["attested"], false);

    // Nothing outside the dump dir was read into the store.
    for key in store_keys(&n.store) {
        let bytes = std::fs::read(n.store.join(&key)).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == b"top secret bytes"),
            "{key}"
        );
        if !shadow_before.is_empty() {
            assert_ne!(bytes, shadow_before, "{key}");
        }
    }
    assert_eq!(sha256_of(Path::new("/etc/shadow")), shadow_before);
    assert_eq!(std::fs::read(&secret).unwrap(), b"top secret bytes");

    // Symlink, hard link, FIFO and device were moved aside, out of the dump directory (into
    // the state directory, which no container sees); the rest left alone.
    assert!(!d.join("quarantine").exists());
    let mut quarantined: Vec<String> = std::fs::read_dir(n.state.join("quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        [
            "core.1.1.11.1700000000.shadow",
            "core.2.2.11.1700000000.hard",
            "core.3.3.11.1700000000.fifo",
            "core.5.5.11.1700000000.dev",
        ]
    );
    assert!(d.join("core.4.4.11.1700000000.dir").is_dir());
    assert!(non_utf8.exists() && long.exists());
    let log = agent.log_text();
    for reason in ["symbolic link", "hard links", "FIFO", "character device"] {
        assert!(log.contains(reason), "log names {reason:?}");
    }
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn crash_without_a_dump_is_recorded() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("nodump", "core.%P.%I.%s.%t.%e");
    let agent = n.start(&[]);
    // RLIMIT_CORE 0: the kernel reports the crash but writes no file pattern dump.
    let pid = crash("quit", &CrasherOpts::default());
    let keys = wait_for_store(&n.store, WAIT, |k| !k.is_empty());
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].ends_with(&format!("___crasher_{pid}_SIGQUIT.crash.json")),
        "{keys:?}"
    );
    let (_, record) = record_of(&store_records(&n.store), pid);
    assert!(record["dump"].is_null());
    assert!(
        record["attestation"]["reason"]
            .as_str()
            .unwrap()
            .contains("no dump appeared")
    );
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn crash_loop_is_rate_limited_but_every_crash_is_recorded() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("ratelimit", "core.%P.%I.%s.%t.%e");
    let agent = n.start(&["--max-dumps-per-hour", "1"]);
    let first = crash("segv", &dumping());
    let second = crash("segv", &dumping());
    let keys = wait_for_store(&n.store, WAIT, |k| k.len() == 3);
    // Whichever dump is joined first is stored; the other crash is recorded without it.
    let stored_core = |pid: u32| {
        keys.iter()
            .any(|k| k.ends_with(&format!("_{pid}_SIGSEGV.core.zst")))
    };
    let recorded = |pid: u32| {
        keys.iter()
            .any(|k| k.ends_with(&format!("_{pid}_SIGSEGV.crash.json")))
    };
    let limited = if stored_core(first) { second } else { first };
    assert!(
        stored_core(first) != stored_core(second),
        "exactly one dump stored: {keys:?}"
    );
    assert!(recorded(limited), "{keys:?}");
    let (_, limited) = record_of(&store_records(&n.store), limited);
    assert!(
        limited["dump"]["size"].as_u64().unwrap() > 0,
        "the record says what was dropped"
    );
    n.wait_until_empty();
    agent.terminate();
}

const PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";
const SUID_DUMPABLE: &str = "/proc/sys/fs/suid_dumpable";

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn sigterm_restores_the_core_sysctls_installed_by_the_agent() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("install", "core");
    std::fs::write("/proc/sys/kernel/core_pattern", "|/bin/false previous").unwrap();
    // Values the agent will not set, so that a restore is visible.
    std::fs::write(PIPE_LIMIT, "3").unwrap();
    std::fs::write(SUID_DUMPABLE, "0").unwrap();
    let flags = [
        "--install-core-pattern",
        "--core-pipe-limit",
        "7",
        "--suid-dumpable",
        "2",
    ];
    let agent = n.start(&flags);
    assert_eq!(
        sysctl("/proc/sys/kernel/core_pattern"),
        format!("{}/core.%P.%I.%s.%t.%e", n.dumps.display())
    );
    assert_eq!(sysctl(PIPE_LIMIT), "7");
    assert_eq!(sysctl(SUID_DUMPABLE), "2");
    for backup in [
        "core_pattern.backup",
        "core_pipe_limit.backup",
        "suid_dumpable.backup",
    ] {
        assert!(n.state.join(backup).exists(), "{backup}");
    }
    assert!(agent.terminate().success());
    let restored = || {
        [
            sysctl("/proc/sys/kernel/core_pattern"),
            sysctl(PIPE_LIMIT),
            sysctl(SUID_DUMPABLE),
        ]
    };
    assert_eq!(restored(), ["|/bin/false previous", "3", "0"]);
    assert!(!n.state.join("core_pattern.backup").exists());
    assert!(!n.state.join("suid_dumpable.backup").exists());

    // kill -9: the next start keeps the original backups and restores them on exit.
    let agent = n.start(&flags);
    agent.kill9();
    let agent = n.start(&flags);
    assert!(agent.terminate().success());
    assert_eq!(restored(), ["|/bin/false previous", "3", "0"]);

    // kill -9, then a start without the sysctl flags: the leftover backups are reported
    // (agent log, `check`), and the values left as they are.
    let agent = n.start(&flags);
    agent.kill9();
    let agent = n.start(&["--install-core-pattern"]);
    let stale: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("never restored"))
        })
        .map(|l| (l["sysctl"].clone(), l["previous"].clone()))
        .collect();
    assert_eq!(
        stale,
        [
            (json!("kernel.core_pipe_limit"), json!("3")),
            (json!("fs.suid_dumpable"), json!("0"))
        ],
        "{}",
        agent.log_text()
    );
    assert!(agent.terminate().success());
    assert_eq!(sysctl(SUID_DUMPABLE), "2", "not the agent's to restore now");
    assert_eq!(
        sysctl("/proc/sys/kernel/core_pattern"),
        "|/bin/false previous"
    );
    std::fs::write(SUID_DUMPABLE, "0").unwrap();
    std::fs::write(PIPE_LIMIT, "3").unwrap();
    for backup in ["core_pipe_limit.backup", "suid_dumpable.backup"] {
        std::fs::remove_file(n.state.join(backup)).unwrap();
    }

    // The preStop hook: `coredump-agent restore` with the agent's flags, while the agent
    // runs. Everything is back before SIGTERM, and the agent then finds it done.
    let mut agent = n.start(&flags);
    assert_eq!(sysctl(SUID_DUMPABLE), "2");
    let out = Command::new(agent_path())
        .args(["restore", "--state-dir", n.state.to_str().unwrap()])
        .args(["--dump-dir", n.dumps.to_str().unwrap()])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(restored(), ["|/bin/false previous", "3", "0"]);
    assert!(agent.sigterm().success(), "{}", agent.log_text());
    let already: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "already restored")
        .map(|l| l["sysctl"].clone())
        .collect();
    assert_eq!(
        already,
        [
            json!("fs.suid_dumpable"),
            json!("kernel.core_pipe_limit"),
            json!("kernel.core_pattern")
        ],
        "{}",
        agent.log_text()
    );
    assert_eq!(restored(), ["|/bin/false previous", "3", "0"]);
}

/// A daemon that drops root after start is not dumpable at `fs.suid_dumpable=0`: its crash
/// is recorded without a dump. With `--suid-dumpable 2` the kernel writes its dump (owned by
/// root), and the agent stores it.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn suid_dumpable_2_keeps_dumps_of_processes_that_dropped_privileges() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("suid", "core.%P.%I.%s.%t.%e");
    std::fs::write(SUID_DUMPABLE, "0").unwrap();
    let drop_and_crash = || {
        let c = Crasher::spawn_with("drop-privileges", Some("65534"), &dumping());
        let pid = c.host_pid;
        assert!(!c.go().success());
        pid
    };

    let agent = n.start(&[]);
    let lost = drop_and_crash();
    let keys = wait_for_store(&n.store, WAIT, |k| !k.is_empty());
    assert_eq!(keys.len(), 1, "only the crash record: {keys:?}");
    let (_, record) = record_of(&store_records(&n.store), lost);
    assert!(record["dump"].is_null(), "{record:#}");
    assert_eq!(record["crash"]["uid"], 65534, "{record:#}");
    agent.terminate();

    let agent = n.start(&["--suid-dumpable", "2"]);
    let kept = drop_and_crash();
    let (key, record) = wait_for_record(&n.store, WAIT, kept);
    assert!(
        key.ends_with(&format!("_{kept}_SIGSEGV.core.zst.json")),
        "{key}"
    );
    assert!(record["dump"]["size"].as_u64().unwrap() > 0, "{record:#}");
    n.wait_until_empty();
    assert!(agent.terminate().success());
    assert_eq!(sysctl(SUID_DUMPABLE), "0", "restored");
}

/// One HTTP GET over a plain TCP connection: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the health endpoint");
    write!(c, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn health_endpoints_follow_the_store() {
    if !require_root("pipeline") {
        return;
    }
    let n = node("health", "core.%P.%I.%s.%t.%e");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = n.start(&["--listen", &addr, "--store-check-interval", "200ms"]);
    assert_eq!(http_get(&addr, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(http_get(&addr, "/readyz").0, "HTTP/1.1 200 OK");
    let pid = crash("segv", &dumping());
    wait_for_store(&n.store, WAIT, |k| k.len() == 2);
    // Counted right after the store confirmed, so a moment after the objects appear.
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if metrics.contains(
            r#"coredump_agent_crashes_total{namespace="_host",signal="SIGSEGV",outcome="stored"} 1"#,
        ) {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metrics.contains("coredump_agent_crash_events_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coredump_agent_probe_attached 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"coredump_agent_build_info{version="#),
        "{metrics}"
    );
    // The store becomes unusable: readiness turns false, and back once it is fixed.
    std::fs::remove_dir_all(&n.store).unwrap();
    std::fs::write(&n.store, b"not a directory").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while http_get(&addr, "/readyz").0 != "HTTP/1.1 503 Service Unavailable" {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never turned false"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(http_get(&addr, "/readyz").1.contains("store unreachable"));
    std::fs::remove_file(&n.store).unwrap();
    while http_get(&addr, "/readyz").0 != "HTTP/1.1 200 OK" {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = pid;
    assert!(agent.terminate().success());
}
