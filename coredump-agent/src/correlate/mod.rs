//! correlate: joins each dump with the kernel's crash event for it, and applies the policy.
//!
//! Pipeline: enrich (crash events, read and journaled) + intake (dumps) → `correlate` → spool.
//! A dump the kernel handed over (socket, pipe) comes with its host pid from the kernel: its
//! crash event is found by that pid ([`join::by_host_pid`]). A file in the dump directory is
//! followed until it is finished ([`follow`]), then joined by what its name says
//! ([`join::join`]). Events may arrive before or after their dump. When no event or more than
//! one fits a file, the dump is kept but marked not attested, with the reason: the agent never
//! guesses which process a dump belongs to. A crash that no dump joins within `dump_wait`
//! (extended while its dump is still coming) is recorded as a crash without a dump.

pub mod follow;
pub mod join;

use std::{
    collections::{HashSet, VecDeque},
    ffi::OsString,
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::mpsc, time::Instant};

use self::{
    follow::{Follower, State, Timers},
    join::Join,
};
use crate::{
    enrich::{CrashFacts, crash_id},
    intake::{
        DumpEvent, Intake, Received,
        dir::{Dir, Inspect, Rejection},
        watch::{Change, FileEvent},
    },
    job::{Claims, Job, OpenedDump},
    metrics::METRICS,
    pattern::{Compression, CorePattern, NameFields},
    policy::{Policy, Verdict},
    record::{AgentInfo, Attestation, DumpFile, Record, SCHEMA, boot_tag},
    spool::CrashJournal,
};

/// File intake's settings.
#[derive(Debug, Clone)]
pub struct FileIntake {
    /// The dump directory, held open.
    pub dir: Arc<Dir>,
    /// The core_pattern the names come from.
    pub pattern: CorePattern,
    /// Where rejected files go (the state directory's `quarantine/`).
    pub quarantine: Arc<Dir>,
}

/// Settings of the join.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name, for records.
    pub node: String,
    /// Cluster name, for records.
    pub cluster: Option<String>,
    /// How long a finished dump waits for its crash event.
    pub event_wait: Duration,
    /// How long a crash waits for its dump (extended while the dump is coming).
    pub dump_wait: Duration,
    /// Whether the kernel probe runs (if not, nothing waits for crash events).
    pub probe_running: bool,
    /// File intake, when on.
    pub file: Option<FileIntake>,
    /// Rate limit, attestation requirement, disk floor.
    pub policy: Policy,
}

/// Why correlation stopped.
#[derive(Debug, thiserror::Error)]
pub enum CorrelateError {
    /// The spool stage went away while the agent was running.
    #[error("the spool stage stopped")]
    SpoolGone,
}

/// A crash waiting for its dump.
struct Pending {
    facts: CrashFacts,
    since: Instant,
}

/// How long after `IN_CREATE` a file is looked at again.
const SETTLE: Duration = Duration::from_millis(500);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(250);
/// How often a file still being written is looked at again.
const WRITING_RECHECK: Duration = Duration::from_secs(1);
/// How often a deferred (low disk) dump is looked at again.
const DEFERRED_RETRY: Duration = Duration::from_secs(10);
/// How often the rate limiter forgets idle containers.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most crashes kept waiting for a dump; beyond, the oldest are recorded without one.
const MAX_PENDING: usize = 10_000;
/// Most unknown names remembered (to log each once).
const MAX_IGNORED: usize = 10_000;
/// Jobs correlate holds for the spool before it stops reading dump events (crash events are
/// read regardless).
const MAX_BACKLOG: usize = 4096;
/// Most received dumps waiting for their crash event.
const MAX_WAITING_RECEIVED: usize = 1024;

/// The correlation stage's state.
struct Correlator {
    cfg: Config,
    claims: Claims,
    crashes: Vec<Pending>,
    /// Host pids whose dump the kernel is handing over: their crashes wait however long.
    receiving: HashSet<u32>,
    /// Received dumps waiting for their crash event.
    waiting: Vec<(Received, Instant)>,
    follower: Follower,
    ignored: HashSet<OsString>,
    low_disk_warned: bool,
    pruned: Instant,
}

impl Correlator {
    fn timers(&self) -> Timers {
        Timers {
            settle: SETTLE,
            writing_recheck: WRITING_RECHECK,
            deferred_retry: DEFERRED_RETRY,
            event_wait: self.cfg.event_wait,
            stall: self.cfg.dump_wait,
        }
    }

