//! metrics: the agent's Prometheus metrics, through `prometheus-client` (the Prometheus
//! project's Rust client), served as OpenMetrics text (or Prometheus text 0.0.4 to a scraper
//! that asks for it) by [`crate::health`].
//!
//! Every metric is `coredump_agent_…`, counters end in `_total`, units are in the names. Crashes
//! are counted by namespace, signal and outcome: the namespace label takes at most
//! `--metrics-max-namespaces` distinct values, then `other`, so a node running thousands of
//! namespaces cannot blow up a Prometheus.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::{identity::Workload, record::Record};

/// What became of a crash.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are snake_case")]
pub enum Outcome {
    /// Its dump stored, attested.
    stored,
    /// Its dump stored, not attested (no kernel crash event vouched for it).
    unattested,
    /// Recorded without a dump (none came, or it was refused for the disk).
    crash_only,
    /// Recorded, its dump dropped by the per-container rate limit.
    rate_limited,
    /// A file in the dump directory moved aside (hostile, too large, not attested).
    quarantined,
    /// A dump that cannot be stored, set aside.
    parked,
}

/// Labels of [`Metrics::crashes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrashLabels {
    /// The pod's namespace; `_host` outside pods, `_unknown`, or `other` beyond the cap.
    pub namespace: String,
    /// `SIGSEGV`, …, or `unknown`.
    pub signal: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// A compression label: `zstd`, `gzip`, …, `none`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompressionLabels {
    /// The compression.
    pub compression: String,
}

/// A reason label (why a file was rejected, how a store failed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: String,
}

/// Labels of [`Metrics::crash_signatures`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabels {
    /// The crash signature (16 hex digits), `none` without one, or `other` beyond the cap.
    pub signature: String,
    /// Where it crashed: `SIGSEGV in f ← g ← main` (empty for `other`).
    pub summary: String,
}

/// The build and the node, as labels of an info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Agent version.
    pub version: String,
    /// `uname -r`.
    pub kernel: String,
    /// The probe's hook, or `none`.
    pub hook: String,
    /// The intake in use.
    pub intake: String,
}

/// Namespace label values with a meaning of their own.
const HOST: &str = "_host";
const UNKNOWN: &str = "_unknown";
const OTHER: &str = "other";
/// Default of `--metrics-max-namespaces`.
pub const DEFAULT_MAX_NAMESPACES: usize = 100;
/// Signatures with a label of their own; the others are `other`.
pub const MAX_SIGNATURES: usize = 200;
/// Longest summary label.
const MAX_SUMMARY_LABEL: usize = 200;

