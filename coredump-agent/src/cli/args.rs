//! Command-line arguments (clap derive). Every flag has a `COREDUMP_*` environment fallback.

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
        let Command::Probe(p) = args.command;
        assert_eq!(p.hook, HookChoice::Auto);
        assert_eq!(p.count, None);
    }
}
