//! deploy/monitoring against real tools: the alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`, each alert firing and staying quiet); a real Prometheus
//! (Debian's, started here on 127.0.0.1) scrapes a running agent the way the PodMonitor tells
//! the Prometheus Operator to, counts real crashes of pods by namespace and signal, evaluates
//! the alert rules on them, and runs every query of the Grafana dashboard; a live scrape
//! passes `promtool check metrics`; and 2,000 idle connections to the metrics port neither
//! keep `/healthz` from answering within the kubelet's timeout nor the agent's open files
//! from staying bounded.
//!
//! Prometheus and promtool come from `cargo xtask setup` (Debian's package at the pinned
//! major.minor) and are run by path. Without them the tests print `SKIPPED`; under CI=true
//! they fail instead. The tests that run the agent need root (BPF, cgroups, core_pattern);
//! they set core_pattern through `CorePatternGuard`, which holds the machine-wide test lock and
//! restores it, and `TempCgroup` removes the cgroups.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use coredump_tests::{
    Agent, Crasher, CrasherOpts, TempCgroup, TempDir,
    node::{self, NODE, PodNames},
    prometheus::{self, Prometheus, free_port, http_get, promtool},
    require_root,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// The agent pod's name, as the Kubernetes service discovery would give it.
const AGENT_POD: &str = "coredump-agent-x7k2p";
/// The agent pod's namespace (deploy/base).
const AGENT_NAMESPACE: &str = "coredump-agent";
/// The file name the rule unit tests load (deploy/monitoring/tests/*.test.yaml).
const RULES_FILE: &str = "coredump-agent.rules.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

