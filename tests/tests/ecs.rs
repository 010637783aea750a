//! Amazon ECS end to end: real processes crash inside real cgroups laid out as the ECS agent
//! and Docker lay out a task's containers (cgroup v2 with the systemd driver,
//! `ecstasks.slice/ecstasks-<task-id>.slice/docker-<id>.scope`; the cgroupfs driver,
//! `ecs/<task-id>/<id>`), and the agent binary names their tasks through a fake ECS agent
//! introspection API on 127.0.0.1 (`coredump_tests::fake_ecs`), stores them under
//! `_ecs/<cluster>/<family>/` and finds them again (root; CI=true forbids skipping).
//!
//! Also, without root: `deploy/ecs/` passes botocore's validation of the ECS API's input
//! shapes and says what the agent needs, `health` answers as a Docker health check must, and
//! `check` reports the ECS agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use coredump_agent::store::layout;
use coredump_tests::{
    Agent, Crasher, CrasherOpts, TempCgroup, TempDir, agent_path,
    fake_ecs::{self, FakeEcs},
    fake_kube::{self, FakeKube},
    node, require_root, store_records, tools, wait_for_dump_record,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "ip-10-0-1-23.eu-west-1.compute.internal";
const CLUSTER: &str = "prod-eu";

/// Unique per test process and per task, so a run never meets a leftover of another.
fn hex_id(n: u16, len: usize) -> String {
    format!("{:08x}{n:04x}{}", std::process::id(), "ec5".repeat(22))[..len].to_owned()
}

/// How the ECS agent and Docker lay out a task's container cgroup.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// cgroup v2, Docker's systemd driver (AL2023, Bottlerocket aws-ecs-2+).
    Systemd,
    /// Docker's cgroupfs driver (AL2, Bottlerocket aws-ecs-1): `/ecs/<task-id>/<id>`.
    Cgroupfs,
}

/// A task of the test, with the container that will crash.
struct TestTask {
    family: String,
    revision: u32,
    task_id: String,
    container: String,
    docker_id: String,
    /// `None`: an ECS agent from before 2023, which lists no image.
    image: Option<String>,
    image_id: Option<String>,
    layout: Layout,
}

impl TestTask {
    fn new(n: u16, family: &str, container: &str, layout: Layout) -> Self {
        Self {
            family: family.into(),
            revision: 40 + u32::from(n),
            task_id: hex_id(n, 32),
            container: container.into(),
            docker_id: hex_id(n + 100, 64),
            image: Some(format!(
                "012345678910.dkr.ecr.eu-west-1.amazonaws.com/{family}:3.{n}"
            )),
            image_id: Some(format!("sha256:{}", hex_id(n + 200, 64))),
            layout,
        }
    }

    /// As an older ECS agent lists it: no image fields.
    fn without_image(mut self) -> Self {
        (self.image, self.image_id) = (None, None);
        self
    }

    /// The task as the introspection API lists it: the crashing container and a sidecar.
    fn json(&self) -> Value {
        let sidecar = hex_id(1000 + self.revision as u16, 64);
        fake_ecs::task(
            CLUSTER,
            &self.family,
            self.revision,
            &self.task_id,
            &[
                fake_ecs::Container {
                    name: &self.container,
                    docker_id: &self.docker_id,
                    image: self.image.as_deref(),
                    image_id: self.image_id.as_deref(),
                },
                fake_ecs::Container {
                    name: "log-router",
                    docker_id: &sidecar,
                    image: Some("public.ecr.aws/aws-observability/aws-for-fluent-bit:2.32"),
                    image_id: Some(
                        "sha256:3f0e1c9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
                    ),
                },
            ],
        )
    }

    /// The container's cgroup, relative to the cgroup2 root.
    fn cgroup(&self) -> String {
        match self.layout {
            Layout::Systemd => format!(
                "ecstasks.slice/ecstasks-{}.slice/docker-{}.scope",
                self.task_id, self.docker_id
            ),
            Layout::Cgroupfs => format!("ecs/{}/{}", self.task_id, self.docker_id),
        }
    }
}

/// One test's container instance: the shared test node, named as an EC2 instance is.
struct Node(node::Node);

impl std::ops::Deref for Node {
    type Target = node::Node;

    fn deref(&self) -> &node::Node {
        &self.0
    }
}

