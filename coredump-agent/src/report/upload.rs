//! report::upload: stores the module files a dump needs, once per build-id, beside the dumps
//! (`<prefix>/_modules/<build-id>/<file name>`), so `coredump-agent debug` can rebuild the
//! crashed process's files anywhere, long after its image is gone.
//!
//! Called by deliver once the dump is stored. Only files whose build-id matched the core's
//! are stored. A `HEAD` first: a build-id is stored once, whichever pod or node crashed with
//! it; on a node, one upload per build-id is in flight at a time, and the crashes that wait for
//! it then find it stored. Bounded by `--max-module-size` per file and
//! `--max-modules-per-dump` per dump. A module that is not stored says why in the report; the
//! dump's delivery goes on either way.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, Weak},
};

use super::{Report, files::ModuleFiles};
use crate::{
    metrics::METRICS,
    store::{Body, Metadata, Store, StoreError, Tags, layout},
};

/// Settings (`--modules`, `--max-module-size`, `--max-modules-per-dump`).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Store modules at all.
    pub enabled: bool,
    /// Larger files are not stored.
    pub max_size: u64,
    /// At most this many bytes of modules stored for one dump.
    pub max_per_dump: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size: 512 << 20,
            max_per_dump: 2 << 30,
        }
    }
}

/// The node's uploads in flight, one per build-id.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    locks: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

