//! deliver: stores each spooled job (the dump, then its record beside it) and only when the
//! store has confirmed both removes the dump from the dump directory and the spool entry.
//!
//! Pipeline: spool → `deliver` → store. Several jobs are delivered at once, so one large dump
//! does not hold up the others. Failures are retried with exponential backoff and jitter for
//! as long as it takes; a dump is never deleted before it is stored.

use std::{
    ffi::OsStr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    intake::{
        dir::{Dir, Inspect},
        received::ReceiveDir,
    },
    job::{Claims, Job},
    metrics::METRICS,
    notify::Notify,
    pattern::Compression,
    record::{DumpFile, Record, StoredDump},
    report::upload::InFlight,
    spool::{DumpDirs, Spool},
    store::{
        Body, Store, StoreError, Zstd,
        layout::{self, Stored},
    },
};

/// Settings of the deliver stage.
#[derive(Debug, Clone)]
pub struct Config {
    /// Key prefix in the store.
    pub prefix: String,
    /// Where dumps are.
    pub dirs: DumpDirs,
    /// With `--keep-local`: where stored dumps are moved instead of being deleted (the state
    /// directory's `stored/` for files, the receive directory's for received dumps).
    pub kept: Option<DumpDirs>,
    /// The receive directory, whose header of a received dump goes once it is stored.
    pub receive: Option<Arc<ReceiveDir>>,
    /// Jobs delivered at the same time.
    pub concurrency: usize,
    /// After shutdown is requested, how long uploads in flight may go on.
    pub shutdown_grace: Duration,
    /// Compress dumps with zstd while uploading them (`None`: store them as they are). A dump
    /// that already is compressed (gzip, zstd, xz, lz4) is stored as it is either way.
    pub compress: Option<Zstd>,
    /// What an object's URI starts with (`s3://bucket/`, `file:///root/`), for notices.
    pub uri_base: String,
    /// Who is told once a dump is stored (a `CoreDumpStored` Event on the crashed pod).
    pub notify: Notify,
    /// Whether and within which limits the crashed process's module files are stored.
    pub modules: crate::report::upload::Config,
}