impl Node {
    /// With `file`, core_pattern writes into the dump directory; else the agent installs its
    /// own (socket or pipe).
    fn new(tag: &str, file: bool) -> Self {
        let pattern = if file {
            "{dumps}/core.%P.%I.%s.%t.%e"
        } else {
            "core"
        };
        Self(node::Node::new(tag, "dumps", pattern))
    }

    /// Starts `run` with `intake` and `extra` flags.
    fn start(&self, intake: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let args = [&["--node-name", NODE, "--max-dumps-per-hour", "0"], extra].concat();
        self.0.start_with_env(intake, &args, env)
    }

    /// Runs a lookup subcommand (`find`, `info`) against the store.
    fn lookup(&self, args: &[&str]) -> Output {
        let store = self.store.display().to_string();
        let mut cmd = Command::new(agent_path());
        cmd.arg(args[0]).args(["--dest", &store]).args(&args[1..]);
        cmd.output().expect("running the agent")
    }

    /// `find … --json`: the hits.
    fn find(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["find"];
        args.extend(filters);
        args.push("--json");
        let out = self.lookup(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("find --json prints JSON lines"))
            .collect()
    }
}

/// Crashes a dumping crasher inside `cgroup`; returns its host pid.
fn crash_in(cgroup: &TempCgroup, mode: &str) -> u32 {
    let c = Crasher::spawn_with(
        mode,
        None,
        &CrasherOpts {
            core_limit: u64::MAX,
            ..Default::default()
        },
    );
    // Moved before it crashes: the kernel reports the cgroup of the crashing task.
    cgroup.add(c.host_pid);
    let pid = c.host_pid;
    assert!(!c.go().success(), "{mode} should have crashed");
    pid
}

/// Waits for the stored record of the crash of `host_pid`; returns its key and record.
fn stored_record(node: &Node, host_pid: u32) -> (String, Value) {
    wait_for_dump_record(&node.store, WAIT, host_pid)
}

