//! metrics: process-wide counters every stage increments, rendered in Prometheus text format.
//!
//! Plain atomics: a handful of counters updated a few times per crash need no registry.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Labels of [`Metrics::rejected`], one counter each (see `intake::Rejection::label`).
pub const REJECTION_LABELS: [&str; 7] = [
    "symlink",
    "not_regular",
    "hard_link",
    "too_large",
    "owner_mismatch",
    "replaced",
    "unknown_name",
];

/// Every counter of the agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Crash events received from the kernel probe.
    pub crashes_seen: Counter,
    /// Finished dump files found.
    pub dumps_detected: Counter,
    /// Dumps stored.
    pub dumps_stored: Counter,
    /// Bytes stored (after compression).
    pub bytes_stored: Counter,
    /// Records of crashes that left no dump.
    pub crashes_without_dump: Counter,
    /// Dumps stored without kernel attestation.
    pub not_attested: Counter,
    /// Dumps dropped by the per-container rate limit (their crash record is kept).
    pub rate_limited: Counter,
    /// Dumps left waiting because the disk is nearly full.
    pub deferred_low_disk: Counter,
    /// Files rejected by intake, by reason (index into [`REJECTION_LABELS`]).
    pub rejected: [Counter; 7],
    /// Store operations that failed (each retry counts).
    pub store_failures: Counter,
    /// Crash events the kernel dropped because the ring buffer was full.
    pub ring_buffer_drops: Gauge,
    /// Records in the spool (accepted, not yet stored).
    pub spool_depth: Gauge,
    /// Bytes of dumps in the spool.
    pub spool_bytes: Gauge,
    /// Dumps set aside because they cannot be stored (they changed while read, …).
    pub dumps_parked: Counter,
    /// Crash events not taken in: their cgroup was over its budget (a crash loop).
    pub crashes_throttled: Counter,
}

impl Metrics {
    /// Counts a rejection by its label.
    pub fn reject(&self, label: &str) {
        if let Some(i) = REJECTION_LABELS.iter().position(|l| *l == label) {
            self.rejected[i].inc();
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP coredump_{name} {help}\n# TYPE coredump_{name} {kind}\ncoredump_{name} {v}"
            );
        };
        one(
            "crashes_seen_total",
            "counter",
            "Crash events from the kernel probe.",
            self.crashes_seen.get(),
        );
        one(
            "dumps_detected_total",
            "counter",
            "Finished dump files found.",
            self.dumps_detected.get(),
        );
        one(
            "dumps_stored_total",
            "counter",
            "Dumps stored.",
            self.dumps_stored.get(),
        );
        one(
            "bytes_stored_total",
            "counter",
            "Bytes stored.",
            self.bytes_stored.get(),
        );
        one(
            "crashes_throttled_total",
            "counter",
            "Crash events not taken in because their cgroup crashed in a loop (over its budget).",
            self.crashes_throttled.get(),
        );
        one(
            "dumps_parked_total",
            "counter",
            "Dumps set aside (state dir parked/) because they cannot be stored however often tried.",
            self.dumps_parked.get(),
        );
        one(
            "crashes_without_dump_total",
            "counter",
            "Crashes that left no dump.",
            self.crashes_without_dump.get(),
        );
        one(
            "not_attested_total",
            "counter",
            "Dumps stored without kernel attestation.",
            self.not_attested.get(),
        );
        one(
            "rate_limited_total",
            "counter",
            "Dumps dropped by the per-container rate limit.",
            self.rate_limited.get(),
        );
        one(
            "deferred_low_disk_total",
            "counter",
            "Dumps deferred because the disk is nearly full.",
            self.deferred_low_disk.get(),
        );
        one(
            "store_failures_total",
            "counter",
            "Failed store operations.",
            self.store_failures.get(),
        );
        one(
            "ring_buffer_drops",
            "gauge",
            "Crash events lost in the kernel ring buffer.",
            self.ring_buffer_drops.get(),
        );
        one(
            "spool_depth",
            "gauge",
            "Records accepted and not yet stored.",
            self.spool_depth.get(),
        );
        one(
            "spool_bytes",
            "gauge",
            "Bytes of dumps accepted and not yet stored.",
            self.spool_bytes.get(),
        );
        let _ = writeln!(
            out,
            "# HELP coredump_rejected_files_total Hostile or invalid files in the dump directory.\n# TYPE coredump_rejected_files_total counter"
        );
        for (label, c) in REJECTION_LABELS.iter().zip(&self.rejected) {
            let _ = writeln!(
                out,
                "coredump_rejected_files_total{{reason=\"{label}\"}} {}",
                c.get()
            );
        }
        out
    }
}

/// The agent's counters.
pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);
