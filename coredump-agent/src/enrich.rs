//! enrich: what `/proc/<pid>` says about a crashing process, read when its crash event
//! arrives (the process is still dumping, so usually still there) and resolved into an
//! identity from the kernel's cgroup id.
//!
//! Best effort: the process may be gone, and nothing here overrides the kernel's event.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    crash::Crash,
    identity::{Identity, Sources, cgroup::CgroupResolver, cgroup_path},
    record::ProcessInfo,
    report::files::ModuleFiles,
    spool::CrashJournal,
};

/// Reads process facts and identity for crashes.
#[derive(Debug, Clone, Default)]
pub struct Enricher {
    /// `/proc` reader.
    pub proc: ProcFs,
    /// cgroup id resolver, when a cgroup2 hierarchy is available.
    pub cgroups: Option<Arc<CgroupResolver>>,
    /// Name workloads (pods, ECS tasks) and their containers, in order.
    pub sources: Sources,
    /// Opens the crashed process's module files when its crash event arrives (file intake:
    /// nothing else holds the process while the kernel writes its core).
    pub open_modules: bool,
}

/// A crash event with what was read about it when it arrived: journaled, then joined with
/// its dump by correlate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrashFacts {
    /// The kernel's event.
    pub crash: Crash,
    /// `/proc/<pid>`, if it was still there.
    pub process: Option<ProcessInfo>,
    /// Its identity.
    pub identity: Identity,
    /// Its module files, opened when the event arrived (file intake), for the crash report.
    #[serde(skip)]
    pub modules: Option<Arc<ModuleFiles>>,
}

/// A crash's id: unique per boot (host pid and the kernel's boot-time nanoseconds).
pub fn crash_id(crash: &Crash) -> String {
    format!(
        "{}-{}-{}",
        crate::record::boot_tag(),
        crash.host_pid,
        crash.boot_ns
    )
}

/// Crash events read at once: a `/proc` read of a dumping process can wait on its memory map.
const CONCURRENT: usize = 8;