/// Asserts the record names `task` completely, from the introspection API.
fn assert_named(key: &str, record: &Value, task: &TestTask) {
    let id = &record["identity"];
    let ctx = format!("{key}: {record:#}");
    assert_eq!(record["attestation"]["attested"], true, "{ctx}");
    assert_eq!(id["workload"], "ecs", "{ctx}");
    assert_eq!(id["ecs_cluster"], CLUSTER, "{ctx}");
    assert_eq!(id["task_id"], task.task_id.as_str(), "{ctx}");
    assert_eq!(
        id["task_arn"],
        fake_ecs::task_arn(CLUSTER, &task.task_id),
        "{ctx}"
    );
    assert_eq!(id["task_family"], task.family.as_str(), "{ctx}");
    assert_eq!(id["task_revision"], task.revision.to_string(), "{ctx}");
    assert_eq!(id["container"], task.container.as_str(), "{ctx}");
    assert_eq!(id["container_id"], task.docker_id.as_str(), "{ctx}");
    assert_eq!(id["runtime"], "docker", "{ctx}");
    assert_eq!(id["cgroup_path"], format!("/{}", task.cgroup()), "{ctx}");
    assert_eq!(id["source"], "ecs-introspection", "{ctx}");
    assert_eq!(id["image"].as_str(), task.image.as_deref(), "{ctx}");
    assert_eq!(id["image_id"].as_str(), task.image_id.as_deref(), "{ctx}");
    assert!(id["missing"].is_null(), "{ctx}");
    for pod_field in ["namespace", "pod", "pod_uid", "systemd_unit"] {
        assert!(id[pod_field].is_null(), "{pod_field}: {ctx}");
    }
    assert!(
        key.starts_with(&format!("_ecs/{CLUSTER}/{}/", task.family)),
        "stored under the task's family: {ctx}"
    );
    assert!(
        key.contains(&format!("_{}_crasher_", task.container)),
        "{ctx}"
    );
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn tasks_are_named_in_both_layouts_found_by_family_and_pods_still_named() {
    if !require_root("ecs") {
        return;
    }
    let node = Node::new("ecs-named", false);
    let api = FakeEcs::start(CLUSTER);
    let checkout = TestTask::new(1, "checkout-api", "app", Layout::Systemd);
    let ledger = TestTask::new(2, "ledger", "writer", Layout::Cgroupfs).without_image();
    api.add(checkout.json());
    api.add(ledger.json());
    // A Kubernetes pod on the same agent: the sources are tried in turn, and a pod stays a
    // pod's.
    let kube = FakeKube::start();
    let pod_uid = format!("{}-1111-4222-8333-{}", hex_id(3, 8), hex_id(4, 12));
    let pod_cid = hex_id(5, 64);
    kube.apply(fake_kube::pod(
        "shop",
        "web-7d9f8c6b5-x2x4p",
        &pod_uid,
        NODE,
        "Burstable",
        &[("app", "web")],
        &[fake_kube::Container {
            name: "web",
            image: "registry.example.com/shop/web:1.0",
            status_image: "registry.example.com/shop/web:1.0",
            image_id: "registry.example.com/shop/web@sha256:0123",
            container_id: &format!("containerd://{pod_cid}"),
        }],
    ));
    let kubeconfig = node.tmp.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);

    let url = api.url();
    let kubeconfig = kubeconfig.display().to_string();
    let mut agent = node.start(
        "auto",
        &["--kube", "on", "--ecs", "auto", "--ecs-agent-uri", &url],
        &[("KUBECONFIG", &kubeconfig)],
    );
    agent.wait_for_log("ECS task cache synced", WAIT);
    agent.wait_for_log("pod cache synced", WAIT);
    let sources = agent.wait_for_log("workload sources", WAIT);
    assert_eq!(sources["sources"], r#"["kubernetes", "ecs"]"#, "{sources}");

    let mut keys = Vec::new();
    for (task, mode) in [(&checkout, "segv"), (&ledger, "abort")] {
        let cgroup = TempCgroup::create(&task.cgroup());
        let pid = crash_in(&cgroup, mode);
        let (key, record) = stored_record(&node, pid);
        assert_named(&key, &record, task);
        keys.push(key);
    }
    // Both were in the task list: naming them asked the API nothing.
    let asked = api.requests();
    assert!(
        asked
            .iter()
            .all(|r| r == "/v1/metadata" || r == "/v1/tasks"),
        "{asked:#?}"
    );

    // A task that started after the last listing and crashed at once: one request, for its
    // container.
    let fresh = TestTask::new(6, "checkout-api", "migrate", Layout::Systemd);
    api.add(fresh.json());
    let cgroup = TempCgroup::create(&fresh.cgroup());
    let pid = crash_in(&cgroup, "segv");
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &fresh);
    let asked = api.requests();
    assert!(
        asked.contains(&format!("/v1/tasks?dockerid={}", fresh.docker_id)),
        "{asked:#?}"
    );

    // The pod is still named as a pod.
    let pod_cgroup = TempCgroup::create(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{pod_cid}.scope",
        pod_uid.replace('-', "_")
    ));
    let pid = crash_in(&pod_cgroup, "segv");
    let (key, record) = stored_record(&node, pid);
    let id = &record["identity"];
    assert_eq!(id["workload"], "kubernetes", "{record:#}");
    assert_eq!(id["namespace"], "shop", "{record:#}");
    assert_eq!(id["pod"], "web-7d9f8c6b5-x2x4p", "{record:#}");
    assert_eq!(id["pod_uid"], pod_uid.as_str(), "{record:#}");
    assert_eq!(id["container"], "web", "{record:#}");
    assert_eq!(id["source"], "kubernetes-api", "{record:#}");
    assert!(id["task_id"].is_null(), "{record:#}");
    assert!(key.starts_with("shop/web-7d9f8c6b5-x2x4p/"), "{key}");
    // Its container was never asked about: the pod's source named it first.
    assert!(
        !api.requests().iter().any(|r| r.contains(&pod_cid)),
        "{:#?}",
        api.requests()
    );
    agent.terminate();

    // find, by cluster and family (narrowed to their prefix), by task id, by container.
    let hits = node.find(&["--ecs-cluster", CLUSTER, "--task-family", "checkout-api"]);
    let found: BTreeSet<&str> = hits.iter().filter_map(|h| h["key"].as_str()).collect();
    let checkout_key = keys[0].strip_suffix(".json").unwrap();
    let fresh_key = key_of(&node, &fresh);
    let fresh_key = fresh_key.strip_suffix(".json").unwrap();
    assert_eq!(
        found,
        BTreeSet::from([checkout_key, fresh_key]),
        "{hits:#?}"
    );
    let hit = hits.iter().find(|h| h["key"] == checkout_key).unwrap();
    let tags = &hit["tags"];
    assert_eq!(tags[layout::tag::ECS_CLUSTER], CLUSTER, "{hit:#}");
    assert_eq!(tags[layout::tag::TASK_FAMILY], "checkout-api", "{hit:#}");
    assert_eq!(
        tags[layout::tag::TASK_ID],
        checkout.task_id.as_str(),
        "{hit:#}"
    );
    assert_eq!(tags[layout::tag::CONTAINER], "app", "{hit:#}");
    assert_eq!(tags[layout::tag::NODE], NODE, "{hit:#}");
    assert!(tags.get(layout::tag::NAMESPACE).is_none(), "{hit:#}");

    let hits = node.find(&["--task-id", &ledger.task_id]);
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert!(
        hits[0]["key"]
            .as_str()
            .unwrap()
            .starts_with("_ecs/prod-eu/ledger/")
    );
    let hits = node.find(&["--task-family", "checkout-api", "--container", "migrate"]);
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert!(node.find(&["--task-family", "nope"]).is_empty());

    // The table names the task.
    let out = node.lookup(&["find", "--ecs-cluster", CLUSTER]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TIME "), "{table}");
    assert!(table.contains("WORKLOAD"), "{table}");
    assert!(table.contains("prod-eu/ledger"), "{table}");

    // info shows the task, and the metadata has its ARN, revision and image digest.
    let out = node.lookup(&["info", checkout_key]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        format!("ecs cluster: {CLUSTER}"),
        format!("task:        checkout-api:{}", checkout.revision),
        format!("task id:     {}", checkout.task_id),
        "container:   app".to_owned(),
    ] {
        assert!(text.contains(&line), "{line:?} in:\n{text}");
    }
    let out = node.lookup(&["info", checkout_key, "--json"]);
    let info: Value = serde_json::from_slice(&out.stdout).expect("info --json");
    let metadata = &info["metadata"];
    assert_eq!(
        metadata["task-arn"],
        fake_ecs::task_arn(CLUSTER, &checkout.task_id),
        "{info:#}"
    );
    assert_eq!(
        metadata["task-revision"],
        checkout.revision.to_string(),
        "{info:#}"
    );
    assert_eq!(
        metadata["image-digest"].as_str(),
        checkout.image_id.as_deref(),
        "{info:#}"
    );
    assert_eq!(
        metadata["image"].as_str(),
        checkout.image.as_deref(),
        "{info:#}"
    );
    println!("ECS crash stored:\n{text}");
}

