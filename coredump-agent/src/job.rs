//! job: what flows from correlate through the spool to deliver: a record, and the dump it
//! describes, opened and checked.
//!
//! [`Claims`] is the set of dump files somewhere in that pipeline, so that the watcher's or a
//! restart's second sight of the same file is not taken for a new dump.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    fs::{File, Metadata},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::record::Record;

/// A dump file opened for reading and checked, with the metadata of the opened inode. Read the
/// dump only through `file`: its name may be swapped for something else at any time.
#[derive(Debug)]
pub struct OpenedDump {
    /// Read-only handle.
    pub file: File,
    /// `fstat` of the handle.
    pub meta: Metadata,
    /// Full path it was opened from (for messages, and to remove it once stored).
    pub path: PathBuf,
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
    /// The dump was dropped (or refused) by the per-container rate limit.
    pub rate_limited: bool,
    /// What the intake gathered for the crash report (the scanned core, the module files),
    /// in memory only: a job taken from the spool after a restart has none.
    pub evidence: Option<crate::report::Evidence>,
}

/// Dump files handed to the spool and store and not finished yet: events for them are ignored.
/// Keyed by the file's path, so that names in the dump directory and in the receive directory
/// never collide.
#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<HashSet<OsString>>>);

impl Claims {
    /// Claims a path; false if it was already claimed.
    pub fn claim(&self, path: &OsStr) -> bool {
        self.lock().insert(path.to_owned())
    }

    /// Releases a path once its dump is stored (or given up).
    pub fn release(&self, path: &OsStr) {
        self.lock().remove(path);
    }

    /// Whether a path is claimed.
    pub fn contains(&self, path: &OsStr) -> bool {
        self.lock().contains(path)
    }

    /// Number of claimed paths.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<OsString>> {
        // A panic elsewhere while holding the lock leaves a valid set: keep using it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
