//! Command-line arguments (clap derive). Every flag has a `COREDUMP_*` environment fallback.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};

use crate::{
    core_pattern::{self, Setting, Sysctl},
    crash::Signal,
    identity::{ecs, kubelet},
    intake::{Intake, IntakeMode},
    probe::HookChoice,
    store::{AnyStore, ChecksumMode, ConnectOptions, Dest, Zstd, compress, s3::SignPayload},
};

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
    #[command(after_help = concat!(
        "Example (dev node, local store, core_pattern installed and restored on exit):\n",
        "  coredump-agent run --dump-dir /tmp/dumps --dest /tmp/store --install-core-pattern",
    ))]
    Run(Box<RunArgs>),
    /// Find stored dumps by pod, ECS task, container, node, process, signal, time or any tag:
    /// a coredumpctl for the cluster. Newest first.
    ///
    /// --namespace and --pod (--ecs-cluster and --task-family) narrow the listing by key
    /// prefix, so finding one pod's dumps costs requests in proportion to that pod's dumps,
    /// not to the bucket; other filters are confirmed on each object's tags, many reads at
    /// once.
    ///
    /// --build-id, --signature and --group-by read what crashed from each dump's record (the
    /// tags have no room for it): one more request for every dump left after the other
    /// filters, so narrow with --namespace/--pod and --since first on a big bucket.
    ///
    /// Exit codes: 0 found, 1 nothing matched, 2 error (including unreadable tags and no match).
    #[command(after_help = concat!(
        "Examples:\n",
        "  coredump-agent find --dest s3://dumps/prod --namespace shop --pod web-7d9f --since 2d\n",
        "  coredump-agent find --dest s3://dumps/prod --ecs-cluster prod --task-family web\n",
        "  coredump-agent find --signal SIGABRT --json | jq -r .key\n",
        "  coredump-agent find --namespace shop --since 7d --group-by signature\n",
        "  coredump-agent find --signature 3f2a9c01 --since 1d",
    ))]
    Find(Box<FindArgs>),
    /// Download one dump: decompressed (unless --raw), size and checksum verified, written to a
    /// temporary name and renamed only when complete.
    ///
    /// Exit codes: 0 downloaded, 2 error (missing key, checksum mismatch, …).
    #[command(after_help = concat!(
        "Examples:\n",
        "  coredump-agent get --dest s3://dumps shop/web-7d9f/20261126T082627Z_app_server_7_SIGSEGV.core.zst\n",
        "  coredump-agent get s3://dumps/shop/web-7d9f/…core.zst -o - | gdb -c /dev/stdin ./server",
    ))]
    Get(Box<GetArgs>),
    /// Show one dump's tags, metadata and its stored record (exe, cmdline, pod, image, cgroup,
    /// kernel attestation) without downloading the core.
    ///
    /// Exit codes: 0 shown, 1 no such object, 2 error.
    Info(Box<InfoArgs>),
    /// Open a stored dump in gdb (or lldb) with the exact executable and libraries it ran:
    /// the `coredumpctl debug` of the cluster.
    ///
    /// Downloads the core and every module file the agent stored for it (by build-id) into a
    /// temporary sysroot, checks each (the core against its record's checksum, each module
    /// against the build-id the core names), and runs the debugger with `set sysroot`,
    /// `solib-search-path`, the executable and the core: `bt` works on a machine that never
    /// saw the image. Removed afterwards unless --keep. Arguments after `--` go to the
    /// debugger.
    ///
    /// Exit codes: 0 the debugger succeeded, 2 error.
    #[command(after_help = concat!(
        "Examples:\n",
        "  coredump-agent debug --dest s3://dumps shop/web-7d9f/20261126T082627Z_app_srv_7_SIGSEGV.core.zst\n",
        "  coredump-agent debug --print-command KEY        # print the command, keep the files\n",
        "  coredump-agent debug KEY -- -batch -ex 'thread apply all bt'\n",
        "  coredump-agent debug --debugger lldb KEY -- --batch -o 'bt all'",
    ))]
    Debug(Box<DebugArgs>),
    /// Put back the kernel settings the agent changed, from its backups in the state dir.
    ///
    /// core_pattern, core_pipe_limit and suid_dumpable, each where it still holds the agent's
    /// value (an operator's change since wins). The agent does this itself on SIGTERM. The
    /// DaemonSet's preStop hook also runs it, so the node's settings come back even if the
    /// agent hangs past its grace period and is killed. Safe to run at any time, and twice:
    /// the running agent then finds its settings already restored. Takes the same flags and
    /// environment as `run`.
    ///
    /// Exit codes: 0 restored (or nothing to restore), 2 error.
    Restore(Box<RestoreArgs>),
    /// Check this node for the agent: each line OK, WARN or FAIL, with the fix.
    ///
    /// BPF and BTF, probe attach, core_pattern, RLIMIT_CORE, suid_dumpable and the sysctls the
    /// agent would set, dump dir and free space, cgroup mount, kubelet log dirs, the Kubernetes
    /// API and the agent's RBAC, and the store. Takes the same flags and environment as `run`,
    /// so in the DaemonSet it checks exactly what the agent will use.
    ///
    /// Exit codes: 0 nothing failed, 1 a check failed, 2 error.
    #[command(after_help = concat!(
        "Example (in the DaemonSet's pod):\n",
        "  kubectl -n coredump-agent exec ds/coredump-agent -- coredump-agent check",
    ))]
    Check(Box<CheckArgs>),
    /// Ask the running agent whether it is healthy: GET its /healthz on --listen (as `run`
    /// reads it, COREDUMP_LISTEN) or --url, once.
    ///
    /// For container health checks where the image has no shell or curl, as an ECS task
    /// definition's healthCheck: ["CMD", "/usr/local/bin/coredump-agent", "health"].
    ///
    /// Exit codes (Docker's): 0 healthy, 1 unhealthy or no answer.
    Health(HealthArgs),
}

