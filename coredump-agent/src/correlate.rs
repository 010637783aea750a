//! correlate: joins each finished dump file with the kernel's crash event for it.
//!
//! Pipeline: probe (crashes) + watch (file names) → `correlate` → spool. Events may arrive
//! before or after their file. The join uses the host pid when the core_pattern has `%P`/`%I`;
//! otherwise the namespace pid together with comm, signal and time. When no event or more
//! than one fits, the dump is kept but marked not attested, with the reason: the agent never
//! guesses which process a dump belongs to. A crash that no file joins within `dump_wait` is
//! recorded as a crash without a dump.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::{OsStr, OsString},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc;

use crate::{
    crash::Crash,
    enrich::{self, ProcFs},
    identity::{Identity, PodResolver, cgroup::CgroupResolver},
    intake::{self, Inspect, OpenedDump, Rejection},
    metrics::METRICS,
    pattern::{Compression, CorePattern, NameFields},
    record::{AgentInfo, Attestation, DumpFile, ProcessInfo, Record, SCHEMA},
    spool::CrashJournal,
    watch::{Change, FileEvent},
};

/// Settings of the join.
#[derive(Debug, Clone)]
pub struct Config {
    /// The dump directory.
    pub dump_dir: PathBuf,
    /// The core_pattern the names come from.
    pub pattern: CorePattern,
    /// Node name, for records.
    pub node: String,
    /// Cluster name, for records.
    pub cluster: Option<String>,
    /// Larger dumps are quarantined.
    pub max_dump_size: u64,
    /// How long a finished file waits for its crash event.
    pub event_wait: Duration,
    /// How long a crash waits for its dump file (extended while a matching file is written).
    pub dump_wait: Duration,
    /// Whether the kernel probe runs (if not, nothing can be attested and nothing waits).
    pub probe_running: bool,
    /// Quarantine dumps that are not attested instead of storing them.
    pub require_attestation: bool,
    /// At most this many dumps per container per hour (0: unlimited).
    pub max_dumps_per_hour: u32,
    /// Below this many free bytes on the dump directory's filesystem, new dumps wait.
    pub min_free_disk: u64,
}

/// A record ready for the spool, with the opened dump if it is to be stored.
#[derive(Debug)]
pub struct Job {
    /// Everything known.
    pub record: Record,
    /// The dump, opened and checked. `None` for a crash without a dump.
    pub dump: Option<OpenedDump>,
    /// Whether to upload the dump (false: rate-limited, only the record is stored).
    pub upload_dump: bool,
}

/// Names handed to the spool and store and not finished yet: events for them are ignored.
#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<HashSet<OsString>>>);

impl Claims {
    /// Claims a name; false if it was already claimed.
    pub fn claim(&self, name: &OsStr) -> bool {
        self.0.lock().is_ok_and(|mut s| s.insert(name.to_owned()))
    }
    /// Releases a name once its dump is stored (or given up).
    pub fn release(&self, name: &OsStr) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(name);
        }
    }
    /// Whether a name is claimed.
    pub fn contains(&self, name: &OsStr) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(name))
    }
    /// Number of claimed names.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |s| s.len())
    }
    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads process facts and identity for crash events.
#[derive(Debug, Clone, Default)]
pub struct Enricher {
    /// `/proc` reader.
    pub proc: ProcFs,
    /// cgroup id resolver, when a cgroup2 hierarchy is available.
    pub cgroups: Option<Arc<CgroupResolver>>,
    /// Names pods and containers (API cache, kubelet files), when running on a Kubernetes node.
    pub pods: Option<PodResolver>,
}

/// Why correlation stopped.
#[derive(Debug, thiserror::Error)]
pub enum CorrelateError {
    /// The spool stage went away while the agent was running.
    #[error("the spool stage stopped")]
    SpoolGone,
}

/// A crash waiting for its dump (journaled, so a restart keeps it).
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingCrash {
    crash: Crash,
    process: Option<ProcessInfo>,
    identity: Identity,
    #[serde(skip, default = "Instant::now")]
    received: Instant,
}

