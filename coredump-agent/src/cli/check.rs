//! `coredump-agent check`: a preflight of everything the agent needs on this node, each line
//! OK, WARN or FAIL with the fix. Exit 0 when nothing failed, 1 otherwise.

use std::{io::Write as _, path::Path, process::ExitCode};

use serde::Serialize;

use super::{EXIT_NOT_FOUND, args::CheckArgs};
use crate::{
    core_pattern::Sysctl,
    identity::cgroup::{CgroupResolver, cgroup2_mount},
    pattern::CorePattern,
    probe::{Probe, btf},
    store::Store as _,
};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

fn kernel_checks(args: &CheckArgs, out: &mut Vec<Line>) {
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
    let sysctl = Sysctl::in_dir(&args.sysctl_dir);
    match sysctl.pattern() {
        Err(e) => out.push(line(Level::Fail, "core_pattern", e.to_string(), Some("mount the host's /proc/sys/kernel"))),
        Ok(raw) => match CorePattern::parse(&raw, sysctl.uses_pid()) {
            Err(e) if args.install_core_pattern => out.push(line(Level::Ok, "core_pattern", format!("{raw:?} (the agent installs its own: {e})"), None)),
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

fn node_checks(args: &CheckArgs, out: &mut Vec<Line>) {
    let dir = &args.dump_dir;
    let probe = dir.join(format!(".check-{}", std::process::id()));
    out.push(
        match std::fs::write(&probe, b"x").and_then(|()| std::fs::remove_file(&probe)) {
            Ok(()) => line(
                Level::Ok,
                "dump dir",
                format!("{} writable", dir.display()),
                None,
            ),
            Err(e) => line(
                Level::Fail,
                "dump dir",
                format!("{}: {e}", dir.display()),
                Some("create it or mount the host's dump directory"),
            ),
        },
    );
    if let Ok(free) = crate::sys::free_bytes(dir) {
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

/// Runs every check and prints the report.
pub async fn execute(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut lines = Vec::new();
    kernel_checks(&args, &mut lines);
    node_checks(&args, &mut lines);
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