/// `coredump-agent health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The address `run` serves /healthz on (its --listen); 0.0.0.0 and [::] are asked on
    /// the loopback address.
    #[arg(long, env = "COREDUMP_LISTEN", default_value = "127.0.0.1:9102")]
    pub listen: std::net::SocketAddr,
    /// The URL to ask instead, e.g. http://127.0.0.1:9102/readyz.
    #[arg(long)]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4s")]
    pub timeout: Duration,
}

impl HealthArgs {
    /// The URL to GET.
    pub fn url(&self) -> Result<hyper::Uri, crate::http::HttpError> {
        if let Some(url) = &self.url {
            return crate::http::parse_url(url);
        }
        local_url(self.listen, "/healthz")
    }
}

/// The URL of `path` on a running agent's `--listen` address, as this host asks it: 0.0.0.0
/// and [::] are asked on the loopback address.
pub fn local_url(
    mut addr: std::net::SocketAddr,
    path: &str,
) -> Result<hyper::Uri, crate::http::HttpError> {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    crate::http::parse_url(&format!("http://{addr}{path}"))
}

/// `coredump-agent find`.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    /// Where to look.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Pod namespace (narrows the listing).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Pod name (narrows the listing together with --namespace).
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Pod UID.
    #[arg(long)]
    pub pod_uid: Option<String>,
    /// Amazon ECS cluster (narrows the listing).
    #[arg(long)]
    pub ecs_cluster: Option<String>,
    /// ECS task definition family (narrows the listing together with --ecs-cluster).
    #[arg(long)]
    pub task_family: Option<String>,
    /// ECS task id (the last part of the task ARN).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Container name (a pod's or an ECS task's).
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Node name.
    #[arg(long)]
    pub node: Option<String>,
    /// Process name (as the kernel reported it, at most 15 characters).
    #[arg(long)]
    pub comm: Option<String>,
    /// Signal: SIGSEGV, SEGV or 11.
    #[arg(long)]
    pub signal: Option<Signal>,
    /// Cluster name.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Any tag, KEY=VALUE; repeat for more.
    #[arg(long, value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
    /// Crashes since: RFC 3339 (2026-11-26T08:00:00Z), a date (2026-11-26) or an age (2h, 3d).
    #[arg(long, value_parser = crate::lookup::parse_time)]
    pub since: Option<std::time::SystemTime>,
    /// Crashes until: same forms as --since.
    #[arg(long, value_parser = crate::lookup::parse_time)]
    pub until: Option<std::time::SystemTime>,
    /// At most this many results (newest first; with --group-by, groups, latest first).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Dumps of a build: a GNU build-id, or its first hex digits, of the executable or of any
    /// library the process had mapped. Reads each candidate's record (one request per dump).
    #[arg(long, value_parser = parse_hex_prefix)]
    pub build_id: Option<String>,
    /// Dumps of one crash: its signature (as `info` and the logs show it), or its first hex
    /// digits. Reads each candidate's record (one request per dump).
    #[arg(long, value_parser = parse_hex_prefix)]
    pub signature: Option<String>,
    /// Show each distinct crash once: its count, first and last time, pods and summary.
    /// Reads each candidate's record (one request per dump).
    #[arg(long, value_enum)]
    pub group_by: Option<GroupBy>,
    /// One JSON object per line: key, size, last_modified, kind, crash_time and every tag (and
    /// the report's signature, summary and build-id when records were read); with
    /// --group-by, one object per group.
    #[arg(long)]
    pub json: bool,
}

/// `--group-by` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// The crash signature: the same crash, however many pods and times.
    Signature,
}

