//! `coredump-agent check`: a preflight of everything the agent needs on this node, each line
//! OK, WARN or FAIL with the fix. Exit 0 when nothing failed, 1 otherwise.
//!
//! It reads the same flags and environment as `run` and changes nothing on the node (the
//! probe is attached and detached; the store check starts an upload and aborts it).

use std::{io::Write as _, path::Path, process::ExitCode};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Pod,
};
use kube::api::{Api, ListParams, PostParams};
use serde::Serialize;

use super::{
    EXIT_NOT_FOUND,
    args::{CheckArgs, EcsMode, KubeMode, NodeArgs},
    run::{KubeAccess, node_name},
};
use crate::{
    core_pattern::{self, Setting},
    identity::{
        cgroup::{CgroupResolver, cgroup2_mount},
        ecs::{EcsSource, introspection::Introspection},
    },
    intake::{Candidate, Intake, pipe, socket},
    pattern::CorePattern,
    probe::{Probe, btf},
    store::Store as _,
};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, with a limitation.
    Warn,
    /// Will not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Line {
    /// OK, WARN or FAIL.
    pub level: Level,
    /// What was checked.
    pub check: &'static str,
    /// What was found.
    pub detail: String,
    /// How to fix it (WARN and FAIL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn line(level: Level, check: &'static str, detail: impl Into<String>, fix: Option<&str>) -> Line {
    Line {
        level,
        check,
        detail: detail.into(),
        fix: fix.map(str::to_owned),
    }
}

/// `Max core file size` of a process, from `/proc/<pid>/limits`.
fn core_limit(pid: &str) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let l = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))?;
    let soft = l.split_whitespace().nth(4)?;
    Some(soft.to_owned())
}

/// The intake `run` would install, and its core_pattern (`None`: file intake's, if any).
fn planned_intake(args: &CheckArgs) -> Option<(Candidate, Option<String>)> {
    let candidate = args.node.intake_candidates().into_iter().next()?;
    let pattern = match candidate.intake {
        Intake::Socket => Some(socket::Protocol::Request.pattern(&args.node.kernel_socket())),
        Intake::Pipe => Some(pipe::pattern(
            &args.store.state_dir().join("bin").join(pipe::HELPER),
        )),
        Intake::File => None,
    };
    Some((candidate, pattern))
}

/// How the kernel will hand dumps over, and whether that can work here.
fn intake_checks(
    args: &CheckArgs,
    plan: Option<&(Candidate, Option<String>)>,
    out: &mut Vec<Line>,
) {
    let Some((candidate, pattern)) = plan else {
        out.push(line(
            Level::Fail,
            "intake",
            format!("none of --intake {:?} works on this kernel", args.node.intake),
            Some("socket core patterns need Linux 6.16+; use --intake auto (pipe where there is no socket)"),
        ));
        return;
    };
    let name = candidate.intake.name();
    out.push(line(
        Level::Ok,
        "intake",
        format!("{name}: {}", candidate.why),
        None,
    ));
    if let Some(pattern) = pattern {
        let len = pattern.len();
        out.push(if len <= core_pattern::MAX_LEN {
            line(
                Level::Ok,
                "core_pattern",
                format!("the agent installs {pattern:?}"),
                None,
            )
        } else {
            line(
                Level::Fail,
                "core_pattern",
                format!(
                    "{pattern:?} is {len} bytes, more than the kernel's {}",
                    core_pattern::MAX_LEN
                ),
                Some("use a shorter --run-dir or --state-dir"),
            )
        });
    }
    if candidate.intake == Intake::Socket {
        let sock = args.node.kernel_socket();
        let symlinked = sock.ancestors().skip(1).any(|a| {
            a.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        });
        out.push(if symlinked {
            line(
                Level::Fail,
                "socket",
                format!(
                    "{} has a symlink on its way: the kernel refuses those",
                    sock.display()
                ),
                Some("give --run-dir a path without symlinks (/run/..., not /var/run/...)"),
            )
        } else {
            line(Level::Ok, "socket", sock.display().to_string(), None)
        });
        let ns = &args.node.host_mount_ns;
        out.push(socket_pattern_writable(
            crate::sys::namespace_inode(std::path::Path::new("/proc/self/ns/mnt")),
            crate::sys::namespace_inode(ns),
            crate::sys::has_effective_cap(crate::sys::CAP_SYS_ADMIN)
                && crate::sys::has_effective_cap(crate::sys::CAP_SYS_CHROOT),
            ns,
        ));
    }
    if candidate.intake.received() {
        let dir = &args.node.receive_dir;
        let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
        out.push(match crate::sys::free_bytes(existing) {
            Ok(free) if free >= args.node.min_free_disk => line(
                Level::Ok,
                "receive dir",
                format!("{} ({} MiB free)", dir.display(), free >> 20),
                None,
            ),
            Ok(free) => line(
                Level::Warn,
                "receive dir",
                format!(
                    "{}: {} MiB free, below --min-free-disk {} MiB: dumps would be refused",
                    dir.display(),
                    free >> 20,
                    args.node.min_free_disk >> 20
                ),
                Some("free space or lower --min-free-disk"),
            ),
            Err(e) => line(
                Level::Fail,
                "receive dir",
                format!("{}: {e}", existing.display()),
                Some("mount a host directory at --receive-dir"),
            ),
        });
    }
}

