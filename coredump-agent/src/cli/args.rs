//! Command-line arguments (clap derive). Every flag has a `COREDUMP_*` environment fallback.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::probe::HookChoice;

/// Collects core dumps on Kubernetes nodes: kernel-attested crash identity (eBPF),
/// pod identity from the crash's cgroup, and streaming upload to S3 with pod tags.
#[derive(Debug, Parser)]
#[command(name = "coredump-agent", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success or found, 1 nothing matched or a check failed, \
2 usage or runtime error.\nLogging: COREDUMP_LOG=debug (tracing filter syntax)."
)]
pub struct Args {
    /// Log format on stderr.
    #[arg(long, global = true, env = "COREDUMP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the kernel crash probe and print each crash as one JSON line until SIGINT/SIGTERM.
    ///
    /// The first thing to run on a new node: `kill -SEGV` any process (or crash one) and a line
    /// appears within a second. Needs root (or CAP_BPF + CAP_PERFMON).
    Probe(ProbeArgs),
    /// Run the agent: watch the dump directory, join each dump with its kernel crash event,
    /// name the pod, and store it (S3 or a local folder) with the pod's identity as tags.
    ///
    /// A dump is deleted only after the store confirmed it. Restart-safe: joined records are
    /// spooled in the state dir, and dumps already in the dump dir are processed at start.
    ///
    /// Example (dev node, local store, core_pattern installed and restored on exit):
    ///   coredump-agent run --dump-dir /tmp/dumps --dest /tmp/store --install-core-pattern
    Run(Box<RunArgs>),
}

/// `coredump-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory the kernel writes dumps into (what core_pattern points at). When the agent
    /// creates it, it is made mode 1733: any user can create a dump, none can list or delete
    /// another's.
    #[arg(
        long,
        env = "COREDUMP_DUMP_DIR",
        default_value = "/var/lib/coredump-agent/dumps"
    )]
    pub dump_dir: PathBuf,
    /// Where dumps go: `s3://bucket/prefix`, `file:///path` or a plain path. Default: a local
    /// store in `<state-dir>/store`.
    #[arg(long, env = "COREDUMP_DEST")]
    pub dest: Option<String>,
    /// The agent's own state: spool of accepted dumps, crash journal, core_pattern backup.
    #[arg(
        long,
        env = "COREDUMP_STATE_DIR",
        default_value = "/var/lib/coredump-agent"
    )]
    pub state_dir: PathBuf,
    /// This node's name, for keys and tags. Default: $NODE_NAME (downward API), else the
    /// hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Cluster name, stored as the `cluster` tag.
    #[arg(long, env = "COREDUMP_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// The core_pattern the dump file names come from. Default: the live
    /// /proc/sys/kernel/core_pattern. Needed when a pipe helper's command line does not show
    /// the file it writes: give the helper's file template, e.g. `/dumps/core-%e-%t-%p-%s.gz`.
    #[arg(long, env = "COREDUMP_CORE_PATTERN")]
    pub core_pattern: Option<String>,
    /// Point kernel.core_pattern at --dump-dir (`<dump-dir>/core.%P.%I.%s.%t.%e`), backing up
    /// the previous value in the state dir and restoring it on SIGINT/SIGTERM. Idempotent: a
    /// restart after a crash keeps the original backup.
    #[arg(long, env = "COREDUMP_INSTALL_CORE_PATTERN")]
    pub install_core_pattern: bool,
    /// Keep stored dumps in `<dump-dir>/stored/` instead of deleting them.
    #[arg(long, env = "COREDUMP_KEEP_LOCAL")]
    pub keep_local: bool,
    /// Larger dumps are not stored: moved to `<dump-dir>/quarantine/` (e.g. 64GiB, 500M).
    #[arg(long, env = "COREDUMP_MAX_DUMP_SIZE", value_parser = parse_bytes, default_value = "64GiB")]
    pub max_dump_size: u64,
    /// While the dump directory's filesystem has less free space, new dumps wait there
    /// untouched until space is freed (0 disables).
    #[arg(long, env = "COREDUMP_MIN_FREE_DISK", value_parser = parse_bytes, default_value = "1GiB")]
    pub min_free_disk: u64,
    /// At most this many dumps per container per hour; beyond, the crash is recorded without
    /// its dump and the dump is deleted (crash loops). 0: no limit.
    #[arg(long, env = "COREDUMP_MAX_DUMPS_PER_HOUR", default_value_t = 10)]
    pub max_dumps_per_hour: u32,
    /// Fail to start without the kernel probe, and quarantine dumps no crash event vouches for
    /// instead of storing them as not attested.
    #[arg(long, env = "COREDUMP_REQUIRE_ATTESTATION")]
    pub require_attestation: bool,
    /// Do not load the kernel probe (degraded mode: dumps are stored, not attested).
    #[arg(
        long,
        env = "COREDUMP_NO_PROBE",
        conflicts_with = "require_attestation"
    )]
    pub no_probe: bool,
    /// Kernel hook for the probe.
    #[arg(long, env = "COREDUMP_HOOK", value_enum, default_value_t = HookChoice::Auto)]
    pub hook: HookChoice,
    /// How long a finished dump waits for its crash event before it is stored unattested.
    #[arg(long, env = "COREDUMP_EVENT_WAIT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub event_wait: Duration,
    /// How long a crash waits for its dump to appear before it is recorded as a crash
    /// without a dump (extended while a matching file is still being written).
    #[arg(long, env = "COREDUMP_DUMP_WAIT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub dump_wait: Duration,
    /// Dumps uploaded at the same time.
    #[arg(long, env = "COREDUMP_UPLOADS", default_value_t = 2)]
    pub uploads: usize,
    /// On SIGTERM, how long uploads in flight may go on before they are left for the next
    /// start (keep below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "COREDUMP_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
}

/// Parses a byte size: `1024`, `512K`, `10M`, `2G`, `1T`, with optional `iB`/`B` (all
/// binary multiples).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 1048576, 512M, 64GiB)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown size unit in `{s}` (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `coredump-agent probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Kernel hook: `auto` tries the BTF tracepoint, then the classic tracepoint.
    #[arg(long, env = "COREDUMP_HOOK", value_enum, default_value_t = HookChoice::Auto)]
    pub hook: HookChoice,
    /// Exit after this many crashes (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }

    #[test]
    fn probe_defaults_to_auto_hook() {
        let args = Args::try_parse_from(["coredump-agent", "probe"]).unwrap();
        let Command::Probe(p) = args.command else {
            panic!("probe")
        };
        assert_eq!(p.hook, HookChoice::Auto);
        assert_eq!(p.count, None);
    }

    #[test]
    fn run_defaults_and_sizes() {
        let args =
            Args::try_parse_from(["coredump-agent", "run", "--max-dump-size", "2G"]).unwrap();
        let Command::Run(r) = args.command else {
            panic!("run")
        };
        assert_eq!(r.max_dump_size, 2 << 30);
        assert_eq!(r.dump_dir, PathBuf::from("/var/lib/coredump-agent/dumps"));
        assert_eq!(r.event_wait, Duration::from_secs(5));
        assert!(!r.install_core_pattern);
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        assert!(
            Args::try_parse_from([
                "coredump-agent",
                "run",
                "--no-probe",
                "--require-attestation"
            ])
            .is_err()
        );
    }
}