/// A build-id or signature, or the first hex digits of one (at least 4), lowercase.
fn parse_hex_prefix(s: &str) -> Result<String, String> {
    if s.len() >= 4 && s.len() <= 128 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{s}` is not a hex id (or its first 4 or more hex digits)"
        ))
    }
}

/// `coredump-agent get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Where to look (ignored for an s3:// URL).
    #[command(flatten)]
    pub store: StoreArgs,
    /// The object: a key as `find` prints it, or `s3://bucket/key`.
    pub key: String,
    /// Output file, or `-` for stdout. Default: the key's last part, without .zst/.gz.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Do not decompress.
    #[arg(long)]
    pub raw: bool,
    /// Download even when the record beside the dump is missing or unreadable, so the
    /// download cannot be verified (size, sha256).
    #[arg(long)]
    pub no_verify: bool,
    /// With --no-verify, the most a dump may decompress to (otherwise its recorded size).
    #[arg(long, value_parser = parse_bytes, default_value = "64GiB")]
    pub max_size: u64,
    /// No progress bar, no summary line: only errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `coredump-agent info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Where to look.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The object's key, as `find` prints it.
    pub key: String,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `coredump-agent debug`.
#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    /// Where to look.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The dump's key, as `find` prints it.
    pub key: String,
    /// Print the debugger's command line instead of running it (the files are kept).
    #[arg(long)]
    pub print_command: bool,
    /// The debugger.
    #[arg(long, value_enum, default_value_t = Debugger::Gdb)]
    pub debugger: Debugger,
    /// Keep the downloaded files after the debugger exits.
    #[arg(long)]
    pub keep: bool,
    /// Where to make the session's directory (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Largest core accepted when its record does not give its size.
    #[arg(long, value_parser = parse_bytes, default_value = "64GiB")]
    pub max_size: u64,
    /// Arguments for the debugger (after `--`).
    #[arg(last = true)]
    pub debugger_args: Vec<String>,
}

/// `--debugger` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Debugger {
    /// GNU gdb.
    Gdb,
    /// LLVM lldb.
    Lldb,
}

