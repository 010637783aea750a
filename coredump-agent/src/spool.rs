//! spool: persists each joined record before it is stored, so a restart (even `kill -9`)
//! resumes with the full identity the kernel gave at crash time.
//!
//! Pipeline: correlate → `spool` → deliver. The queue *is* the filesystem: the dump file (in
//! the dump directory, or the receive directory for socket and pipe intake) plus
//! `<state>/spool/<id>.json`. An entry is removed only after the store confirmed both the dump
//! and its record. Once an entry is durable, the crash journal's entry for the same crash is
//! no longer needed and goes: in that order, so no moment exists where neither holds it.

use std::{collections::HashSet, ffi::OsStr, io, os::unix::fs::MetadataExt as _, path::PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    intake::dir::{Dir, Inspect},
    job::{Claims, Job},
    metrics::METRICS,
    record::Record,
    state::Entries,
};

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The deliver stage went away.
    #[error("the deliver stage stopped")]
    DeliverGone,
}

/// One spooled entry.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    record: Record,
    upload_dump: bool,
    /// Its dump was dropped by the rate limit (what the metrics count it as).
    #[serde(default)]
    rate_limited: bool,
    /// Why it was set aside (in `parked/`), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parked: Option<String>,
}

/// The spool directory, and beside it `parked/`: jobs whose dump cannot be stored however
/// often it is tried (it changes while read, …), kept with their reason for an operator.
#[derive(Debug, Clone)]
pub struct Spool {
    entries: Entries,
    parked: Entries,
}

/// A parked job, as `check` shows it.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Its record's id.
    pub id: String,
    /// Why it was parked.
    pub reason: String,
    /// Its dump's file name.
    pub dump: Option<String>,
}

/// Where the dumps of spooled records are: the dump directory (file intake) and the receive
/// directory (socket, pipe), each held open.
#[derive(Debug, Clone, Default)]
pub struct DumpDirs {
    /// File intake's dump directory.
    pub file: Option<std::sync::Arc<Dir>>,
    /// The receive directory.
    pub received: Option<std::sync::Arc<Dir>>,
}

impl DumpDirs {
    /// The directory a record's dump is in.
    pub fn of(&self, record: &Record) -> Option<&Dir> {
        if record.intake.received() {
            self.received.as_deref()
        } else {
            self.file.as_deref()
        }
    }
}

impl Spool {
    /// Opens (creating) `<state_dir>/spool`.
    pub fn open(state_dir: &std::path::Path) -> Result<Self, SpoolError> {
        let open = |name: &str| {
            Entries::open(state_dir, name).map_err(|source| SpoolError::Io {
                op: "creating",
                path: state_dir.join(name),
                source,
            })
        };
        Ok(Self {
            entries: open("spool")?,
            parked: open("parked")?,
        })
    }

    /// Sets a job aside with `reason`: its entry moves to `parked/`, its dump stays where it
    /// is (and is not taken again at the next start). Returns where the entry went.
    pub fn park(&self, job: &Job, reason: &str) -> Result<PathBuf, SpoolError> {
        let entry = Entry {
            record: job.record.clone(),
            upload_dump: job.upload_dump,
            rate_limited: job.rate_limited,
            parked: Some(reason.to_owned()),
        };
        let id = &job.record.id;
        self.parked
            .save(id, &entry)
            .map_err(|source| SpoolError::Io {
                op: "writing",
                path: self.parked.path(id),
                source,
            })?;
        self.remove(id)?;
        Ok(self.parked.path(id))
    }

    /// The parked jobs.
    pub fn parked(&self) -> Vec<Parked> {
        parked_in(&self.parked)
    }
}

/// The jobs parked in `<state_dir>/parked/`, read without creating anything (for `check`).
pub fn parked_at(state_dir: &std::path::Path) -> Vec<Parked> {
    if !state_dir.join("parked").is_dir() {
        return Vec::new();
    }
    Entries::open(state_dir, "parked").map_or_else(|_| Vec::new(), |e| parked_in(&e))
}

fn parked_in(entries: &Entries) -> Vec<Parked> {
    entries
        .load::<Entry>()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, e)| {
            let e = e.ok()?;
            Some(Parked {
                id,
                reason: e.parked.unwrap_or_default(),
                dump: e.record.dump.map(|d| d.name),
            })
        })
        .collect()
}

impl Spool {
    /// Persists a job's record.
    pub fn write(&self, job: &Job) -> Result<(), SpoolError> {
        let entry = Entry {
            record: job.record.clone(),
            upload_dump: job.upload_dump,
            rate_limited: job.rate_limited,
            parked: None,
        };
        self.entries
            .save(&job.record.id, &entry)
            .map_err(|source| SpoolError::Io {
                op: "writing",
                path: self.entries.path(&job.record.id),
                source,
            })
    }

