//! Crash reports end to end: real programs built at test time (C with and without symbols,
//! Rust with `panic=abort`), crashed in a pod's cgroup, their cores handed to the agent by the
//! kernel; the report in the stored record, `info`, the Event, signatures and `find`, the
//! modules stored once, `debug` opening gdb where the binary only exists in the store, and
//! honest partial reports (root; CI=true forbids skipping).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use coredump_tests::{
    Crasher, CrasherOpts, TempDir, agent_path,
    fake_kube::FakeKube,
    module_keys,
    moto::Moto,
    node::{Node, Pod, node},
    programs, require_root, store_records, wait_for_dump_record,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Runs `program mode` (the crasher protocol) in `pod`'s cgroup until it crashes; its host pid.
fn crash_in(pod: Option<&Pod>, program: &Path, mode: &str) -> u32 {
    let mut c = Crasher::spawn_with(
        mode,
        None,
        &CrasherOpts {
            program: Some(program),
            ..CrasherOpts::default()
        },
    );
    if let Some(pod) = pod {
        pod.cgroup.add(c.child_pid());
    }
    let pid = c.host_pid;
    c.release();
    assert!(!c.wait().success(), "{} {mode} crashed", program.display());
    pid
}

/// The stored record of the dump of `pid`, once stored, and the dump's key.
fn stored_record(n: &Node, pid: u32) -> (String, Value) {
    let (key, record) = wait_for_dump_record(&n.store, WAIT, pid);
    (key.strip_suffix(".json").unwrap().to_owned(), record)
}