fn monitoring() -> PathBuf {
    root().join("deploy/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the rules ---------------------------------------------------------------------------

/// Writes the PrometheusRule's spec (its `groups`) into `dir` as the Prometheus rule file the
/// unit tests load (JSON, which Prometheus reads as YAML); returns its path.
fn write_rule_file(dir: &Path) -> PathBuf {
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let path = dir.join(RULES_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&rule["spec"]).unwrap()).unwrap();
    path
}

/// Every alerting rule of the PrometheusRule.
fn alerts() -> Vec<Value> {
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// The rule unit test files (deploy/monitoring/tests/*.test.yaml).
fn rule_tests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(monitoring().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/monitoring/tests has rule tests");
    files
}

/// Copies the rule tests into `dir`, beside the rule file; returns their names.
fn copy_rule_tests(dir: &Path) -> Vec<String> {
    rule_tests()
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(f, dir.join(&name)).unwrap();
            name
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let test = "alert_rules_pass_promtool_check_and_their_unit_tests";
    if !prometheus::require(test) {
        return;
    }
    let tmp = TempDir::new("mon-rules");
    write_rule_file(&tmp.path);
    let (ok, out) = promtool(&tmp.path, &["check", "rules", RULES_FILE]);
    assert!(ok, "promtool check rules:\n{out}");
    let alerts = alerts();
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
    for name in copy_rule_tests(&tmp.path) {
        let (ok, out) = promtool(&tmp.path, &["test", "rules", &name]);
        assert!(ok, "promtool test rules {name}:\n{out}");
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn every_alert_is_tested_firing_and_quiet_and_each_firing_test_needs_its_rule() {
    let test = "every_alert_is_tested_firing_and_quiet_and_each_firing_test_needs_its_rule";
    let alerts = alerts();
    let names: BTreeSet<String> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "CoredumpNamespaceCrashLooping",
        "CoredumpAgentStoreFailing",
        "CoredumpAgentSpoolGrowing",
        "CoredumpAgentProbeLosingEvents",
        "CoredumpAgentNotReady",
    ] {
        assert!(names.contains(expected), "an alert {expected}: {names:?}");
    }
    // Each alert has a test where it fires and one where it does not.
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in rule_tests() {
        let tests = yaml(&file);
        for t in tests["tests"].as_array().expect("tests") {
            for case in t["alert_rule_test"].as_array().into_iter().flatten() {
                let alert = case["alertname"].as_str().unwrap().to_owned();
                assert!(
                    names.contains(&alert),
                    "{}: no alert {alert}",
                    file.display()
                );
                if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    fires.insert(alert);
                } else {
                    quiet.insert(alert);
                }
            }
        }
    }
    assert_eq!(fires, names, "alerts with a test where they fire");
    assert_eq!(quiet, names, "alerts with a test where they do not");
    // What an operator gets: a severity, a summary, a description and a runbook section.
    let guide = read(&root().join("docs/operator.md"));
    for a in &alerts {
        let name = a["alert"].as_str().unwrap();
        assert!(
            ["warning", "critical", "info"]
                .contains(&a["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for key in ["summary", "description"] {
            assert!(
                a["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: annotation {key}"
            );
        }
        assert_eq!(
            a["annotations"]["runbook"],
            format!("docs/operator.md#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            guide.contains(&format!("\n#### {name}\n")),
            "docs/operator.md has a runbook section `#### {name}`"
        );
    }
    // The firing tests depend on the rules: with an alert's expression replaced by one that
    // never holds, promtool's tests fail (so they do not pass by accident).
    if !prometheus::require(test) {
        return;
    }
    let tmp = TempDir::new("mon-rules-mutated");
    let tests = copy_rule_tests(&tmp.path);
    for name in &names {
        let mut rule = yaml(&monitoring().join("prometheusrule.yaml"));
        for group in rule["spec"]["groups"].as_array_mut().unwrap() {
            for r in group["rules"].as_array_mut().unwrap() {
                if r["alert"] == name.as_str() {
                    r["expr"] = "vector(1) == 0".into();
                }
            }
        }
        std::fs::write(
            tmp.join(RULES_FILE),
            serde_json::to_string(&rule["spec"]).unwrap(),
        )
        .unwrap();
        let failed = tests
            .iter()
            .any(|t| !promtool(&tmp.path, &["test", "rules", t]).0);
        assert!(failed, "the rule tests still pass with {name} never firing");
    }
}

// ---- the dashboard -----------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(&monitoring().join("dashboards/coredump-agent.json")))
        .expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.extend(p["panels"].as_array().into_iter().flatten().cloned());
        out.push(p.clone());
    }
    out
}

/// A query of the dashboard: its panel, whether Grafana runs it as an instant query, the
/// expression.
struct DashboardQuery {
    panel: String,
    instant: bool,
    expr: String,
}

/// Every PromQL expression of the dashboard: the panels' targets and the template variables'
/// `label_values(<expr>, <label>)` (Grafana's own function; the expression inside is PromQL).
fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(DashboardQuery {
                panel: p["title"].as_str().unwrap_or("?").to_owned(),
                instant: t["instant"] == true,
                expr: t["expr"].as_str().expect("a target's expr").to_owned(),
            });
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a variable's query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(expr, _label)| expr.trim().to_owned())
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        out.push(DashboardQuery {
            panel: format!("variable {}", v["name"].as_str().unwrap_or("?")),
            instant: true,
            expr: inner,
        });
    }
    out
}

/// An expression as Grafana sends it: its variables replaced by what "All" and a short time
/// range give (the test's Prometheus scrapes every second).
fn grafana_expand(expr: &str, variables: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "5s")
        .replace("$__interval", "1s")
        .replace("$__range", "5m");
    for v in variables {
        e = e
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    assert!(!e.contains('$'), "an unknown variable in {expr}");
    e
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "coredump-agent");
    let panels = panels(&d);
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().expect("a title").to_owned();
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "{title}: id used twice"
        );
        let gp = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(gp[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            gp["x"].as_u64().unwrap() + gp["w"].as_u64().unwrap() <= 24,
            "{title}: width"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(titles.insert(title.clone()), "{title}: title used twice");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    // What the issue asks of the dashboard (docs/operator.md lists the panels).
    for expected in [
        "Crashes by namespace",
        "Crashes by signal",
        "Top crashing namespaces",
        "Upload duration",
        "Crash to stored",
        "Store errors by class",
        "Spool depth",
        "Agent health by node",
    ] {
        assert!(
            titles.contains(expected),
            "a panel {expected:?}: {titles:?}"
        );
    }
    let guide = read(&root().join("docs/operator.md"));
    for title in &titles {
        assert!(
            guide.contains(&format!("**{title}**")),
            "docs/operator.md lists the panel **{title}**"
        );
    }
    // The data source is a variable, so the dashboard imports into any Grafana.
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
}

// ---- a real Prometheus scraping a real agent -----------------------------------------------

/// The agent pod's labels, as deploy/base's kustomization gives them to its pod template.
fn base_pod_labels() -> BTreeMap<String, String> {
    let k = yaml(&root().join("deploy/base/kustomization.yaml"));
    let mut out = BTreeMap::new();
    for set in k["labels"].as_array().expect("labels") {
        if set["includeSelectors"] == true || set["includeTemplates"] == true {
            for (name, value) in set["pairs"].as_object().unwrap() {
                out.insert(name.clone(), value.as_str().unwrap().to_owned());
            }
        }
    }
    out
}

/// A label name as Kubernetes service discovery writes it (`app.kubernetes.io/name` →
/// `app_kubernetes_io_name`).
fn sd_name(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The scrape configuration the Prometheus Operator generates from deploy/monitoring's
/// PodMonitor, for the agent at `addr` as the Kubernetes service discovery would show its pod
/// (the base's labels, its `metrics` port, node `test-node`): the operator's own relabelings
/// (the selector, the port, namespace, container, pod, job, endpoint), then the PodMonitor's.
/// Only the interval is shortened, so that the test takes seconds.
fn scrape_config(addr: &str) -> Value {
    let pm = yaml(&monitoring().join("podmonitor.yaml"));
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    let (namespace, name) = (
        pm["metadata"]["namespace"].as_str().unwrap(),
        pm["metadata"]["name"].as_str().unwrap(),
    );
    let spec = &pm["spec"];
    let endpoints = spec["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    let port = ep["port"].as_str().expect("a named port");

    // The pod as Kubernetes service discovery shows it.
    let base_ds = yaml(&root().join("deploy/base/daemonset.yaml"));
    let container = &base_ds["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the agent's container has the port {port}"
    );
    let mut target = json!({
        "__meta_kubernetes_namespace": AGENT_NAMESPACE,
        "__meta_kubernetes_pod_name": AGENT_POD,
        "__meta_kubernetes_pod_node_name": NODE,
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_port_name": port,
    });
    for (label, value) in base_pod_labels() {
        target[format!("__meta_kubernetes_pod_label_{}", sd_name(&label))] = value.into();
        target[format!("__meta_kubernetes_pod_labelpresent_{}", sd_name(&label))] = "true".into();
    }

    // What the operator generates (prometheus-operator, pkg/prometheus/promcfg.go).
    let mut relabel = Vec::new();
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (label, value) in selector {
        relabel.push(json!({
            "action": "keep",
            "source_labels": [
                format!("__meta_kubernetes_pod_label_{}", sd_name(label)),
                format!("__meta_kubernetes_pod_labelpresent_{}", sd_name(label)),
            ],
            "regex": format!("({});true", value.as_str().unwrap()),
        }));
    }
    relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port}));
    for (meta, label) in [
        ("__meta_kubernetes_namespace", "namespace"),
        ("__meta_kubernetes_pod_container_name", "container"),
        ("__meta_kubernetes_pod_name", "pod"),
    ] {
        relabel.push(json!({"source_labels": [meta], "target_label": label}));
    }
    relabel.push(json!({"target_label": "job", "replacement": format!("{namespace}/{name}")}));
    if let Some(job_label) = spec["jobLabel"].as_str() {
        relabel.push(json!({
            "source_labels": [format!("__meta_kubernetes_pod_label_{}", sd_name(job_label))],
            "target_label": "job",
            "regex": "(.+)",
            "replacement": "${1}",
        }));
    }
    relabel.push(json!({"target_label": "endpoint", "replacement": port}));
    for r in ep["relabelings"].as_array().into_iter().flatten() {
        let mut out = json!({});
        for (from, to) in [
            ("sourceLabels", "source_labels"),
            ("targetLabel", "target_label"),
            ("regex", "regex"),
            ("replacement", "replacement"),
            ("separator", "separator"),
            ("modulus", "modulus"),
        ] {
            if let Some(v) = r.get(from) {
                out[to] = v.clone();
            }
        }
        if let Some(action) = r["action"].as_str() {
            out["action"] = action.to_lowercase().into();
        }
        relabel.push(out);
    }
    json!({
        "job_name": format!("podMonitor/{namespace}/{name}/0"),
        "honor_labels": ep["honorLabels"].as_bool().unwrap_or(false),
        "metrics_path": ep["path"].as_str().unwrap_or("/metrics"),
        "scheme": ep["scheme"].as_str().unwrap_or("http"),
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "static_configs": [{"targets": [addr], "labels": target}],
        "relabel_configs": relabel,
    })
}

/// A Prometheus scraping the agent at `addr` as the PodMonitor says, with the alert rules
/// loaded (from `dir`) and evaluated every second.
fn prometheus_for(addr: &str, dir: &Path) -> Prometheus {
    let rules = write_rule_file(dir);
    Prometheus::start(&json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [scrape_config(addr)],
    }))
}

