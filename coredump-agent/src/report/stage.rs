//! report::stage: builds each dump's crash report between correlate and the spool, so the
//! spooled record (and the one stored beside the dump) holds it.
//!
//! Pipeline: correlate → `report` → spool. Reports are built on blocking threads, at most
//! [`CONCURRENT`] at once, each within the configured time budget; jobs without a dump to
//! report on pass straight through. A report that fails is a report that says so: the job
//! goes on either way.

use std::{io::Read, sync::Arc, time::Instant};

use tokio::{sync::mpsc, task::JoinSet};

use super::{Config, Evidence, Report, scan};
use crate::{job::Job, metrics::METRICS, pattern::Compression};

/// Reports built at once (each is CPU work: DWARF, CFI).
pub const CONCURRENT: usize = 2;

/// Whether a job gets a report: a dump that will be stored, and none made yet.
fn wants_report(cfg: &Config, job: &Job) -> bool {
    cfg.enabled && job.upload_dump && job.dump.is_some() && job.record.report.is_none()
}

/// Builds the report of one job (blocking): from the evidence the intake gathered, else
/// from its dump file.
pub fn report_job(cfg: &Config, job: &mut Job) {
    let started = Instant::now();
    let evidence = job.evidence.take().unwrap_or_default();
    let Evidence { core, files } = evidence;
    let core = match core {
        Some(core) => Ok(core),
        None => match &job.dump {
            Some(dump) => scan_file(
                cfg,
                &dump.file,
                job.record.dump.as_ref().and_then(|d| d.compression),
                started + cfg.budget,
            ),
            None => Err("no dump".to_owned()),
        },
    };
    let report = match core {
        Ok(core) => super::build(&core, &files, cfg),
        Err(why) => Report::failed(why),
    };
    let status = match (&report.complete, report.frames.is_empty()) {
        (true, _) => "complete",
        (false, false) => "partial",
        (false, true) => "failed",
    };
    METRICS.report(status, started.elapsed().as_secs_f64(), &report);
    tracing::info!(
        id = %job.record.id,
        summary = report.summary.as_deref().unwrap_or(""),
        signature = report.signature.as_deref().unwrap_or(""),
        build_id = report.main().and_then(|m| m.build_id.as_deref()).unwrap_or(""),
        frames = report.frames.len(),
        modules = report.modules.len(),
        complete = report.complete,
        problems = ?report.problems,
        millis = report.millis,
        "crash report"
    );
    job.record.report = Some(report);
    // The files stay with the job: deliver stores the modules from them.
    job.evidence = Some(Evidence { core: None, files });
}

/// A file read at explicit offsets, as a stream (for the decompressors), so it never moves
/// the descriptor's shared offset.
struct Positional<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt as _;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Scans a dump file: read where needed when plain, decompressed front to back otherwise.
fn scan_file(
    cfg: &Config,
    file: &std::fs::File,
    compression: Option<Compression>,
    deadline: Instant,
) -> Result<scan::Core, String> {
    use std::os::unix::fs::FileExt as _;
    let limits = cfg.limits;
    let reader = Positional { file, at: 0 };
    match compression {
        None => Ok(scan::scan_at(limits, |at, buf| file.read_at(buf, at))),
        Some(Compression::Zstd) => {
            let mut d = zstd::stream::read::Decoder::new(reader)
                .map_err(|e| format!("the dump cannot be decompressed: {e}"))?;
            Ok(scan::scan_stream_until(limits, &mut d, deadline))
        }
        Some(Compression::Gzip) => {
            let mut d = flate2::read::MultiGzDecoder::new(reader);
            Ok(scan::scan_stream_until(limits, &mut d, deadline))
        }
        Some(other) => Err(format!(
            "the dump is compressed with {}, which the agent does not read",
            crate::store::layout::compression_name(Some(other))
        )),
    }
}

/// Builds reports for jobs from `rx` and hands every job on to `tx`, until `rx` closes.
pub async fn run(cfg: Config, mut rx: mpsc::Receiver<Job>, tx: mpsc::Sender<Job>) {
    let cfg = Arc::new(cfg);
    let mut building: JoinSet<Job> = JoinSet::new();
    let mut open = true;
    while open || !building.is_empty() {
        tokio::select! {
            job = rx.recv(), if open && building.len() < CONCURRENT => match job {
                Some(job) if wants_report(&cfg, &job) => {
                    let cfg = cfg.clone();
                    let span = tracing::Span::current();
                    building.spawn_blocking(move || {
                        let _enter = span.enter();
                        let mut job = job;
                        // A bug in a report must not cost the dump: the job goes on, saying so.
                        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            report_job(&cfg, &mut job);
                        }));
                        if let Err(panic) = built {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(id = %job.record.id, panic = what, "building a crash report panicked");
                            job.record.report =
                                Some(Report::failed(format!("building the report failed: {what}")));
                        }
                        job
                    });
                }
                Some(job) => {
                    if tx.send(job).await.is_err() {
                        return;
                    }
                }
                None => open = false,
            },
            Some(done) = building.join_next(), if !building.is_empty() => match done {
                Ok(job) => {
                    if tx.send(job).await.is_err() {
                        return;
                    }
                }
                // Only a cancelled runtime gets here (panics are caught above); the dump stays
                // on disk, unspooled, and is taken again at the next start.
                Err(e) => tracing::error!(error = %e, "a crash report task was lost"),
            },
        }
    }
}