/// The function names of the first `n` frames.
fn functions(report: &Value, n: usize) -> Vec<String> {
    report["frames"]
        .as_array()
        .unwrap()
        .iter()
        .take(n)
        .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The executable's module in a report.
fn main_module(report: &Value) -> &Value {
    report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["main"] == true)
        .unwrap_or_else(|| panic!("no main module: {report:#}"))
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_path()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A C program with debug info and a stripped build of it, each crashing three calls deep in a
/// pod: the report names the functions (the stripped one: module+offset inside them), the
/// executable's build-id is readelf's, `info` shows it, and the pod's Event says what crashed.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn c_programs_with_and_without_symbols() {
    if !require_root("report") || !programs::require("report", &["gcc", "readelf", "nm"]) {
        return;
    }
    let n = node("report-c");
    let bin = TempDir::new("report-c-bin");
    let debug = programs::c_program(&bin.path, "order-svc", &["-g"]);
    // The same code without symbols; its twin with them says where the functions are.
    let stripped = programs::c_program(&bin.path, "order-svc-stripped", &["-s"]);
    let twin = programs::c_program(&bin.path, "order-svc-twin", &[]);
    let api = FakeKube::start();
    let kubeconfig = n.tmp.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let agent = n.start_with_env(
        "socket",
        &["--kube", "on"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let pod = Pod::new(&n, "orders-1", 1);

    let pid = crash_in(Some(&pod), &debug, "segv");
    let (key, record) = stored_record(&n, pid);
    assert!(key.starts_with(&pod.prefix()), "{key}");
    let report = &record["report"];
    assert_eq!(report["complete"], true, "{report:#}");
    assert_eq!(
        functions(report, 3),
        ["crash3", "crash2", "crash1"],
        "{report:#}"
    );
    assert_eq!(report["frames"][3]["function"], "main");
    assert_eq!(report["frames"][0]["module"], "order-svc");
    assert!(
        report["frames"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("deep.c"),
        "{report:#}"
    );
    assert_eq!(report["signal"]["name"], "SIGSEGV");
    assert_eq!(report["signal"]["code_name"], "SEGV_MAPERR");
    assert_eq!(report["signal"]["addr"], "0x0");
    assert_eq!(report["summary"], "SIGSEGV in crash3 ← crash2 ← crash1");
    let main = main_module(report);
    assert_eq!(main["build_id"], programs::build_id(&debug).as_str());
    assert_eq!(main["path"], debug.to_str().unwrap());
    let libc = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().unwrap().contains("libc.so"))
        .expect("libc is mapped");
    assert_eq!(libc["file"], "map_files", "{libc:#}");

    // The executable and its libraries are stored by build-id, and the record says where.
    let exe_key = format!("_modules/{}/order-svc", programs::build_id(&debug));
    assert_eq!(main["key"], exe_key.as_str(), "{main:#}");
    assert_eq!(
        libc["key"]
            .as_str()
            .map(|k| module_keys(&n.store).contains(&k.to_owned())),
        Some(true)
    );
    assert_eq!(
        std::fs::read(n.store.join(&exe_key)).unwrap(),
        std::fs::read(&debug).unwrap()
    );

    // `info`: the signal line, the top frames, the build-id.
    let (ok, out, err) = cli(&["info", "--dest", n.store.to_str().unwrap(), &key]);
    assert!(ok, "{err}");
    assert!(
        out.contains("signal:      SIGSEGV (SEGV_MAPERR) at address 0x0"),
        "{out}"
    );
    assert!(
        out.contains("crashed:     SIGSEGV in crash3 ← crash2 ← crash1"),
        "{out}"
    );
    assert!(
        out.contains(&format!("build-id {}", programs::build_id(&debug))),
        "{out}"
    );
    assert!(out.contains(" crash3+0x"), "{out}");
    eprintln!("{out}");

    // The Event names what crashed.
    let deadline = Instant::now() + WAIT;
    let message = loop {
        let events = api.events();
        if let Some(m) = events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .find(|m| m.contains(&key))
        {
            break m.to_owned();
        }
        assert!(Instant::now() < deadline, "no Event for {key}: {events:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("Event: {message}");
    let short = &programs::build_id(&debug)[..8];
    assert!(
        message.starts_with(&format!(
            "SIGSEGV in crash3 ← crash2 ← crash1 (order-svc, build-id {short}…)"
        )),
        "{message}"
    );

    // Stripped: module and offsets, inside the functions its twin names.
    let pid = crash_in(Some(&pod), &stripped, "segv");
    let (_, record) = stored_record(&n, pid);
    let report = &record["report"];
    for (i, name) in ["crash3", "crash2", "crash1"].into_iter().enumerate() {
        let frame = &report["frames"][i];
        assert_eq!(frame["module"], "order-svc-stripped", "{report:#}");
        assert!(frame["function"].is_null(), "{frame}");
        let offset = u64::from_str_radix(
            frame["offset"].as_str().unwrap().trim_start_matches("0x"),
            16,
        )
        .unwrap();
        // A return address may be the byte after its call, at a function's end.
        let range = programs::symbol_range(&twin, name);
        assert!(
            (range.start..=range.end).contains(&offset),
            "frame {i} at {offset:#x}, {name} is {range:x?}: {report:#}"
        );
    }
    let summary = report["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("SIGSEGV in order-svc-stripped+0x"),
        "{summary}"
    );
    assert_eq!(
        main_module(report)["build_id"],
        programs::build_id(&stripped).as_str()
    );
    assert!(agent.terminate().success());
}

/// A Rust program that panics with `panic=abort` (SIGABRT through libc's abort), and a Rust
/// program crashing three calls deep in a pid namespace: the report skips the panic and abort
/// machinery, and names the thread as its namespace numbers it.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_rust_panic_and_a_pid_namespaced_crash() {
    if !require_root("report") || !programs::require("report", &["rustc"]) {
        return;
    }
    let n = node("report-rust");
    let bin = TempDir::new("report-rust-bin");
    let order = programs::rust_program(&bin.path, "order");
    let agent = n.start("pipe", &[]);
    let pod = Pod::new(&n, "orders-2", 2);

    let pid = crash_in(Some(&pod), &order, "go");
    let (_, record) = stored_record(&n, pid);
    let report = &record["report"];
    assert_eq!(report["signal"]["name"], "SIGABRT", "{report:#}");
    assert_eq!(
        report["summary"], "SIGABRT in order::apply_discount ← order::parse_line ← order::main",
        "{report:#}"
    );
    let all = functions(report, 64);
    assert!(
        all.iter().any(|f| f == "abort"),
        "through libc's abort: {all:?}"
    );
    assert_eq!(
        main_module(report)["build_id"],
        programs::build_id(&order).as_str()
    );

    let mut c = Crasher::spawn_with("pidns", Some("deep"), &CrasherOpts::default());
    pod.cgroup.add(c.child_pid());
    let (pid, ns_pid) = (c.host_pid, c.ns_pid);
    c.release();
    assert!(!c.wait().success());
    let (_, record) = stored_record(&n, pid);
    let report = &record["report"];
    assert_ne!(pid, ns_pid);
    assert_eq!(report["thread"], ns_pid, "{report:#}");
    // Below the fault itself (the volatile write may be a frame of its own in a debug build).
    let names = functions(report, 8);
    let at = names
        .iter()
        .position(|f| f.ends_with("::crash_three"))
        .unwrap_or_else(|| panic!("{names:?}"));
    for (name, want) in names[at..]
        .iter()
        .zip(["crash_three", "crash_two", "crash_one"])
    {
        assert!(name.ends_with(&format!("::{want}")), "{names:?}");
    }
    assert!(agent.terminate().success());
}

/// Two crashes of the same program at once, then a third: each module is uploaded once (PUTs
/// counted on the S3 server), and every record names the keys.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn modules_are_uploaded_once_per_build_id() {
    if !require_root("report") || !programs::require("report", &["gcc", "readelf", "gdb"]) {
        return;
    }
    let Some(moto) = Moto::launch("modules_are_uploaded_once_per_build_id") else {
        return;
    };
    let n = node("report-s3");
    let bin = TempDir::new("report-s3-bin");
    let program = programs::c_program(&bin.path, "order-svc", &["-g"]);
    let endpoint = moto.endpoint();
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = n.start_with_env(
        "socket",
        &[
            "--dest",
            "s3://dumps/p",
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
        ],
        &env,
    );
    let mut crashers: Vec<Crasher> = (0..2)
        .map(|_| {
            Crasher::spawn_with(
                "segv",
                None,
                &CrasherOpts {
                    program: Some(&program),
                    ..CrasherOpts::default()
                },
            )
        })
        .collect();
    for c in &mut crashers {
        c.release();
    }
    for c in crashers {
        assert!(!c.wait().success());
    }
    let stored = |agent: &coredump_tests::Agent| {
        agent
            .logs()
            .into_iter()
            .filter(|l| l["message"] == "stored")
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + WAIT;
    while stored(&agent).len() < 2 {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    crash_in(None, &program, "segv");
    let deadline = Instant::now() + WAIT;
    while stored(&agent).len() < 3 {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let uploaded: Vec<String> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "module stored")
        .map(|l| l["key"].as_str().unwrap().to_owned())
        .collect();
    let exe_key = format!("p/_modules/{}/order-svc", programs::build_id(&program));
    assert!(uploaded.contains(&exe_key), "{uploaded:?}");
    assert!(
        uploaded.iter().any(|k| k.ends_with("/libc.so.6")),
        "{uploaded:?}"
    );
    let mut unique = uploaded.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), uploaded.len(), "uploaded twice: {uploaded:?}");
    for key in &uploaded {
        assert_eq!(moto.writes(&format!("/dumps/{key}")), 1, "{key}");
    }
    // `debug` from S3: the core and the modules come from the bucket, and gdb names the
    // functions.
    let dump = agent
        .logs()
        .into_iter()
        .find(|l| l["message"] == "stored")
        .and_then(|l| l["key"].as_str().map(str::to_owned))
        .unwrap();
    let sessions = TempDir::new("report-s3-debug");
    let out = Command::new(agent_path())
        .args([
            "debug",
            "--dest",
            "s3://dumps/p",
            "--s3-endpoint",
            &endpoint,
        ])
        .args([
            "--s3-path-style",
            "--dir",
            sessions.path.to_str().unwrap(),
            &dump,
        ])
        .args(["--", "-batch", "-ex", "bt"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("crash3") && text.contains("crash1"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&sessions.path).unwrap().count(), 0);
    assert!(agent.terminate().success());
}

/// Reports that cannot be whole say so, and the dump is stored all the same: a core whose
/// notes are damaged (a pipe helper corrupts NT_FILE), a binary deleted before its crash, a
/// library over --max-module-size.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn partial_reports_say_what_is_missing() {
    if !require_root("report") || !programs::require("report", &["gcc"]) {
        return;
    }
    let bin = TempDir::new("rb");
    let program = programs::c_program(&bin.path, "order-svc", &["-g"]);

    // Deleted before the crash, and libc over the size limit.
    let n = node("report-partial");
    let agent = n.start("socket", &["--max-module-size", "1MiB"]);
    let doomed = bin.path.join("doomed-svc");
    std::fs::copy(&program, &doomed).unwrap();
    let mut c = Crasher::spawn_with(
        "segv",
        None,
        &CrasherOpts {
            program: Some(&doomed),
            ..CrasherOpts::default()
        },
    );
    std::fs::remove_file(&doomed).unwrap();
    let pid = c.host_pid;
    c.release();
    assert!(!c.wait().success());
    let (key, record) = stored_record(&n, pid);
    assert!(n.store.join(&key).exists());
    let report = &record["report"];
    let main = main_module(report);
    assert_eq!(main["deleted"], true, "{report:#}");
    assert_eq!(main["path"], doomed.to_str().unwrap());
    // The kernel's own reference to the unlinked file still reads it.
    assert_eq!(main["file"], "map_files");
    assert_eq!(functions(report, 3), ["crash3", "crash2", "crash1"]);
    assert_eq!(report["complete"], false);
    let problems = report["problems"].to_string();
    assert!(problems.contains("libc.so.6: not stored: "), "{problems}");
    assert!(problems.contains("--max-module-size"), "{problems}");
    let libc = report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().unwrap().ends_with("/libc.so.6"))
        .unwrap();
    assert!(libc["key"].is_null(), "{libc:#}");
    assert!(libc["note"].as_str().unwrap().contains("--max-module-size"));
    assert!(
        main["key"].is_string(),
        "the small executable is stored: {main:#}"
    );
    assert!(agent.terminate().success());
    drop(n);

    // Damaged notes: file intake, through a pipe helper that corrupts NT_FILE.
    let n = node("report-damaged");
    std::fs::create_dir_all(&n.dumps).unwrap();
    let damager = programs::damager(&bin.path, "d");
    let pattern = format!("|{} {}/core.%P.%s", damager.display(), n.dumps.display());
    assert!(pattern.len() < 128, "{pattern}");
    std::fs::write("/proc/sys/kernel/core_pattern", &pattern).unwrap();
    let agent = n.start("file", &[]);
    let pid = crash_in(None, &program, "segv");
    let deadline = Instant::now() + WAIT;
    let (key, record) = loop {
        let records = store_records(&n.store);
        if let Some((k, r)) = records
            .iter()
            .find(|(k, r)| k.ends_with(".core.zst.json") && r["crash"]["host_pid"] == pid)
        {
            break (k.strip_suffix(".json").unwrap().to_owned(), r.clone());
        }
        assert!(
            Instant::now() < deadline,
            "{records:#?}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(n.store.join(&key).exists(), "the dump is stored");
    let report = &record["report"];
    assert_eq!(report["complete"], false);
    assert!(
        report["problems"]
            .to_string()
            .contains("NT_FILE is damaged"),
        "{report:#}"
    );
    assert_eq!(report["signal"]["name"], "SIGSEGV");
    assert!(
        report["pc"].is_string(),
        "the registers are still read: {report:#}"
    );
    assert_eq!(report["modules"].as_array().unwrap().len(), 0);
    assert!(agent.terminate().success());
}

/// `debug --print-command` gives a command that opens the stored core in gdb (or, with
/// `--debugger lldb`, lldb) with the stored executable and libraries: run from a fresh
/// directory after the binary is gone from disk, `bt` names the three functions.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn debug_opens_gdb_and_lldb_where_the_binary_exists_only_in_the_store() {
    if !require_root("report") || !programs::require("report", &["gcc", "gdb", "lldb"]) {
        return;
    }
    let n = node("report-debug");
    let agent = n.start("socket", &[]);
    let key = {
        let bin = TempDir::new("report-debug-bin");
        let program = programs::c_program(&bin.path, "order-svc", &["-g"]);
        let pid = crash_in(None, &program, "segv");
        stored_record(&n, pid).0
        // The program, and its directory, are gone from here on.
    };
    let store = n.store.to_str().unwrap();
    let fresh = TempDir::new("report-debug-fresh");
    let command = print_and_run(
        &["--dest", store, &key],
        "-batch -ex bt",
        &fresh.path,
        |i, f, l| l.starts_with(&format!("#{i} ")) && l.contains(f),
    );
    assert!(command.starts_with("gdb "), "{command}");
    // The files the command uses are kept until removed (the last word is the core).
    let core = Path::new(command.rsplit(' ').next().unwrap());
    let session = core.parent().unwrap();
    assert!(session.join("sysroot").is_dir());
    std::fs::remove_dir_all(session).unwrap();
    // Without --print-command the debugger runs, and the files go afterwards.
    let sessions = TempDir::new("report-debug-sessions");
    let dir = sessions.path.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "debug", "--dest", store, "--dir", dir, &key, "--", "-batch", "-ex", "bt",
    ]);
    assert!(ok, "{err}");
    eprintln!("debug {key} -- -batch -ex bt:\n{err}{out}");
    assert!(out.contains("crash3"), "{out}");
    assert_eq!(std::fs::read_dir(&sessions.path).unwrap().count(), 0);
    // lldb, from the same store: its frames are `frame #N: … order-svc`crash3 at …`.
    let args = ["--dest", store, "--debugger", "lldb", "--dir", dir, &key];
    let command = print_and_run(&args, "--batch -o bt", &fresh.path, |i, f, l| {
        l.contains(&format!("frame #{i}: ")) && l.contains(&format!("`{f}"))
    });
    assert!(command.starts_with("lldb "), "{command}");
    assert!(agent.terminate().success());
}

