//! A multipart upload in progress: its parts in flight, each tried again a few times, their
//! number set by [`Concurrency`], and what it cost ([`TransferStats`]).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinSet;

use super::{
    MAX_PARTS, S3Store, outcome_unknown,
    parts::{PartBody, PartSums},
};
use crate::store::{Store as _, StoreError, TransferStats, concurrency::Concurrency};

/// Tries of one part: a part that failed (after the SDK's own quick retries) is sent again
/// after [`PART_RETRY_DELAY`] × its try, rather than the whole dump failing.
const PART_TRIES: u32 = 3;
const PART_RETRY_DELAY: Duration = Duration::from_secs(1);

/// A part that went up: when it was sent, and whether it needed another try.
struct SentPart {
    part: CompletedPart,
    bytes: u64,
    took: Duration,
    retried: bool,
}

/// A multipart upload in progress: its parts in flight and those done.
pub(super) struct Multipart {
    store: S3Store,
    key: String,
    upload_id: String,
    /// Its record in the upload log, removed once it is completed or aborted.
    pub(super) record: Option<PathBuf>,
    parts: JoinSet<Result<SentPart, StoreError>>,
    done: Vec<CompletedPart>,
    next_part: i32,
    part_size: u64,
    /// Bytes of the parts done.
    bytes: u64,
    concurrency: Concurrency,
    /// Part latencies, and parts in flight each time one was sent.
    latencies: Vec<Duration>,
    in_flight: Vec<usize>,
    /// Completed or aborted: nothing for `Drop` to clean up.
    finished: bool,
}

impl Multipart {
    pub(super) fn new(store: S3Store, key: &str, upload_id: String, part_size: u64) -> Self {
        let concurrency = Concurrency::new(
            store.tuning.initial_parts_in_flight,
            store.tuning.max_parts_in_flight,
            Instant::now(),
        );
        Self {
            store,
            key: key.to_owned(),
            upload_id,
            record: None,
            parts: JoinSet::new(),
            done: Vec::new(),
            next_part: 1,
            part_size,
            bytes: 0,
            concurrency,
            latencies: Vec::new(),
            in_flight: Vec::new(),
            finished: false,
        }
    }

    pub(super) fn upload_id(&self) -> &str {
        &self.upload_id
    }