/// A name we are following.
enum FileState {
    /// Appeared; look again after a moment (it may be an `O_TMPFILE` linked in, or a dump
    /// that is just starting).
    Created { since: Instant },
    /// Being written. Looked at again on a timer too: the kernel sends `IN_CLOSE_WRITE`
    /// before it drops the writer count, so the check right after that event can still see
    /// a writer, and no further event would come.
    Writing { since: Instant },
    /// Finished, waiting for its crash event.
    Waiting {
        dump: Box<OpenedDump>,
        since: Instant,
    },
    /// Finished, but the disk is nearly full.
    Deferred { since: Instant },
}

struct Followed {
    parses: Vec<NameFields>,
    state: FileState,
}

/// How long after `IN_CREATE` a file is looked at again.
const SETTLE: Duration = Duration::from_millis(500);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(250);
/// How often a file still being written is looked at again.
const WRITING_RECHECK: Duration = Duration::from_secs(1);
/// How often a deferred (low disk) dump is looked at again.
const DEFERRED_RETRY: Duration = Duration::from_secs(10);
/// Most crashes kept waiting for a dump; beyond, the oldest are recorded without one.
const MAX_PENDING: usize = 10_000;
/// Most unknown names remembered (to log each once).
const MAX_IGNORED: usize = 10_000;
/// `%t` and the kernel's time differ by the time to start dumping; allow this much.
const TIME_SLACK: u64 = 5;
const HOUR: Duration = Duration::from_secs(3600);

/// How a set of name parses matches the pending crashes.
#[derive(Debug, PartialEq, Eq)]
enum Join {
    /// Exactly this crash (index) fits.
    One(usize, &'static str),
    /// No crash fits.
    None,
    /// Several crashes fit.
    Many(usize),
    /// The name has no pid: nothing can vouch for it.
    NoPid,
}

/// The kernel writes `/` in `%e` as `!`.
fn escaped_comm(comm: &str) -> String {
    comm.replace('/', "!")
}

/// Whether one crash fits what one file name says.
fn fits(crash: &Crash, f: &NameFields) -> bool {
    let unix = crate::sys::unix_secs(crash.time);
    f.host_pid.is_none_or(|p| p == crash.host_pid)
        && f.host_tid.is_none_or(|t| t == crash.host_tid)
        && f.pid.is_none_or(|p| p == crash.visible_pid())
        && f.tid
            .is_none_or(|t| t == crash.tid.unwrap_or(crash.host_tid))
        && f.signal.is_none_or(|s| s == crash.signal.0)
        && f.comm
            .as_ref()
            .is_none_or(|c| *c == escaped_comm(&crash.comm))
        && f.time.is_none_or(|t| t.abs_diff(unix) <= TIME_SLACK)
}

fn join(parses: &[NameFields], crashes: &[PendingCrash]) -> Join {
    if !parses
        .iter()
        .any(|f| f.pid.is_some() || f.host_pid.is_some() || f.host_tid.is_some())
    {
        return Join::NoPid;
    }
    let matching: Vec<usize> = crashes
        .iter()
        .enumerate()
        .filter(|(_, c)| parses.iter().any(|f| fits(&c.crash, f)))
        .map(|(i, _)| i)
        .collect();
    match matching[..] {
        [] => Join::None,
        [i] => {
            let how = if parses
                .iter()
                .any(|f| f.host_pid.is_some() || f.host_tid.is_some())
            {
                "host pid (%P/%I) matched the kernel's crash event"
            } else {
                "namespace pid, comm, signal and time matched the kernel's crash event"
            };
            Join::One(i, how)
        }
        _ => Join::Many(matching.len()),
    }
}

/// A stable id: unique per boot for a crash, per inode for a file.
fn boot_tag() -> &'static str {
    static TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().chars().take(8).collect())
            .unwrap_or_else(|_| "noboot".into())
    });
    &TAG
}

