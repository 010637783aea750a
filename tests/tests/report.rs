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
    node::{Node, Pod, node, record_of},
    programs, require_root, store_records,
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

/// The stored record of the dump of `pid`, once stored.
fn stored_record(n: &Node, pid: u32) -> (String, Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = store_records(&n.store);
        let found = records.iter().any(|(k, r)| {
            k.ends_with(".core.zst.json")
                && (r["crash"]["host_pid"] == pid || r["dump"]["fields"]["host_pid"] == pid)
        });
        if found {
            let (key, record) = record_of(&records, pid);
            return (key.strip_suffix(".json").unwrap().to_owned(), record);
        }
        assert!(
            Instant::now() < deadline,
            "no dump of {pid} stored: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