/// The dump key the store has for `task`'s crash.
fn key_of(node: &Node, task: &TestTask) -> String {
    store_records(&node.store)
        .into_iter()
        .find(|(k, r)| !k.contains(".crash.") && r["identity"]["task_id"] == task.task_id.as_str())
        .map(|(k, _)| k)
        .unwrap_or_else(|| panic!("no record of task {}", task.task_id))
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_task_that_stops_and_disappears_right_after_its_crash_is_still_named() {
    if !require_root("ecs") {
        return;
    }
    let node = Node::new("ecs-stopped", true);
    let api = FakeEcs::start(CLUSTER);
    let task = TestTask::new(11, "nightly-report", "report", Layout::Systemd);
    api.add(task.json());
    let url = api.url();
    let mut agent = node.start(
        "file",
        &[
            "--kube",
            "off",
            "--ecs",
            "on",
            "--ecs-agent-uri",
            &url,
            "--ecs-refresh",
            "1s",
        ],
        &[],
    );
    agent.wait_for_log("ECS task cache synced", WAIT);
    let cgroup = TempCgroup::create(&task.cgroup());

    // The essential container crashed: the task stops, and the ECS agent (its cleanup set
    // short) forgets it at once.
    let pid = crash_in(&cgroup, "segv");
    api.stop(&task.task_id);
    assert!(api.remove(&task.task_id));
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &task);

    // The agent has since read a task list without it, and a crash in its cgroup (a process
    // still there) is named from what it saw, without asking.
    let listed = api.requests().len();
    api.wait_for_requests(WAIT, |r| {
        r.len() > listed + 1 && r.last().is_some_and(|l| l == "/v1/tasks")
    });
    let pid = crash_in(&cgroup, "abort");
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &task);
    assert!(
        !api.requests().iter().any(|r| r.contains("dockerid")),
        "{:#?}",
        api.requests()
    );
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn the_introspection_api_down_names_the_task_from_its_cgroup() {
    if !require_root("ecs") {
        return;
    }
    let node = Node::new("ecs-down", true);
    // Nobody listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut agent = node.start(
        "file",
        &["--kube", "off", "--ecs", "on", "--ecs-agent-uri", &url],
        &[],
    );
    agent.wait_for_log("does not answer", WAIT);
    for (n, layout) in [(21, Layout::Systemd), (22, Layout::Cgroupfs)] {
        let task = TestTask::new(n, "api", "app", layout);
        let cgroup = TempCgroup::create(&task.cgroup());
        let pid = crash_in(&cgroup, "segv");
        let (key, record) = stored_record(&node, pid);
        let id = &record["identity"];
        let ctx = format!("{key}: {record:#}");
        assert_eq!(record["attestation"]["attested"], true, "{ctx}");
        assert!(record["dump"]["size"].as_u64().unwrap() > 0, "{ctx}");
        assert_eq!(id["workload"], "ecs", "{ctx}");
        assert_eq!(id["task_id"], task.task_id.as_str(), "{ctx}");
        assert_eq!(id["container_id"], task.docker_id.as_str(), "{ctx}");
        assert_eq!(id["runtime"], "docker", "{ctx}");
        for unknown in [
            "task_family",
            "task_arn",
            "container",
            "ecs_cluster",
            "source",
        ] {
            assert!(id[unknown].is_null(), "{unknown}: {ctx}");
        }
        let missing = id["missing"].as_str().unwrap_or_default();
        assert!(
            missing.contains(&url) && missing.contains("family"),
            "the record says what is missing, and why: {ctx}"
        );
        assert!(
            key.starts_with(&format!("{}/{}/", layout::ECS_TASK_SEGMENT, task.task_id)),
            "{ctx}"
        );
        let hits = node.find(&["--task-id", &task.task_id]);
        assert_eq!(hits.len(), 1, "{hits:#?}");
    }
    agent.terminate();
}