/// Whether the socket pattern can be written from here: the kernel takes one only from a
/// process in its initial mount namespace, so this process is there, or enters the host's
/// (`--host-mount-ns`, which takes CAP_SYS_ADMIN and CAP_SYS_CHROOT: `can_enter`). `own` and
/// `host` are the namespaces' inodes.
fn socket_pattern_writable(
    own: std::io::Result<u64>,
    host: std::io::Result<u64>,
    can_enter: bool,
    ns: &std::path::Path,
) -> Line {
    let ns = ns.display();
    match (own, host) {
        (Ok(own), Ok(host)) if own == host => line(
            Level::Ok,
            "socket pattern",
            "this process is in the host's mount namespace: it writes the pattern itself",
            None,
        ),
        (_, Ok(_)) if can_enter => line(
            Level::Ok,
            "socket pattern",
            format!("written from the host's mount namespace ({ns})"),
            None,
        ),
        (_, Ok(_)) => line(
            Level::Fail,
            "socket pattern",
            format!(
                "this process is in a mount namespace of its own, and entering {ns} takes CAP_SYS_ADMIN and CAP_SYS_CHROOT, which it lacks: socket intake would fall back to pipe"
            ),
            Some(
                "add SYS_ADMIN and SYS_CHROOT (deploy's socket-intake component does), or use --intake pipe",
            ),
        ),
        (_, Err(e)) => line(
            Level::Warn,
            "socket pattern",
            format!(
                "cannot look at {ns} ({e}): unless this process is in the host's mount namespace, the pattern cannot be written and the agent falls back to pipe intake"
            ),
            Some(
                "run with the host's pid namespace (hostPID), or point --host-mount-ns at the host's mount namespace",
            ),
        ),
    }
}

