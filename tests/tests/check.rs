//! `coredump-agent check`: the preflight an operator runs on a node, against the real kernel
//! (BTF, probe attach), a sysctl tree laid out like `/proc/sys` (so every case can be set up
//! without touching the host's), a local store, and the fake API server, whose RBAC the
//! tests take away piece by piece. Each case asserts the level, the detail and the fix of the
//! lines it is about, and the exit code.

use std::{collections::BTreeMap, path::Path, process::Command};

use coredump_agent::core_pattern;
use coredump_tests::{
    TempDir, agent_path,
    fake_kube::{self, FakeKube},
    require_root,
};
use serde_json::Value;

const NODE: &str = "ip-10-0-7-42.eu-west-1.compute.internal";

/// A node as `check` sees it: dump dir, state dir, kubelet log dirs, and a sysctl tree
/// holding the given values.
struct Node {
    tmp: TempDir,
}

impl Node {
    fn new(tag: &str, pattern_for_dumps: bool, suid_dumpable: &str) -> Self {
        let tmp = TempDir::new(tag);
        for dir in [
            "dumps",
            "state",
            "pods",
            "containers",
            "proc-sys/kernel",
            "proc-sys/fs",
        ] {
            std::fs::create_dir_all(tmp.join(dir)).unwrap();
        }
        let pattern = if pattern_for_dumps {
            core_pattern::agent_pattern(&tmp.join("dumps")).unwrap()
        } else {
            "core".to_owned()
        };
        for (file, value) in [
            ("kernel/core_pattern", pattern.as_str()),
            ("kernel/core_uses_pid", "0"),
            ("kernel/core_pipe_limit", "0"),
            ("fs/suid_dumpable", suid_dumpable),
        ] {
            std::fs::write(tmp.join("proc-sys").join(file), format!("{value}\n")).unwrap();
        }
        Self { tmp }
    }

    fn sysctls(&self) -> BTreeMap<String, String> {
        ["kernel", "fs"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.tmp.join("proc-sys").join(d)).unwrap())
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// Runs `check --json` with `extra` flags and the API server at `kube` (if any): the exit
    /// code and the lines by check name (several lines of one check in order).
    fn check(
        &self,
        extra: &[&str],
        kube: Option<&FakeKube>,
    ) -> (i32, BTreeMap<String, Vec<Value>>) {
        let path = |p: &str| self.tmp.join(p).to_str().unwrap().to_owned();
        let mut cmd = Command::new(agent_path());
        cmd.args([
            "check",
            "--json",
            "--node-name",
            NODE,
            "--min-free-disk",
            "0",
            "--intake",
            "file",
        ])
        .args(["--dump-dir", &path("dumps"), "--state-dir", &path("state")])
        .args(["--proc-sys", &path("proc-sys")])
        .args(["--pod-log-root", &path("pods")])
        .args(["--container-log-root", &path("containers")])
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST");
        match kube {
            Some(api) => {
                let config = self.tmp.join("kubeconfig");
                api.write_kubeconfig(&config);
                cmd.env("KUBECONFIG", config);
            }
            None => {
                cmd.env_remove("KUBECONFIG");
            }
        }
        let out = cmd.output().expect("run coredump-agent check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for l in stdout.lines() {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stdout}"));
            lines
                .entry(v["check"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}{stderr}");
        (out.status.code().expect("exited"), lines)
    }
}

/// The one line of `check`, asserting there is one.
fn one<'a>(lines: &'a BTreeMap<String, Vec<Value>>, check: &str) -> &'a Value {
    match lines.get(check).map(Vec::as_slice) {
        Some([line]) => line,
        other => panic!("one {check:?} line expected, got {other:?}"),
    }
}

fn level(line: &Value) -> &str {
    line["level"].as_str().unwrap()
}

fn detail(line: &Value) -> &str {
    line["detail"].as_str().unwrap()
}