/// `coredump-agent check`: the same node and store settings as `run` (same flags, same
/// environment), so that `check` run in the agent's pod checks exactly what the agent uses.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The store to check.
    #[command(flatten)]
    pub store: StoreArgs,
    /// This node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The running agent's --listen address: its /metrics says how many crash events the
    /// kernel dropped (the probe's ring buffer was full) and how many were over a cgroup's
    /// budget since it started. Without it, the running agent is not asked.
    #[arg(long, env = "COREDUMP_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// This node, as `run` and `check` see it.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// How the kernel hands dumps to the agent, in order of preference (comma-separated; the
    /// first that installs wins):
    ///
    /// `socket`: kernel.core_pattern = `@@<run-dir>/coredump-agent.sock`: the kernel connects
    /// to the agent for every crash (Linux 6.16+). `pipe`: the kernel runs the agent's own
    /// helper (copied to `<state-dir>/bin/`), which hands the dump over. Both reach every
    /// process on the node, mount nothing into any pod, and let the agent refuse a dump
    /// before it is written (rate limit, disk). `file`: the kernel writes into --dump-dir,
    /// which crashing containers must mount (for hosts whose core_pattern is managed
    /// elsewhere). `auto` is socket where the kernel has it, else pipe.
    #[arg(
        long,
        env = "COREDUMP_INTAKE",
        value_enum,
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub intake: Vec<IntakeMode>,
    /// The agent's sockets: the kernel's coredump socket and the pipe helper's. Must be a
    /// path without symlinks in the host's mount namespace (the kernel looks it up there).
    #[arg(long, env = "COREDUMP_RUN_DIR", default_value = "/run/coredump-agent")]
    pub run_dir: PathBuf,
    /// Where dumps the kernel hands over (socket, pipe) are received, compressed, until
    /// stored: the agent's own (mode 0700); mount it into no other pod.
    #[arg(
        long,
        env = "COREDUMP_RECEIVE_DIR",
        default_value = "/var/lib/coredump-agent/received"
    )]
    pub receive_dir: PathBuf,
    /// A mount namespace of the host, from which socket patterns are written when the agent
    /// runs in its own (the kernel takes them only from its initial mount namespace).
    /// Needs CAP_SYS_ADMIN, and the host's pid namespace for the default.
    #[arg(long, env = "COREDUMP_HOST_MOUNT_NS", default_value = "/proc/1/ns/mnt")]
    pub host_mount_ns: PathBuf,
    /// Directory the kernel writes dumps into with file intake (what a file core_pattern
    /// points at). When the agent creates it, it is made mode 1733: any user can create a
    /// dump, none can list or delete another's.
    #[arg(
        long,
        env = "COREDUMP_DUMP_DIR",
        default_value = "/var/lib/coredump-agent/dumps"
    )]
    pub dump_dir: PathBuf,
    /// While the dump directory's filesystem has less free space, new dumps wait there
    /// untouched until space is freed (0 disables).
    #[arg(long, env = "COREDUMP_MIN_FREE_DISK", value_parser = parse_bytes, default_value = "1GiB")]
    pub min_free_disk: u64,
    /// This node's name, for keys and tags, and to watch its pods. Default: $NODE_NAME
    /// (downward API), else the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Kernel hook for the probe: `auto` tries the BTF tracepoint, then the classic one.
    #[arg(long, env = "COREDUMP_HOOK", value_enum, default_value_t = HookChoice::Auto)]
    pub hook: HookChoice,
    /// The host's sysctl tree, holding kernel/core_pattern, kernel/core_uses_pid,
    /// kernel/core_pipe_limit and fs/suid_dumpable. In a pod: the host's /proc/sys mounted
    /// read-write elsewhere (e.g. /host/proc/sys), since container runtimes mount /proc/sys
    /// read-only and refuse mounts inside /proc.
    #[arg(long, env = "COREDUMP_PROC_SYS", default_value = core_pattern::PROC_SYS)]
    pub proc_sys: PathBuf,
    /// The core_pattern the dump file names come from. Default: the live kernel.core_pattern.
    /// Needed when a pipe helper's command line does not show the file it writes: give the
    /// helper's file template, e.g. `/dumps/core-%e-%t-%p-%s.gz`.
    #[arg(long, env = "COREDUMP_CORE_PATTERN")]
    pub core_pattern: Option<String>,
    /// With file intake, point kernel.core_pattern at --dump-dir
    /// (`<dump-dir>/core.%P.%I.%s.%t.%e`), backing up the previous value in the state dir and
    /// restoring it on SIGINT/SIGTERM. Idempotent: a restart after a crash keeps the original
    /// backup. (Socket and pipe intake always install their pattern, the same way.)
    #[arg(long, env = "COREDUMP_INSTALL_CORE_PATTERN")]
    pub install_core_pattern: bool,
    /// Set kernel.core_pipe_limit while the agent runs (backed up and restored like
    /// core_pattern). Only matters for a pipe pattern (`|helper …`): how many helpers run at
    /// once (crashes beyond get no dump), and non-zero keeps /proc/<pid> readable until the
    /// helper is done. Pipe intake sets 64 unless told otherwise.
    #[arg(long, env = "COREDUMP_CORE_PIPE_LIMIT")]
    pub core_pipe_limit: Option<u32>,
    /// Set fs.suid_dumpable while the agent runs (backed up and restored like core_pattern).
    /// With 0, the kernel's default, processes that changed credentials (setuid programs,
    /// daemons that drop privileges, like nginx workers) write no dump at all; 2 dumps them
    /// readable by root only, which is what systemd-coredump sets. 1 is unsafe (dumps owned by
    /// the process's user may leak another user's memory).
    #[arg(long, env = "COREDUMP_SUID_DUMPABLE", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub suid_dumpable: Option<u8>,
    /// Where the host's cgroup v2 hierarchy is mounted, when the agent's container mounts it
    /// elsewhere (e.g. /host/sys/fs/cgroup). Default: the first cgroup2 mount of
    /// /proc/self/mountinfo (/sys/fs/cgroup; /sys/fs/cgroup/unified on hybrid hosts).
    #[arg(long, env = "COREDUMP_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Name pods through the Kubernetes API: a watch of this node's pods, kept in memory, so
    /// nothing is asked at crash time. `auto` uses it when KUBECONFIG is set or the agent runs
    /// in a pod (KUBERNETES_SERVICE_HOST), and goes on without it otherwise; `on` refuses to
    /// start without it; `off` names pods from the kubelet's log files only. Needs get, list
    /// and watch on pods, and --node-name set to the node's Kubernetes name (NODE_NAME from
    /// the downward API: `spec.nodeName`).
    #[arg(long, env = "COREDUMP_KUBE", value_enum, default_value_t = KubeMode::Auto)]
    pub kube: KubeMode,
    /// The kubelet's pod log directories (`<namespace>_<pod>_<uid>/<container>/`), which name
    /// a crash's pod when the API cannot: no API access, or a pod deleted before the watch saw
    /// it. In a container, mount the host's directory (read-only) and point this at it.
    #[arg(long, env = "COREDUMP_POD_LOG_ROOT", default_value = kubelet::DEFAULT_POD_LOG_ROOT)]
    pub pod_log_root: PathBuf,
    /// The kubelet's container log links (`<pod>_<namespace>_<container>-<id>.log`), which
    /// name a crash's container from its id. Only names are read; links are not followed.
    #[arg(long, env = "COREDUMP_CONTAINER_LOG_ROOT", default_value = kubelet::DEFAULT_CONTAINER_LOG_ROOT)]
    pub container_log_root: PathBuf,
    /// Name Amazon ECS tasks through the ECS agent's introspection API (cluster, task ARN,
    /// family, revision, container, image): its task list, kept in memory and refreshed every
    /// --ecs-refresh, so that a known task costs no request at crash time. `auto` uses it
    /// when it answers at start; `on` uses it even if it does not answer yet; `off` never
    /// asks. Without it, a task is named by the task id its cgroup gives. Needs the host's
    /// network (the API listens on the host's 127.0.0.1).
    #[arg(long, env = "COREDUMP_ECS", value_enum, default_value_t = EcsMode::Auto)]
    pub ecs: EcsMode,
    /// The ECS agent's introspection API.
    #[arg(long, env = "COREDUMP_ECS_AGENT_URI", default_value = ecs::introspection::DEFAULT_URI)]
    pub ecs_agent_uri: String,
    /// How often the ECS task list is read (the API shares the ECS agent's rate limit with
    /// the task metadata endpoint).
    #[arg(long, env = "COREDUMP_ECS_REFRESH", value_parser = humantime::parse_duration, default_value = "30s")]
    pub ecs_refresh: Duration,
}