/// What the running agent's /metrics says about crash events lost and throttled.
async fn running_agent(addr: std::net::SocketAddr) -> Line {
    let answer = match super::args::local_url(addr, "/metrics") {
        Err(e) => Err(e.to_string()),
        Ok(url) => crate::http::get(&url, std::time::Duration::from_secs(4), 4 << 20)
            .await
            .map_err(|e| crate::error_chain(&e))
            .and_then(|r| {
                if r.status.is_success() {
                    Ok(String::from_utf8_lossy(&r.body).into_owned())
                } else {
                    Err(format!("{url} answered {}", r.status))
                }
            }),
    };
    judge_running_agent(addr, answer)
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

fn judge_running_agent(addr: std::net::SocketAddr, metrics: Result<String, String>) -> Line {
    const CHECK: &str = "running agent";
    let text = match metrics {
        Ok(t) => t,
        Err(e) => {
            return line(
                Level::Warn,
                CHECK,
                format!("no agent answered on {addr}: {e}"),
                Some("start the agent, or give check its --listen address"),
            );
        }
    };
    let (Some(lost), throttled) = (
        sample(&text, "coredump_agent_crash_events_lost_total"),
        sample(&text, "coredump_agent_crash_events_throttled_total").unwrap_or(0.0),
    ) else {
        return line(
            Level::Warn,
            CHECK,
            format!(
                "{addr} answered, but its /metrics has no crash event counters: is it this agent?"
            ),
            None,
        );
    };
    if lost > 0.0 {
        line(
            Level::Warn,
            CHECK,
            format!(
                "{lost} crash events lost since it started (the probe's ring buffer was full), {throttled} over a cgroup's budget"
            ),
            Some("see the CoredumpAgentProbeLosingEvents runbook in docs/operator.md"),
        )
    } else {
        line(
            Level::Ok,
            CHECK,
            format!("no crash event lost since it started, {throttled} over a cgroup's budget"),
            None,
        )
    }
}

/// `live`: the pattern dump names come from, or why it could not be read. The core_pattern
/// line is file intake's: socket and pipe intake install their own.
fn kernel_checks(args: &NodeArgs, file: bool, live: &Result<String, String>, out: &mut Vec<Line>) {
    out.push(if Path::new(btf::VMLINUX).exists() {
        line(Level::Ok, "kernel BTF", btf::VMLINUX, None)
    } else {
        line(
            Level::Warn,
            "kernel BTF",
            "missing: the classic tracepoint is used and namespace pids are not reported",
            Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        )
    });
    out.push(match Probe::load(args.hook) {
        Ok(p) => line(Level::Ok, "crash probe", format!("attached {}", p.hook()), None),
        Err(e) => line(Level::Fail, "crash probe", format!("{:#}", anyhow::Error::new(e)), Some("run as root or with CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH; or run the agent with --no-probe (dumps not attested)")),
    });
    if !file {
        return;
    }
    match live {
        Err(e) => out.push(line(Level::Fail, "core_pattern", e.clone(), Some("mount the host's /proc/sys and point --proc-sys at it"))),
        Ok(raw) => match CorePattern::parse(raw, args.sysctl().uses_pid()) {
            Err(_) if args.install_core_pattern => out.push(line(Level::Ok, "core_pattern", format!("{raw:?} now; the agent installs its own (--install-core-pattern)"), None)),
            Err(e) => out.push(line(Level::Fail, "core_pattern", format!("{raw:?}: {e}"), Some("run with --install-core-pattern, or set kernel.core_pattern to a file in the dump dir"))),
            Ok(p) if p.dir() != args.dump_dir && !args.install_core_pattern => out.push(line(Level::Warn, "core_pattern", format!("{raw:?} writes to {}, not --dump-dir {}", p.dir().display(), args.dump_dir.display()), Some("fine if it is the same directory mounted elsewhere; else fix --dump-dir or use --install-core-pattern"))),
            Ok(p) => {
                out.push(line(Level::Ok, "core_pattern", format!("{raw:?} → {}", p.dir().display()), None));
                if !p.is_pipe()
                    && let Some(limit) = core_limit("self")
                    && limit == "0"
                {
                    out.push(line(Level::Warn, "RLIMIT_CORE", "0 here: processes started like this one (the container runtime's default) write no file-pattern dump (the crash is still recorded)", Some("raise the container runtime's default core limit (containerd: LimitCORE=infinity; Bottlerocket: settings.oci-defaults.resource-limits.max-core-file-size)")));
                }
            }
        },
    }
}

fn node_checks(args: &NodeArgs, file: bool, on_ecs: bool, out: &mut Vec<Line>) {
    if file {
        dump_dir_checks(args, out);
    }
    cgroup_and_log_checks(args, on_ecs, out);
}

fn dump_dir_checks(args: &NodeArgs, out: &mut Vec<Line>) {
    let dir = &args.dump_dir;
    // The agent creates a missing dump dir: then what must be writable is its first
    // existing ancestor.
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    let probe = existing.join(format!(".check-{}", std::process::id()));
    let detail = if existing == dir.as_path() {
        format!("{} writable", dir.display())
    } else {
        format!(
            "{} does not exist yet; the agent creates it (mode 1733) in {}",
            dir.display(),
            existing.display()
        )
    };
    out.push(
        match std::fs::write(&probe, b"x").and_then(|()| std::fs::remove_file(&probe)) {
            Ok(()) => line(Level::Ok, "dump dir", detail, None),
            Err(e) => line(
                Level::Fail,
                "dump dir",
                format!("{}: {e}", existing.display()),
                Some("create it or mount the host's dump directory"),
            ),
        },
    );
    if let Ok(free) = crate::sys::free_bytes(existing) {
        out.push(if free >= args.min_free_disk {
            line(
                Level::Ok,
                "free space",
                format!("{} MiB free", free >> 20),
                None,
            )
        } else {
            line(
                Level::Warn,
                "free space",
                format!(
                    "{} MiB free, below --min-free-disk {} MiB: new dumps would wait",
                    free >> 20,
                    args.min_free_disk >> 20
                ),
                Some("free space or lower --min-free-disk"),
            )
        });
    }
}

fn cgroup_and_log_checks(args: &NodeArgs, on_ecs: bool, out: &mut Vec<Line>) {
    match args.cgroup_root.clone().or_else(cgroup2_mount) {
        None => out.push(line(
            Level::Warn,
            "cgroup v2",
            "no cgroup2 mount: pods are named from /proc/<pid>/cgroup only (cgroup v1 host)",
            Some("mount the host's /sys/fs/cgroup"),
        )),
        Some(root) => {
            let resolver = CgroupResolver::new(root.clone());
            let own = std::fs::metadata(&root)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap_or(0);
            out.push(if resolver.resolve(own).is_some() {
                line(
                    Level::Ok,
                    "cgroup v2",
                    format!("{} (ids resolve)", root.display()),
                    None,
                )
            } else {
                line(
                    Level::Warn,
                    "cgroup v2",
                    format!("{}: ids do not resolve", root.display()),
                    Some("grant CAP_DAC_READ_SEARCH"),
                )
            });
        }
    }
    for (name, dir) in [
        ("pod logs", &args.pod_log_root),
        ("container logs", &args.container_log_root),
    ] {
        if on_ecs && !dir.is_dir() {
            // An ECS container instance has no kubelet: nothing to fall back on, nothing lost.
            continue;
        }
        out.push(if dir.is_dir() {
            line(Level::Ok, name, dir.display().to_string(), None)
        } else {
            line(
                Level::Warn,
                name,
                format!(
                    "{} missing: the kubelet-log fallback for pod names is unavailable",
                    dir.display()
                ),
                Some("mount /var/log/pods and /var/log/containers read-only"),
            )
        });
    }
}

/// Whether `path` can be opened for writing (nothing is written): a read-only mount or a
/// missing permission shows here the way it would on install.
fn writable(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path).map(drop)
}