/// A pod of the test: its namespace, name, uid and container id (containerd, systemd driver,
/// Burstable), which the kubelet's log directories name.
struct TestPod {
    namespace: &'static str,
    name: &'static str,
    container: &'static str,
    uid: String,
    container_id: String,
}

impl TestPod {
    fn new(n: u16, namespace: &'static str, name: &'static str, container: &'static str) -> Self {
        let hex = |salt: u16, len: usize| {
            format!(
                "{:08x}{:04x}{}",
                std::process::id(),
                salt,
                "abcd".repeat(16)
            )[..len]
                .to_owned()
        };
        let u = hex(n, 32);
        Self {
            namespace,
            name,
            container,
            uid: format!(
                "{}-{}-4{}-8{}-{}",
                &u[..8],
                &u[8..12],
                &u[13..16],
                &u[17..20],
                &u[20..32]
            ),
            container_id: hex(n + 100, 64),
        }
    }

    fn cgroup(&self) -> String {
        let uid = self.uid.replace('-', "_");
        format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{}.scope",
            self.container_id
        )
    }
}

/// One node: the shared test node, with the kernel writing into its dump directory.
struct Node(node::Node);

impl std::ops::Deref for Node {
    type Target = node::Node;

    fn deref(&self) -> &node::Node {
        &self.0
    }
}