impl NodeArgs {
    /// The sysctl files.
    pub fn sysctl(&self) -> Sysctl {
        Sysctl::under(&self.proc_sys).with_host_mount_ns(Some(self.host_mount_ns.clone()))
    }

    /// The kernel's coredump socket.
    pub fn kernel_socket(&self) -> PathBuf {
        self.run_dir.join(core_pattern::KERNEL_SOCKET)
    }

    /// The pipe helper's socket.
    pub fn helper_socket(&self) -> PathBuf {
        self.run_dir.join(crate::intake::pipe::HELPER_SOCKET)
    }

    /// The intakes to try on this kernel, in order, each with why.
    pub fn intake_candidates(&self) -> Vec<crate::intake::Candidate> {
        let modes = self
            .sysctl()
            .read(core_pattern::Setting::CoreModes)
            .unwrap_or_default();
        crate::intake::candidates(&self.intake, &modes)
    }

    /// The core_pattern dump file names come from: `--core-pattern`, else the live one.
    pub fn dump_name_pattern(&self) -> Result<String, core_pattern::CorePatternError> {
        match &self.core_pattern {
            Some(p) => Ok(p.clone()),
            None => self.sysctl().pattern(),
        }
    }

    /// The sysctl values the flags ask the agent to set for `intake`, in install order.
    /// `pattern` is the core_pattern of socket and pipe intake (file intake installs one with
    /// `--install-core-pattern`).
    pub fn managed_sysctls(
        &self,
        intake: Intake,
        pattern: Option<String>,
    ) -> anyhow::Result<Vec<(Setting, String)>> {
        let mut wanted = Vec::new();
        if intake == Intake::Pipe {
            // Before the pattern: the kernel must wait for the helper from the first crash.
            let limit = self.core_pipe_limit.unwrap_or(DEFAULT_PIPE_LIMIT);
            wanted.push((Setting::CorePipeLimit, limit.to_string()));
        }
        match pattern {
            Some(p) => wanted.push((Setting::CorePattern, p)),
            None if intake == Intake::File && self.install_core_pattern => wanted.push((
                Setting::CorePattern,
                core_pattern::agent_pattern(&self.dump_dir)?,
            )),
            None => {}
        }
        if let Some(limit) = self.core_pipe_limit
            && intake != Intake::Pipe
        {
            wanted.push((Setting::CorePipeLimit, limit.to_string()));
        }
        if let Some(mode) = self.suid_dumpable {
            wanted.push((Setting::SuidDumpable, mode.to_string()));
        }
        Ok(wanted)
    }
}

/// `kernel.core_pipe_limit` with pipe intake when `--core-pipe-limit` is not given: enough
/// helpers at once for a crash storm (beyond, the kernel skips the dump; the probe still
/// records the crash).
pub const DEFAULT_PIPE_LIMIT: u32 = 64;