/// The kernel's core dump settings beyond core_pattern: what the agent will set, whether it
/// can, backups a killed run left behind, and what the live values mean for dumps.
fn sysctl_checks(
    args: &CheckArgs,
    plan: Option<&(Candidate, Option<String>)>,
    live: Option<&str>,
    out: &mut Vec<Line>,
) {
    let sysctl = args.node.sysctl();
    let intake = plan.map_or(Intake::File, |(c, _)| c.intake);
    let pattern = plan.and_then(|(_, p)| p.clone());
    let wanted = match args.node.managed_sysctls(intake, pattern) {
        Ok(w) => w,
        Err(e) => {
            out.push(line(
                Level::Fail,
                "core_pattern",
                format!("{e:#}"),
                Some("use a shorter --dump-dir"),
            ));
            Vec::new()
        }
    };
    for (setting, value) in &wanted {
        let path = sysctl.path(*setting);
        out.push(match writable(&path) {
            Ok(()) => line(
                Level::Ok,
                "sysctl write",
                format!("{} can be set to {value:?} ({})", setting.name(), path.display()),
                None,
            ),
            Err(e) => line(
                Level::Fail,
                "sysctl write",
                format!("{}: {}: {e}", setting.name(), path.display()),
                Some("mount the host's /proc/sys read-write and point --proc-sys at it; run as uid 0 (sysctl files check the uid, not a capability)"),
            ),
        });
    }
    let parked = crate::spool::parked_at(args.store.state_dir());
    if let Some(first) = parked.first() {
        out.push(line(
            Level::Warn,
            "parked dumps",
            format!(
                "{} dump(s) set aside because they cannot be stored, e.g. {} ({}): {}",
                parked.len(),
                first.id,
                first.dump.as_deref().unwrap_or("no dump"),
                first.reason
            ),
            Some(&format!(
                "look at {}; to try again, move an entry back to spool/ and restart the agent",
                args.store.state_dir().join("parked").display()
            )),
        ));
    }
    for stale in core_pattern::stale_backups(args.store.state_dir(), &wanted) {
        let detail = format!(
            "{} was set by a run that was killed and not restored; it was {:?} before ({})",
            stale.setting.name(),
            stale.previous,
            stale.backup.display()
        );
        out.push(line(
            Level::Warn,
            "sysctl backup",
            detail,
            Some(&stale.fix()),
        ));
    }
    let managed = |setting| {
        wanted
            .iter()
            .find(|(s, _)| *s == setting)
            .map(|(_, v)| v.as_str())
    };
    let (suid, set_by_agent) = match managed(Setting::SuidDumpable) {
        Some(v) => (Ok(v.to_owned()), " (set by the agent)"),
        None => (sysctl.read(Setting::SuidDumpable), ""),
    };
    let suid = suid
        .map(|v| v.trim().to_owned())
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)));
    out.push(match suid.as_deref() {
        Ok("2") => line(
            Level::Ok,
            "suid_dumpable",
            format!("2{set_by_agent}: processes that changed credentials dump too, readable by root only"),
            None,
        ),
        Ok("0") => line(
            Level::Warn,
            "suid_dumpable",
            format!("0{set_by_agent}: processes that changed credentials (setuid programs, daemons that drop privileges, e.g. nginx workers) write no dump"),
            Some("--suid-dumpable 2 (COREDUMP_SUID_DUMPABLE=2), as systemd-coredump does"),
        ),
        Ok(v) => line(
            Level::Warn,
            "suid_dumpable",
            format!("{v}{set_by_agent}: dumps of processes that changed credentials are owned by their user, and may hold privileged memory"),
            Some("--suid-dumpable 2 (COREDUMP_SUID_DUMPABLE=2)"),
        ),
        Err(e) => line(
            Level::Warn,
            "suid_dumpable",
            e.clone(),
            Some("mount the host's /proc/sys and point --proc-sys at it"),
        ),
    });
    // The pipe limit only means something for a pipe pattern (the agent's pipe intake, or a
    // node's own helper).
    let pipe = intake == Intake::Pipe
        || (intake == Intake::File
            && !args.node.install_core_pattern
            && live.is_some_and(|p| p.starts_with('|')));
    if pipe || managed(Setting::CorePipeLimit).is_some() {
        let limit = managed(Setting::CorePipeLimit)
            .map(str::to_owned)
            .or_else(|| sysctl.read(Setting::CorePipeLimit).ok());
        out.push(match limit.as_deref() {
            Some("0") => line(
                Level::Ok,
                "core_pipe_limit",
                "0: pipe helpers run without limit, and /proc/<pid> may be gone before the helper reads it (the agent does not need it)",
                None,
            ),
            Some(n) => line(
                Level::Ok,
                "core_pipe_limit",
                format!("{n}: at most {n} pipe helpers at once; beyond, dumps are skipped"),
                None,
            ),
            None => line(
                Level::Warn,
                "core_pipe_limit",
                "unreadable",
                Some("mount the host's /proc/sys and point --proc-sys at it"),
            ),
        });
    }
}