impl InFlight {
    /// The lock of one build-id (shared while anyone holds it).
    fn lock_for(&self, build_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = locks.get(build_id).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the build-ids nobody waits for any more.
        locks.retain(|_, w| w.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(build_id.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

/// What became of one module, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Uploaded,
    Present,
    Skipped,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Present => "present",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}

/// Stores the modules of `report` from `files`, setting each module's `key` (or `note`).
/// Modules the limits leave out make the report partial, saying so. Returns the bytes
/// uploaded.
pub async fn store_modules<S: Store>(
    store: &S,
    prefix: &str,
    report: &mut Report,
    files: &ModuleFiles,
    cfg: Config,
    in_flight: &InFlight,
) -> u64 {
    if !cfg.enabled {
        return 0;
    }
    let mut total = 0u64;
    let mut uploaded = 0u64;
    let mut problems = Vec::new();
    for m in &mut report.modules {
        // Only what was checked against the core (a module without a file keeps its note).
        if m.file.is_none() {
            continue;
        }
        let Some(build_id) = m.build_id.clone() else {
            m.note = Some("no build-id: not stored".into());
            count(Outcome::Skipped);
            continue;
        };
        let Some(key) = layout::module_key(prefix, &build_id, m.name()) else {
            count(Outcome::Skipped);
            continue;
        };
        let Some(opened) = files.get(m.start.0) else {
            continue;
        };
        if opened.size > cfg.max_size {
            let why = format!(
                "not stored: {} bytes is over --max-module-size {}",
                opened.size, cfg.max_size
            );
            problems.push(format!("{}: {why}", m.name()));
            m.note = Some(why);
            count(Outcome::Skipped);
            continue;
        }
        let lock = in_flight.lock_for(&build_id);
        let _one_at_a_time = lock.lock().await;
        match store.exists(&key).await {
            Ok(true) => {
                m.key = Some(key);
                count(Outcome::Present);
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                m.note = Some(format!("not stored: {}", crate::error_chain(&e)));
                count(Outcome::Failed);
                continue;
            }
        }
        if total + opened.size > cfg.max_per_dump {
            let why = format!(
                "not stored: this dump's modules are over --max-modules-per-dump {}",
                cfg.max_per_dump
            );
            problems.push(format!("{}: {why}", m.name()));
            m.note = Some(why);
            count(Outcome::Skipped);
            continue;
        }
        total += opened.size;
        let mut metadata = Metadata::new();
        metadata.insert("build-id".into(), build_id.clone());
        metadata.insert("path".into(), layout::header_safe(&m.path, 1024));
        let body = Body::Opened {
            file: &opened.file,
            path: Path::new(&m.path),
        };
        match store.put(&key, body, &Tags::new(), &metadata).await {
            Ok(receipt) if receipt.source_size == opened.size => {
                uploaded += receipt.size;
                METRICS.module_bytes.inc_by(receipt.size);
                tracing::info!(key, bytes = receipt.size, "module stored");
                m.key = Some(key);
                count(Outcome::Uploaded);
            }
            Ok(receipt) => {
                // It changed while read: what was stored is not the module the core names.
                let _ = store.delete(&key).await;
                m.note = Some(format!(
                    "not stored: it changed while it was read ({} bytes, then {})",
                    opened.size, receipt.source_size
                ));
                count(Outcome::Failed);
            }
            // Another node stored it meanwhile (S3 keeps the first).
            Err(StoreError::Exists { .. }) => {
                m.key = Some(key);
                count(Outcome::Present);
            }
            Err(e) => {
                tracing::warn!(key, error = %crate::error_chain(&e), "storing a module failed");
                m.note = Some(format!("not stored: {}", crate::error_chain(&e)));
                count(Outcome::Failed);
            }
        }
    }
    if !problems.is_empty() {
        report.complete = false;
        for p in problems {
            if !report.problems.contains(&p) {
                report.problems.push(p);
            }
        }
    }
    uploaded
}

fn count(outcome: Outcome) {
    METRICS.module(outcome.label());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::{Addr, Module, files::Via},
        store::LocalStore,
    };

    fn module(path: &str, start: u64, build_id: &str) -> Module {
        Module {
            path: path.into(),
            start: Addr(start),
            end: Addr(start + 0x1000),
            build_id: Some(build_id.into()),
            file: Some(Via::MapFiles),
            ..Module::default()
        }
    }

    #[tokio::test]
    async fn modules_are_stored_once_per_build_id_within_the_limits() {
        let dir = std::env::temp_dir().join(format!("report-upload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::new(&dir).unwrap();
        let small = dir.with_extension("small");
        std::fs::write(&small, vec![7u8; 100]).unwrap();
        let big = dir.with_extension("big");
        std::fs::write(&big, vec![8u8; 5000]).unwrap();
        let id_a = "aa".repeat(20);
        let id_b = "bb".repeat(20);
        let mut files = ModuleFiles::default();
        assert!(files.insert(0x1000, std::fs::File::open(&small).unwrap(), Via::MapFiles));
        assert!(files.insert(0x5000, std::fs::File::open(&big).unwrap(), Via::MapFiles));
        let cfg = Config {
            enabled: true,
            max_size: 1000,
            max_per_dump: 1 << 20,
        };
        let in_flight = InFlight::default();
        let mut report = Report {
            complete: true,
            modules: vec![
                module("/app/server", 0x1000, &id_a),
                module("/lib/libbig.so", 0x5000, &id_b),
                Module {
                    file: None,
                    ..module("/lib/libgone.so", 0x9000, &id_b)
                },
            ],
            ..Report::default()
        };
        let bytes = store_modules(&store, "p", &mut report, &files, cfg, &in_flight).await;
        assert_eq!(bytes, 100);
        let key = format!("p/_modules/{id_a}/server");
        assert_eq!(report.modules[0].key.as_deref(), Some(key.as_str()));
        assert!(report.modules[1].key.is_none());
        assert!(
            report.modules[1]
                .note
                .as_deref()
                .unwrap()
                .contains("--max-module-size")
        );
        assert!(!report.complete);
        assert!(
            report.problems[0].contains("libbig.so"),
            "{:?}",
            report.problems
        );
        assert!(report.modules[2].key.is_none() && report.modules[2].note.is_none());
        // Again (another crash of the same build): found, not uploaded.
        let mut again = Report {
            modules: vec![module("/app/server", 0x1000, &id_a)],
            ..Report::default()
        };
        let bytes = store_modules(&store, "p", &mut again, &files, cfg, &in_flight).await;
        assert_eq!(bytes, 0);
        assert_eq!(again.modules[0].key.as_deref(), Some(key.as_str()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&small);
        let _ = std::fs::remove_file(&big);
    }
}