/// Parses `KEY=VALUE`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// `coredump-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where dumps go, and how to reach it.
    #[command(flatten)]
    pub store: StoreArgs,
    /// This node: its dump directory, kernel settings, cgroups, kubelet files and pods.
    #[command(flatten)]
    pub node: NodeArgs,
    /// Cluster name, stored as the `cluster` tag.
    #[arg(long, env = "COREDUMP_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Keep stored dumps in `<dump-dir>/stored/` instead of deleting them.
    #[arg(long, env = "COREDUMP_KEEP_LOCAL")]
    pub keep_local: bool,
    /// Larger dumps are not stored: moved to `<dump-dir>/quarantine/` (e.g. 64GiB, 500M).
    #[arg(long, env = "COREDUMP_MAX_DUMP_SIZE", value_parser = parse_bytes, default_value = "64GiB")]
    pub max_dump_size: u64,
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
    /// Dumps received from the kernel at the same time (socket, pipe); the kernel holds the
    /// others, with their crashed processes, until a slot is free.
    #[arg(long, env = "COREDUMP_RECEIVES", default_value_t = 4)]
    pub receives: usize,
    /// On SIGTERM, how long uploads in flight may go on before they are left for the next
    /// start (keep below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "COREDUMP_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address, e.g. 0.0.0.0:9102.
    #[arg(long, env = "COREDUMP_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// At most this many namespaces get a label of their own in the crash metrics; the others
    /// are counted as `other` (a Prometheus does not like unbounded label values).
    #[arg(long, env = "COREDUMP_METRICS_MAX_NAMESPACES", default_value_t = crate::metrics::DEFAULT_MAX_NAMESPACES)]
    pub metrics_max_namespaces: usize,
    /// How often the store is checked for /readyz.
    #[arg(long, env = "COREDUMP_STORE_CHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    pub store_check_interval: Duration,
    /// Compress dumps while uploading them: `zstd` (the key ends in `.zst`; metadata
    /// `compression=zstd` and `original-size`) or `none`. Dumps that already are compressed
    /// (gzip, zstd, xz, lz4) are stored as they are.
    #[arg(long, env = "COREDUMP_COMPRESS", value_enum, default_value_t = Compress::Zstd)]
    pub compress: Compress,
    /// zstd level, 1 (fastest) to 19 (smallest).
    #[arg(
        long,
        env = "COREDUMP_COMPRESS_LEVEL",
        default_value_t = compress::DEFAULT_LEVEL,
        value_parser = clap::value_parser!(i32).range(1..=19)
    )]
    pub compress_level: i32,
    /// zstd threads per dump being compressed, each holding ~10 MiB (0: on the calling
    /// thread). Default: one per CPU the agent may use, which in Kubernetes is its CPU limit;
    /// ECS gives a container no CPU limit it can see, so set this there.
    #[arg(long, env = "COREDUMP_COMPRESS_THREADS")]
    pub compress_threads: Option<u32>,
    /// Crash reports and module files.
    #[command(flatten)]
    pub report: ReportArgs,
}

/// `--report`, `--modules`, and their limits.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Build a crash report for each dump (signal, backtrace, modules and build-ids, crash
    /// signature), stored in its record: read from the core as it arrives, with the module
    /// files of the crashed process. `off`: none.
    #[arg(long = "report", env = "COREDUMP_REPORT", value_enum, default_value_t = OnOff::On)]
    pub report: OnOff,
    /// Time for one report. What is not done by then (unwinding, symbols) is left out, and
    /// the report says so; the dump is stored either way.
    #[arg(long, env = "COREDUMP_REPORT_BUDGET", value_parser = humantime::parse_duration, default_value = "10s")]
    pub report_budget: Duration,
    /// Store the executable and libraries of each crashed process, once per build-id, under
    /// `<prefix>/_modules/<build-id>/` (what `coredump-agent debug` needs). `off`: not stored.
    #[arg(long, env = "COREDUMP_MODULES", value_enum, default_value_t = OnOff::On)]
    pub modules: OnOff,
    /// Larger module files are neither stored nor symbolized (the report says which).
    #[arg(long, env = "COREDUMP_MAX_MODULE_SIZE", value_parser = parse_bytes, default_value = "512MiB")]
    pub max_module_size: u64,
    /// At most this many bytes of module files uploaded for one dump.
    #[arg(long, env = "COREDUMP_MAX_MODULES_PER_DUMP", value_parser = parse_bytes, default_value = "2GiB")]
    pub max_modules_per_dump: u64,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl ReportArgs {
    /// Whether reports are built.
    pub fn enabled(&self) -> bool {
        self.report == OnOff::On
    }

    /// How reports are built; private copies of module files go to `scratch`.
    pub fn config(&self, scratch: &std::path::Path) -> crate::report::Config {
        crate::report::Config {
            enabled: self.enabled(),
            budget: self.report_budget,
            scratch: scratch.to_owned(),
            max_module_size: self.max_module_size,
            ..crate::report::Config::default()
        }
    }

    /// How modules are stored.
    pub fn modules(&self) -> crate::report::upload::Config {
        crate::report::upload::Config {
            enabled: self.enabled() && self.modules == OnOff::On,
            max_size: self.max_module_size,
            max_per_dump: self.max_modules_per_dump,
        }
    }
}