/// Reads `/proc` and the identity of each crash on a blocking thread, journals it, and hands
/// it on. Returns when the input closes, after the reads in flight.
pub async fn run(
    enricher: Enricher,
    journal: Option<CrashJournal>,
    mut crashes: mpsc::Receiver<Crash>,
    out: mpsc::Sender<CrashFacts>,
) {
    let mut reads: JoinSet<Option<CrashFacts>> = JoinSet::new();
    let mut open = true;
    while open || !reads.is_empty() {
        tokio::select! {
            crash = crashes.recv(), if open && reads.len() < CONCURRENT => match crash {
                Some(crash) => {
                    let (enricher, journal) = (enricher.clone(), journal.clone());
                    reads.spawn(async move {
                        tokio::task::spawn_blocking(move || {
                            let facts = enricher.facts(crash);
                            if let Some(j) = &journal {
                                j.save(&crash_id(&facts.crash), &facts);
                            }
                            facts
                        })
                        .await
                        .ok()
                    });
                }
                None => open = false,
            },
            Some(done) = reads.join_next(), if !reads.is_empty() => {
                if let Ok(Some(facts)) = done
                    && out.send(facts).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

impl Enricher {
    /// What `/proc` and the cgroup say of a crash (blocking).
    pub fn facts(&self, crash: Crash) -> CrashFacts {
        let process = self.proc.process(crash.host_pid);
        let identity = identity(
            &crash,
            process.as_ref(),
            self.cgroups.as_deref(),
            &self.sources,
        );
        tracing::info!(
            host_pid = crash.host_pid,
            pid = crash.visible_pid(),
            comm = %crash.comm,
            exe = crash.exe_name.as_deref().unwrap_or(""),
            signal = %crash.signal,
            cgroup = identity.cgroup_path.as_deref().unwrap_or("?"),
            pod_uid = identity.pod().and_then(|p| p.pod_uid.as_deref()).unwrap_or(""),
            ecs_task_id = identity.ecs().map_or("", |t| t.task_id.as_str()),
            "crash"
        );
        // The process is still dumping: its mappings are still there to be opened.
        let modules = self.open_modules.then(|| {
            let maps = std::fs::read_to_string(self.proc.pid_dir(crash.host_pid).join("maps"))
                .unwrap_or_default();
            let wanted = crate::report::files::from_maps(&maps);
            Arc::new(crate::report::files::open(
                self.proc.root(),
                crash.host_pid,
                &wanted,
            ))
        });
        CrashFacts {
            crash,
            process,
            identity,
            modules,
        }
    }
}

/// `/proc/<pid>/status` keys worth keeping.
const STATUS_KEYS: [&str; 10] = [
    "Name",
    "Umask",
    "State",
    "PPid",
    "Uid",
    "Gid",
    "NSpid",
    "VmPeak",
    "VmRSS",
    "CoreDumping",
];

/// Longest command line kept, in bytes.
pub const MAX_CMDLINE: usize = 4096;

/// Reads process facts under a proc root (`/proc`, or a fixture in tests).
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    /// A reader for the proc filesystem mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Where the proc filesystem is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// Whether `/proc/<pid>/status` says the process is dumping core (`CoreDumping: 1`).
    pub fn core_dumping(&self, pid: u32) -> bool {
        std::fs::read_to_string(self.pid_dir(pid).join("status")).is_ok_and(|s| {
            s.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k == "CoreDumping" && v.trim() == "1")
            })
        })
    }

    /// Everything readable about `pid`; `None` if the process is gone.
    pub fn process(&self, pid: u32) -> Option<ProcessInfo> {
        let dir = self.pid_dir(pid);
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let status = status
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                STATUS_KEYS.contains(&k).then(|| {
                    (
                        k.to_owned(),
                        v.split_whitespace().collect::<Vec<_>>().join(" "),
                    )
                })
            })
            .collect();
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|mut b| {
                b.truncate(MAX_CMDLINE);
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Some(ProcessInfo {
            exe: std::fs::read_link(dir.join("exe"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            cmdline,
            cgroup: std::fs::read_to_string(dir.join("cgroup")).ok(),
            status,
        })
    }
}

/// Resolves the crash's identity: the kernel's cgroup id through the cgroup2 hierarchy first
/// (it cannot be faked from inside the container), else `/proc/<pid>/cgroup` (cgroup v1 hosts);
/// then, from `sources`, the names of its workload and container from the ids the cgroup path
/// gave. Called when the crash event arrives: the container may be gone by the time a large
/// dump is written.
pub fn identity(
    crash: &Crash,
    process: Option<&ProcessInfo>,
    cgroups: Option<&CgroupResolver>,
    sources: &Sources,
) -> Identity {
    identity_of(
        crash.host_pid,
        Some(crash.cgroup_id),
        process,
        cgroups,
        sources,
    )
}

/// [`identity`] from what is known of any crashed process: its cgroup id (from the probe, or
/// the kernel's pidfd information) and what `/proc` said.
pub fn identity_of(
    host_pid: u32,
    cgroup_id: Option<u64>,
    process: Option<&ProcessInfo>,
    cgroups: Option<&CgroupResolver>,
    sources: &Sources,
) -> Identity {
    let mut identity = cgroup_identity(cgroup_id, process, cgroups);
    if !sources.is_empty() {
        sources.resolve(&mut identity);
        tracing::debug!(
            host_pid,
            container_id = identity.container_id.as_deref().unwrap_or(""),
            workload = ?identity.workload,
            source = identity.source.as_deref().unwrap_or(""),
            missing = identity.missing.as_deref().unwrap_or(""),
            "workload identity"
        );
    }
    identity
}

/// The identity as far as the cgroup path tells it. The kernel's cgroup id decides; a path from
/// `/proc/<pid>/cgroup` is used only where it can be tied to the crash: its directory's inode is
/// the kernel's cgroup id, or (cgroup v1 hosts, where the v2 id is the root's) the process
/// read was still dumping core. A pid may belong to another process, in another pod, by the
/// time it is read: then the cgroup is unknown, and said so.
fn cgroup_identity(
    cgroup_id: Option<u64>,
    process: Option<&ProcessInfo>,
    cgroups: Option<&CgroupResolver>,
) -> Identity {
    let from_kernel = cgroups.zip(cgroup_id).and_then(|(r, id)| r.resolve(id));
    let from_proc = process
        .and_then(|p| p.cgroup.as_deref())
        .and_then(cgroup_path::parse_proc_cgroup)
        .map(|(path, _)| path);
    let dumping =
        process.is_some_and(|p| p.status.iter().any(|(k, v)| k == "CoreDumping" && v == "1"));
    let path = match (from_kernel, from_proc) {
        (Some(k), Some(p)) if k == "/" && p != "/" && dumping => p,
        (Some(k), _) => k,
        (None, Some(p))
            if cgroups
                .zip(cgroup_id)
                .map_or(dumping, |(r, id)| r.is(&p, id)) =>
        {
            p
        }
        (None, Some(_)) => {
            return Identity {
                unresolved: Some(format!(
                    "the kernel's cgroup id {} no longer exists, and the process's /proc/<pid>/cgroup could not be tied to it",
                    cgroup_id.map_or("?".into(), |id| id.to_string())
                )),
                ..Identity::default()
            };
        }
        (None, None) => return Identity::default(),
    };
    Identity::from_cgroup_path(&path)
}

/// Whether a path exists under the proc root (used by tests and `check`).
pub fn has_proc(root: &Path) -> bool {
    root.join("self").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_process() {
        let root = std::env::temp_dir().join(format!("procfs-{}", std::process::id()));
        let dir = root.join("42");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("status"),
            "Name:\tserver\nUmask:\t0022\nState:\tR (running)\nTgid:\t42\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\nNSpid:\t42\t7\nCoreDumping:\t1\n",
        )
        .unwrap();
        std::fs::write(dir.join("cmdline"), b"/usr/bin/server\0--port\0\x38080\0").unwrap();
        std::fs::write(
            dir.join("cgroup"),
            "0::/kubepods.slice/kubepods-pod2f6f5a3e_8a7b_4c1d_9e0f_1a2b3c4d5e6f.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n",
        )
        .unwrap();
        let p = ProcFs::new(&root).process(42).unwrap();
        assert_eq!(p.cmdline, ["/usr/bin/server", "--port", "8080"]);
        assert!(p.status.contains(&("NSpid".to_owned(), "42 7".to_owned())));
        assert!(!p.status.iter().any(|(k, _)| k == "Tgid"));
        assert_eq!(p.exe, None);
        assert!(ProcFs::new(&root).process(43).is_none());

        let crash: Crash = serde_json::from_value(serde_json::json!({
            "time": "2026-11-26T08:26:27Z", "boot_ns": 1, "host_pid": 42, "host_tid": 42,
            "pid": 7, "tid": 7, "pidns": null, "pidns_level": 1, "uid": 1000, "gid": 1000,
            "signal": "SIGSEGV", "si_code": 1, "cgroup_id": 999_999_999, "comm": "server",
            "process_comm": "server", "hook": "tp_btf"
        }))
        .unwrap();
        let id = identity(&crash, Some(&p), None, &Sources::default());
        assert_eq!(
            id.pod().unwrap().pod_uid.as_deref(),
            Some("2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f")
        );
        assert_eq!(
            id.container_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The kernel's cgroup id is gone by the time the crash is read, and the pid's
    /// `/proc/<pid>/cgroup` names another cgroup (the pid was reused, in another pod): the
    /// identity is unknown, never that other pod's.
    #[test]
    fn a_proc_cgroup_that_is_not_the_kernels_is_not_trusted() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let other = "kubepods.slice/kubepods-pod2f6f5a3e_8a7b_4c1d_9e0f_1a2b3c4d5e6f.slice";
        std::fs::create_dir_all(root.join(other)).unwrap();
        let other_ino = std::fs::metadata(root.join(other)).unwrap().ino();
        let resolver = CgroupResolver::new(root.clone());
        let process = |dumping: &str| ProcessInfo {
            cgroup: Some(format!("0::/{other}\n")),
            status: vec![("CoreDumping".into(), dumping.into())],
            ..ProcessInfo::default()
        };
        let gone = other_ino + 1_000_000;
        let id = cgroup_identity(Some(gone), Some(&process("0")), Some(&resolver));
        assert_eq!(id.pod(), None);
        assert!(id.unresolved.unwrap().contains(&gone.to_string()));
        // The path is the kernel's cgroup (same inode): trusted.
        let id = cgroup_identity(Some(other_ino), Some(&process("0")), Some(&resolver));
        assert_eq!(
            id.pod().unwrap().pod_uid.as_deref(),
            Some("2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f")
        );
        // No cgroup2 hierarchy (v1 host): only a process still dumping core is believed.
        let id = cgroup_identity(Some(gone), Some(&process("0")), None);
        assert!(id.unresolved.is_some());
        let id = cgroup_identity(Some(gone), Some(&process("1")), None);
        assert_eq!(
            id.pod().unwrap().pod_uid.as_deref(),
            Some("2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
