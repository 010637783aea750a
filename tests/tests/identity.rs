//! Pod identity end to end: real processes crash inside real cgroups laid out as the kubelet
//! and each container runtime lay them out; the agent binary names their pods from the
//! kernel's cgroup id, through a (fake, local) Kubernetes API and real kubelet-style log
//! directories, and the local store's records must carry the right names (root; CI=true
//! forbids skipping).
//!
//! Every test sets core_pattern through `CorePatternGuard`, which holds the machine-wide test
//! lock (cgroups and core_pattern are global) and restores the pattern even when a test fails;
//! `TempCgroup` removes the cgroups.

use std::time::Duration;

use coredump_tests::{
    Agent, Crasher, CrasherOpts, TempCgroup,
    fake_kube::{self, FakeKube},
    node::{self, NODE, PodNames},
    require_root, wait_for_dump_record,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// How a container runtime and cgroup driver lay out a container's cgroup.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// containerd, systemd driver: `cri-containerd-<id>.scope`.
    ContainerdSystemd,
    /// CRI-O, systemd driver: `crio-<id>.scope`.
    CrioSystemd,
    /// Docker (cri-dockerd), systemd driver: `docker-<id>.scope`.
    DockerSystemd,
    /// containerd, cgroupfs driver: `kubepods/<qos>/pod<uid>/<id>`.
    ContainerdCgroupfs,
}

impl Layout {
    /// The runtime's scheme in `status.containerStatuses[].containerID`.
    fn scheme(self) -> &'static str {
        match self {
            Self::ContainerdSystemd | Self::ContainerdCgroupfs => "containerd",
            Self::CrioSystemd => "cri-o",
            Self::DockerSystemd => "docker",
        }
    }

    /// The runtime the agent can tell from the cgroup name (cgroupfs names say nothing).
    fn runtime(self) -> &'static str {
        match self {
            Self::ContainerdSystemd => "containerd",
            Self::CrioSystemd => "crio",
            Self::DockerSystemd => "docker",
            Self::ContainerdCgroupfs => "unknown",
        }
    }
}

/// A pod of the test, with the one container that will crash.
#[derive(Clone, Debug)]
struct TestPod {
    namespace: String,
    name: String,
    uid: String,
    container: String,
    image: String,
    image_id: String,
    container_id: String,
    /// `Guaranteed`, `Burstable` or `BestEffort`.
    qos: &'static str,
    layout: Layout,
    /// Seed of its ids.
    n: u16,
}

/// Unique per test process and per pod, so a run never meets a leftover of another.
fn hex_id(n: u16, len: usize) -> String {
    format!("{:08x}{n:04x}{}", std::process::id(), "c0de".repeat(16))[..len].to_owned()
}