    fn record(
        &self,
        id: String,
        crash: Option<&CrashFacts>,
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
            intake: Intake::File,
            receive_id: None,
            kernel: None,
            report: None,
        }
    }

    fn on_crash(&mut self, facts: CrashFacts, out: &mut Vec<Job>) {
        METRICS.crash_events.inc();
        let host_pid = facts.crash.host_pid;
        self.crashes.push(Pending {
            facts,
            since: Instant::now(),
        });
        // Its dump may have arrived first.
        if let Some(i) = self
            .waiting
            .iter()
            .position(|(r, _)| r.header.kernel.host_pid == Some(host_pid))
        {
            let (received, _) = self.waiting.remove(i);
            self.on_received(received, true, out);
        }
    }

    fn take_crash(&mut self, i: usize) -> CrashFacts {
        self.crashes.remove(i).facts
    }

    // ---- received dumps (socket, pipe) ------------------------------------------------------

    /// Joins a received dump with its crash event, or waits for the event (`final_try`: the
    /// wait is over).
    fn on_received(&mut self, received: Received, final_try: bool, out: &mut Vec<Job>) {
        let host_pid = received.header.kernel.host_pid.unwrap_or_default();
        self.receiving.remove(&host_pid);
        let joined = join::by_host_pid(host_pid, self.crashes.iter().map(|p| &p.facts.crash));
        if joined.is_none()
            && self.cfg.probe_running
            && !final_try
            && self.waiting.len() < MAX_WAITING_RECEIVED
        {
            self.waiting.push((received, Instant::now()));
            return;
        }
        let pending = joined.map(|i| self.take_crash(i));
        out.push(self.received_job(received, pending));
    }

    fn received_job(&self, received: Received, pending: Option<CrashFacts>) -> Job {
        let Received {
            header,
            dump,
            missing,
            rate_limited,
            evidence,
        } = received;
        let host_pid = header.kernel.host_pid.unwrap_or_default();
        let how = match header.intake {
            Intake::Pipe => "the kernel ran the agent's pipe helper for host pid",
            _ => "the kernel connected to the agent's coredump socket for host pid",
        };
        let mut reason = match &pending {
            Some(_) => format!("{how} {host_pid}, the pid of the kernel's crash event"),
            None if self.cfg.probe_running => format!(
                "{how} {host_pid} (no crash event from the probe within {:?})",
                self.cfg.event_wait
            ),
            None => format!("{how} {host_pid} (the probe is not running)"),
        };
        if let Some(missing) = &missing {
            reason = format!("{reason}; {missing}");
        }
        let id = pending
            .as_ref()
            .map_or_else(|| header.id.clone(), |p| crash_id(&p.crash));
        let info = dump.as_ref().map(|d| DumpFile {
            name: header.dump_name(),
            size: d.meta.len(),
            owner_uid: d.meta.uid(),
            dev: d.meta.dev(),
            ino: d.meta.ino(),
            modified: d.meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            compression: header.compression,
            fields: header.kernel.clone(),
            original_size: header.original_size,
        });
        let mut record = self.record(
            id,
            pending.as_ref(),
            Attestation {
                attested: true,
                reason,
            },
            info,
        );
        // Read while the process was pinned: more than the probe-time read could see.
        if header.process.is_some() {
            record.process = header.process.clone();
        }
        // The crash event's identity came from the kernel's cgroup id at the signal; the
        // header's from the pidfd or /proc during the dump. The first that names something.
        if record.identity.cgroup_path.is_none() {
            record.identity = header.identity.clone();
        }
        record.intake = header.intake;
        record.receive_id = Some(header.id.clone());
        record.kernel = Some(header.kernel.clone());
        tracing::info!(
            host_pid,
            intake = header.intake.name(),
            id = %record.id,
            bytes = header.original_size.unwrap_or_default(),
            attested = true,
            joined = pending.is_some(),
            reason = %record.attestation.reason,
            "dump received"
        );
        if let Some(d) = &dump {
            self.claims.claim(d.path.as_os_str());
        }
        Job {
            upload_dump: dump.is_some(),
            record,
            dump,
            rate_limited,
            evidence,
        }
    }

    // ---- files (file intake) -----------------------------------------------------------------

    fn on_file(&mut self, file: &FileIntake, ev: FileEvent, out: &mut Vec<Job>) {
        let FileEvent { name, change } = ev;
        if self.ignored.contains(&name) || self.claims.contains(file.dir.join(&name).as_os_str()) {
            return;
        }
        if let Some(f) = self.follower.get(&name) {
            // Already followed: only a finishing event changes anything.
            if matches!(f.state, State::Waiting(_)) || change == Change::Created {
                return;
            }
        }
        let parses = match name.to_str() {
            Some(s) => file.pattern.match_name_all(s),
            None => Vec::new(),
        };
        if parses.is_empty() {
            tracing::info!(name = %name.to_string_lossy(), pattern = file.pattern.file_template(), "not a name the core_pattern produces: left alone");
            METRICS.reject(Rejection::UnknownName.label());
            if self.ignored.len() < MAX_IGNORED {
                self.ignored.insert(name);
            }
            return;
        }
        if change == Change::Created {
            self.follower
                .follow(name, parses, State::Created, Instant::now());
            return;
        }
        let previous = self.follower.take(&name);
        self.look(file, name, parses, previous.as_ref(), out);
    }

    /// Inspects a (probably finished) file and moves it on. `previous`: how it was followed.
    fn look(
        &mut self,
        file: &FileIntake,
        name: OsString,
        parses: Vec<NameFields>,
        previous: Option<&follow::Followed>,
        out: &mut Vec<Job>,
    ) {
        let dump = match file.dir.inspect(&name, self.cfg.policy.max_dump_size) {
            Ok(Inspect::Ready(dump)) if dump.meta.len() > 0 => dump,
            // Nobody writes it and it is empty: a failed dump, or not a dump. Its crash (if
            // any) is recorded without a dump when it expires; a new event brings it back.
            Ok(Inspect::Ready(_)) => return,
            Ok(Inspect::Writing { size }) => {
                let now = Instant::now();
                match Follower::writing(previous, size, now, self.cfg.dump_wait) {
                    Some(state) => {
                        self.follower.follow(name, parses, state, now);
                    }
                    None => {
                        tracing::warn!(name = %name.to_string_lossy(), size, "a file in the dump directory stopped growing but is still open for writing: no longer followed");
                    }
                }
                return;
            }
            Ok(Inspect::Gone) => return,
            Ok(Inspect::Rejected(why)) => {
                self.reject(file, &name, &parses, why, out);
                return;
            }
            Err(e) => {
                // Looked at again on the timer: a transient error (EMFILE, EIO) must not drop
                // the file until the next restart.
                tracing::warn!(name = %name.to_string_lossy(), error = %e, "cannot inspect dump file; will retry");
                let state = State::Writing {
                    size: 0,
                    grew: Instant::now(),
                };
                self.follower.follow(name, parses, state, Instant::now());
                return;
            }
        };
        if self.cfg.policy.low_disk(file.dir.path()) {
            if !self.low_disk_warned {
                tracing::error!(dir = %file.dir.path().display(), min_free = self.cfg.policy.min_free_disk, "disk nearly full: new dumps wait in the dump directory until space is free");
                self.low_disk_warned = true;
            }
            METRICS.deferred_low_disk.inc();
            self.follower
                .follow(name, parses, State::Deferred, Instant::now());
            return;
        }
        self.low_disk_warned = false;
        self.decide(file, name, parses, dump, false, out);
    }

    /// Joins a finished dump file with its crash, or waits, or gives up waiting (`final_try`).
    fn decide(
        &mut self,
        file: &FileIntake,
        name: OsString,
        parses: Vec<NameFields>,
        dump: OpenedDump,
        final_try: bool,
        out: &mut Vec<Job>,
    ) {
        let joined = join::join(&parses, self.crashes.iter().map(|p| &p.facts.crash));
        let (crash_idx, attestation) = match joined {
            Join::One(i, how) => {
                let owner = dump.meta.uid();
                let crash_uid = self.crashes[i].facts.crash.uid;
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
                let state = State::Waiting(Box::new(dump));
                if !self
                    .follower
                    .follow(name.clone(), parses.clone(), state, Instant::now())
                {
                    // Nowhere to wait: decided now, as if the wait were over.
                    tracing::warn!(name = %name.to_string_lossy(), "too many files followed: not waiting for this one's crash event");
                    if let Ok(Inspect::Ready(dump)) =
                        file.dir.inspect(&name, self.cfg.policy.max_dump_size)
                    {
                        self.decide(file, name, parses, dump, true, out);
                    }
                }
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
            .and_then(|p| parses.iter().find(|f| join::fits(&p.crash, f)))
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
            original_size: None,
        };
        if !attestation.attested && self.cfg.policy.require_attestation {
            tracing::warn!(name = %info.name, reason = %attestation.reason, "dump not attested: quarantined (--require-attestation)");
            let record = self.record(String::new(), None, attestation, Some(info));
            METRICS.crash(&record, crate::metrics::Outcome::quarantined);
            self.quarantine(file, &name);
            return;
        }
        let id = match &pending {
            Some(p) => crash_id(&p.crash),
            None => format!(
                "{}-f{:x}-{}-{}",
                boot_tag(),
                info.dev,
                info.ino,
                crate::sys::unix_secs(info.modified)
            ),
        };
        let record = self.record(id, pending.as_ref(), attestation, Some(info));
        // Only the kernel's word (an attested crash's container) keys the rate limit.
        let upload = !record.attestation.attested
            || self.cfg.policy.judge(&record.identity) == Verdict::Keep;
        if !upload {
            tracing::warn!(
                container = record.identity.container_id.as_deref().unwrap_or(""),
                cgroup = record.identity.cgroup_path.as_deref().unwrap_or(""),
                "rate limit: crash recorded, dump dropped"
            );
        }
        tracing::info!(
            name = %name.to_string_lossy(),
            size = dump.meta.len(),
            attested = record.attestation.attested,
            reason = %record.attestation.reason,
            upload,
            "dump joined"
        );
        if self.claims.claim(dump.path.as_os_str()) {
            // The module files opened when the crash event came.
            let evidence = pending
                .as_ref()
                .and_then(|p| p.modules.clone())
                .map(|files| crate::report::Evidence { core: None, files });
            out.push(Job {
                record,
                dump: Some(dump),
                upload_dump: upload,
                rate_limited: !upload,
                evidence,
            });
        }
    }

    fn quarantine(&mut self, file: &FileIntake, name: &OsString) {
        match file.dir.move_to(name, &file.quarantine) {
            Ok(to) => {
                tracing::warn!(name = %name.to_string_lossy(), to = %to.display(), "quarantined")
            }
            Err(e) => {
                tracing::error!(name = %name.to_string_lossy(), error = %e, "could not quarantine; left in place and ignored");
                if self.ignored.len() < MAX_IGNORED {
                    self.ignored.insert(name.clone());
                }
            }
        }
    }

    fn reject(
        &mut self,
        file: &FileIntake,
        name: &OsString,
        parses: &[NameFields],
        why: Rejection,
        out: &mut Vec<Job>,
    ) {
        METRICS.reject(why.label());
        tracing::warn!(name = %name.to_string_lossy(), reason = %why, "rejected file in the dump directory");
        // Never touch directories: they may be anyone's.
        if !matches!(why, Rejection::NotRegular("directory")) {
            self.quarantine(file, name);
        }
        // If the kernel vouches for a crash this file claims to be, record that crash now.
        if let Join::One(i, _) = join::join(parses, self.crashes.iter().map(|p| &p.facts.crash)) {
            let pending = self.take_crash(i);
            let attestation = Attestation {
                attested: true,
                reason: format!("dump file {} {why}: not stored", name.to_string_lossy()),
            };
            let record = self.record(crash_id(&pending.crash), Some(&pending), attestation, None);
            out.push(Job {
                record,
                dump: None,
                upload_dump: false,
                rate_limited: false,
                evidence: None,
            });
        }
    }

    // ---- timers -----------------------------------------------------------------------------

    /// Timeouts: settled creations, files and received dumps that waited for events, crashes
    /// without dumps.
    fn tick(&mut self, out: &mut Vec<Job>) {
        let now = Instant::now();
        if let Some(file) = self.cfg.file.clone() {
            for name in self.follower.due(now, &self.timers()) {
                let Some(f) = self.follower.take(&name) else {
                    continue;
                };
                match f.state {
                    State::Waiting(dump) => self.decide(&file, name, f.parses, *dump, true, out),
                    _ => {
                        let parses = f.parses.clone();
                        self.look(&file, name, parses, Some(&f), out);
                    }
                }
            }
        }
        let event_wait = self.cfg.event_wait;
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, since)| now.duration_since(*since) >= event_wait);
        self.waiting = waiting;
        for (received, _) in due {
            self.on_received(received, true, out);
        }
        self.expire_crashes(now, out);
        if now.duration_since(self.pruned) >= PRUNE_EVERY {
            self.cfg.policy.prune();
            self.pruned = now;
        }
    }

    fn expire_crashes(&mut self, now: Instant, out: &mut Vec<Job>) {
        // A dump still coming keeps the crashes it may belong to.
        let in_progress: Vec<&NameFields> = self.follower.in_progress().collect();
        let overflow = self.crashes.len().saturating_sub(MAX_PENDING);
        let due: Vec<usize> = self
            .crashes
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let old = now.duration_since(p.since) >= self.cfg.dump_wait;
                let awaited = self.receiving.contains(&p.facts.crash.host_pid)
                    || in_progress.iter().any(|f| join::fits(&p.facts.crash, f));
                (old && !awaited) || *i < overflow
            })
            .map(|(i, _)| i)
            .collect();
        // Highest index first, so the others stay valid.
        let expired: Vec<CrashFacts> = due.into_iter().rev().map(|i| self.take_crash(i)).collect();
        for p in expired {
            let attestation = Attestation {
                attested: true,
                reason: format!("no dump appeared within {:?}", self.cfg.dump_wait),
            };
            let record = self.record(crash_id(&p.crash), Some(&p), attestation, None);
            tracing::info!(host_pid = p.crash.host_pid, comm = %p.crash.comm, "crash without dump");
            out.push(Job {
                record,
                dump: None,
                upload_dump: false,
                rate_limited: false,
                evidence: None,
            });
        }
    }
}