/// The ECS agent's introspection API, per `--ecs`: reachable, the cluster, how many tasks it
/// lists. Returns whether it answered (an ECS container instance).
async fn ecs_checks(args: &NodeArgs, out: &mut Vec<Line>) -> bool {
    const CHECK: &str = "ECS agent";
    if args.ecs == EcsMode::Off {
        out.push(line(
            Level::Ok,
            CHECK,
            "off (--ecs off): ECS tasks are named by their cgroup's task id only",
            None,
        ));
        return false;
    }
    let api = match Introspection::new(&args.ecs_agent_uri) {
        Ok(api) => api,
        Err(e) => {
            out.push(line(
                Level::Fail,
                CHECK,
                format!("--ecs-agent-uri: {e}"),
                Some("give the ECS agent's introspection API as http://127.0.0.1:51678"),
            ));
            return false;
        }
    };
    let source = EcsSource::new(api);
    match source.refresh().await {
        Ok(tasks) => {
            out.push(line(
                Level::Ok,
                CHECK,
                format!(
                    "reachable at {}: cluster {}, {tasks} tasks known",
                    source.uri(),
                    source
                        .cluster()
                        .as_deref()
                        .unwrap_or("(not registered yet)")
                ),
                None,
            ));
            true
        }
        Err(_) if args.ecs == EcsMode::Auto => {
            out.push(line(
                Level::Ok,
                CHECK,
                format!(
                    "no ECS agent answers at {} (--ecs auto): not an ECS container instance",
                    source.uri()
                ),
                None,
            ));
            false
        }
        Err(e) => {
            out.push(line(
                Level::Fail,
                CHECK,
                crate::error_chain(&e),
                Some("run the agent in the host's network (networkMode host) on an ECS container instance, or point --ecs-agent-uri at the ECS agent"),
            ));
            false
        }
    }
}