/// The correlation stage's state.
struct Correlator {
    cfg: Config,
    journal: Option<CrashJournal>,
    enricher: Enricher,
    claims: Claims,
    crashes: Vec<PendingCrash>,
    files: HashMap<OsString, Followed>,
    ignored: HashSet<OsString>,
    recent: HashMap<String, VecDeque<Instant>>,
    low_disk_warned: bool,
}

impl Correlator {
    fn record(
        &self,
        id: String,
        crash: Option<&PendingCrash>,
        attestation: Attestation,
        dump: Option<DumpFile>,
    ) -> Record {
        Record {
            schema: SCHEMA,
            id,
            node: self.cfg.node.clone(),
            cluster: self.cfg.cluster.clone(),
            crash: crash.map(|p| p.crash.clone()),
            attestation,
            dump,
            process: crash.and_then(|p| p.process.clone()),
            identity: crash.map(|p| p.identity.clone()).unwrap_or_default(),
            agent: AgentInfo::current(),
            stored: None,
        }
    }

    fn crash_id(crash: &Crash) -> String {
        format!("{}-{}-{}", boot_tag(), crash.host_pid, crash.boot_ns)
    }

    fn on_crash(&mut self, crash: Crash) {
        METRICS.crashes_seen.inc();
        let process = self.enricher.proc.process(crash.host_pid);
        let identity = enrich::identity(
            &crash,
            process.as_ref(),
            self.enricher.cgroups.as_deref(),
            self.enricher.pods.as_ref(),
        );
        tracing::info!(
            host_pid = crash.host_pid,
            pid = crash.visible_pid(),
            comm = %crash.comm,
            exe = crash.exe_name.as_deref().unwrap_or(""),
            signal = %crash.signal,
            cgroup = identity.cgroup_path.as_deref().unwrap_or("?"),
            pod_uid = identity.pod_uid.as_deref().unwrap_or(""),
            "crash"
        );
        let pending = PendingCrash {
            crash,
            process,
            identity,
            received: Instant::now(),
        };
        if let Some(j) = &self.journal {
            j.save(&Self::crash_id(&pending.crash), &pending);
        }
        self.crashes.push(pending);
    }

    /// Removes a pending crash (joined or recorded) from memory and the journal.
    fn take_crash(&mut self, i: usize) -> PendingCrash {
        let p = self.crashes.remove(i);
        if let Some(j) = &self.journal {
            j.remove(&Self::crash_id(&p.crash));
        }
        p
    }

    /// Returns jobs ready for the spool.
    fn on_file(&mut self, ev: FileEvent, out: &mut Vec<Job>) {
        let FileEvent { name, change } = ev;
        if self.claims.contains(&name) || self.ignored.contains(&name) {
            return;
        }
        if let Some(f) = self.files.get(&name) {
            // Already followed: only a finishing event changes anything.
            if matches!(f.state, FileState::Waiting { .. }) || change == Change::Created {
                return;
            }
        }
        let parses = match name.to_str() {
            Some(s) => self.cfg.pattern.match_name_all(s),
            None => Vec::new(),
        };
        if parses.is_empty() {
            tracing::info!(name = %name.to_string_lossy(), pattern = self.cfg.pattern.file_template(), "not a name the core_pattern produces: left alone");
            METRICS.reject(Rejection::UnknownName.label());
            if self.ignored.len() < MAX_IGNORED {
                self.ignored.insert(name);
            }
            return;
        }
        if change == Change::Created {
            self.files.insert(
                name,
                Followed {
                    parses,
                    state: FileState::Created {
                        since: Instant::now(),
                    },
                },
            );
            return;
        }
        self.look(name, parses, out);
    }

    /// Follows a file that is still being written (looked at again on the timer).
    fn follow_writing(&mut self, name: OsString, parses: Vec<NameFields>) {
        let state = FileState::Writing {
            since: Instant::now(),
        };
        self.files.insert(name, Followed { parses, state });
    }

