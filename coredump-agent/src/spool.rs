//! spool: persists each joined record before it is stored, so a restart (even `kill -9`)
//! resumes with the full identity the kernel gave at crash time.
//!
//! Pipeline: correlate → `spool` → deliver. The queue *is* the filesystem: the dump file in the
//! dump directory plus `<state>/spool/<id>.json`. An entry is removed only after the store
//! confirmed both the dump and its record.

use std::{
    ffi::OsStr,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    correlate::{Claims, Job},
    intake::{self, Inspect},
    metrics::METRICS,
    record::Record,
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
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io { op, path, source }
}

/// Creates `<state_dir>/<name>`, readable by the agent only (records name processes and pods).
fn private_dir(state_dir: &Path, name: &str) -> Result<PathBuf, SpoolError> {
    let dir = state_dir.join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("creating", &dir))?;
    Ok(dir)
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Spool {
    /// Opens (creating) `<state_dir>/spool`.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        Ok(Self {
            dir: private_dir(state_dir, "spool")?,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Persists a job's record.
    pub fn write(&self, job: &Job) -> Result<(), SpoolError> {
        let path = self.path(&job.record.id);
        let entry = Entry {
            record: job.record.clone(),
            upload_dump: job.upload_dump,
        };
        let bytes = serde_json::to_vec_pretty(&entry).expect("records serialize");
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }

    /// Removes a finished entry.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Reads every entry left by a previous run and reopens its dump. Claims the dump names so
    /// the watcher's backlog does not process them a second time.
    pub fn recover(
        &self,
        dump_dir: &Path,
        max_size: u64,
        claims: &Claims,
    ) -> Result<Vec<Job>, SpoolError> {
        let mut jobs = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()));
            let Entry {
                record,
                upload_dump,
            } = match parsed {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable spool entry: moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    continue;
                }
            };
            let mut job = Job {
                dump: None,
                upload_dump,
                record,
            };
            if let Some(info) = &job.record.dump {
                let fname = OsStr::new(&info.name);
                match intake::inspect(dump_dir, fname, max_size) {
                    Ok(Inspect::Ready(d))
                        if d.meta.dev() == info.dev && d.meta.ino() == info.ino =>
                    {
                        claims.claim(fname);
                        job.dump = Some(d);
                    }
                    other => {
                        tracing::warn!(id = %job.record.id, name = %info.name, found = ?other.map(|i| matches!(i, Inspect::Gone)), "spooled dump is gone or replaced: storing its record only");
                        job.upload_dump = false;
                    }
                }
            }
            jobs.push(job);
        }
        if !jobs.is_empty() {
            tracing::info!(count = jobs.len(), "resuming spooled dumps");
        }
        Ok(jobs)
    }

    /// Number of entries (for the spool depth gauge).
    pub fn depth(&self) -> usize {
        std::fs::read_dir(&self.dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".json")
                })
                .count()
        })
    }
}

/// Persists each job, then hands it on. Returns when the input closes.
pub async fn run(
    spool: Spool,
    mut rx: mpsc::Receiver<Job>,
    tx: mpsc::Sender<Job>,
) -> Result<(), SpoolError> {
    while let Some(job) = rx.recv().await {
        // A spool write failure (disk full, read-only) must not lose the dump: it stays in
        // the dump directory and is handed on; only restart-resume is lost for it.
        if let Err(e) = spool.write(&job) {
            tracing::error!(id = %job.record.id, error = %e, "could not spool record; storing without a restart checkpoint");
        }
        METRICS.spool_depth.set(spool.depth() as u64);
        tx.send(job).await.map_err(|_| SpoolError::DeliverGone)?;
    }
    Ok(())
}

/// Crash events waiting for their dump, persisted so that a restart between the crash and the
/// end of its dump still joins them (and still records crashes without a dump).
#[derive(Debug, Clone)]
pub struct CrashJournal {
    dir: PathBuf,
}

impl CrashJournal {
    /// Opens (creating) `<state_dir>/crashes`.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        Ok(Self {
            dir: private_dir(state_dir, "crashes")?,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Persists a pending crash (and what was read about it) under `id`.
    pub fn save<T: Serialize>(&self, id: &str, pending: &T) {
        let path = self.path(id);
        let bytes = serde_json::to_vec(pending).expect("crashes serialize");
        if let Err(e) = write_atomic(&path, &bytes) {
            tracing::warn!(path = %path.display(), error = %e, "could not journal crash event");
        }
    }

    /// Forgets a crash once it is joined or recorded.
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Every journaled crash.
    pub fn load<T: for<'de> Deserialize<'de>>(&self) -> Vec<(String, T)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".json")?.to_owned();
                if id.starts_with('.') {
                    return None;
                }
                let bytes = std::fs::read(e.path()).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(v) => Some((id, v)),
                    Err(err) => {
                        tracing::warn!(path = %e.path().display(), error = %err, "unreadable crash journal entry: dropped");
                        let _ = std::fs::remove_file(e.path());
                        None
                    }
                }
            })
            .collect()
    }
}