/// Pod list requests in a check: one item proves access and that this node has pods.
const KUBE_PROBE_LIMIT: u32 = 1;

/// The Kubernetes API: configured, reachable, this node's pods listable (and some there: a
/// wrong node name lists none), and the other permissions the agent uses.
async fn kube_checks(args: &NodeArgs, on_ecs: bool, out: &mut Vec<Line>) {
    const CHECK: &str = "kubernetes API";
    // Without the API the agent still names pods from the kubelet's files: a warning,
    // unless `--kube on` makes it required.
    let missing = if args.kube == KubeMode::On {
        Level::Fail
    } else {
        Level::Warn
    };
    let client = match KubeAccess::from_args(args.kube).await {
        KubeAccess::Off => {
            out.push(line(
                Level::Ok,
                CHECK,
                "off (--kube off): pods are named from the kubelet's log files",
                None,
            ));
            return;
        }
        KubeAccess::NotConfigured if on_ecs && args.kube == KubeMode::Auto => {
            out.push(line(
                Level::Ok,
                CHECK,
                "not configured: an ECS container instance, not a Kubernetes node",
                None,
            ));
            return;
        }
        KubeAccess::NotConfigured => {
            out.push(line(missing, CHECK, "not configured (no KUBECONFIG, no in-cluster service account): pods are named from the kubelet's log files only", Some("run in the DaemonSet's pod (its service account), or set KUBECONFIG")));
            return;
        }
        KubeAccess::Unusable(e) => {
            out.push(line(
                missing,
                CHECK,
                format!("{:#}", anyhow::Error::new(e)),
                Some("fix KUBECONFIG or the service account token mount"),
            ));
            return;
        }
        KubeAccess::Client(client) => client,
    };
    let node = node_name(args.node_name.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .limit(KUBE_PROBE_LIMIT);
    out.push(match pods.list(&params).await {
        Ok(list) if list.items.is_empty() => line(
            Level::Warn,
            CHECK,
            format!("reachable, but it lists no pods on node {node:?}"),
            Some("set NODE_NAME (--node-name) to the node's Kubernetes name, from the downward API's spec.nodeName"),
        ),
        Ok(_) => line(
            Level::Ok,
            CHECK,
            format!("reachable; pods on node {node:?} listed"),
            None,
        ),
        Err(kube::Error::Api(status)) if status.is_forbidden() => line(
            missing,
            CHECK,
            format!("listing pods is forbidden: {}", status.message),
            Some("apply deploy/base/rbac.yaml: the agent's ServiceAccount needs get, list and watch on pods"),
        ),
        Err(e) => line(
            missing,
            CHECK,
            format!("unreachable: {:#}", anyhow::Error::new(e)),
            Some("check the API server address and that network policies let the agent reach it"),
        ),
    });
    // Listing worked or not, ask what else is allowed: the answer names what to grant.
    let mut denied = Vec::new();
    let mut unknown = None;
    for (verb, resource, level) in [
        ("watch", "pods", missing),
        ("create", "events", Level::Warn),
    ] {
        match can_i(&client, verb, resource).await {
            Ok(true) => {}
            Ok(false) => denied.push((verb, resource, level)),
            Err(e) => {
                unknown = Some(e);
                break;
            }
        }
    }
    out.push(match (unknown, denied.as_slice()) {
        (Some(e), _) => line(
            Level::Warn,
            "RBAC",
            format!("could not ask the API what is allowed: {e:#}"),
            Some("check the API server is reachable"),
        ),
        (None, []) => line(
            Level::Ok,
            "RBAC",
            "watch pods and create events allowed",
            None,
        ),
        (None, denied) => {
            let level = denied
                .iter()
                .map(|(_, _, l)| *l)
                .max()
                .unwrap_or(Level::Warn);
            let what: Vec<String> = denied.iter().map(|(v, r, _)| format!("{v} {r}")).collect();
            let effect = if denied.iter().any(|(_, r, _)| *r == "pods") {
                "the pod cache cannot stay current"
            } else {
                "no CoreDumpStored Events on crashed pods"
            };
            line(
                level,
                "RBAC",
                format!("{} denied: {effect}", what.join(", ")),
                Some("apply deploy/base/rbac.yaml to the agent's ServiceAccount"),
            )
        }
    });
}

/// Whether the agent's identity may `verb` `resource` (core API group, any namespace): a
/// SelfSubjectAccessReview, which every authenticated identity may create.
async fn can_i(client: &kube::Client, verb: &str, resource: &str) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                resource: Some(resource.to_owned()),
                group: Some(String::new()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Runs every check and prints the report.
pub async fn execute(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut lines = Vec::new();
    // Read once: both the kernel and the sysctl checks judge it.
    let live = args
        .node
        .dump_name_pattern()
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)));
    let plan = planned_intake(&args);
    let file = plan.as_ref().is_some_and(|(c, _)| c.intake == Intake::File);
    intake_checks(&args, plan.as_ref(), &mut lines);
    kernel_checks(&args.node, file, &live, &mut lines);
    sysctl_checks(&args, plan.as_ref(), live.as_deref().ok(), &mut lines);
    let mut ecs = Vec::new();
    let on_ecs = ecs_checks(&args.node, &mut ecs).await;
    node_checks(&args.node, file, on_ecs, &mut lines);
    kube_checks(&args.node, on_ecs, &mut lines).await;
    lines.append(&mut ecs);
    if let Some(addr) = args.listen {
        lines.push(running_agent(addr).await);
    }
    let store = match args.store.open(None).await {
        Err(e) => Err(e),
        Ok(s) => s
            .check()
            .await
            .map(|()| s.describe())
            .map_err(anyhow::Error::new),
    };
    lines.push(match store {
        Ok(d) => line(
            Level::Ok,
            "store",
            format!("{d} reachable and writable"),
            None,
        ),
        Err(e) => line(
            Level::Fail,
            "store",
            format!("{e:#}"),
            Some("check --dest, credentials (AWS_* / IRSA) and --s3-endpoint"),
        ),
    });
    let mut out = std::io::stdout().lock();
    for l in &lines {
        if args.json {
            serde_json::to_writer(&mut out, l)?;
            writeln!(out)?;
        } else {
            let tag = match l.level {
                Level::Ok => "OK  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            writeln!(out, "{tag} {:<15} {}", l.check, l.detail)?;
            if let Some(fix) = &l.fix {
                writeln!(out, "     {:<15} fix: {fix}", "")?;
            }
        }
    }
    Ok(if lines.iter().any(|l| l.level == Level::Fail) {
        ExitCode::from(EXIT_NOT_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_agents_lost_events_are_judged() {
        let addr = "127.0.0.1:9102".parse().unwrap();
        let metrics = |lost: u64| {
            Ok(format!(
                "# TYPE coredump_agent_crash_events_lost counter\n\
                 coredump_agent_crash_events_lost_total {lost}\n\
                 coredump_agent_crash_events_throttled_total 7\n"
            ))
        };
        let quiet = judge_running_agent(addr, metrics(0));
        assert_eq!(quiet.level, Level::Ok, "{quiet:?}");
        let lossy = judge_running_agent(addr, metrics(12));
        assert_eq!(lossy.level, Level::Warn);
        assert!(
            lossy.detail.starts_with("12 crash events lost"),
            "{lossy:?}"
        );
        assert!(lossy.detail.contains("7 over"), "{lossy:?}");
        let down = judge_running_agent(addr, Err("connection refused".into()));
        assert_eq!(down.level, Level::Warn);
        let other = judge_running_agent(addr, Ok("up 1\n".into()));
        assert!(
            other.detail.contains("no crash event counters"),
            "{other:?}"
        );
    }

    #[test]
    fn the_socket_pattern_is_writable_from_the_host_namespace_or_by_entering_it() {
        let ns = std::path::Path::new("/proc/1/ns/mnt");
        let denied = || Err(std::io::Error::from_raw_os_error(libc::EACCES));
        let judge = |own, host, can_enter| socket_pattern_writable(own, host, can_enter, ns).level;
        assert_eq!(
            judge(Ok(7), Ok(7), false),
            Level::Ok,
            "in the host's namespace"
        );
        assert_eq!(judge(Ok(7), Ok(8), true), Level::Ok, "enters it");
        assert_eq!(judge(Ok(7), Ok(8), false), Level::Fail, "cannot enter it");
        assert_eq!(judge(Ok(7), denied(), true), Level::Warn, "cannot tell");
        let l = socket_pattern_writable(Ok(7), Ok(8), false, ns);
        assert!(
            l.detail.contains("CAP_SYS_ADMIN") && l.fix.is_some(),
            "{l:?}"
        );
    }
}