impl TestPod {
    fn new(
        n: u16,
        namespace: &str,
        name: &str,
        container: &str,
        qos: &'static str,
        layout: Layout,
    ) -> Self {
        let u = hex_id(n, 32);
        let uid = format!(
            "{}-{}-4{}-8{}-{}",
            &u[..8],
            &u[8..12],
            &u[13..16],
            &u[17..20],
            &u[20..32]
        );
        let repo = format!("registry.example.com/{namespace}/{container}");
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            container: container.into(),
            image: format!("{repo}:1.{n}.0"),
            image_id: format!("{repo}@sha256:{}", hex_id(n + 1000, 64)),
            container_id: hex_id(n + 2000, 64),
            qos,
            layout,
            n,
        }
    }

    /// The pod as the API shows it: the crashing container and a sidecar.
    fn json(&self) -> Value {
        let sidecar_id = format!("{}://{}", self.layout.scheme(), hex_id(self.n + 3000, 64));
        let own_id = format!("{}://{}", self.layout.scheme(), self.container_id);
        fake_kube::pod(
            &self.namespace,
            &self.name,
            &self.uid,
            NODE,
            self.qos,
            &[
                ("app.kubernetes.io/name", &self.container),
                ("team", "checkout"),
            ],
            &[
                fake_kube::Container {
                    name: &self.container,
                    image: &self.image,
                    status_image: &self.image,
                    image_id: &self.image_id,
                    container_id: &own_id,
                },
                fake_kube::Container {
                    name: "istio-proxy",
                    image: "docker.io/istio/proxyv2:1.24.1",
                    status_image: "docker.io/istio/proxyv2:1.24.1",
                    image_id: "docker.io/istio/proxyv2@sha256:3f0e1c9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e",
                    container_id: &sidecar_id,
                },
            ],
        )
    }

    /// The container's cgroup, relative to the cgroup2 root, as the kubelet and runtime make it.
    fn cgroup(&self) -> String {
        let id = &self.container_id;
        let qos = self.qos.to_ascii_lowercase();
        if let Layout::ContainerdCgroupfs = self.layout {
            let parent = if self.qos == "Guaranteed" {
                "kubepods".to_owned()
            } else {
                format!("kubepods/{qos}")
            };
            return format!("{parent}/pod{}/{id}", self.uid);
        }
        let uid = self.uid.replace('-', "_");
        let pod_slice = if self.qos == "Guaranteed" {
            format!("kubepods.slice/kubepods-pod{uid}.slice")
        } else {
            format!("kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice")
        };
        let scope = match self.layout {
            Layout::ContainerdSystemd => format!("cri-containerd-{id}.scope"),
            Layout::CrioSystemd => format!("crio-{id}.scope"),
            Layout::DockerSystemd => format!("docker-{id}.scope"),
            Layout::ContainerdCgroupfs => unreachable!(),
        };
        format!("{pod_slice}/{scope}")
    }
}

/// One test's node: the shared test node, with the kernel writing into its dump directory.
struct Node(node::Node);

impl std::ops::Deref for Node {
    type Target = node::Node;

    fn deref(&self) -> &node::Node {
        &self.0
    }
}

impl Node {
    /// Sets core_pattern to `<dumps>/<template>`.
    fn new(tag: &str, template: &str) -> Self {
        Self(node::Node::new(
            tag,
            "dumps",
            &format!("{{dumps}}/{template}"),
        ))
    }

    /// What the kubelet writes for a running container.
    fn kubelet_logs(&self, pod: &TestPod) {
        self.0.kubelet_logs(
            &PodNames {
                namespace: &pod.namespace,
                name: &pod.name,
                uid: &pod.uid,
                container: &pod.container,
                container_id: &pod.container_id,
            },
            "2026-11-26T08:01:02.000000000Z stdout F listening on :8080\n",
        );
    }

    /// Starts the agent; with `api`, pointed at it through a kubeconfig (`--kube on`) and
    /// waits for its pod cache to sync.
    fn start(&self, api: Option<&FakeKube>) -> Agent {
        let kube = if api.is_some() { "on" } else { "off" };
        let args = [
            &node::FILE_WAITS[..],
            &["--max-dumps-per-hour", "0", "--kube", kube],
        ]
        .concat();
        let Some(api) = api else {
            return self.0.start("file", &args);
        };
        let kubeconfig = self.tmp.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let kubeconfig = kubeconfig.display().to_string();
        let mut agent =
            self.0
                .start_with_env("file", &args, &[("KUBECONFIG", kubeconfig.as_str())]);
        agent.wait_for_log("pod cache synced", WAIT);
        agent
    }
}