    /// Sends a part, after waiting for a slot among those in flight.
    pub(super) async fn send(&mut self, body: PartBody, sums: PartSums) -> Result<(), StoreError> {
        while self.parts.len() >= self.concurrency.limit() {
            self.reap().await?;
        }
        if self.next_part > MAX_PARTS {
            return Err(StoreError::Other {
                dest: self.store.describe(),
                op: "upload a part",
                transient: false,
                source: format!("the body needs more than {MAX_PARTS} parts").into(),
            });
        }
        let (store, key, upload_id) =
            (self.store.clone(), self.key.clone(), self.upload_id.clone());
        let part_number = self.next_part;
        self.next_part += 1;
        self.in_flight.push(self.parts.len() + 1);
        self.parts.spawn(async move {
            let started = Instant::now();
            let mut tries = 0;
            loop {
                tries += 1;
                match store
                    .upload_part(&key, &upload_id, part_number, &body, &sums)
                    .await
                {
                    Ok(part) => {
                        return Ok(SentPart {
                            part,
                            bytes: body.len(),
                            took: started.elapsed(),
                            retried: tries > 1,
                        });
                    }
                    Err(e) if e.is_transient() && tries < PART_TRIES => {
                        tracing::debug!(key, part_number, tries, error = %e, "part failed; sending it again");
                        tokio::time::sleep(PART_RETRY_DELAY * tries).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(())
    }

    /// Waits for one part in flight to finish.
    async fn reap(&mut self) -> Result<(), StoreError> {
        match self.parts.join_next().await {
            None => Ok(()),
            Some(Ok(sent)) => {
                let sent = sent?;
                let now = Instant::now();
                if sent.retried {
                    self.concurrency.backed_off(now);
                } else {
                    self.concurrency.part_done(sent.bytes, now);
                }
                self.latencies.push(sent.took);
                self.bytes += sent.bytes;
                self.done.push(sent.part);
                Ok(())
            }
            Some(Err(e)) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(StoreError::Other {
                    dest: self.store.describe(),
                    op: "upload a part",
                    transient: true,
                    source: Box::new(e),
                }),
            },
        }
    }

    /// What the upload cost, once complete: `copied` bytes went through this process's
    /// memory or spill file, in `took`.
    pub(super) fn stats(&self, copied: u64, took: Duration) -> TransferStats {
        let mut ms: Vec<f64> = self
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        TransferStats {
            parts: ms.len(),
            part_size: self.part_size,
            seconds: took.as_secs_f64(),
            part_ms_p50: at(0.5),
            part_ms_p90: at(0.9),
            part_ms_max: at(1.0),
            in_flight_final: self.concurrency.limit(),
            in_flight_max: self.in_flight.iter().copied().max().unwrap_or_default(),
            in_flight_mean: self.in_flight.iter().sum::<usize>() as f64
                / self.in_flight.len().max(1) as f64,
            copied_per_byte: copied as f64 / self.bytes.max(1) as f64,
        }
    }

    /// Waits for every part, then `CompleteMultipartUpload` of `size` bytes.
    ///
    /// The answer to that call may be lost or unreadable even though the store did complete
    /// the upload: a connection cut while the store assembles a large object (S3 holds it
    /// open meanwhile), or a reply the SDK cannot parse (moto 5.2.0-5.2.1 named its root
    /// element wrongly; the SDK reports that as "HTTP 200 with no error code"). Then the
    /// object itself decides: `HeadObject` showing this many parts and bytes means done.
    /// Otherwise the error is transient, so the dump is retried rather than parked.
    pub(super) async fn complete(&mut self, size: u64) -> Result<(), StoreError> {
        const OP: &str = "complete a multipart upload (CompleteMultipartUpload)";
        while !self.parts.is_empty() {
            self.reap().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len();
        let store = &self.store;
        let result = store
            .client
            .complete_multipart_upload()
            .bucket(&*store.bucket)
            .key(&self.key)
            .if_none_match("*")
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = result {
            let unknown = outcome_unknown(&e);
            let mut error = store.error(OP, Some(&self.key), e);
            if !unknown {
                return Err(error);
            }
            match store.multipart_object(&self.key, count).await {
                Some(stored) if stored == size => tracing::warn!(
                    key = self.key,
                    error = %format!("{:#}", anyhow::Error::new(error)),
                    "the answer to CompleteMultipartUpload was lost or unreadable, but the object is complete (HeadObject): accepted"
                ),
                _ => {
                    if let StoreError::Other { transient, .. } = &mut error {
                        *transient = true;
                    }
                    return Err(error);
                }
            }
        }
        self.finished = true;
        self.forget().await;
        Ok(())
    }

    /// Stops the parts in flight and aborts the upload. If the abort fails, the upload stays
    /// recorded, for a later [`S3Store::recover_uploads`].
    pub(super) async fn abort(mut self) {
        self.parts.abort_all();
        while self.parts.join_next().await.is_some() {}
        self.finished = true;
        let store = self.store.clone();
        match store.abort(&store.bucket, &self.key, &self.upload_id).await {
            Ok(()) => {
                tracing::debug!(
                    key = self.key,
                    upload_id = self.upload_id,
                    "multipart upload aborted"
                );
                self.forget().await;
            }
            Err(e) => {
                tracing::warn!(key = self.key, upload_id = self.upload_id, error = %format!("{:#}", anyhow::Error::new(e)), "could not abort the failed multipart upload now; it stays recorded and is aborted later");
                self.leave();
            }
        }
    }

    /// The upload is completed or aborted: its record goes.
    async fn forget(&mut self) {
        if let (Some(log), Some(path)) = (&self.store.uploads, self.record.take()) {
            log.forget(&path).await;
        }
    }

    /// The upload is left unfinished: its record stays, as stale, for a later
    /// [`S3Store::recover_uploads`].
    fn leave(&mut self) {
        if let (Some(log), Some(path)) = (&self.store.uploads, self.record.take()) {
            log.release(&path);
        }
    }
}

impl Drop for Multipart {
    /// A put that was cancelled (shutdown) leaves its upload: abort it in the background if
    /// the runtime still runs; else it stays recorded for the next start.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.leave();
            return;
        };
        let (store, key, upload_id, record) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
            self.record.take(),
        );
        runtime.spawn(async move {
            let aborted = store.abort(&store.bucket, &key, &upload_id).await.is_ok();
            if let (Some(log), Some(path)) = (&store.uploads, record) {
                if aborted {
                    log.forget(&path).await;
                } else {
                    log.release(&path);
                }
            }
        });
    }
}