/// First retry delay.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `delay` plus up to 50% jitter, so many nodes recovering together do not retry in step.
fn jittered(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay + delay.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Jobs held at once (each holds its dump open): those uploading and those waiting to retry.
const MAX_HELD: usize = 256;

/// How a delivery ended.
#[derive(Debug, PartialEq, Eq)]
enum Delivered {
    /// Stored, and the local copy gone.
    Stored,
    /// Set aside: it cannot be stored however often it is tried.
    Parked,
    /// Shutdown came first: it stays spooled.
    Interrupted,
}

/// Stores one job, retrying until it succeeds or shutdown is requested, each attempt holding one
/// of `uploads` (none while it waits to retry). Errors about the store (unreachable, denied)
/// are retried for as long as it takes; an error about the dump itself (it changed while read)
/// is looked at once more, then the job is parked, so that a dump a container keeps changing
/// cannot hold an upload slot forever.
async fn deliver<S: Store>(
    cfg: &Config,
    store: &S,
    spool: &Spool,
    uploads: &Semaphore,
    in_flight: &InFlight,
    job: Job,
    cancel: &CancellationToken,
) -> Delivered {
    let Job {
        record,
        dump,
        upload_dump,
        rate_limited,
        evidence,
    } = job;
    let dump = dump.filter(|_| upload_dump);
    let source_compression = record.dump.as_ref().and_then(|d| d.compression);
    // Compressing a compressed dump again costs CPU and saves nothing.
    let zstd = cfg
        .compress
        .filter(|_| dump.is_some() && source_compression.is_none());
    // The key and metadata say what the stored bytes are.
    let stored_compression = zstd.map_or(source_compression, |_| Some(Compression::Zstd));
    let stored = match &dump {
        Some(_) => Stored::Dump(stored_compression),
        None => Stored::RecordOnly,
    };
    let key = layout::object_key(&cfg.prefix, &record, stored);
    tracing::Span::current().record("key", key.as_str());
    let tags = layout::tags(&record);
    // What the kernel wrote: a received dump is already compressed on disk.
    let size = dump.as_ref().map_or(0, |d| {
        record
            .dump
            .as_ref()
            .and_then(|i| i.original_size)
            .unwrap_or(d.meta.len())
    });
    let metadata = layout::metadata(&record, size, layout::compression_name(stored_compression));

    let mut delay = BACKOFF_START;
    let mut about_the_dump = 0;
    let started = Instant::now();
    loop {
        let Ok(_slot) = uploads.acquire().await else {
            return Delivered::Interrupted;
        };
        let attempt_started = Instant::now();
        let attempt = async {
            let mut bytes = 0;
            let mut stored_dump = None;
            if let Some(d) = &dump {
                let file = Body::Opened {
                    file: &d.file,
                    path: &d.path,
                };
                let body = match zstd {
                    Some(settings) => Body::Zstd {
                        body: &file,
                        settings,
                    },
                    None => file,
                };
                let receipt = store.put(&key, body, &tags, &metadata).await?;
                if receipt.source_size != d.meta.len() {
                    return Err(StoreError::BodyChanged {
                        path: d.path.clone(),
                        expected: d.meta.len(),
                        read: receipt.source_size,
                    });
                }
                bytes = receipt.size;
                stored_dump = Some(StoredDump {
                    key: key.clone(),
                    size: receipt.size,
                    sha256: receipt.sha256,
                    compression: stored_compression,
                });
            }
            // Then the module files the crash report checked, once per build-id: the record
            // lists their keys.
            let mut report = record.report.clone();
            if let (Some(_), Some(report), Some(evidence)) = (&dump, report.as_mut(), &evidence) {
                crate::report::upload::store_modules(
                    store,
                    &cfg.prefix,
                    report,
                    &evidence.files,
                    cfg.modules,
                    in_flight,
                )
                .await;
            }
            // The record beside the dump says what the store confirmed, so `get` can verify.
            let json = serde_json::to_vec_pretty(&Record {
                stored: stored_dump,
                report,
                ..record.clone()
            })
            .expect("records serialize");
            store
                .put(
                    &layout::record_key(&key),
                    Body::Bytes(&json),
                    &tags,
                    &metadata,
                )
                .await?;
            Ok::<u64, StoreError>(bytes)
        };
        let result = tokio::select! {
            r = attempt => r,
            () = async { cancel.cancelled().await; tokio::time::sleep(cfg.shutdown_grace).await } => {
                tracing::warn!(id = %record.id, key, "shutdown: upload interrupted, the dump stays spooled for the next start");
                return Delivered::Interrupted;
            }
        };
        match result {
            Ok(bytes) => {
                use crate::metrics::{CompressionLabels, Outcome};
                let name = |c: Option<Compression>| CompressionLabels {
                    compression: layout::compression_name(c).to_owned(),
                };
                let outcome = match (&dump, record.attestation.attested) {
                    (Some(_), true) => Outcome::stored,
                    (Some(_), false) => Outcome::unattested,
                    (None, _) if rate_limited => Outcome::rate_limited,
                    (None, _) => Outcome::crash_only,
                };
                METRICS.crash(&record, outcome);
                if dump.is_some() {
                    METRICS
                        .dump_bytes_in
                        .get_or_create(&name(source_compression))
                        .inc_by(size);
                    METRICS
                        .dump_bytes_out
                        .get_or_create(&name(stored_compression))
                        .inc_by(bytes);
                    METRICS
                        .upload_seconds
                        .observe(attempt_started.elapsed().as_secs_f64());
                }
                if let Ok(age) = record.crash_time().elapsed() {
                    METRICS.crash_to_stored_seconds.observe(age.as_secs_f64());
                }
                tracing::info!(
                    id = %record.id,
                    dest = %store.describe(),
                    key,
                    bytes,
                    original_bytes = size,
                    seconds = started.elapsed().as_secs_f64(),
                    attested = record.attestation.attested,
                    signature = record.report.as_ref().and_then(|r| r.signature.as_deref()).unwrap_or(""),
                    summary = record.report.as_ref().and_then(|r| r.summary.as_deref()).unwrap_or(""),
                    "stored"
                );
                if dump.is_some() {
                    cfg.notify
                        .dump_stored(&record, &format!("{}{key}", cfg.uri_base))
                        .await;
                }
                break;
            }
            Err(e) if e.is_about_the_dump() && about_the_dump >= 1 => {
                METRICS.store_error(e.class());
                METRICS.crash(&record, crate::metrics::Outcome::parked);
                let reason = format!("{:#}", anyhow::Error::new(e));
                let job = Job {
                    record,
                    dump,
                    upload_dump,
                    rate_limited,
                    evidence: None,
                };
                match spool.park(&job, &reason) {
                    Ok(to) => {
                        tracing::error!(id = %job.record.id, key, reason, parked = %to.display(), "the dump cannot be stored: set aside, kept on disk")
                    }
                    Err(e) => {
                        tracing::error!(id = %job.record.id, key, reason, error = %e, "the dump cannot be stored, and setting it aside failed: kept on disk")
                    }
                }
                return Delivered::Parked;
            }
            Err(e) => {
                METRICS.store_error(e.class());
                // About the dump: one more look at once (the first read may have raced the
                // end of a write). About the store: back off.
                let wait = if e.is_about_the_dump() {
                    about_the_dump += 1;
                    Duration::ZERO
                } else if e.is_transient() {
                    delay
                } else {
                    BACKOFF_MAX
                };
                tracing::error!(id = %record.id, key, error = %format!("{e:#}"), transient = e.is_transient(), retry_in = ?wait, "store failed; the dump stays on disk");
                drop(_slot);
                tokio::select! {
                    () = tokio::time::sleep(jittered(wait)) => {}
                    () = cancel.cancelled() => return Delivered::Interrupted,
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    }

    // Stored: now, and only now, the local copy may go.
    if let (Some(info), Some(dir)) = (&record.dump, cfg.dirs.of(&record)) {
        let kept = cfg.kept.as_ref().and_then(|k| k.of(&record));
        match &dump {
            Some(d) => remove_local(dir, kept, info, &d.meta),
            // Not uploaded on purpose (rate limit): the record is stored, the file goes.
            None => {
                if let Ok(Inspect::Ready(d)) = dir.inspect(OsStr::new(&info.name), u64::MAX) {
                    remove_local(dir, kept, info, &d.meta);
                }
            }
        }
    }
    if let (Some(id), Some(receive)) = (&record.receive_id, &cfg.receive) {
        receive.forget(id);
    }
    if let Err(e) = spool.remove(&record.id) {
        tracing::warn!(id = %record.id, error = %e, "could not remove spool entry");
    }
    Delivered::Stored
}

/// Removes (or with `--keep-local`, moves to `kept`) the dump a record names, only if its
/// name still is the file that was read: never what someone put in its place.
fn remove_local(dir: &Dir, kept: Option<&Dir>, info: &DumpFile, meta: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt as _;
    let name = OsStr::new(&info.name);
    if (meta.dev(), meta.ino()) != (info.dev, info.ino) || !dir.still_names(name, meta) {
        tracing::warn!(
            name = info.name,
            "dump file was replaced after being read: left in place"
        );
        return;
    }
    let result = match kept {
        Some(kept) => dir.move_to(name, kept).map(drop),
        None => dir.remove_if_same(name, meta).map(drop),
    };
    if let Err(e) = result {
        tracing::error!(name = info.name, error = %e, "stored, but could not remove the local dump");
    }
}

/// Delivers jobs until the input closes, then waits for those in flight. At most
/// `cfg.concurrency` upload at once; at most [`MAX_HELD`] are held (uploading or waiting to
/// retry), after which the spool waits.
pub async fn run<S: Store>(
    cfg: Config,
    store: Arc<S>,
    spool: Spool,
    claims: Claims,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    cancel: CancellationToken,
) {
    let uploads = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let in_flight = InFlight::default();
    let held = Arc::new(Semaphore::new(MAX_HELD));
    let cfg = Arc::new(cfg);
    let mut tasks = JoinSet::new();
    while let Some(job) = rx.recv().await {
        let Ok(permit) = held.clone().acquire_owned().await else {
            break;
        };
        let (cfg, store, spool, claims, cancel, uploads, in_flight) = (
            cfg.clone(),
            store.clone(),
            spool.clone(),
            claims.clone(),
            cancel.clone(),
            uploads.clone(),
            in_flight.clone(),
        );
        // Every line about this crash carries its id, pod and key.
        let pod = job.record.identity.pod();
        let span = tracing::info_span!(
            "crash",
            id = %job.record.id,
            namespace = pod.and_then(|p| p.namespace.as_deref()).unwrap_or(""),
            pod = pod.and_then(|p| p.pod.as_deref()).unwrap_or(""),
            key = tracing::field::Empty,
        );
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let path = job.dump.as_ref().map(|d| d.path.clone());
                let delivered =
                    deliver(&cfg, &*store, &spool, &uploads, &in_flight, job, &cancel).await;
                // A parked dump stays claimed: it is not taken for a new one.
                if let Some(path) = path
                    && delivered == Delivered::Stored
                {
                    claims.release(path.as_os_str());
                }
                METRICS.spool_depth.set(spool.depth() as i64);
                drop(permit);
            },
            span,
        ));
        // Reap finished tasks so the set does not grow with the number of dumps.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