/// Crashes a dumping crasher (`mode`, `arg`) inside `cgroup`; returns its host pid.
fn crash_in(cgroup: &TempCgroup, mode: &str, arg: Option<&str>) -> u32 {
    let c = Crasher::spawn_with(
        mode,
        arg,
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

/// Asserts the record names `pod` completely, with names from `source`.
fn assert_named(key: &str, record: &Value, pod: &TestPod, source: &str) {
    let id = &record["identity"];
    let ctx = format!("{key}: {record:#}");
    assert_eq!(record["attestation"]["attested"], true, "{ctx}");
    assert_eq!(id["namespace"], pod.namespace.as_str(), "{ctx}");
    assert_eq!(id["pod"], pod.name.as_str(), "{ctx}");
    assert_eq!(id["pod_uid"], pod.uid.as_str(), "{ctx}");
    assert_eq!(id["container"], pod.container.as_str(), "{ctx}");
    assert_eq!(id["container_id"], pod.container_id.as_str(), "{ctx}");
    assert_eq!(id["runtime"], pod.layout.runtime(), "{ctx}");
    assert_eq!(id["qos"], pod.qos.to_ascii_lowercase(), "{ctx}");
    assert_eq!(id["cgroup_path"], format!("/{}", pod.cgroup()), "{ctx}");
    assert_eq!(id["source"], source, "{ctx}");
    assert!(
        key.starts_with(&format!("{}/{}/", pod.namespace, pod.name)),
        "stored under the pod: {ctx}"
    );
    assert!(
        key.contains(&format!("_{}_crasher_", pod.container)),
        "{ctx}"
    );
    if source == "kubernetes-api" {
        assert_eq!(id["image"], pod.image.as_str(), "{ctx}");
        assert_eq!(id["image_id"], pod.image_id.as_str(), "{ctx}");
        assert_eq!(id["labels"]["team"], "checkout", "{ctx}");
    } else {
        assert!(
            id["image"].is_null() && id["labels"].is_null(),
            "the kubelet's files name no image: {ctx}"
        );
    }
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn every_runtime_and_cgroup_driver_is_named_from_the_api() {
    if !require_root("identity") {
        return;
    }
    let node = Node::new("id-runtimes", "core.%P.%I.%s.%t.%e");
    let pods = [
        TestPod::new(
            1,
            "checkout",
            "cart-7c9d8f6b5d-q2w4e",
            "cart",
            "Burstable",
            Layout::ContainerdSystemd,
        ),
        TestPod::new(
            2,
            "payments-eu",
            "ledger-5f6d7c8b9a-r5t6y.v2",
            "ledger-writer",
            "Burstable",
            Layout::CrioSystemd,
        ),
        TestPod::new(
            3,
            "batch",
            "nightly-report-6b7c8d9e0f-u7i8o",
            "report",
            "BestEffort",
            Layout::DockerSystemd,
        ),
        TestPod::new(
            4,
            "legacy",
            "monolith-8d9e0f1a2b-p9a0s",
            "monolith",
            "BestEffort",
            Layout::ContainerdCgroupfs,
        ),
        TestPod::new(
            5,
            "kube-system",
            "coredns-7db6d8ff4d-mx9kq",
            "coredns",
            "Guaranteed",
            Layout::ContainerdSystemd,
        ),
        TestPod::new(
            6,
            "legacy",
            "static-7a8b9c0d1e-z1x2c",
            "server",
            "Guaranteed",
            Layout::ContainerdCgroupfs,
        ),
    ];
    let api = FakeKube::start();
    for pod in &pods {
        api.apply(pod.json());
        node.kubelet_logs(pod);
    }
    // A pod of another node: the agent must not even be sent it.
    let mut elsewhere = pods[0].json();
    elsewhere["metadata"]["name"] = "cart-7c9d8f6b5d-other".into();
    elsewhere["metadata"]["uid"] = "99999999-9999-4999-8999-999999999999".into();
    elsewhere["spec"]["nodeName"] = "other-node".into();
    api.apply(elsewhere);

    let agent = node.start(Some(&api));
    let cgroups: Vec<TempCgroup> = pods
        .iter()
        .map(|p| TempCgroup::create(&p.cgroup()))
        .collect();
    let mut keys = Vec::new();
    for (pod, cgroup) in pods.iter().zip(&cgroups) {
        let pid = crash_in(cgroup, "segv", None);
        let (key, record) = stored_record(&node, pid);
        assert_named(&key, &record, pod, "kubernetes-api");
        keys.push((key, record));
    }

    // Each crashed pod got a CoreDumpStored Event naming where its dump is.
    for (key, record) in &keys {
        let dump_key = key.strip_suffix(".json").unwrap_or(key);
        let pod_name = record["identity"]["pod"].as_str().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let events = api.events();
            let found = events.iter().find(|e| {
                e["reason"] == "CoreDumpStored"
                    && e["involvedObject"]["name"] == pod_name
                    && e["message"].as_str().is_some_and(|m| m.contains(dump_key))
            });
            if let Some(e) = found {
                assert_eq!(e["involvedObject"]["kind"], "Pod");
                assert_eq!(e["involvedObject"]["uid"], record["identity"]["pod_uid"]);
                assert_eq!(e["metadata"]["namespace"], record["identity"]["namespace"]);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no CoreDumpStored event for {pod_name}: {events:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    // Only this node's pods were asked for, in one list and one watch.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.field_selector.as_deref() == Some("spec.nodeName=test-node")),
        "{requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        1,
        "{requests:#?}"
    );
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn kubelet_logs_name_pods_without_api_access() {
    if !require_root("identity") {
        return;
    }
    let node = Node::new("id-kubelet", "core.%P.%I.%s.%t.%e");
    let pods = [
        TestPod::new(
            11,
            "default",
            "web-0",
            "nginx",
            "Burstable",
            Layout::ContainerdSystemd,
        ),
        TestPod::new(
            12,
            "ml-training",
            "trainer.v2-x7k2p",
            "pytorch",
            "BestEffort",
            Layout::ContainerdCgroupfs,
        ),
    ];
    for pod in &pods {
        node.kubelet_logs(pod);
    }
    let agent = node.start(None);
    for pod in &pods {
        let cgroup = TempCgroup::create(&pod.cgroup());
        let pid = crash_in(&cgroup, "abort", None);
        let (key, record) = stored_record(&node, pid);
        assert_named(&key, &record, pod, "kubelet-logs");
    }
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn watch_resumes_after_a_dropped_connection_and_deleted_pods_keep_their_names() {
    if !require_root("identity") {
        return;
    }
    let node = Node::new("id-watch", "core.%P.%I.%s.%t.%e");
    let doomed = TestPod::new(
        21,
        "checkout",
        "cart-7c9d8f6b5d-d00md",
        "cart",
        "Burstable",
        Layout::ContainerdSystemd,
    );
    let late = TestPod::new(
        22,
        "checkout",
        "cart-7c9d8f6b5d-l4t3r",
        "cart",
        "Burstable",
        Layout::CrioSystemd,
    );
    let unseen = TestPod::new(
        23,
        "cron",
        "cleanup-29123456-h8j9k",
        "cleanup",
        "BestEffort",
        Layout::ContainerdSystemd,
    );
    let lost = TestPod::new(
        24,
        "checkout",
        "cart-7c9d8f6b5d-l0st1",
        "cart",
        "Burstable",
        Layout::DockerSystemd,
    );
    let api = FakeKube::start();
    api.apply(doomed.json());
    api.apply(lost.json());
    // Never in the API while we watch (created and deleted while the agent was down): only
    // the kubelet's files know it.
    node.kubelet_logs(&unseen);
    let mut agent = node.start(Some(&api));
    let listed_at = api.resource_version();

    // The API server restarts: the watch is cut mid-stream. A pod created meanwhile must
    // arrive through the resumed watch, from the version the agent had, without a new list.
    api.wait_for_requests(WAIT, |r| r.iter().any(|r| r.watch));
    api.drop_watches();
    api.apply(late.json());
    let requests = api.wait_for_requests(WAIT, |r| r.iter().filter(|r| r.watch).count() >= 2);
    let watches: Vec<_> = requests.iter().filter(|r| r.watch).collect();
    let expected = listed_at.to_string();
    assert!(
        watches
            .iter()
            .all(|w| w.resource_version.as_deref() == Some(expected.as_str())),
        "every watch resumes from the listed version: {requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        1,
        "no relist: {requests:#?}"
    );
    agent.wait_for_log("pod updated", WAIT);

    let late_cgroup = TempCgroup::create(&late.cgroup());
    let pid = crash_in(&late_cgroup, "segv", None);
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &late, "kubernetes-api");

    // A pod deleted right after its crash (no kubelet files either): still named, with its
    // image, from what the agent knew when the crash event arrived.
    let doomed_cgroup = TempCgroup::create(&doomed.cgroup());
    let pid = crash_in(&doomed_cgroup, "segv", None);
    assert!(api.delete(&doomed.namespace, &doomed.name).is_some());
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &doomed, "kubernetes-api");

    let unseen_cgroup = TempCgroup::create(&unseen.cgroup());
    let pid = crash_in(&unseen_cgroup, "segv", None);
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &unseen, "kubelet-logs");

    // An outage long enough for etcd to compact the agent's version away: back up, resuming
    // gets 410 Gone and the agent lists again. A pod deleted during the outage is missing from
    // that list, and a crash in it is still named.
    api.set_available(false);
    api.drop_watches();
    assert!(api.delete(&lost.namespace, &lost.name).is_some());
    api.compact();
    api.set_available(true);
    agent.wait_for_log("pod watch relisted", WAIT);
    let requests = api.requests();
    assert_eq!(
        requests.iter().filter(|r| !r.watch).count(),
        2,
        "one relist: {requests:#?}"
    );
    let lost_cgroup = TempCgroup::create(&lost.cgroup());
    let pid = crash_in(&lost_cgroup, "segv", None);
    let (key, record) = stored_record(&node, pid);
    assert_named(&key, &record, &lost, "kubernetes-api");
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_misleading_hostname_does_not_name_the_pod() {
    if !require_root("identity") {
        return;
    }
    // `%h` in the pattern, as handlers that name pods from it (e.g. IBM's) install.
    let node = Node::new("id-hostname", "core.%h.%P.%I.%s.%t.%e");
    let victim = TestPod::new(
        31,
        "shop",
        "frontend-6c7d8e9f0a-v1c7m",
        "frontend",
        "Burstable",
        Layout::ContainerdSystemd,
    );
    let impostor = TestPod::new(
        32,
        "bank",
        "vault-0",
        "vault",
        "Burstable",
        Layout::ContainerdSystemd,
    );
    let api = FakeKube::start();
    api.apply(victim.json());
    api.apply(impostor.json());
    let agent = node.start(Some(&api));

    let cgroup = TempCgroup::create(&victim.cgroup());
    // The crashing process claims to be the other pod: its hostname is that pod's name.
    let pid = crash_in(&cgroup, "hostname", Some(&impostor.name));
    let (key, record) = stored_record(&node, pid);
    assert_eq!(
        record["dump"]["fields"]["hostname"],
        impostor.name.as_str(),
        "{record:#}"
    );
    assert_named(&key, &record, &victim, "kubernetes-api");
    agent.terminate();
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_crash_outside_kubernetes_names_its_unit_and_no_pod() {
    if !require_root("identity") {
        return;
    }
    let node = Node::new("id-host", "core.%P.%I.%s.%t.%e");
    let api = FakeKube::start();
    let neighbour = TestPod::new(
        41,
        "default",
        "web-0",
        "nginx",
        "Burstable",
        Layout::ContainerdSystemd,
    );
    api.apply(neighbour.json());
    node.kubelet_logs(&neighbour);
    let agent = node.start(Some(&api));

    let unit = format!("coredump-test-{}.service", std::process::id());
    let cgroup = TempCgroup::create(&format!("system.slice/{unit}"));
    let pid = crash_in(&cgroup, "segv", None);
    let (key, record) = stored_record(&node, pid);
    let id = &record["identity"];
    assert_eq!(id["systemd_unit"], unit.as_str(), "{record:#}");
    assert_eq!(
        id["cgroup_path"],
        format!("/system.slice/{unit}"),
        "{record:#}"
    );
    for field in [
        "namespace",
        "pod",
        "pod_uid",
        "container",
        "container_id",
        "image",
        "source",
        "labels",
    ] {
        assert!(id[field].is_null(), "{field} of a host process: {record:#}");
    }
    assert!(key.starts_with(&format!("_host/{NODE}/")), "{key}");
    assert!(
        record["dump"]["size"].as_u64().unwrap() > 0,
        "the dump is stored: {record:#}"
    );
    agent.terminate();
}