    /// Inspects a (probably finished) file and moves it on.
    fn look(&mut self, name: OsString, parses: Vec<NameFields>, out: &mut Vec<Job>) {
        let inspected = intake::inspect(&self.cfg.dump_dir, &name, self.cfg.max_dump_size);
        let dump = match inspected {
            Ok(Inspect::Ready(dump)) => dump,
            Ok(Inspect::Writing) => {
                self.follow_writing(name, parses);
                return;
            }
            Ok(Inspect::Gone) => {
                self.files.remove(&name);
                return;
            }
            Ok(Inspect::Rejected(why)) => {
                self.files.remove(&name);
                self.reject(&name, &parses, why, out);
                return;
            }
            Err(e) => {
                tracing::warn!(name = %name.to_string_lossy(), error = %e, "cannot inspect dump file; will retry");
                return;
            }
        };
        if dump.meta.len() == 0 {
            // The kernel creates the file before writing; an empty file is not finished yet
            // (or a failed dump, which a later close event or rescan settles).
            self.follow_writing(name, parses);
            return;
        }
        if self.cfg.min_free_disk > 0
            && crate::sys::free_bytes(&self.cfg.dump_dir)
                .is_ok_and(|free| free < self.cfg.min_free_disk)
        {
            if !self.low_disk_warned {
                tracing::error!(dir = %self.cfg.dump_dir.display(), min_free = self.cfg.min_free_disk, "disk nearly full: new dumps wait in the dump directory until space is free");
                self.low_disk_warned = true;
            }
            METRICS.deferred_low_disk.inc();
            self.files.insert(
                name,
                Followed {
                    parses,
                    state: FileState::Deferred {
                        since: Instant::now(),
                    },
                },
            );
            return;
        }
        self.low_disk_warned = false;
        METRICS.dumps_detected.inc();
        self.files.remove(&name);
        self.decide(name, parses, dump, false, out);
    }

    /// Joins a finished dump with its crash, or waits, or gives up waiting (`final_try`).
    fn decide(
        &mut self,
        name: OsString,
        parses: Vec<NameFields>,
        dump: OpenedDump,
        final_try: bool,
        out: &mut Vec<Job>,
    ) {
        let joined = join(&parses, &self.crashes);
        let (crash_idx, attestation) = match joined {
            Join::One(i, how) => {
                let owner = dump.meta.uid();
                let crash_uid = self.crashes[i].crash.uid;
                if owner == crash_uid || owner == 0 {
                    (
                        Some(i),
                        Attestation {
                            attested: true,
                            reason: how.to_owned(),
                        },
                    )
                } else {
                    (
                        None,
                        Attestation {
                            attested: false,
                            reason: Rejection::Owner { owner, crash_uid }.to_string(),
                        },
                    )
                }
            }
            Join::None if self.cfg.probe_running && !final_try => {
                self.files.insert(
                    name,
                    Followed {
                        parses,
                        state: FileState::Waiting {
                            dump: Box::new(dump),
                            since: Instant::now(),
                        },
                    },
                );
                return;
            }
            Join::None => (
                None,
                Attestation {
                    attested: false,
                    reason: if self.cfg.probe_running {
                        format!(
                            "no kernel crash event matched within {:?}",
                            self.cfg.event_wait
                        )
                    } else {
                        "the kernel probe is not running (degraded mode)".to_owned()
                    },
                },
            ),
            Join::Many(n) => (
                None,
                Attestation {
                    attested: false,
                    reason: format!("{n} kernel crash events match this name; not guessing"),
                },
            ),
            Join::NoPid => (
                None,
                Attestation {
                    attested: false,
                    reason:
                        "the core_pattern has no %p/%P, so the file cannot be tied to a process"
                            .into(),
                },
            ),
        };
        let pending = crash_idx.map(|i| self.take_crash(i));
        let fields = pending
            .as_ref()
            .and_then(|p| parses.iter().find(|f| fits(&p.crash, f)))
            .or(parses.first())
            .cloned()
            .unwrap_or_default();
        let mut magic = [0u8; 6];
        let compression = {
            use std::os::unix::fs::FileExt as _;
            let n = dump.file.read_at(&mut magic, 0).unwrap_or(0);
            Compression::from_magic(&magic[..n]).or(fields.compression)
        };
        let info = DumpFile {
            name: name.to_string_lossy().into_owned(),
            size: dump.meta.len(),
            owner_uid: dump.meta.uid(),
            dev: dump.meta.dev(),
            ino: dump.meta.ino(),
            modified: dump.meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            compression,
            fields,
        };
        if !attestation.attested && self.cfg.require_attestation {
            tracing::warn!(name = %info.name, reason = %attestation.reason, "dump not attested: quarantined (--require-attestation)");
            self.quarantine(&name);
            return;
        }
        let id = match &pending {
            Some(p) => Self::crash_id(&p.crash),
            None => format!(
                "{}-f{:x}-{}-{}",
                boot_tag(),
                info.dev,
                info.ino,
                crate::sys::unix_secs(info.modified)
            ),
        };
        let record = self.record(id, pending.as_ref(), attestation, Some(info));
        let upload = self.within_rate_limit(&record);
        if !record.attestation.attested {
            METRICS.not_attested.inc();
        }
        tracing::info!(
            name = %name.to_string_lossy(),
            size = dump.meta.len(),
            attested = record.attestation.attested,
            reason = %record.attestation.reason,
            upload,
            "dump joined"
        );
        if self.claims.claim(&name) {
            out.push(Job {
                record,
                dump: Some(dump),
                upload_dump: upload,
            });
        }
    }