/// Runs `debug --print-command` with `args`, then the command it prints with `batch` after it,
/// from `cwd`: the first four frames must be the three functions and `main`, as `is_frame(i,
/// function, line)` recognises them in the debugger's output. Returns the command.
fn print_and_run(
    args: &[&str],
    batch: &str,
    cwd: &Path,
    is_frame: impl Fn(usize, &str, &str) -> bool,
) -> String {
    let (ok, command, err) = cli(&[&["debug", "--print-command"], args].concat());
    assert!(ok, "{err}");
    let command = command.trim().to_owned();
    eprintln!("debug --print-command {args:?}:\n{command}\n{err}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} {batch}"))
        .current_dir(cwd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    for (i, f) in ["crash3", "crash2", "crash1", "main"].iter().enumerate() {
        assert!(
            text.lines().any(|l| is_frame(i, f, l)),
            "frame {i} {f}: {text}"
        );
    }
    command
}

/// One HTTP GET over a plain TCP connection: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(c, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Two crashes of the same binary at the same place share one signature, a crash elsewhere
/// does not; the log line and `/metrics` carry it; `find --signature`, `find --build-id` and
/// `find --group-by signature` (2 groups, counts 2 and 1) read it back from the records.
#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn signatures_group_the_same_crash() {
    if !require_root("report") || !programs::require("report", &["gcc", "readelf"]) {
        return;
    }
    let n = node("report-sig");
    let bin = TempDir::new("report-sig-bin");
    let program = programs::c_program(&bin.path, "order-svc", &["-g"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = n.start("socket", &["--listen", &addr]);
    let (web1, web2) = (Pod::new(&n, "web-1", 5), Pod::new(&n, "web-2", 6));

    let mut stored = Vec::new();
    for (pod, mode) in [(&web1, "segv"), (&web2, "segv"), (&web2, "elsewhere")] {
        let pid = crash_in(Some(pod), &program, mode);
        stored.push(stored_record(&n, pid));
    }
    let sig = |i: usize| {
        stored[i].1["report"]["signature"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(sig(0), sig(1), "the same crash, in two pods");
    assert_ne!(sig(0), sig(2), "a crash elsewhere");
    assert_eq!(sig(0).len(), 16);
    assert_eq!(
        stored[2].1["report"]["summary"],
        "SIGSEGV in elsewhere ← other2 ← main"
    );

    // The log line of each stored dump names its signature.
    let logged: Vec<String> = agent
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "stored")
        .filter_map(|l| l["signature"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        logged.iter().filter(|s| **s == sig(0)).count(),
        2,
        "{logged:?}"
    );
    assert_eq!(
        logged.iter().filter(|s| **s == sig(2)).count(),
        1,
        "{logged:?}"
    );
    // /metrics counts crashes by signature.
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let line = |s: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("coredump_agent_crash_signatures_total{")
                    && l.contains(&format!("signature=\"{s}\""))
            })
            .unwrap_or_else(|| panic!("no metric for {s}: {metrics}"))
            .to_owned()
    };
    assert!(line(&sig(0)).ends_with(" 2"), "{}", line(&sig(0)));
    assert!(line(&sig(2)).ends_with(" 1"), "{}", line(&sig(2)));

    let store = n.store.to_str().unwrap();
    let keys = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // --signature: the full hash, or its first digits; with the pod narrowing.
    let (ok, out, err) = cli(&["find", "--dest", store, "--signature", &sig(0), "--json"]);
    assert!(ok, "{err}");
    let mut want = vec![stored[0].0.clone(), stored[1].0.clone()];
    want.sort();
    let mut got = keys(&out);
    got.sort();
    assert_eq!(got, want);
    let hit: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(hit["report"]["signature"], sig(0).as_str());
    assert_eq!(
        hit["report"]["summary"],
        "SIGSEGV in crash3 ← crash2 ← crash1"
    );
    let (ok, out, err) = cli(&[
        "find",
        "--dest",
        store,
        "--signature",
        &sig(0)[..8],
        "-n",
        "shop",
        "-p",
        "web-2",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(keys(&out), [stored[1].0.clone()]);
    // --build-id: the executable's (a prefix of it), or a library's; a build never seen.
    let build_id = programs::build_id(&program);
    let (ok, out, err) = cli(&[
        "find",
        "--dest",
        store,
        "--build-id",
        &build_id[..12],
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(keys(&out).len(), 3, "{out}");
    let libc = stored[0].1["report"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().unwrap().ends_with("/libc.so.6"))
        .and_then(|m| m["build_id"].as_str())
        .unwrap()
        .to_owned();
    let (ok, out, _) = cli(&["find", "--dest", store, "--build-id", &libc, "--json"]);
    assert!(ok);
    assert_eq!(keys(&out).len(), 3, "{out}");
    let (ok, _, err) = cli(&["find", "--dest", store, "--build-id", "0123456789abcdef"]);
    assert!(!ok);
    assert!(err.contains("no dumps match"), "{err}");
    // --group-by signature: each crash once, with its count, times and pods.
    let (ok, out, err) = cli(&["find", "--dest", store, "--group-by", "signature", "--json"]);
    assert!(ok, "{err}");
    let groups: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(groups.len(), 2, "{out}");
    let mut counts: Vec<(String, u64)> = groups
        .iter()
        .map(|g| {
            (
                g["signature"].as_str().unwrap().to_owned(),
                g["count"].as_u64().unwrap(),
            )
        })
        .collect();
    counts.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
    assert_eq!(counts, [(sig(0), 2), (sig(2), 1)]);
    let same = groups
        .iter()
        .find(|g| g["signature"] == sig(0).as_str())
        .unwrap();
    assert_eq!(
        same["pods"],
        serde_json::json!(["shop/web-1", "shop/web-2"])
    );
    assert_eq!(same["summary"], "SIGSEGV in crash3 ← crash2 ← crash1");
    let (ok, out, err) = cli(&["find", "--dest", store, "--group-by", "signature"]);
    assert!(ok, "{err}");
    eprintln!("{out}");
    assert!(out.starts_with("SIGNATURE"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(agent.terminate().success());
}