/// The agent's own pod, on its node: what the API lists there once the DaemonSet runs.
fn agent_pod() -> Value {
    fake_kube::pod(
        "coredump-agent",
        "coredump-agent-7xk2p",
        "6f1c0a8e-2b4d-4e7a-9c3f-5d8b1e2a4c6f",
        NODE,
        "Burstable",
        &[("app.kubernetes.io/name", "coredump-agent")],
        &[fake_kube::Container {
            name: "agent",
            image: "ghcr.io/example/coredump-agent:0.1.0",
            status_image: "ghcr.io/example/coredump-agent:0.1.0",
            image_id: "ghcr.io/example/coredump-agent@sha256:9a1e4c7b2d5f8a0c3e6b9d2f5a8c1e4b7d0a3f6c9e2b5d8a1c4f7e0b3d6a9c2e",
            container_id: "containerd://4e2a9c7f1b3d5e8a0c2f4b6d8e1a3c5f7b9d0e2a4c6f8b1d3e5a7c9f0b2d4e6a",
        }],
    )
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_ready_node_passes_every_check_and_changes_nothing() {
    if !require_root("check") {
        return;
    }
    let node = Node::new("check-ok", false, "0");
    let api = FakeKube::start();
    api.apply(agent_pod());
    let before = node.sysctls();
    let (code, lines) = node.check(
        &[
            "--kube",
            "on",
            "--install-core-pattern",
            "--suid-dumpable",
            "2",
        ],
        Some(&api),
    );
    assert_eq!(code, 0, "{lines:#?}");
    for check in [
        "kernel BTF",
        "crash probe",
        "core_pattern",
        "suid_dumpable",
        "dump dir",
        "free space",
        "cgroup v2",
        "pod logs",
        "container logs",
        "kubernetes API",
        "RBAC",
        "store",
    ] {
        assert_eq!(level(one(&lines, check)), "OK", "{check}: {lines:#?}");
    }
    // What install would write, and that it could: opened for writing, nothing written.
    let writes: Vec<&str> = lines["sysctl write"].iter().map(detail).collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes[0].starts_with("kernel.core_pattern can be set to"),
        "{writes:?}"
    );
    assert!(
        writes[1].starts_with("fs.suid_dumpable can be set to \"2\""),
        "{writes:?}"
    );
    assert!(detail(one(&lines, "suid_dumpable")).contains("set by the agent"));
    assert_eq!(node.sysctls(), before, "check changed a sysctl");
    assert!(!lines.contains_key("sysctl backup"));

    // The API was asked for this node's pods only, one at most, and about the two other
    // permissions the agent uses.
    let lists: Vec<_> = api.requests().into_iter().filter(|r| !r.watch).collect();
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(
        lists[0].field_selector.as_deref(),
        Some(format!("spec.nodeName={NODE}").as_str())
    );
    assert_eq!(
        api.reviews(),
        [
            ("watch".to_owned(), "pods".to_owned()),
            ("create".to_owned(), "events".to_owned())
        ]
    );
    assert!(api.events().is_empty(), "check posts no Event");
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn missing_permissions_and_a_wrong_node_name_are_named_with_their_fix() {
    if !require_root("check") {
        return;
    }
    let node = Node::new("check-rbac", true, "0");
    let api = FakeKube::start();
    api.apply(agent_pod());
    api.deny("watch", "pods");
    api.deny("create", "events");

    // --kube on: a pod watch that is not allowed fails the check.
    let (code, lines) = node.check(&["--kube", "on"], Some(&api));
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(level(one(&lines, "kubernetes API")), "OK");
    let rbac = one(&lines, "RBAC");
    assert_eq!(level(rbac), "FAIL");
    assert_eq!(
        detail(rbac),
        "watch pods, create events denied: the pod cache cannot stay current"
    );
    assert!(rbac["fix"].as_str().unwrap().contains("rbac.yaml"));
    // The node itself is fine; suid_dumpable 0 is a warning with its fix.
    let suid = one(&lines, "suid_dumpable");
    assert_eq!(level(suid), "WARN");
    assert!(detail(suid).contains("write no dump"));
    assert!(suid["fix"].as_str().unwrap().contains("--suid-dumpable 2"));

    // Events only: a warning, since dumps are still stored and named.
    let api = FakeKube::start();
    api.apply(agent_pod());
    api.deny("create", "events");
    let (code, lines) = node.check(&["--kube", "on"], Some(&api));
    let rbac = one(&lines, "RBAC");
    assert_eq!(
        (level(rbac), detail(rbac)),
        (
            "WARN",
            "create events denied: no CoreDumpStored Events on crashed pods"
        )
    );
    assert_eq!(code, 0, "{lines:#?}");

    // Listing forbidden: the API line says so, and fails under --kube on.
    let api = FakeKube::start();
    api.deny("list", "pods");
    let (code, lines) = node.check(&["--kube", "on"], Some(&api));
    let kube = one(&lines, "kubernetes API");
    assert_eq!(level(kube), "FAIL");
    assert!(
        detail(kube).starts_with("listing pods is forbidden: pods is forbidden"),
        "{kube}"
    );
    assert_eq!(code, 1);

    // A node name the API does not know lists no pods: most likely NODE_NAME is wrong.
    let api = FakeKube::start();
    let mut elsewhere = agent_pod();
    elsewhere["spec"]["nodeName"] = "ip-10-0-9-9.eu-west-1.compute.internal".into();
    api.apply(elsewhere);
    let (_, lines) = node.check(&["--kube", "on"], Some(&api));
    let kube = one(&lines, "kubernetes API");
    assert_eq!(level(kube), "WARN");
    assert!(detail(kube).contains(NODE), "{kube}");
    assert!(kube["fix"].as_str().unwrap().contains("NODE_NAME"));
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn no_api_unreachable_api_and_kube_off_are_told_apart() {
    if !require_root("check") {
        return;
    }
    let node = Node::new("check-noapi", true, "2");
    // Not configured: a warning under auto (the kubelet files still name pods), a failure
    // under on.
    let (code, lines) = node.check(&[], None);
    let kube = one(&lines, "kubernetes API");
    assert_eq!(level(kube), "WARN");
    assert!(detail(kube).starts_with("not configured"), "{kube}");
    assert!(!lines.contains_key("RBAC"));
    assert_eq!(code, 0, "{lines:#?}");
    let (code, lines) = node.check(&["--kube", "on"], None);
    assert_eq!(level(one(&lines, "kubernetes API")), "FAIL");
    assert_eq!(code, 1);

    // Configured, but nothing answers.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = node.tmp.join("kubeconfig-closed");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{closed}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(agent_path())
        .args(["check", "--json", "--node-name", NODE, "--kube", "on"])
        .args(["--intake", "file"])
        .args(["--state-dir", node.tmp.join("state").to_str().unwrap()])
        .args(["--dump-dir", node.tmp.join("dumps").to_str().unwrap()])
        .args(["--proc-sys", node.tmp.join("proc-sys").to_str().unwrap()])
        .env("KUBECONFIG", &config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kube: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["check"] == "kubernetes API")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(level(&kube), "FAIL", "{kube}");
    assert!(detail(&kube).starts_with("unreachable"), "{kube}");
    assert_eq!(out.status.code(), Some(1));

    let (_, lines) = node.check(&["--kube", "off"], None);
    let kube = one(&lines, "kubernetes API");
    assert_eq!(level(kube), "OK");
    assert!(detail(kube).starts_with("off"));
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn leftover_backups_and_unwritable_sysctls_are_reported() {
    if !require_root("check") {
        return;
    }
    let node = Node::new("check-sysctl", true, "2");
    // A killed agent left its suid_dumpable backup; this configuration does not set it.
    std::fs::write(node.tmp.join("state/suid_dumpable.backup"), "0").unwrap();
    let (code, lines) = node.check(&["--kube", "off"], None);
    let backup = one(&lines, "sysctl backup");
    assert_eq!(level(backup), "WARN");
    assert!(detail(backup).starts_with("fs.suid_dumpable was set by a run that was killed"));
    assert!(
        backup["fix"]
            .as_str()
            .unwrap()
            .starts_with("sysctl -w fs.suid_dumpable=\"0\"")
    );
    assert_eq!(code, 0, "{lines:#?}");

    // A pipe limit asked for on a host without the file (or a read-only mount): FAIL.
    std::fs::remove_file(node.tmp.join("proc-sys/kernel/core_pipe_limit")).unwrap();
    let (code, lines) = node.check(&["--kube", "off", "--core-pipe-limit", "16"], None);
    let write = one(&lines, "sysctl write");
    assert_eq!(level(write), "FAIL");
    assert!(
        detail(write).starts_with("kernel.core_pipe_limit: "),
        "{write}"
    );
    assert!(write["fix"].as_str().unwrap().contains("--proc-sys"));
    assert_eq!(code, 1);
    assert!(
        Path::new(&node.tmp.join("state/suid_dumpable.backup")).exists(),
        "reported, never acted on"
    );
}