/// Every metric of the agent, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Crashes by namespace, signal and outcome.
    pub crashes: Family<CrashLabels, Counter>,
    /// Crash events taken in from the kernel probe.
    pub crash_events: Counter,
    /// Crash events not taken in: their cgroup was over its budget (a crash loop).
    pub crash_events_throttled: Counter,
    /// Crash events the kernel dropped because the probe's ring buffer was full.
    pub crash_events_lost: Counter,
    /// Bytes of dumps as the kernel wrote them, by the compression they arrived in.
    pub dump_bytes_in: Family<CompressionLabels, Counter>,
    /// Bytes stored, by the compression they are stored in.
    pub dump_bytes_out: Family<CompressionLabels, Counter>,
    /// How long a dump's upload took (its last attempt).
    pub upload_seconds: Histogram,
    /// From the crash to its dump (or record) being stored.
    pub crash_to_stored_seconds: Histogram,
    /// Records spooled and not stored yet.
    pub spool_depth: Gauge,
    /// Age of the oldest spooled record.
    pub spool_oldest_seconds: Gauge,
    /// Store operations that failed (each retry counts), by class.
    pub store_errors: Family<ReasonLabels, Counter>,
    /// Files of the dump directory rejected, by reason.
    pub files_rejected: Family<ReasonLabels, Counter>,
    /// Dumps left waiting because the disk was nearly full.
    pub deferred_low_disk: Counter,
    /// 1 while the kernel probe is attached.
    pub probe_attached: Gauge,
    /// Bytes of the probe's ring buffer written and not read yet (at scrape time).
    pub ring_used_bytes: Gauge,
    /// Size of the probe's ring buffer.
    pub ring_capacity_bytes: Gauge,
    /// 1 while the last store check succeeded.
    pub store_reachable: Gauge,
    /// 1 while the agent is ready (what /readyz says).
    pub ready: Gauge,
    /// Crash reports built, by status: `complete`, `partial` (something missing, said in the
    /// report), `failed` (no backtrace at all).
    pub reports: Family<ReasonLabels, Counter>,
    /// How long building a report took.
    pub report_seconds: Histogram,
    /// Crashes by signature (at most [`MAX_SIGNATURES`], then `other`).
    pub crash_signatures: Family<SignatureLabels, Counter>,
    /// Module files, by what became of them: `uploaded`, `present` (stored before),
    /// `skipped` (limits, no build-id), `failed`.
    pub modules: Family<ReasonLabels, Counter>,
    /// Bytes of module files uploaded.
    pub module_bytes: Counter,
    signatures: Mutex<HashSet<String>>,
    lost_seen: AtomicI64,
    max_namespaces: AtomicUsize,
    namespaces: Mutex<HashSet<String>>,
    ring_fill: Mutex<Option<crate::sys::RingFill>>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("coredump_agent");
        let crashes = Family::default();
        registry.register(
            "crashes",
            "Crashes, by the crashed pod's namespace, the signal, and what became of them",
            crashes.clone(),
        );
        let crash_events = Counter::default();
        registry.register(
            "crash_events",
            "Crash events taken in from the kernel probe",
            crash_events.clone(),
        );
        let crash_events_throttled = Counter::default();
        registry.register(
            "crash_events_throttled",
            "Crash events not taken in because their cgroup crashed in a loop (over its budget)",
            crash_events_throttled.clone(),
        );
        let crash_events_lost = Counter::default();
        registry.register(
            "crash_events_lost",
            "Crash events the kernel dropped: the probe's ring buffer was full",
            crash_events_lost.clone(),
        );
        let dump_bytes_in = Family::default();
        registry.register_with_unit(
            "dump_in",
            "Bytes of dumps as the kernel wrote them, by the compression they arrived in",
            Unit::Bytes,
            dump_bytes_in.clone(),
        );
        let dump_bytes_out = Family::default();
        registry.register_with_unit(
            "dump_stored",
            "Bytes stored, by the compression they are stored in",
            Unit::Bytes,
            dump_bytes_out.clone(),
        );
        let upload_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register_with_unit(
            "upload_duration",
            "How long storing a dump and its record took",
            Unit::Seconds,
            upload_seconds.clone(),
        );
        let crash_to_stored_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register_with_unit(
            "crash_to_stored",
            "Time from a crash to its dump (or record) stored",
            Unit::Seconds,
            crash_to_stored_seconds.clone(),
        );
        let spool_depth = Gauge::default();
        registry.register(
            "spool_depth",
            "Records spooled and not stored yet",
            spool_depth.clone(),
        );
        let spool_oldest_seconds = Gauge::default();
        registry.register_with_unit(
            "spool_oldest_age",
            "Age of the oldest record spooled and not stored yet",
            Unit::Seconds,
            spool_oldest_seconds.clone(),
        );
        let store_errors = Family::default();
        registry.register(
            "store_errors",
            "Store operations that failed, by class (each retry counts)",
            store_errors.clone(),
        );
        let files_rejected = Family::default();
        registry.register(
            "files_rejected",
            "Files of the dump directory rejected, by reason",
            files_rejected.clone(),
        );
        let deferred_low_disk = Counter::default();
        registry.register(
            "deferred_low_disk",
            "Dumps left waiting because the disk was nearly full",
            deferred_low_disk.clone(),
        );
        let probe_attached = Gauge::default();
        registry.register(
            "probe_attached",
            "1 while the kernel crash probe is attached",
            probe_attached.clone(),
        );
        let ring_used_bytes = Gauge::default();
        registry.register_with_unit(
            "probe_ring_buffer_used",
            "Bytes of the kernel probe's ring buffer written and not read yet: at the capacity, crash events are lost",
            Unit::Bytes,
            ring_used_bytes.clone(),
        );
        let ring_capacity_bytes = Gauge::default();
        registry.register_with_unit(
            "probe_ring_buffer_capacity",
            "Size of the kernel probe's ring buffer",
            Unit::Bytes,
            ring_capacity_bytes.clone(),
        );
        let store_reachable = Gauge::default();
        registry.register(
            "store_reachable",
            "1 while the last store check succeeded",
            store_reachable.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the agent is ready (/readyz)",
            ready.clone(),
        );
        let reports = Family::default();
        registry.register(
            "reports",
            "Crash reports built, by status (complete, partial, failed)",
            reports.clone(),
        );
        let report_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "report_duration",
            "How long building a crash report took",
            Unit::Seconds,
            report_seconds.clone(),
        );
        let crash_signatures = Family::default();
        registry.register(
            "crash_signatures",
            "Crashes by signature (a hash of the top frames) and where they crashed",
            crash_signatures.clone(),
        );
        let modules = Family::default();
        registry.register(
            "modules",
            "Module files of crashed processes, by what became of them",
            modules.clone(),
        );
        let module_bytes = Counter::default();
        registry.register_with_unit(
            "module_uploaded",
            "Bytes of module files uploaded",
            Unit::Bytes,
            module_bytes.clone(),
        );
        Self {
            registry,
            reports,
            report_seconds,
            crash_signatures,
            modules,
            module_bytes,
            signatures: Mutex::new(HashSet::new()),
            crashes,
            crash_events,
            crash_events_throttled,
            crash_events_lost,
            dump_bytes_in,
            dump_bytes_out,
            upload_seconds,
            crash_to_stored_seconds,
            spool_depth,
            spool_oldest_seconds,
            store_errors,
            files_rejected,
            deferred_low_disk,
            probe_attached,
            ring_used_bytes,
            ring_capacity_bytes,
            store_reachable,
            ready,
            lost_seen: AtomicI64::new(0),
            max_namespaces: AtomicUsize::new(DEFAULT_MAX_NAMESPACES),
            namespaces: Mutex::new(HashSet::new()),
            ring_fill: Mutex::new(None),
        }
    }

    /// Sets the build info (at start, once the hook and intake are known).
    pub fn set_build(&self, labels: BuildLabels) {
        BUILD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(labels);
    }

    /// The probe's ring buffer, read at each scrape for its fill.
    pub fn set_ring_fill(&self, fill: crate::sys::RingFill) {
        self.ring_capacity_bytes
            .set(i64::try_from(fill.capacity()).unwrap_or(i64::MAX));
        *self
            .ring_fill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fill);
    }

    /// At most this many namespaces get a label of their own.
    pub fn set_max_namespaces(&self, n: usize) {
        self.max_namespaces.store(n, Ordering::Relaxed);
    }

    /// The namespace label of a record: its pod's namespace (an ECS task's family, the unit
    /// ECS deploys) while the cap allows, else `other`; `_host` outside pods and tasks,
    /// `_unknown` when the kernel did not say.
    pub fn namespace(&self, record: &Record) -> String {
        let id = &record.identity;
        let (named, in_workload) = match &id.workload {
            Workload::Kubernetes(pod) => (pod.namespace.as_ref(), true),
            Workload::Ecs(task) => (task.family.as_ref(), true),
            Workload::Host(_) => (None, false),
        };
        let Some(ns) = named else {
            // Not attested, the cgroup gone, or a pod or task whose name is unknown: not a
            // host process.
            let unknown = !record.attestation.attested || id.unresolved.is_some() || in_workload;
            return if unknown { UNKNOWN } else { HOST }.to_owned();
        };
        let mut seen = self
            .namespaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(ns) {
            return ns.clone();
        }
        if seen.len() < self.max_namespaces.load(Ordering::Relaxed) {
            seen.insert(ns.clone());
            return ns.clone();
        }
        OTHER.to_owned()
    }

    /// Counts a crash's outcome.
    pub fn crash(&self, record: &Record, outcome: Outcome) {
        let labels = CrashLabels {
            namespace: self.namespace(record),
            signal: record
                .signal()
                .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            outcome,
        };
        self.crashes.get_or_create(&labels).inc();
    }

    /// Counts a crash report: its status, time, and the crash's signature.
    pub fn report(&self, status: &str, seconds: f64, report: &crate::report::Report) {
        self.reports
            .get_or_create(&ReasonLabels {
                reason: status.to_owned(),
            })
            .inc();
        self.report_seconds.observe(seconds);
        let labels = match &report.signature {
            None => SignatureLabels {
                signature: "none".into(),
                summary: String::new(),
            },
            Some(sig) => {
                let mut seen = self
                    .signatures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if seen.contains(sig) || seen.len() < MAX_SIGNATURES {
                    seen.insert(sig.clone());
                    let summary = report.summary.clone().unwrap_or_default();
                    SignatureLabels {
                        signature: sig.clone(),
                        summary: summary.chars().take(MAX_SUMMARY_LABEL).collect(),
                    }
                } else {
                    SignatureLabels {
                        signature: OTHER.into(),
                        summary: String::new(),
                    }
                }
            }
        };
        self.crash_signatures.get_or_create(&labels).inc();
    }

    /// Counts a module file by what became of it.
    pub fn module(&self, outcome: &str) {
        self.modules
            .get_or_create(&ReasonLabels {
                reason: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a file rejected by the dump directory's checks.
    pub fn reject(&self, reason: &str) {
        self.files_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a failed store operation by its class.
    pub fn store_error(&self, class: &str) {
        self.store_errors
            .get_or_create(&ReasonLabels {
                reason: class.to_owned(),
            })
            .inc();
    }

    /// The kernel's running count of lost events: counts what is new.
    pub fn lost_total(&self, total: u64) {
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        let before = self.lost_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.crash_events_lost.inc_by((total - before) as u64);
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        if let Some(fill) = self
            .ring_fill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            self.ring_used_bytes
                .set(i64::try_from(fill.used()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let mut build = Registry::with_prefix("coredump_agent");
        if let Some(labels) = BUILD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            build.register(
                "build",
                "The agent's version, kernel, probe hook and intake",
                Info::new(labels),
            );
        }
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &build);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text, for a scraper that does not
/// take OpenMetrics (`promtool check metrics`, older clients): the same samples, with the
/// families named as that format names them. A counter family is named after its `_total`
/// samples and an info family after its `_info` sample (a gauge there); `# UNIT` and `# EOF`
/// go, and so do `_created` samples, which that format has no place for.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    // The family being written, when its samples need a suffix checked: (name, kind).
    let mut family: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (renamed, kind_004) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                // OpenMetrics escapes quotes in HELP; the text format does not.
                out.push_str(&format!(
                    "# HELP {renamed} {}\n",
                    text.replace("\\\"", "\"")
                ));
            }
            out.push_str(&format!("# TYPE {renamed} {kind_004}\n"));
            family = Some((name, kind));
            continue;
        }
        if let Some((name, "counter")) = family {
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            if sample == format!("{name}_created") {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The build info's labels, set once at start.
static BUILD: Mutex<Option<BuildLabels>> = Mutex::new(None);

/// The process's metrics.
pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_beyond_the_cap_are_other() {
        let m = Metrics::new();
        m.set_max_namespaces(2);
        let mut r: Record = serde_json::from_value(serde_json::json!({
            "schema": 1, "id": "x", "node": "n", "crash": null,
            "attestation": {"attested": true, "reason": ""}, "dump": null,
            "agent": {"version": "0", "kernel": "k"}
        }))
        .unwrap();
        assert_eq!(m.namespace(&r), "_host");
        for (ns, want) in [("a", "a"), ("b", "b"), ("c", "other"), ("a", "a")] {
            r.identity.workload = crate::identity::Workload::Kubernetes(crate::identity::KubePod {
                namespace: Some(ns.into()),
                ..Default::default()
            });
            assert_eq!(m.namespace(&r), want);
        }
        m.crash(&r, Outcome::stored);
        let text = m.render();
        assert!(
            text.contains(
                r#"coredump_agent_crashes_total{namespace="a",signal="unknown",outcome="stored"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_text_format_names_counters_and_info_by_their_samples() {
        let openmetrics = "# HELP x_build The build.\n# TYPE x_build info\nx_build_info{v=\"1\"} 1\n\
            # HELP x_crashes Crashes \\\"here\\\".\n# TYPE x_crashes counter\n\
            x_crashes_total{ns=\"a\"} 2\nx_crashes_created{ns=\"a\"} 1.7e9\n\
            # HELP x_wait_seconds Wait.\n# TYPE x_wait_seconds histogram\n# UNIT x_wait_seconds seconds\n\
            x_wait_seconds_sum 1\nx_wait_seconds_count 1\nx_wait_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP x_build_info The build.\n# TYPE x_build_info gauge\nx_build_info{v=\"1\"} 1\n\
             # HELP x_crashes_total Crashes \"here\".\n# TYPE x_crashes_total counter\n\
             x_crashes_total{ns=\"a\"} 2\n\
             # HELP x_wait_seconds Wait.\n# TYPE x_wait_seconds histogram\n\
             x_wait_seconds_sum 1\nx_wait_seconds_count 1\nx_wait_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