impl Node {
    fn new(tag: &str) -> Self {
        Self(node::Node::new(tag, "dumps", "{dumps}/core.%P.%I.%s.%t.%e"))
    }

    /// What the kubelet writes for a running container, which names its pod.
    fn kubelet_logs(&self, pod: &TestPod) {
        self.0.kubelet_logs(
            &PodNames {
                namespace: pod.namespace,
                name: pod.name,
                uid: &pod.uid,
                container: pod.container,
                container_id: &pod.container_id,
            },
            "2026-11-26T08:01:02.000000000Z stdout F started\n",
        );
    }

    /// Starts the agent (file intake, no Kubernetes API) serving HTTP on `listen`.
    fn start(&self, listen: &str) -> Agent {
        let extra = [
            "--max-dumps-per-hour",
            "0",
            "--listen",
            listen,
            "--store-check-interval",
            "500ms",
        ];
        self.0
            .start("file", &[&node::FILE_WAITS[..], &extra].concat())
    }
}

/// Crashes a crasher (`mode`) that writes a dump, inside `cgroup` if given.
fn crash(mode: &str, cgroup: Option<&TempCgroup>) {
    let c = Crasher::spawn_with(
        mode,
        None,
        &CrasherOpts {
            core_limit: u64::MAX,
            ..Default::default()
        },
    );
    if let Some(cgroup) = cgroup {
        // Moved before it crashes: the kernel reports the cgroup of the crashing task.
        cgroup.add(c.host_pid);
    }
    assert!(!c.go().success(), "{mode} should have crashed");
}

/// A sample's value.
fn value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a sample's value: {sample}"))
}