/// The store: where dumps go (`run`) or are looked up (`find`, `get`, `info`, `check`).
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Where dumps are: `s3://bucket/prefix`, `file:///path` or a plain path. Default: the
    /// local store in `<state-dir>/store`.
    #[arg(long, env = "COREDUMP_DEST")]
    pub dest: Option<String>,
    /// The agent's state directory.
    #[command(flatten)]
    pub state: StateArgs,
    /// S3 endpoint URL, for S3-compatible stores (MinIO, Ceph, …), e.g. `http://minio:9000`.
    /// Default: AWS, or the AWS SDK's `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` when set.
    /// Credentials and region come from the AWS SDK's usual places (environment, IRSA, EKS Pod
    /// Identity, instance profile).
    #[arg(long, env = "COREDUMP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`) instead of a virtual host per bucket:
    /// what most S3-compatible stores need.
    #[arg(long, env = "COREDUMP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Upload checksums: `when-supported` sends a CRC32C of every part (AWS S3, MinIO and
    /// moto verify it; Ceph radosgw 16 ignores it); `when-required` sends a Content-MD5
    /// instead, which every S3 server verifies, at some more CPU. Either way the checksum goes
    /// as a header, never as an aws-chunked trailer (which radosgw 16 stores as data), and
    /// over plain HTTP each part is signed with its SHA-256.
    #[arg(long, env = "COREDUMP_S3_CHECKSUM", value_enum, default_value_t = ChecksumMode::WhenSupported)]
    pub s3_checksum: ChecksumMode,
    /// Most parts of one upload in flight at once. An upload starts with 4 and adds more while
    /// that makes it faster (a distant store wants many, a saturated one few); parts are read
    /// from files, so the number costs no memory.
    #[arg(long, env = "COREDUMP_S3_MAX_PARTS_IN_FLIGHT", default_value_t = crate::store::s3::MAX_PARTS_IN_FLIGHT, value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    pub s3_max_parts_in_flight: usize,
    /// Hash each request's payload into its signature: `auto` over plain HTTP only (TLS
    /// protects the bytes otherwise), as the AWS CLI does; `never` leaves the bytes to the
    /// signed per-part checksum, which saves a SHA-256 pass here and on the server (see
    /// `cargo xtask bench upload`) but is no defence against tampering on an untrusted network.
    #[arg(long, env = "COREDUMP_S3_SIGN_PAYLOAD", value_enum, default_value_t = SignPayload::Auto)]
    pub s3_sign_payload: SignPayload,
}

impl StoreArgs {
    /// `--state-dir`.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state.state_dir
    }

    /// The destination `--dest` names (or the default local store).
    pub fn dest(&self) -> anyhow::Result<Dest> {
        use anyhow::Context as _;
        match &self.dest {
            Some(d) => d.parse().with_context(|| format!("--dest {d:?}")),
            None => Ok(Dest::Local(self.state_dir().join("store"))),
        }
    }

    /// How to connect. `node` is set by `run`, which also records multipart uploads in
    /// progress in the state dir (lookups do not upload).
    pub fn connect_options(&self, node: Option<String>) -> ConnectOptions {
        ConnectOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_path_style: self.s3_path_style,
            s3_checksum: self.s3_checksum,
            s3_max_parts_in_flight: Some(self.s3_max_parts_in_flight),
            s3_sign_payload: self.s3_sign_payload,
            state_dir: node.is_some().then(|| self.state_dir().to_owned()),
            node,
        }
    }

    /// Opens the store for a lookup: `dest` if given (`get s3://bucket/key`), else `--dest`.
    pub async fn open(&self, dest: Option<&Dest>) -> anyhow::Result<AnyStore> {
        use anyhow::Context as _;
        let dest = match dest {
            Some(d) => d.clone(),
            None => self.dest()?,
        };
        crate::store::connect(&dest, &self.connect_options(None))
            .await
            .with_context(|| format!("connecting to {dest}"))
    }
}

/// Where the agent keeps its state.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The agent's own state: spool of accepted dumps, crash journal, backups of the sysctls
    /// it changed, multipart uploads in progress; the default local store lives here too.
    #[arg(
        long,
        env = "COREDUMP_STATE_DIR",
        default_value = "/var/lib/coredump-agent"
    )]
    pub state_dir: PathBuf,
}

/// `coredump-agent restore`: the same node settings and state dir as `run`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Where the backups are.
    #[command(flatten)]
    pub state: StateArgs,
    /// Which settings the agent manages, and the values it sets.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// `--kube` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    /// Use the API when KUBECONFIG or an in-cluster service account is there.
    Auto,
    /// Require the API: fail to start without a usable configuration.
    On,
    /// Never use the API.
    Off,
}

/// `--ecs` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EcsMode {
    /// Use the introspection API when it answers at start (an ECS container instance).
    Auto,
    /// Use it even when it does not answer yet: tasks are named from their cgroup until it
    /// does.
    On,
    /// Never ask it.
    Off,
}

/// `--compress` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// zstd, multithreaded.
    Zstd,
    /// Store dumps as they are.
    None,
}

impl RunArgs {
    /// The compression `--compress` and `--compress-level` ask for.
    pub fn zstd(&self) -> Option<Zstd> {
        match self.compress {
            Compress::Zstd => Some(Zstd {
                workers: self
                    .compress_threads
                    .unwrap_or_else(|| Zstd::default().workers),
                ..Zstd::level(self.compress_level)
            }),
            Compress::None => None,
        }
    }
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
    fn ids_are_hex_prefixes() {
        assert_eq!(parse_hex_prefix("3F2A9c").unwrap(), "3f2a9c");
        for bad in ["", "3f2", "xyz0", "3f2a 9c"] {
            assert!(parse_hex_prefix(bad).is_err(), "{bad}");
        }
    }

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
        assert_eq!(
            r.node.dump_dir,
            PathBuf::from("/var/lib/coredump-agent/dumps")
        );
        assert_eq!(r.event_wait, Duration::from_secs(5));
        assert!(!r.node.install_core_pattern);
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