// ---- deploy/ecs, health and check: no root needed -------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

fn deploy(file: &str) -> PathBuf {
    root().join("deploy/ecs").join(file)
}

fn json(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy(file)).unwrap()).unwrap()
}

/// Runs `xtask/tools/validate_ecs.py` on (operation, file) pairs with the pinned botocore.
fn validate(pairs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(tools::program("python"));
    cmd.arg(root().join("xtask/tools/validate_ecs.py"));
    for (op, file) in pairs {
        cmd.arg(op).arg(file);
    }
    cmd.output().expect("running validate_ecs.py")
}

#[test]
fn task_definition_and_service_pass_botocore_validation_and_a_broken_copy_fails() {
    if !tools::require(
        "task_definition_and_service_pass_botocore_validation_and_a_broken_copy_fails",
        &["botocore"],
    ) {
        return;
    }
    let (taskdef, service) = (deploy("task-definition.json"), deploy("service.json"));
    let bottlerocket = deploy("task-definition-bottlerocket.json");
    let out = validate(&[
        ("RegisterTaskDefinition", &taskdef),
        ("RegisterTaskDefinition", &bottlerocket),
        ("RegisterTaskDefinition", &deploy("crashme.json")),
        ("CreateService", &service),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("botocore {}", tools::pinned("botocore"))),
        "{text}"
    );
    assert!(text.contains("task-definition.json: valid"), "{text}");
    assert!(
        text.contains("task-definition-bottlerocket.json: valid"),
        "{text}"
    );
    assert!(text.contains("crashme.json: valid"), "{text}");
    assert!(text.contains("service.json: valid"), "{text}");

    // A broken copy of each: a misspelt key, a wrong type, a missing required member, a value
    // outside an enum (which botocore's own validator does not check).
    let tmp = TempDir::new("ecs-broken");
    let mut bad = json("task-definition.json");
    let agent = &mut bad["containerDefinitions"][0];
    agent["privilegd"] = true.into();
    agent["memory"] = "256".into();
    agent["healthCheck"]
        .as_object_mut()
        .unwrap()
        .remove("command");
    bad["pidMode"] = "hostt".into();
    let bad_taskdef = tmp.join("task-definition.json");
    std::fs::write(&bad_taskdef, bad.to_string()).unwrap();
    let mut bad = json("service.json");
    bad["schedulingStrategy"] = "DAEMONSET".into();
    bad.as_object_mut().unwrap().remove("serviceName");
    let bad_service = tmp.join("service.json");
    std::fs::write(&bad_service, bad.to_string()).unwrap();
    let out = validate(&[
        ("RegisterTaskDefinition", &bad_taskdef),
        ("CreateService", &bad_service),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for complaint in [
        "Unknown parameter in containerDefinitions[0]: \"privilegd\"",
        "Invalid type for parameter containerDefinitions[0].memory",
        "Missing required parameter in containerDefinitions[0].healthCheck: \"command\"",
        "Invalid value for parameter pidMode: 'hostt'",
        "Missing required parameter in input: \"serviceName\"",
        "Invalid value for parameter schedulingStrategy: 'DAEMONSET'",
    ] {
        assert!(text.contains(complaint), "{complaint:?} in:\n{text}");
    }
}

/// The `COREDUMP_*` variables `coredump-agent run` reads.
fn run_variables() -> BTreeSet<String> {
    let help = Command::new(agent_path())
        .args(["run", "--help"])
        .output()
        .expect("running the agent");
    // clap wraps long lines, possibly between `[env:` and the name: undo that first.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    help.split("[env: ")
        .skip(1)
        .filter_map(|s| s.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn task_definition_has_what_the_agent_needs_and_no_more() {
    let td = json("task-definition.json");
    assert_eq!(
        td["networkMode"], "host",
        "the introspection API is on the host's loopback"
    );
    assert_eq!(
        td["pidMode"], "host",
        "the probe reports host pids; /proc of every task"
    );
    assert_eq!(td["requiresCompatibilities"], serde_json::json!(["EC2"]));
    let defs = td["containerDefinitions"].as_array().unwrap();
    assert_eq!(defs.len(), 1);
    let agent = &defs[0];
    assert_eq!(agent["essential"], true);
    assert_eq!(agent["privileged"], false);
    assert_eq!(agent["readonlyRootFilesystem"], true);
    assert_eq!(agent["command"], serde_json::json!(["run"]));

    // Named capabilities, the DaemonSet base's, nothing else.
    let caps = &agent["linuxParameters"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "SYS_RESOURCE", "DAC_READ_SEARCH", "LEASE"])
    );

    // Every variable is one the agent reads.
    let env: Vec<(String, String)> = agent["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let known = run_variables();
    assert!(known.contains("COREDUMP_ECS_AGENT_URI"), "{known:?}");
    for (name, _) in &env {
        assert!(
            known.contains(name),
            "{name} is not a flag of `coredump-agent run`"
        );
    }
    let var = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} is set"))
    };
    assert_eq!(var("COREDUMP_ECS"), "on");
    assert_eq!(var("COREDUMP_KUBE"), "off");
    assert!(
        var("COREDUMP_COMPRESS_THREADS").parse::<u32>().unwrap() >= 1,
        "ECS gives the container no CPU limit zstd could see"
    );
    assert!(
        var("COREDUMP_LISTEN").starts_with("127.0.0.1:"),
        "not on the host's network"
    );

    // Each host path the agent uses is mounted where its variable says, at the host's path
    // where the kernel or the pipe helper uses it too.
    let volumes: Vec<(String, String)> = td["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["host"]["sourcePath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mounts: Vec<(String, String, bool)> = agent["mountPoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let source = m["sourceVolume"].as_str().unwrap();
            let host = volumes
                .iter()
                .find(|(n, _)| n == source)
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("mount of volume {source}, which is not defined"));
            (
                host,
                m["containerPath"].as_str().unwrap().to_owned(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let mounted = |container_path: &str| {
        mounts
            .iter()
            .find(|(_, c, _)| c == container_path)
            .unwrap_or_else(|| panic!("{container_path} is mounted"))
    };
    for same in [
        "COREDUMP_STATE_DIR",
        "COREDUMP_RUN_DIR",
        "COREDUMP_RECEIVE_DIR",
    ] {
        let (host, _, ro) = mounted(var(same));
        assert_eq!((host.as_str(), *ro), (var(same), false), "{same}");
    }
    let proc_sys = var("COREDUMP_PROC_SYS");
    for file in [
        "kernel/core_pattern",
        "kernel/core_pipe_limit",
        "fs/suid_dumpable",
    ] {
        let (host, _, ro) = mounted(&format!("{proc_sys}/{file}"));
        assert_eq!(
            (host.as_str(), *ro),
            (format!("/proc/sys/{file}").as_str(), false)
        );
    }
    let (host, _, ro) = mounted(var("COREDUMP_CGROUP_ROOT"));
    assert_eq!((host.as_str(), *ro), ("/sys/fs/cgroup", true));
    assert_eq!(mounts.len(), volumes.len(), "no volume unused");

    // The health check is the agent's own subcommand, on COREDUMP_LISTEN.
    let check = &agent["healthCheck"];
    assert_eq!(
        check["command"],
        serde_json::json!(["CMD", "/usr/local/bin/coredump-agent", "health"])
    );
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("/usr/local/bin/coredump-agent"),
        "the image has it there"
    );
    // The shutdown grace fits in the stop timeout (ECS then sends SIGKILL).
    let grace: u64 = var("COREDUMP_SHUTDOWN_GRACE")
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("COREDUMP_SHUTDOWN_GRACE in seconds");
    assert!(grace + 5 < agent["stopTimeout"].as_u64().unwrap());

    // The service runs one task per instance, of this family.
    let service = json("service.json");
    assert_eq!(service["schedulingStrategy"], "DAEMON");
    assert_eq!(service["taskDefinition"], td["family"]);
    assert!(service.get("desiredCount").is_none(), "DAEMON takes none");
    assert_eq!(
        service["deploymentConfiguration"]["minimumHealthyPercent"],
        0
    );
}

/// The environment of a task definition's one container, by name.
fn environment(td: &Value) -> BTreeMap<String, String> {
    td["containerDefinitions"][0]["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_bottlerocket_task_definition_is_the_base_with_socket_or_the_nodes_file_pattern() {
    let base = json("task-definition.json");
    let br = json("task-definition-bottlerocket.json");
    // What Bottlerocket needs, as overlays/bottlerocket has it for Kubernetes: socket intake
    // where the kernel has it (6.18), else the node's own file pattern, read and never
    // written (SELinux forbids a pipe helper); the node sets fs.suid_dumpable; the agent
    // runs as control_t, to read other containers' dumps and enter the host's mount
    // namespace.
    let (mut env, mut br_env) = (environment(&base), environment(&br));
    assert_eq!(
        br_env.remove("COREDUMP_INTAKE").as_deref(),
        Some("socket,file")
    );
    assert_eq!(
        br_env.remove("COREDUMP_INSTALL_CORE_PATTERN").as_deref(),
        Some("false")
    );
    let settings = std::fs::read_to_string(deploy("bottlerocket-settings.toml")).unwrap();
    let dump_dir = br_env.remove("COREDUMP_DUMP_DIR").unwrap();
    assert!(
        settings.contains(&format!(
            "\"kernel.core_pattern\" = \"{dump_dir}/core.%P.%I."
        )),
        "the node's pattern writes into the agent's dump directory"
    );
    assert!(
        dump_dir.starts_with(&format!("{}/", env["COREDUMP_STATE_DIR"])),
        "inside the state directory's mount, at the host's path"
    );
    assert!(settings.contains("\"fs.suid_dumpable\" = \"2\""));
    env.remove("COREDUMP_INTAKE");
    env.remove("COREDUMP_SUID_DUMPABLE");
    assert_eq!(br_env, env, "nothing else differs");

    let (agent, br_agent) = (
        &base["containerDefinitions"][0],
        &br["containerDefinitions"][0],
    );
    let caps = |c: &Value| -> BTreeSet<String> {
        c["linuxParameters"]["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    };
    let added: BTreeSet<String> = caps(br_agent).difference(&caps(agent)).cloned().collect();
    assert_eq!(
        added,
        ["SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"]
            .map(String::from)
            .into(),
        "socket intake's, as components/socket-intake"
    );
    assert!(caps(agent).is_subset(&caps(br_agent)));
    assert_eq!(
        br_agent["dockerSecurityOptions"],
        serde_json::json!(["label:type:control_t", "label:level:s0"])
    );
    let strip = |td: &Value| {
        let mut td = td.clone();
        let c = &mut td["containerDefinitions"][0];
        for key in ["environment", "dockerSecurityOptions"] {
            c.as_object_mut().unwrap().remove(key);
        }
        c["linuxParameters"]["capabilities"]["add"] = Value::Null;
        td
    };
    assert_eq!(strip(&br), strip(&base), "the rest is the base's");
}

#[test]
fn docs_show_the_ecs_layout_and_deployment() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let layout_section = readme
        .split("## Where dumps go: the object layout (a contract)")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has the object layout section");
    for segment in [layout::ECS_SEGMENT, layout::ECS_TASK_SEGMENT] {
        assert!(
            layout_section.contains(&format!("<prefix>/{segment}/")),
            "README's object layout lists <prefix>/{segment}/"
        );
    }
    for tag in [
        layout::tag::ECS_CLUSTER,
        layout::tag::TASK_FAMILY,
        layout::tag::TASK_ID,
    ] {
        assert!(layout_section.contains(&format!("`{tag}`")), "{tag}");
    }
    let guide = std::fs::read_to_string(root().join("docs/operator.md")).unwrap();
    let ecs = guide
        .split("\n## Amazon ECS")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the operator guide has an Amazon ECS section");
    for needle in [
        "deploy/ecs/task-definition.json",
        "deploy/ecs/service.json",
        "deploy/ecs/ecs.config",
        "deploy/ecs/bottlerocket-settings.toml",
        "deploy/ecs/task-definition-bottlerocket.json",
        "deploy/ecs/crashme.json",
        "COREDUMP_ECS",
        "register-task-definition",
        "create-service",
        "coredump-agent check",
        "find --ecs-cluster",
        "--task-family",
        "delete-service",
        "restore",
        "SYS_ADMIN",
    ] {
        assert!(ecs.contains(needle), "the ECS section mentions {needle}");
    }
}

/// Serves one connection with `answer`.
fn answer_once(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(answer.as_bytes());
    });
    format!("http://{addr}/healthz")
}

#[test]
fn health_exits_0_when_healthy_and_1_otherwise() {
    let health = |url: &str| {
        Command::new(agent_path())
            .args(["health", "--url", url, "--timeout", "5s"])
            .output()
            .expect("running the agent")
    };
    let ok = health(&answer_once(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let sick = health(&answer_once(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\nConnection: close\r\n\r\nstarting",
    ));
    assert_eq!(sick.status.code(), Some(1), "{sick:?}");
    assert!(String::from_utf8_lossy(&sick.stderr).contains("503"));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nobody listens, and COREDUMP_LISTEN names the address (as in the task definition).
    let down = Command::new(agent_path())
        .arg("health")
        .env("COREDUMP_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains(&format!("127.0.0.1:{port}")),
        "{down:?}"
    );
}

/// `check --json` with `extra` flags: its "ECS agent" line.
fn check_ecs(tmp: &TempDir, extra: &[&str]) -> Value {
    let out = Command::new(agent_path())
        .args(["check", "--json", "--kube", "off", "--state-dir"])
        .arg(tmp.join("state"))
        .arg("--dest")
        .arg(tmp.join("store"))
        .args(extra)
        .output()
        .expect("running check");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["check"] == "ECS agent")
        .unwrap_or_else(|| panic!("no ECS line: {out:?}"))
}

#[test]
fn check_reports_the_ecs_agent() {
    let tmp = TempDir::new("ecs-check");
    let api = FakeEcs::start(CLUSTER);
    api.add(TestTask::new(31, "web", "app", Layout::Systemd).json());
    api.add(TestTask::new(32, "worker", "app", Layout::Systemd).json());
    let url = api.url();
    let line = check_ecs(&tmp, &["--ecs", "auto", "--ecs-agent-uri", &url]);
    assert_eq!(line["level"], "OK", "{line}");
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("cluster {CLUSTER}")) && detail.contains("2 tasks known"),
        "{line}"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let line = check_ecs(&tmp, &["--ecs", "auto", "--ecs-agent-uri", &down]);
    assert_eq!(line["level"], "OK", "not an ECS instance is fine: {line}");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("not an ECS container instance")
    );
    let line = check_ecs(&tmp, &["--ecs", "on", "--ecs-agent-uri", &down]);
    assert_eq!(line["level"], "FAIL", "{line}");
    assert!(
        line["fix"].as_str().unwrap().contains("networkMode host"),
        "{line}"
    );
    let line = check_ecs(&tmp, &["--ecs", "off"]);
    assert_eq!(line["level"], "OK", "{line}");
}