/// `(label values…) → value` of an instant vector.
fn by(vector: &[Value], labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    vector
        .iter()
        .map(|s| {
            let key = labels
                .iter()
                .map(|l| s["metric"][*l].as_str().unwrap_or("").to_owned())
                .collect();
            (key, value(s))
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// The metric families a scrape declares (`# TYPE <name> …`).
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The Accept header Prometheus 2.42 scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Every metric family of the agent: those a live scrape of the agent at `addr` declares,
/// and those its registry renders once each labelled family has a sample (a family without
/// one is not in a scrape: no store error yet, no file rejected).
fn agent_families(addr: &str) -> BTreeSet<String> {
    use coredump_agent::metrics::{
        BuildLabels, CompressionLabels, CrashLabels, METRICS, Outcome, ReasonLabels,
        SignatureLabels,
    };
    let (status, live) = http_get(addr, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(status, 200);
    let mut out = families(&live);
    METRICS
        .crashes
        .get_or_create(&CrashLabels {
            namespace: "x".into(),
            signal: "SIGSEGV".into(),
            outcome: Outcome::stored,
        })
        .inc();
    for family in [&METRICS.dump_bytes_in, &METRICS.dump_bytes_out] {
        family
            .get_or_create(&CompressionLabels {
                compression: "none".into(),
            })
            .inc();
    }
    METRICS.store_error("unreachable");
    METRICS.reject("symlink");
    METRICS.module("stored");
    METRICS
        .reports
        .get_or_create(&ReasonLabels {
            reason: "complete".into(),
        })
        .inc();
    METRICS
        .crash_signatures
        .get_or_create(&SignatureLabels {
            signature: "none".into(),
            summary: String::new(),
        })
        .inc();
    METRICS.set_build(BuildLabels {
        version: "0".into(),
        kernel: "k".into(),
        hook: "h".into(),
        intake: "file".into(),
    });
    let all = families(&METRICS.render());
    assert!(
        out.is_subset(&all),
        "the agent serves what its registry has: {:?}",
        out.difference(&all).collect::<Vec<_>>()
    );
    out.extend(all);
    out
}

/// The agent's metric names an expression uses, as families (`_total`, `_bucket`, … cut).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("coredump_agent_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        out.insert(family);
    }
    out
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn prometheus_counts_real_crashes_by_namespace_and_signal_and_runs_every_query() {
    let test = "prometheus_counts_real_crashes_by_namespace_and_signal_and_runs_every_query";
    if !require_root(test) || !prometheus::require(test) {
        return;
    }
    let node = Node::new("mon-prometheus");
    let shop = TestPod::new(1, "shop", "web-7d9f8c6b5d-q2w4e", "server");
    let batch = TestPod::new(2, "batch", "report-28859400-x9z8v", "report");
    for pod in [&shop, &batch] {
        node.kubelet_logs(pod);
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = node.start(&listen);
    let prom_dir = TempDir::new("mon-prometheus-rules");
    let prom = prometheus_for(&listen, &prom_dir.path);
    // Scraping before the crashes: the counters' series then start from the agent's first.
    prom.wait_for(r#"up{job="coredump-agent"}"#, WAIT, |v| {
        v.len() == 1 && value(&v[0]) == 1.0
    });
    // Its OpenMetrics answer parses: the target is healthy, with no scrape error.
    let targets = prom.api("targets");
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets:#}");
    assert_eq!(active[0]["health"], "up", "{targets:#}");
    assert_eq!(active[0]["lastError"], "", "{targets:#}");
    assert_eq!(active[0]["labels"]["node"], NODE, "{targets:#}");

    let cgroups = [&shop, &batch].map(|p| TempCgroup::create(&p.cgroup()));
    for mode in ["segv", "segv", "abort"] {
        crash(mode, Some(&cgroups[0]));
    }
    crash("quit", Some(&cgroups[1]));
    crash("segv", None);

    // Counted by the namespace of the pod that crashed (not the agent's), and the signal.
    let expected: BTreeMap<Vec<String>, f64> = [
        (key(&["shop", "SIGSEGV"]), 2.0),
        (key(&["shop", "SIGABRT"]), 1.0),
        (key(&["batch", "SIGQUIT"]), 1.0),
        (key(&["_host", "SIGSEGV"]), 1.0),
    ]
    .into();
    let query = r#"sum by (namespace, signal) (coredump_agent_crashes_total{job="coredump-agent", outcome="stored"})"#;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = by(
            &prom.query(query).unwrap().as_array().cloned().unwrap(),
            &["namespace", "signal"],
        );
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{query} is {got:?}, expected {expected:?}\nagent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The series carry the target's labels as the PodMonitor relabels them, and honorLabels
    // kept the crashed pod's namespace.
    let series = prom
        .query(r#"coredump_agent_crashes_total{job="coredump-agent"}"#)
        .unwrap();
    for s in series.as_array().unwrap() {
        let m = &s["metric"];
        assert_eq!(m["node"], NODE, "{s}");
        assert_eq!(m["pod"], AGENT_POD, "{s}");
        assert_eq!(m["outcome"], "stored", "{s}");
        assert!(m.get("exported_namespace").is_none(), "{s}");
    }
    let one = |promql: &str| -> f64 {
        let v = prom
            .query(promql)
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        let v = v.as_array().unwrap();
        assert_eq!(v.len(), 1, "{promql}: {v:?}");
        value(&v[0])
    };
    // Each counted once: five crash events, five dumps uploaded, five crashes stored.
    prom.wait_for(
        r#"coredump_agent_crash_events_total{job="coredump-agent"}"#,
        WAIT,
        |v| v.len() == 1 && value(&v[0]) == 5.0,
    );
    assert_eq!(
        one(r#"coredump_agent_upload_duration_seconds_count{job="coredump-agent"}"#),
        5.0
    );
    assert_eq!(
        one(r#"coredump_agent_crash_to_stored_seconds_count{job="coredump-agent"}"#),
        5.0
    );
    assert!(
        one(r#"sum(coredump_agent_dump_in_bytes_total{job="coredump-agent", compression="none"})"#)
            > 0.0
    );
    assert!(one(r#"sum(coredump_agent_dump_stored_bytes_total{job="coredump-agent"})"#) > 0.0);
    // The agent's own state, per node.
    for gauge in ["ready", "store_reachable", "probe_attached"] {
        assert_eq!(
            one(&format!(
                r#"coredump_agent_{gauge}{{job="coredump-agent", node="{NODE}", namespace="{AGENT_NAMESPACE}"}}"#
            )),
            1.0,
            "{gauge}"
        );
    }
    assert_eq!(
        one(r#"coredump_agent_spool_depth{job="coredump-agent"}"#),
        0.0
    );
    assert_eq!(
        one(r#"coredump_agent_probe_ring_buffer_capacity_bytes{job="coredump-agent"}"#),
        1024.0 * 1024.0,
        "the probe's ring buffer is 1 MiB"
    );
    assert!(
        one(r#"coredump_agent_probe_ring_buffer_used_bytes{job="coredump-agent"}"#)
            < 1024.0 * 1024.0
    );
    let build = prom
        .query(r#"coredump_agent_build_info{job="coredump-agent"}"#)
        .unwrap();
    let build = &build.as_array().unwrap()[0]["metric"];
    assert_eq!(build["intake"], "file", "{build}");
    assert_eq!(build["node"], NODE, "{build}");
    assert!(
        build["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{build}"
    );

    // Every query of the dashboard runs without error, and the panels about what happened
    // here show it, once Prometheus has a few samples of each series (increase() needs two).
    prom.wait_for(
        "count_over_time(coredump_agent_crashes_total[1m]) >= 3",
        WAIT,
        |v| v.len() == expected.len(),
    );
    let d = dashboard();
    let variables: Vec<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let declared = agent_families(&listen);
    let mut with_data = BTreeSet::new();
    for q in dashboard_queries(&d) {
        for name in metric_names(&q.expr) {
            assert!(
                declared.contains(&name),
                "{}: {name} is not a metric of the agent",
                q.panel
            );
        }
        let expr = grafana_expand(&q.expr, &variables);
        let result = if q.instant {
            prom.query(&expr)
        } else {
            prom.query_range(&expr, Duration::from_secs(60), Duration::from_secs(1))
        }
        .unwrap_or_else(|e| panic!("panel {:?}: {expr}: {e}", q.panel));
        if result.as_array().is_some_and(|r| !r.is_empty()) {
            with_data.insert(q.panel);
        }
    }
    // A namespace's first crashes create its series: the panels count them all the same.
    let top = dashboard_queries(&d)
        .into_iter()
        .find(|q| q.panel == "Top crashing namespaces")
        .expect("the panel");
    let top = prom.query(&grafana_expand(&top.expr, &variables)).unwrap();
    assert_eq!(
        by(top.as_array().unwrap(), &["namespace"]),
        [
            (key(&["shop"]), 3.0),
            (key(&["batch"]), 1.0),
            (key(&["_host"]), 1.0)
        ]
        .into(),
        "{top}"
    );
    for panel in [
        "Crashes by namespace",
        "Crashes by signal",
        "Top crashing namespaces",
        "Crashes by outcome",
        "Crashes by namespace and signal",
        "Upload duration",
        "Crash to stored",
        "Dump bytes in and stored",
        "Spool depth",
        "Probe ring buffer fill",
        "Agent health by node",
        "variable node",
        "variable namespace",
    ] {
        assert!(
            with_data.contains(panel),
            "{panel} shows no data: {with_data:?}"
        );
    }

    // The alert rules use the agent's metrics, and Prometheus evaluates each without error.
    for a in alerts() {
        for name in metric_names(a["expr"].as_str().unwrap()) {
            assert!(
                declared.contains(&name),
                "{}: {name} is not a metric of the agent",
                a["alert"]
            );
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let rules = prom.api("rules");
        let evaluated: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(evaluated.len(), alerts().len(), "{rules}");
        if evaluated.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            evaluated.iter().all(|r| r["health"] != "err"),
            "a rule fails on real data: {rules:#}"
        );
        assert!(Instant::now() < deadline, "rules not evaluated: {rules:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A ready agent raises nothing. Once its store is unusable, it is not ready: the alert is
    // pending for this node (it fires after 10 minutes of that).
    let alerts_now = prom.query("ALERTS").unwrap();
    assert!(
        alerts_now
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["metric"]["alertname"] != "CoredumpAgentNotReady"),
        "{alerts_now}"
    );
    std::fs::remove_dir_all(&node.store).unwrap();
    std::fs::write(&node.store, b"not a directory").unwrap();
    let pending = prom.wait_for(
        r#"ALERTS{alertname="CoredumpAgentNotReady", alertstate="pending"}"#,
        WAIT,
        |v| !v.is_empty(),
    );
    assert_eq!(pending[0]["metric"]["node"], NODE, "{pending:?}");
    assert_eq!(pending[0]["metric"]["pod"], AGENT_POD, "{pending:?}");
    std::fs::remove_file(&node.store).unwrap();
    assert!(agent.sigterm().success());
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn a_live_scrape_passes_promtool_check_metrics() {
    let test = "a_live_scrape_passes_promtool_check_metrics";
    if !require_root(test) || !prometheus::require(test) {
        return;
    }
    let node = Node::new("mon-lint");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = node.start(&listen);
    // A crash, so that the labelled families have samples too.
    crash("segv", None);
    let deadline = Instant::now() + WAIT;
    while !http_get(&listen, "/metrics", &[])
        .1
        .contains("coredump_agent_upload_duration_seconds_count 1")
    {
        assert!(
            Instant::now() < deadline,
            "the crash was not stored:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let tmp = TempDir::new("mon-lint-scrape");
    // promtool reads the Prometheus text format, which the agent serves to a client that does
    // not ask for OpenMetrics. Prometheus does ask for it; that its scrapes parse is checked by
    // prometheus_counts_real_crashes_…, which asserts that its target has no scrape error.
    let (status, openmetrics) = http_get(&listen, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    let samples = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            // A gauge that may move between two scrapes.
            .filter(|l| !l.starts_with("coredump_agent_probe_ring_buffer_used_bytes"))
            .map(str::to_owned)
            .collect()
    };
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
        let (status, body) = http_get(&listen, "/metrics", &headers);
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE coredump_agent_crashes_total counter"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE coredump_agent_build_info gauge"),
            "{body}"
        );
        assert_eq!(
            samples(&body),
            samples(&openmetrics),
            "the same samples in both formats"
        );
        let file = tmp.join("scrape.txt");
        std::fs::write(&file, &body).unwrap();
        let out = std::process::Command::new(prometheus::PROMTOOL)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .expect("running promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics (Accept: {accept:?}):\n{said}\n--- scrape ---\n{body}"
        );
    }
    assert!(agent.sigterm().success());
}

#[test]
#[ignore = "needs root (BPF, cgroups, core_pattern): cargo xtask test runs it"]
fn idle_connections_do_not_stop_healthz_and_the_agents_files_stay_bounded() {
    let test = "idle_connections_do_not_stop_healthz_and_the_agents_files_stay_bounded";
    if !require_root(test) {
        return;
    }
    // The kubelet's strictest timeout for the agent's probes (deploy/base: startupProbe).
    const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
    const IDLE: usize = 2000;
    coredump_tests::raise_open_files_limit(IDLE as u64 + 512);
    let node = Node::new("mon-idle");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agent = node.start(&listen);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds(agent.pid());
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(std::net::TcpStream::connect(&listen).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = fds(agent.pid());
    // The agent closes the oldest idle connections beyond 256 (health::MAX_IDLE).
    assert!(
        held <= before + 256 + 16,
        "with {IDLE} idle connections the agent holds {held} descriptors (from {before})"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let started = Instant::now();
        let (status, body) = http_get(&listen, path, &[]);
        let took = started.elapsed();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(took < PROBE_TIMEOUT, "{path} answered after {took:?}");
    }
    drop(idle);
    let deadline = Instant::now() + WAIT;
    while fds(agent.pid()) > before + 4 {
        assert!(
            Instant::now() < deadline,
            "the agent still holds {} descriptors (from {before})",
            fds(agent.pid())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.sigterm().success());
}