    #[test]
    fn identity_flags() {
        let run = |extra: &[&str]| {
            let args = ["coredump-agent", "run"].iter().chain(extra);
            match Args::try_parse_from(args).map(|a| a.command) {
                Ok(Command::Run(r)) => r,
                other => panic!("run: {other:?}"),
            }
        };
        let r = run(&[]);
        assert_eq!(r.node.kube, KubeMode::Auto);
        assert_eq!(r.node.pod_log_root, PathBuf::from("/var/log/pods"));
        assert_eq!(
            r.node.container_log_root,
            PathBuf::from("/var/log/containers")
        );
        assert_eq!(r.node.cgroup_root, None);
        let r = run(&[
            "--kube",
            "off",
            "--pod-log-root",
            "/host/var/log/pods",
            "--container-log-root",
            "/host/var/log/containers",
            "--cgroup-root",
            "/host/sys/fs/cgroup",
        ]);
        assert_eq!(r.node.kube, KubeMode::Off);
        assert_eq!(r.node.pod_log_root, PathBuf::from("/host/var/log/pods"));
        assert_eq!(
            r.node.container_log_root,
            PathBuf::from("/host/var/log/containers")
        );
        assert_eq!(
            r.node.cgroup_root,
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
        assert!(Args::try_parse_from(["coredump-agent", "run", "--kube", "maybe"]).is_err());
        assert_eq!(r.node.ecs, EcsMode::Auto);
        assert_eq!(r.node.ecs_agent_uri, "http://127.0.0.1:51678");
        assert_eq!(r.node.ecs_refresh, Duration::from_secs(30));
        let r = run(&[
            "--ecs",
            "on",
            "--ecs-agent-uri",
            "http://127.0.0.1:1",
            "--ecs-refresh",
            "5s",
        ]);
        assert_eq!(r.node.ecs, EcsMode::On);
        assert_eq!(r.node.ecs_agent_uri, "http://127.0.0.1:1");
        assert_eq!(r.node.ecs_refresh, Duration::from_secs(5));
    }

    #[test]
    fn health_asks_the_listen_address_on_loopback() {
        let health = |extra: &[&str]| {
            let args = ["coredump-agent", "health"].iter().chain(extra);
            match Args::try_parse_from(args).map(|a| a.command) {
                Ok(Command::Health(h)) => h.url().unwrap().to_string(),
                other => panic!("health: {other:?}"),
            }
        };
        assert_eq!(health(&[]), "http://127.0.0.1:9102/healthz");
        assert_eq!(
            health(&["--listen", "0.0.0.0:9200"]),
            "http://127.0.0.1:9200/healthz"
        );
        assert_eq!(
            health(&["--listen", "[::]:9102"]),
            "http://[::1]:9102/healthz"
        );
        assert_eq!(
            health(&["--url", "http://10.0.0.1:1/readyz"]),
            "http://10.0.0.1:1/readyz"
        );
    }

    #[test]
    fn s3_and_compression_flags() {
        let run = |extra: &[&str]| {
            let args = ["coredump-agent", "run"].iter().chain(extra);
            match Args::try_parse_from(args).map(|a| a.command) {
                Ok(Command::Run(r)) => Ok(r),
                Ok(_) => panic!("run"),
                Err(e) => Err(e),
            }
        };
        let r = run(&[]).unwrap();
        assert_eq!(r.store.s3_checksum, ChecksumMode::WhenSupported);
        assert!(!r.store.s3_path_style);
        assert_eq!(r.zstd().map(|z| z.level), Some(compress::DEFAULT_LEVEL));
        let r = run(&[
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-path-style",
            "--s3-checksum",
            "when-required",
            "--compress-level",
            "9",
        ])
        .unwrap();
        assert_eq!(
            r.store.s3_endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert!(r.store.s3_path_style);
        assert_eq!(r.store.s3_checksum, ChecksumMode::WhenRequired);
        assert_eq!(r.zstd().map(|z| z.level), Some(9));
        assert_eq!(run(&["--compress", "none"]).unwrap().zstd(), None);
        assert_eq!(
            run(&["--compress-threads", "2"])
                .unwrap()
                .zstd()
                .map(|z| z.workers),
            Some(2)
        );
        assert_eq!(
            run(&[]).unwrap().zstd().map(|z| z.workers),
            Some(Zstd::default().workers)
        );
        assert!(run(&["--compress-level", "20"]).is_err());
        assert!(run(&["--compress", "gzip"]).is_err());
    }
}