    /// Removes a finished entry.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        self.entries.remove(id).map_err(|source| SpoolError::Io {
            op: "removing",
            path: self.entries.path(id),
            source,
        })
    }

    /// Reads every entry left by a previous run and reopens its dump, claiming it so that
    /// neither the watcher's backlog nor the receive directory's recovery takes it a second
    /// time. A dump that is really gone, or whose name now holds another file, leaves a record
    /// only (and says so). One that cannot be looked at right now (too many open files, still
    /// being written) is not given up: its entry stays for the next start.
    pub fn recover(
        &self,
        dirs: &DumpDirs,
        claims: &Claims,
        journal: Option<&CrashJournal>,
    ) -> Result<Vec<Job>, SpoolError> {
        let loaded = self
            .entries
            .load::<Entry>()
            .map_err(|source| SpoolError::Io {
                op: "listing",
                path: self.entries.dir().to_owned(),
                source,
            })?;
        let mut jobs = Vec::new();
        for (id, entry) in loaded {
            let Ok(Entry {
                mut record,
                upload_dump,
                rate_limited,
                ..
            }) = entry
            else {
                continue;
            };
            // Spooled already: the journal entry of its crash is settled.
            if let Some(j) = journal {
                j.remove(&id);
            }
            let mut dump = None;
            let mut upload = upload_dump;
            if let (Some(info), Some(dir)) = (&record.dump, dirs.of(&record)) {
                let name = OsStr::new(&info.name);
                match dir.inspect(name, u64::MAX) {
                    Ok(Inspect::Ready(d))
                        if d.meta.dev() == info.dev && d.meta.ino() == info.ino =>
                    {
                        claims.claim(d.path.as_os_str());
                        dump = Some(d);
                    }
                    Ok(Inspect::Ready(_) | Inspect::Gone | Inspect::Rejected(_)) => {
                        tracing::warn!(id, name = %info.name, "spooled dump is gone or replaced: storing its record only");
                        record.attestation.reason = format!(
                            "{}; the dump file was gone or replaced when the agent restarted: not stored",
                            record.attestation.reason
                        );
                        upload = false;
                    }
                    Ok(Inspect::Writing { .. }) | Err(_) => {
                        tracing::warn!(id, name = %info.name, "spooled dump cannot be looked at now: left for the next start");
                        continue;
                    }
                }
            }
            jobs.push(Job {
                rate_limited,
                record,
                dump,
                upload_dump: upload,
                evidence: None,
            });
        }
        // Parked dumps stay where they are, not taken for new ones.
        for (id, entry) in self.parked.load::<Entry>().unwrap_or_default() {
            let Ok(entry) = entry else { continue };
            if let Some(j) = journal {
                j.remove(&id);
            }
            if let (Some(info), Some(dir)) = (&entry.record.dump, dirs.of(&entry.record)) {
                claims.claim(dir.join(OsStr::new(&info.name)).as_os_str());
            }
        }
        if !jobs.is_empty() {
            tracing::info!(count = jobs.len(), "resuming spooled dumps");
        }
        Ok(jobs)
    }

    /// Receive ids of the spooled records and the parked ones (their crashes are taken care
    /// of): the receive directory's recovery skips them.
    pub fn receive_ids(&self, jobs: &[Job]) -> HashSet<String> {
        let parked = self
            .parked
            .load::<Entry>()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, e)| e.ok()?.record.receive_id);
        jobs.iter()
            .filter_map(|j| j.record.receive_id.clone())
            .chain(parked)
            .collect()
    }

    /// Age of the oldest entry (for the spool age gauge), from its file's time.
    pub fn oldest_age(&self) -> std::time::Duration {
        self.entries
            .ids()
            .unwrap_or_default()
            .iter()
            .filter_map(|id| {
                std::fs::metadata(self.entries.path(id))
                    .ok()?
                    .modified()
                    .ok()
            })
            .min()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default()
    }

    /// Number of entries (for the spool depth gauge).
    pub fn depth(&self) -> usize {
        self.entries.count()
    }
}

/// Persists each job, then hands it on. Returns when the input closes.
pub async fn run(
    spool: Spool,
    journal: Option<CrashJournal>,
    mut rx: mpsc::Receiver<Job>,
    tx: mpsc::Sender<Job>,
) -> Result<(), SpoolError> {
    while let Some(job) = rx.recv().await {
        let (spool, journal) = (spool.clone(), journal.clone());
        let job = tokio::task::spawn_blocking(move || {
            // A spool write failure (disk full, read-only) must not lose the dump: it stays in
            // its directory and is handed on; only restart-resume is lost for it, and the
            // crash journal keeps the crash.
            match spool.write(&job) {
                Ok(()) => {
                    if let Some(j) = &journal {
                        j.remove(&job.record.id);
                    }
                }
                Err(e) => {
                    tracing::error!(id = %job.record.id, error = %e, "could not spool record; storing without a restart checkpoint");
                }
            }
            METRICS.spool_depth.set(spool.depth() as i64);
            job
        })
        .await
        .map_err(|e| SpoolError::Io {
            op: "spooling",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?;
        tx.send(job).await.map_err(|_| SpoolError::DeliverGone)?;
    }
    Ok(())
}

/// Crash events waiting for their dump, persisted so that a restart between the crash and the
/// end of its dump still joins them (and still records crashes without a dump).
#[derive(Debug, Clone)]
pub struct CrashJournal {
    entries: Entries,
}

impl CrashJournal {
    /// Opens (creating) `<state_dir>/crashes`.
    pub fn open(state_dir: &std::path::Path) -> Result<Self, SpoolError> {
        let entries = Entries::open(state_dir, "crashes").map_err(|source| SpoolError::Io {
            op: "creating",
            path: state_dir.join("crashes"),
            source,
        })?;
        Ok(Self { entries })
    }

    /// Persists a pending crash (and what was read about it) under `id`.
    pub fn save<T: Serialize>(&self, id: &str, pending: &T) {
        if let Err(e) = self.entries.save(id, pending) {
            tracing::warn!(path = %self.entries.path(id).display(), error = %e, "could not journal crash event");
        }
    }

    /// Forgets a crash once its record is spooled.
    pub fn remove(&self, id: &str) {
        if let Err(e) = self.entries.remove(id) {
            tracing::warn!(path = %self.entries.path(id).display(), error = %e, "could not remove a journaled crash");
        }
    }

    /// Every journaled crash (unreadable ones are moved aside).
    pub fn load<T: for<'de> Deserialize<'de>>(&self) -> Vec<(String, T)> {
        self.entries
            .load::<T>()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, v)| v.ok().map(|v| (id, v)))
            .collect()
    }
}