    fn within_rate_limit(&mut self, record: &Record) -> bool {
        if self.cfg.max_dumps_per_hour == 0 {
            return true;
        }
        let key = record
            .identity
            .container_id
            .clone()
            .or_else(|| record.identity.cgroup_path.clone())
            .unwrap_or_else(|| format!("comm:{}", record.comm().unwrap_or("?")));
        let now = Instant::now();
        let window = self.recent.entry(key.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) > HOUR)
        {
            window.pop_front();
        }
        if window.len() >= self.cfg.max_dumps_per_hour as usize {
            METRICS.rate_limited.inc();
            tracing::warn!(container = %key, limit = self.cfg.max_dumps_per_hour, "rate limit: crash recorded, dump dropped");
            return false;
        }
        window.push_back(now);
        true
    }

    fn quarantine(&self, name: &OsStr) {
        match intake::move_into(&self.cfg.dump_dir, name, intake::QUARANTINE_DIR) {
            Ok(to) => {
                tracing::warn!(name = %name.to_string_lossy(), to = %to.display(), "quarantined")
            }
            Err(e) => {
                tracing::error!(name = %name.to_string_lossy(), error = %e, "could not quarantine; left in place")
            }
        }
    }

    fn reject(&mut self, name: &OsStr, parses: &[NameFields], why: Rejection, out: &mut Vec<Job>) {
        METRICS.reject(why.label());
        tracing::warn!(name = %name.to_string_lossy(), reason = %why, "rejected file in the dump directory");
        // Never touch directories: they may be ours (quarantine/, stored/) or not.
        if !matches!(why, Rejection::NotRegular("directory")) {
            self.quarantine(name);
        }
        // If the kernel vouches for a crash this file claims to be, record that crash now.
        if let Join::One(i, _) = join(parses, &self.crashes) {
            let pending = self.take_crash(i);
            let attestation = Attestation {
                attested: true,
                reason: format!("dump file {} {why}: not stored", name.to_string_lossy()),
            };
            let record = self.record(
                Self::crash_id(&pending.crash),
                Some(&pending),
                attestation,
                None,
            );
            METRICS.crashes_without_dump.inc();
            out.push(Job {
                record,
                dump: None,
                upload_dump: false,
            });
        }
    }

    /// Timeouts: settled creations, files that waited for events, crashes without dumps.
    fn tick(&mut self, out: &mut Vec<Job>) {
        let now = Instant::now();
        let due: Vec<OsString> = self
            .files
            .iter()
            .filter(|(_, f)| match &f.state {
                FileState::Created { since } => now.duration_since(*since) >= SETTLE,
                FileState::Waiting { since, .. } => {
                    now.duration_since(*since) >= self.cfg.event_wait
                }
                FileState::Deferred { since } => now.duration_since(*since) >= DEFERRED_RETRY,
                FileState::Writing { since } => now.duration_since(*since) >= WRITING_RECHECK,
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(f) = self.files.remove(&name) else {
                continue;
            };
            match f.state {
                FileState::Waiting { dump, .. } => self.decide(name, f.parses, *dump, true, out),
                _ => self.look(name, f.parses, out),
            }
        }
        // A file being written (or waiting for disk) keeps the crashes it may belong to alive.
        let in_progress: Vec<&NameFields> = self.files.values().flat_map(|f| &f.parses).collect();
        let overflow = self.crashes.len().saturating_sub(MAX_PENDING);
        let due: Vec<usize> = self
            .crashes
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let old = now.duration_since(p.received) >= self.cfg.dump_wait;
                let awaited = in_progress.iter().any(|f| fits(&p.crash, f));
                (old && !awaited) || *i < overflow
            })
            .map(|(i, _)| i)
            .collect();
        // Highest index first, so the others stay valid.
        let expired: Vec<PendingCrash> =
            due.into_iter().rev().map(|i| self.take_crash(i)).collect();
        for p in expired {
            let attestation = Attestation {
                attested: true,
                reason: format!("no dump file appeared within {:?}", self.cfg.dump_wait),
            };
            let record = self.record(Self::crash_id(&p.crash), Some(&p), attestation, None);
            METRICS.crashes_without_dump.inc();
            tracing::info!(host_pid = p.crash.host_pid, comm = %p.crash.comm, "crash without dump");
            out.push(Job {
                record,
                dump: None,
                upload_dump: false,
            });
        }
    }
}