/// Runs the join until both inputs are closed (the sources stop on shutdown). What still
/// waits then is not lost: files stay unclaimed in their directory and crashes stay in the
/// journal, so the next start picks both up.
pub async fn run(
    cfg: Config,
    journal: Option<CrashJournal>,
    claims: Claims,
    mut crashes: mpsc::Receiver<CrashFacts>,
    mut dumps: mpsc::Receiver<DumpEvent>,
    jobs: mpsc::Sender<Job>,
) -> Result<(), CorrelateError> {
    // Crashes journaled by a previous run: their age counts from the crash, not from now.
    let resumed: Vec<Pending> = journal
        .as_ref()
        .map(|j| j.load::<CrashFacts>())
        .unwrap_or_default()
        .into_iter()
        .map(|(_, facts)| {
            let age = SystemTime::now()
                .duration_since(facts.crash.time)
                .unwrap_or_default();
            let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            Pending { facts, since }
        })
        .collect();
    if !resumed.is_empty() {
        tracing::info!(count = resumed.len(), "resuming journaled crash events");
    }
    let mut c = Correlator {
        cfg,
        claims,
        crashes: resumed,
        receiving: HashSet::new(),
        waiting: Vec::new(),
        follower: Follower::default(),
        ignored: HashSet::new(),
        low_disk_warned: false,
        pruned: Instant::now(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut crashes_open, mut dumps_open) = (true, true);
    let mut out = Vec::new();
    // Jobs the spool has not taken yet. Crash events are read whatever the spool and the
    // store do (a slow upload must not make the kernel drop crash events); dump events wait
    // while this backlog is long.
    let mut backlog: VecDeque<Job> = VecDeque::new();
    while crashes_open || dumps_open {
        tokio::select! {
            crash = crashes.recv(), if crashes_open => match crash {
                Some(facts) => c.on_crash(facts, &mut out),
                None => crashes_open = false,
            },
            ev = dumps.recv(), if dumps_open && backlog.len() < MAX_BACKLOG => match ev {
                Some(DumpEvent::File(ev)) => match c.cfg.file.clone() {
                    Some(file) => c.on_file(&file, ev, &mut out),
                    None => tracing::warn!(name = %ev.name.to_string_lossy(), "a file event without file intake"),
                },
                Some(DumpEvent::Receiving { host_pid }) => {
                    c.receiving.insert(host_pid);
                }
                Some(DumpEvent::Received(received)) => c.on_received(*received, false, &mut out),
                None => dumps_open = false,
            },
            permit = jobs.reserve(), if !backlog.is_empty() => {
                let permit = permit.map_err(|_| CorrelateError::SpoolGone)?;
                permit.send(backlog.pop_front().expect("not empty"));
            },
            _ = tick.tick() => c.tick(&mut out),
        }
        backlog.extend(out.drain(..));
    }
    for job in backlog {
        jobs.send(job)
            .await
            .map_err(|_| CorrelateError::SpoolGone)?;
    }
    Ok(())
}