/// Runs the join until both inputs are closed (the sources stop on shutdown). What still
/// waits then is not lost: files stay unclaimed in the dump directory and crashes stay in the
/// journal, so the next start picks both up.
pub async fn run(
    cfg: Config,
    journal: Option<CrashJournal>,
    enricher: Enricher,
    claims: Claims,
    mut crashes: mpsc::Receiver<Crash>,
    mut files: mpsc::Receiver<FileEvent>,
    jobs: mpsc::Sender<Job>,
) -> Result<(), CorrelateError> {
    // Crashes journaled by a previous run: their age counts from the crash, not from now.
    let resumed: Vec<PendingCrash> = journal
        .as_ref()
        .map(|j| j.load::<PendingCrash>())
        .unwrap_or_default()
        .into_iter()
        .map(|(_, mut p)| {
            let age = SystemTime::now()
                .duration_since(p.crash.time)
                .unwrap_or_default();
            p.received = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            p
        })
        .collect();
    if !resumed.is_empty() {
        tracing::info!(count = resumed.len(), "resuming journaled crash events");
    }
    let mut c = Correlator {
        cfg,
        journal,
        enricher,
        claims,
        crashes: resumed,
        files: HashMap::new(),
        ignored: HashSet::new(),
        recent: HashMap::new(),
        low_disk_warned: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut crashes_open, mut files_open) = (true, true);
    let mut out = Vec::new();
    while crashes_open || files_open {
        tokio::select! {
            crash = crashes.recv(), if crashes_open => match crash {
                Some(crash) => c.on_crash(crash),
                None => crashes_open = false,
            },
            ev = files.recv(), if files_open => match ev {
                Some(ev) => c.on_file(ev, &mut out),
                None => files_open = false,
            },
            _ = tick.tick() => c.tick(&mut out),
        }
        for job in out.drain(..) {
            jobs.send(job)
                .await
                .map_err(|_| CorrelateError::SpoolGone)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::{Hook, Signal};

    fn crash(host_pid: u32, pid: u32, comm: &str, sig: u32, time: u64) -> PendingCrash {
        PendingCrash {
            crash: Crash {
                time: SystemTime::UNIX_EPOCH + Duration::from_secs(time),
                boot_ns: u64::from(host_pid),
                host_pid,
                host_tid: host_pid,
                pid: Some(pid),
                tid: Some(pid),
                pidns: None,
                pidns_level: Some(u32::from(pid != host_pid)),
                uid: 0,
                gid: 0,
                signal: Signal(sig),
                si_code: Some(1),
                cgroup_id: 1,
                comm: comm.into(),
                process_comm: None,
                exe_name: None,
                exe_name_truncated: false,
                cmdline: None,
                cmdline_truncated: false,
                hook: Hook::TpBtf,
            },
            process: None,
            identity: Identity::default(),
            received: Instant::now(),
        }
    }

    fn parse(pattern: &str, name: &str) -> Vec<NameFields> {
        CorePattern::parse(pattern, false)
            .unwrap()
            .match_name_all(name)
    }

    #[test]
    fn host_pid_joins_exactly() {
        let crashes = [
            crash(100, 100, "a", 11, 1000),
            crash(101, 101, "a", 11, 1000),
        ];
        let f = parse("/d/core.%P.%s", "core.101.11");
        assert!(matches!(join(&f, &crashes), Join::One(1, _)));
        assert_eq!(
            join(&parse("/d/core.%P.%s", "core.101.6"), &crashes),
            Join::None
        );
        assert_eq!(join(&parse("/d/core.%P", "core.999"), &crashes), Join::None);
    }

    #[test]
    fn namespace_pid_needs_comm_signal_and_time() {
        // Two containers, both with pid 7 and the same comm and signal: not guessable.
        let crashes = [
            crash(1000, 7, "app", 11, 1000),
            crash(2000, 7, "app", 11, 1001),
        ];
        let f = parse("/d/core-%e-%t-%p-%s", "core-app-1000-7-11");
        assert_eq!(join(&f, &crashes), Join::Many(2));
        // Different comm tells them apart.
        let crashes = [
            crash(1000, 7, "app", 11, 1000),
            crash(2000, 7, "other", 11, 1000),
        ];
        assert!(matches!(join(&f, &crashes), Join::One(0, _)));
        // Time too far off.
        let f = parse("/d/core-%e-%t-%p-%s", "core-app-2000-7-11");
        assert_eq!(join(&f, &crashes), Join::None);
    }

    #[test]
    fn comm_slash_is_escaped_by_the_kernel() {
        let crashes = [crash(5, 5, "a/b", 6, 1000)];
        assert!(matches!(
            join(&parse("/d/core.%e.%p", "core.a!b.5"), &crashes),
            Join::One(0, _)
        ));
    }

    #[test]
    fn names_without_a_pid_are_never_attested() {
        let crashes = [crash(5, 5, "app", 6, 1000)];
        assert_eq!(
            join(&parse("/d/core-%e-%t", "core-app-1000"), &crashes),
            Join::NoPid
        );
    }

    #[test]
    fn fifty_same_comm_crashes_each_join_their_own() {
        let crashes: Vec<_> = (0..50)
            .map(|i| crash(3000 + i, 3000 + i, "same", 11, 1000))
            .collect();
        for i in 0..50u32 {
            let f = parse(
                "/d/core-%e-%t-%p-%s",
                &format!("core-same-1000-{}-11", 3000 + i),
            );
            assert_eq!(
                join(&f, &crashes),
                Join::One(
                    i as usize,
                    "namespace pid, comm, signal and time matched the kernel's crash event"
                )
            );
        }
    }
}
