//! store::s3: the S3 store, for AWS S3 and S3-compatible servers (MinIO, Ceph, moto, …).
//!
//! A put reads its body through [`BodyReader`] (which hashes it, and compresses it if asked)
//! and cuts it into parts ([`parts`]): ranges of the dump's own file when it goes up as it is,
//! ranges of a spill file the compressed bytes are written to ahead of the upload, or, for a
//! small body in memory, bytes. A body that fits in one part goes up as one `PutObject`; a
//! larger one as a multipart upload ([`multipart`]), with the tags and user metadata given at
//! `CreateMultipartUpload`, a part size that grows with the file so no dump needs more than
//! 10,000 parts, and as many parts in flight as make the upload faster
//! ([`Concurrency`](super::concurrency::Concurrency)), at no cost in memory.
//!
//! Every part and object carries a checksum the store verifies ([`ChecksumMode`]). After the
//! upload, `HeadObject` confirms the stored size, and the tags are read back and set again if
//! the store dropped them (some do at `CreateMultipartUpload`). Only then does a put succeed,
//! and only then may the caller delete the dump.
//!
//! A failed multipart upload is aborted. Each one is recorded in `<state dir>/uploads/` while
//! it runs, so that one left by a crash, or whose abort failed because the store was down, is
//! aborted later: by [`S3Store::recover_uploads`] at start, and after each completed upload.
//! (A bucket lifecycle rule `AbortIncompleteMultipartUpload` is the safety net for the rest.)
//!
//! SDK errors become [`StoreError`]s that name the cause. A part is tried again a few times
//! beyond the SDK's own quick retries; retrying a whole dump is the caller's job (the deliver
//! stage).

mod multipart;
mod parts;

use std::{
    collections::HashSet,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

pub use aws_sdk_s3 as sdk;
use aws_sdk_s3::{
    Client,
    error::{BuildError, ProvideErrorMetadata, SdkError},
    types::{ChecksumAlgorithm, CompletedPart, Tag, Tagging},
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    BoxError, ConnectOptions, Metadata, ObjectInfo, PutReceipt, Store, StoreError, Tags,
    validate_key,
};
use crate::store::{Body, BodyDigest, BodyReader, TransferStats, hex, layout};
use multipart::Multipart;

const MIB: u64 = 1 << 20;
/// S3's smallest part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3 allows 10,000 parts. Plan for fewer: a compressed body can come out slightly larger than
/// the file it was planned for.
const PLANNED_PARTS: u64 = 9000;
/// S3's part numbers are 1 to 10,000.
const MAX_PARTS: i32 = 10_000;
/// Key segment of the object `check` writes: not a namespace (those never start with `_`).
const CHECK_SEGMENT: &str = "_agent-check";

/// Adds a part's body and checksums to a `PutObject` or `UploadPart` request and sends it,
/// its payload signed with the part's SHA-256 (plain HTTP) or not (see `S3Store::sign_payload`).
/// A macro because the two request builders have these methods in common but no trait.
macro_rules! send_body {
    ($request:expr, $body:expr, $sums:expr) => {{
        let (body, sums): (&parts::PartBody, &parts::PartSums) = (&$body, &$sums);
        let stream = body.stream().await?;
        let request = $request
            .set_checksum_crc32_c(sums.crc32c.clone())
            .set_content_md5(sums.md5.clone())
            .content_length(i64::try_from(body.len()).unwrap_or(i64::MAX))
            .body(stream)
            .customize();
        match &sums.sha256 {
            Some(sha256) => {
                request
                    .interceptor(parts::PrecomputedPayload(sha256.clone()))
                    .send()
                    .await
            }
            None => request.disable_payload_signing().send().await,
        }
    }};
}

/// Which checksums requests carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumMode {
    /// A CRC32C per part and per object, which the store verifies (AWS S3, MinIO, moto, s3s).
    #[default]
    WhenSupported,
    /// Only checksums an operation requires, plus a Content-MD5 per request: for S3-compatible
    /// stores that reject or corrupt the SDK's default streaming checksums (Ceph radosgw,
    /// Garage, s3rver).
    WhenRequired,
}

/// Whether each request's payload is hashed into its signature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SignPayload {
    /// Over plain HTTP only, where TLS does not protect the bytes (as the AWS CLI does).
    #[default]
    Auto,
    /// Always: one more SHA-256 pass per byte, here and on the server.
    Always,
    /// Never: the part's checksum header (signed) is all that covers the bytes.
    Never,
}

/// Part sizes, parallelism and logging of uploads. The defaults suit production; tests use
/// smaller parts to exercise multipart uploads with small files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Smallest part size (S3 refuses parts under 5 MiB but the last). A body no larger goes up
    /// in one `PutObject`.
    pub min_part_size: u64,
    /// Parts in flight when an upload starts; it adds more while that makes it faster.
    pub initial_parts_in_flight: usize,
    /// Most parts uploading at once (`--s3-max-parts-in-flight`).
    pub max_parts_in_flight: usize,
    /// How often a long upload logs its progress.
    pub progress_interval: Duration,
}

/// Default of [`Tuning::max_parts_in_flight`].
pub const MAX_PARTS_IN_FLIGHT: usize = 32;

impl Default for Tuning {
    fn default() -> Self {
        Self {
            min_part_size: 8 * MIB,
            initial_parts_in_flight: 4,
            max_parts_in_flight: MAX_PARTS_IN_FLIGHT,
            progress_interval: Duration::from_secs(10),
        }
    }
}

impl Tuning {
    /// Part size for a body of `size` bytes: at least [`Tuning::min_part_size`], large enough
    /// that the body takes at most 9,000 parts, in whole MiB.
    pub fn part_size(&self, size: u64) -> u64 {
        size.div_ceil(PLANNED_PARTS)
            .next_multiple_of(MIB)
            .max(self.min_part_size)
            .min(MAX_PART_SIZE)
    }
}

/// A bucket (and key prefix) on S3 or an S3-compatible server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: Arc<str>,
    prefix: Arc<str>,
    describe: Arc<str>,
    node: Option<Arc<str>>,
    checksum: ChecksumMode,
    /// Hash the payload into the signature: only over plain HTTP, where TLS does not protect
    /// it (as the AWS CLI does). The per-part checksum covers integrity either way.
    sign_payload: bool,
    tuning: Tuning,
    uploads: Option<Arc<UploadLog>>,
    /// Where compressed bodies are written ahead of their upload: `<state dir>/spill`.
    spill_dir: Arc<Path>,
    /// The store answered 501 to tagging once: warn once, not for every dump.
    tags_unsupported: Arc<AtomicBool>,
}

impl S3Store {
    /// Loads credentials and region the way the AWS CLI does (environment, profile, web
    /// identity/IRSA, EKS Pod Identity, instance metadata), then [`S3Store::with_config`].
    ///
    /// With a custom endpoint the region comes from the environment or profile only, else
    /// `us-east-1`: S3-compatible stores mostly ignore it, and asking the instance metadata
    /// service off EC2 only waits for a timeout.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &ConnectOptions,
    ) -> Result<Self, StoreError> {
        use aws_config::{
            environment::region::EnvironmentVariableRegionProvider,
            meta::region::RegionProviderChain, profile::ProfileFileRegionProvider,
        };
        let endpoint = options.s3_endpoint.clone().or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                .into_iter()
                .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        });
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if endpoint.is_some() {
            loader = loader.region(
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(ProfileFileRegionProvider::new())
                    .or_else(sdk::config::Region::from_static("us-east-1")),
            );
        }
        let shared = loader.load().await;
        let options = ConnectOptions {
            s3_endpoint: endpoint,
            ..options.clone()
        };
        Self::with_config(
            sdk::config::Builder::from(&shared),
            bucket,
            prefix,
            &options,
        )
    }

    /// A store using `config` for credentials, region and HTTP, with the endpoint, addressing
    /// and checksum settings of `options` applied on top.
    pub fn with_config(
        config: sdk::config::Builder,
        bucket: &str,
        prefix: &str,
        options: &ConnectOptions,
    ) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/');
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let mut config = config.force_path_style(options.s3_path_style);
        let describe = match &options.s3_endpoint {
            Some(endpoint) => {
                config = config.endpoint_url(endpoint);
                format!("{url} at {endpoint}")
            }
            None => url,
        };
        if options.s3_checksum == ChecksumMode::WhenRequired {
            config = config
                .request_checksum_calculation(sdk::config::RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(
                    sdk::config::ResponseChecksumValidation::WhenRequired,
                );
        }
        let config = config.build();
        if config.region().is_none() {
            return Err(StoreError::Config {
                dest: describe,
                what: "no AWS region: set AWS_REGION (or a region in the AWS profile), or run \
                       where the instance metadata service answers"
                    .into(),
            });
        }
        let plain_http = options.s3_endpoint.as_deref().is_some_and(|e| {
            e.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        });
        let sign_payload = match options.s3_sign_payload {
            SignPayload::Auto => plain_http,
            SignPayload::Always => true,
            SignPayload::Never => false,
        };
        Ok(Self {
            client: Client::from_conf(config),
            bucket: bucket.into(),
            prefix: prefix.into(),
            describe: describe.into(),
            node: options.node.as_deref().map(Into::into),
            checksum: options.s3_checksum,
            sign_payload,
            tuning: Tuning {
                max_parts_in_flight: options
                    .s3_max_parts_in_flight
                    .unwrap_or(MAX_PARTS_IN_FLIGHT),
                ..Tuning::default()
            },
            uploads: options
                .state_dir
                .as_ref()
                .map(|dir| Arc::new(UploadLog::new(dir.join("uploads")))),
            spill_dir: options
                .state_dir
                .as_ref()
                .map_or_else(std::env::temp_dir, |dir| dir.join("spill"))
                .into(),
            tags_unsupported: Arc::default(),
        })
    }

    /// The same store with other part sizes and parallelism.
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The SDK client, for what the [`Store`] trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Aborts the multipart uploads recorded under `<state dir>/uploads/` that no put of this
    /// process is running: those a crash or a shutdown cut short, and those whose abort failed.
    /// Returns how many were aborted; one that cannot be aborted now stays recorded for the
    /// next call. Call at start, once the store is reachable.
    pub async fn recover_uploads(&self) -> Result<usize, StoreError> {
        let Some(log) = &self.uploads else {
            return Ok(0);
        };
        let mut aborted = 0;
        for (path, record) in log.stale().await? {
            let op = "abort a stale multipart upload";
            match self
                .abort(&record.bucket, &record.key, &record.upload_id)
                .await
            {
                Ok(()) => {
                    tracing::info!(key = record.key, upload_id = record.upload_id, started = %humantime::format_rfc3339_seconds(record.started), "aborted a multipart upload left unfinished");
                    log.forget(&path).await;
                    aborted += 1;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(key = record.key, error = %format!("{:#}", anyhow::Error::new(e)), "could not {op} yet; will try again");
                }
                Err(e) => {
                    tracing::warn!(key = record.key, upload_id = record.upload_id, error = %format!("{:#}", anyhow::Error::new(e)), "could not {op}; forgetting it (a lifecycle rule can remove it)");
                    log.forget(&path).await;
                }
            }
        }
        Ok(aborted)
    }

    /// `AbortMultipartUpload`; an upload that is already gone counts as aborted.
    async fn abort(&self, bucket: &str, key: &str, upload_id: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.error("abort a multipart upload", Some(key), e)),
        }
    }

    /// Key of the upload [`Store::check`] starts and aborts: `<prefix>/_agent-check/<node>`.
    fn check_key(&self) -> String {
        let node = layout::sanitize_part(self.node.as_deref(), 64);
        if self.prefix.is_empty() {
            format!("{CHECK_SEGMENT}/{node}")
        } else {
            format!("{}/{CHECK_SEGMENT}/{node}", self.prefix)
        }
    }

    /// One `PutObject` of a whole body, with its tags, metadata and checksums.
    async fn put_object(
        &self,
        key: &str,
        body: &parts::PartBody,
        sums: &parts::PartSums,
        tags: &Tags,
        metadata: &Metadata,
    ) -> Result<(), StoreError> {
        // A node never replaces an object, its own or another's.
        let mut request = self
            .client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .if_none_match("*")
            .set_metadata(Some(metadata.clone().into_iter().collect()));
        if !tags.is_empty() {
            request = request.tagging(encode_tags(tags));
        }
        send_body!(request, body, sums)
            .map_err(|e| self.error("upload an object (PutObject)", Some(key), e))?;
        Ok(())
    }

    /// Starts a multipart upload with the object's tags and metadata, and records it.
    async fn start_multipart(
        &self,
        key: &str,
        tags: &Tags,
        metadata: &Metadata,
        part_size: u64,
    ) -> Result<Multipart, StoreError> {
        let mut request = self
            .client
            .create_multipart_upload()
            .bucket(&*self.bucket)
            .key(key)
            .set_metadata(Some(metadata.clone().into_iter().collect()));
        if !tags.is_empty() {
            request = request.tagging(encode_tags(tags));
        }
        if self.checksum == ChecksumMode::WhenSupported {
            request = request.checksum_algorithm(ChecksumAlgorithm::Crc32C);
        }
        let op = "start a multipart upload (CreateMultipartUpload)";
        let created = request
            .send()
            .await
            .map_err(|e| self.error(op, Some(key), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StoreError::Other {
                dest: self.describe(),
                op,
                transient: true,
                source: "the store returned no upload id".into(),
            })?
            .to_owned();
        let mut upload = Multipart::new(self.clone(), key, upload_id, part_size);
        if let Some(log) = &self.uploads {
            // Should the record fail, the upload is aborted (by `Multipart`'s drop) right away.
            upload.record = Some(log.record(&self.bucket, key, upload.upload_id()).await?);
        }
        tracing::debug!(
            key,
            upload_id = upload.upload_id(),
            part_size,
            "multipart upload started"
        );
        Ok(upload)
    }

    /// `UploadPart` with its checksums; the part as `CompleteMultipartUpload` wants it.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &parts::PartBody,
        sums: &parts::PartSums,
    ) -> Result<CompletedPart, StoreError> {
        let request = self
            .client
            .upload_part()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number);
        let uploaded = send_body!(request, body, sums)
            .map_err(|e| self.error("upload a part (UploadPart)", Some(key), e))?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(uploaded.e_tag().map(str::to_owned))
            .set_checksum_crc32_c(sums.crc32c.clone())
            .build())
    }

    /// Whether the object at `key` holds exactly the bytes `digest` describes (read back and
    /// hashed); an error naming the conflict if another object is there.
    async fn holds(&self, key: &str, digest: &BodyDigest) -> Result<bool, StoreError> {
        use sha2::{Digest as _, Sha256};
        use tokio::io::AsyncReadExt as _;
        let mut reader = self.open(key).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(StoreError::io("read back", key))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        if size == digest.size && hex(&hasher.finalize()) == digest.sha256 {
            return Ok(true);
        }
        Err(StoreError::Other {
            dest: self.describe(),
            op: "store a dump under a key another object has (If-None-Match)",
            transient: false,
            source: format!("{key:?} holds {size} other bytes: this node does not replace objects")
                .into(),
        })
    }

    /// The size of `key` if it is an object assembled from `parts` parts (its ETag ends in
    /// `-<parts>`); `None` if it is not there, is another object, or the store cannot say.
    async fn multipart_object(&self, key: &str, parts: usize) -> Option<u64> {
        let head = self
            .client
            .head_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let etag = head.e_tag()?.trim_matches('"');
        etag.ends_with(&format!("-{parts}"))
            .then(|| head.content_length().and_then(|n| u64::try_from(n).ok()))
            .flatten()
    }

    /// Confirms what was stored: the size, then the tags, setting them if the store dropped
    /// them at upload.
    async fn confirm(&self, key: &str, size: u64, tags: &Tags) -> Result<(), StoreError> {
        let op = "confirm the stored size (HeadObject)";
        let head = self
            .client
            .head_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(op, Some(key), e))?;
        let stored = head.content_length().and_then(|n| u64::try_from(n).ok());
        if stored != Some(size) {
            return Err(StoreError::Other {
                dest: self.describe(),
                op,
                transient: true,
                source: format!("the store holds {stored:?} bytes where {size} were sent").into(),
            });
        }
        if tags.is_empty() || self.tags_unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let stored = match self.get_tags(key).await {
            Ok(stored) => stored,
            Err(TagsError::Unsupported) => {
                self.warn_no_tags();
                return Ok(());
            }
            Err(TagsError::Store(e)) => return Err(e),
        };
        if &stored == tags {
            return Ok(());
        }
        tracing::info!(
            key,
            stored = stored.len(),
            wanted = tags.len(),
            "the store did not keep the tags given at upload: setting them"
        );
        let invalid = |e: BuildError| StoreError::Other {
            dest: self.describe(),
            op: "build the tag set",
            transient: false,
            source: Box::new(e),
        };
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(invalid)?;
        let result = self
            .client
            .put_object_tagging()
            .bucket(&*self.bucket)
            .key(key)
            .tagging(tagging)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if not_implemented(&e) => {
                self.warn_no_tags();
                Ok(())
            }
            Err(e) => Err(self.error("set the tags (PutObjectTagging)", Some(key), e)),
        }
    }

    fn warn_no_tags(&self) {
        if !self.tags_unsupported.swap(true, Ordering::Relaxed) {
            tracing::warn!(dest = %self.describe, "this store does not support object tags: dumps are stored without them, and cannot be found by pod");
        }
    }

    /// `GetObjectTagging`.
    async fn get_tags(&self, key: &str) -> Result<Tags, TagsError> {
        let result = self
            .client
            .get_object_tagging()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect()),
            Err(e) if not_implemented(&e) => Err(TagsError::Unsupported),
            // radosgw answers 200 with an empty body for an object whose tags it dropped at
            // CreateMultipartUpload: no tags, which the caller then sets.
            Err(e) if unreadable_ok(&e) => {
                tracing::debug!(
                    key,
                    "GetObjectTagging answered 200 without a tag set: taken as no tags"
                );
                Ok(Tags::new())
            }
            Err(e) => Err(TagsError::Store(self.error(
                "read the tags (GetObjectTagging)",
                Some(key),
                e,
            ))),
        }
    }

    /// A [`StoreError`] naming the cause of an SDK error.
    fn error<E>(&self, op: &'static str, key: Option<&str>, err: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let dest = self.describe();
        let source = describe_sdk_error(&err);
        if caused_by::<aws_credential_types::provider::error::CredentialsError>(&err) {
            return StoreError::NoCredentials { dest, op, source };
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        match (&err, err.code(), status) {
            (SdkError::TimeoutError(_), ..) => StoreError::Unreachable { dest, op, source },
            (SdkError::DispatchFailure(f), ..) if f.is_io() || f.is_timeout() => {
                StoreError::Unreachable { dest, op, source }
            }
            (_, Some("PreconditionFailed"), _) | (_, None, Some(412)) if key.is_some() => {
                StoreError::Exists {
                    key: key.unwrap_or_default().to_owned(),
                }
            }
            (_, Some("NoSuchBucket"), _) => StoreError::BucketNotFound {
                dest,
                bucket: self.bucket.to_string(),
                op,
            },
            (_, Some("NoSuchKey" | "NotFound"), _) | (_, None, Some(404)) if key.is_some() => {
                StoreError::NotFound {
                    key: key.unwrap_or_default().to_owned(),
                }
            }
            (_, Some(code), _) if DENIED.contains(&code) => {
                StoreError::AccessDenied { dest, op, source }
            }
            (_, None, Some(401 | 403)) => StoreError::AccessDenied { dest, op, source },
            (_, code, status) => StoreError::Other {
                dest,
                op,
                // A garbled response (cut off by a proxy) is worth another try, too.
                transient: code.is_some_and(|c| TRANSIENT.contains(&c))
                    || status.is_some_and(|s| s >= 500 || s == 429)
                    || matches!(err, SdkError::ResponseError(_)),
                source,
            },
        }
    }
}

/// Error codes that mean the credentials or permissions are wrong.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
];

/// Error codes that say to try again later.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "OperationAborted",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
];

/// What went wrong reading tags: an error, or a store without tagging.
enum TagsError {
    Unsupported,
    Store(StoreError),
}

/// Whether a `T` is among the causes of `err`.
fn caused_by<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<T>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A 200 answer the SDK could not read (an empty or foreign body), not an error document.
fn unreadable_ok<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    matches!(err, SdkError::ServiceError(_))
        && err.code().is_none()
        && err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 200)
}

/// Whether a failed call may still have taken effect: the request went out, but no readable
/// answer came back (cut connection, timeout, unparsable reply), or the store said to retry.
fn outcome_unknown<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(f) => f.is_io() || f.is_timeout(),
        SdkError::ServiceError(_) => err.code().is_none_or(|c| TRANSIENT.contains(&c)),
        _ => false,
    }
}

/// Whether the store says it does not implement the operation (HTTP 501).
fn not_implemented<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    err.code() == Some("NotImplemented")
        || err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 501)
}

/// A one-line cause: `Code: message (HTTP status)` for an answer of the store, the chain of
/// causes (`dispatch failure: io error: … Connection refused (os error 111)`) otherwise.
fn describe_sdk_error<E>(err: &SdkError<E>) -> BoxError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match (err.code(), err.raw_response()) {
        (Some(code), Some(response)) => format!(
            "{code}: {} (HTTP {})",
            err.message().unwrap_or("no message"),
            response.status().as_u16()
        )
        .into(),
        (None, Some(response)) if matches!(err, SdkError::ServiceError(_)) => {
            // No code: the answer was not an error document (often a reply the SDK could
            // not parse); its parse error is the real cause.
            let mut text = format!("HTTP {} with no error code", response.status().as_u16());
            push_causes(&mut text, err);
            text.into()
        }
        _ => {
            let mut text = err.to_string();
            push_causes(&mut text, err);
            text.into()
        }
    }
}

/// Appends the messages of `err`'s causes, without `DisplayErrorContext`'s Debug dump.
fn push_causes(text: &mut String, err: &(dyn std::error::Error + 'static)) {
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
}

/// Tags as the `x-amz-tagging` header wants them: `k1=v1&k2=v2`, URL-encoded.
fn encode_tags(tags: &Tags) -> String {
    let mut out = String::new();
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Logs an upload's progress every [`Tuning::progress_interval`].
struct Progress<'k> {
    key: &'k str,
    total: u64,
    started: Instant,
    next: Instant,
    interval: Duration,
}

impl<'k> Progress<'k> {
    fn new(key: &'k str, total: u64, interval: Duration) -> Self {
        let started = Instant::now();
        Self {
            key,
            total,
            started,
            next: started + interval,
            interval,
        }
    }

    /// `done` bytes of the source were read (and are uploaded or in flight).
    fn update(&mut self, done: u64) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        let seconds = now.duration_since(self.started).as_secs_f64();
        let rate = done as f64 / seconds.max(1e-3);
        let eta = (self.total.saturating_sub(done)) as f64 / rate.max(1.0);
        tracing::info!(
            key = self.key,
            bytes = done,
            total = self.total,
            mib_per_s = (rate / MIB as f64 * 10.0).round() / 10.0,
            eta_s = eta.round(),
            "uploading"
        );
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.describe.to_string()
    }

    /// A multipart upload with tags, started and aborted: it takes the permissions an upload
    /// takes (PutObject, PutObjectTagging, AbortMultipartUpload) and leaves nothing behind, no
    /// object and no version, which a write-then-delete would (the agent may not delete).
    async fn check(&self) -> Result<(), StoreError> {
        let key = self.check_key();
        let tags = Tags::from([("check".to_owned(), "write".to_owned())]);
        let op = "check write access (CreateMultipartUpload)";
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&*self.bucket)
            .key(&key)
            .tagging(encode_tags(&tags))
            .send()
            .await
            .map_err(|e| self.error(op, Some(&key), e))?;
        match created.upload_id() {
            Some(upload_id) => self.abort(&self.bucket, &key, upload_id).await,
            None => Err(StoreError::Other {
                dest: self.describe(),
                op,
                transient: true,
                source: "the store returned no upload id".into(),
            }),
        }
    }

    /// One key listed under the check's prefix: signed, so expired or revoked credentials
    /// show; a deleted bucket shows; no side effects. Not HeadBucket: the IAM policy grants
    /// ListBucket only with an `s3:prefix` condition, which HeadBucket cannot meet.
    async fn ping(&self) -> Result<(), StoreError> {
        let key = self.check_key();
        let prefix = key.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(format!("{prefix}/"))
            .max_keys(1)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error("reach the bucket (ListObjectsV2)", None, e))
    }

    async fn put(
        &self,
        key: &str,
        body: Body<'_>,
        tags: &Tags,
        metadata: &Metadata,
    ) -> Result<PutReceipt, StoreError> {
        validate_key(key)?;
        let reader = BodyReader::open(body).await?;
        let mut upload = None;
        let (digest, transfer) = match self.stream(key, reader, tags, metadata, &mut upload).await {
            Ok(done) => done,
            Err(e) => {
                if let Some(upload) = upload {
                    upload.abort().await;
                }
                return Err(e);
            }
        };
        self.confirm(key, digest.size, tags).await?;
        if let Some(t) = &transfer {
            tracing::debug!(
                key,
                parts = t.parts,
                part_size = t.part_size,
                part_ms_p50 = t.part_ms_p50,
                part_ms_max = t.part_ms_max,
                in_flight = t.in_flight_final,
                mib_per_s = digest.size as f64 / MIB as f64 / t.seconds.max(1e-3),
                "multipart upload done"
            );
        }
        if upload.is_some() {
            // The store answers again: a good time to abort what an outage left behind.
            if let Err(e) = self.recover_uploads().await {
                tracing::warn!(error = %e, "could not look for unfinished multipart uploads");
            }
        }
        Ok(PutReceipt {
            key: key.to_owned(),
            size: digest.size,
            sha256: digest.sha256,
            source_size: digest.source_size,
            transfer,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list objects (ListObjectsV2)", None, e))?;
            objects.extend(page.contents().iter().filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_owned(),
                    size: o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: system_time(o.last_modified()),
                })
            }));
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn tags(&self, key: &str) -> Result<Tags, StoreError> {
        validate_key(key)?;
        match self.get_tags(key).await {
            Ok(tags) => Ok(tags),
            Err(TagsError::Unsupported) => Ok(Tags::new()),
            Err(TagsError::Store(e)) => Err(e),
        }
    }

    async fn head(&self, key: &str) -> Result<(ObjectInfo, Metadata), StoreError> {
        validate_key(key)?;
        let head = self
            .client
            .head_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("read an object's metadata (HeadObject)", Some(key), e))?;
        let info = ObjectInfo {
            key: key.to_owned(),
            size: head
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            last_modified: system_time(head.last_modified()),
        };
        let metadata = head
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok((info, metadata))
    }

    async fn open(
        &self,
        key: &str,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError> {
        validate_key(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("download an object (GetObject)", Some(key), e))?;
        Ok(Box::new(Box::pin(object.body.into_async_read())))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.client
            .delete_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("delete an object (DeleteObject)", Some(key), e))?;
        Ok(())
    }
}

impl S3Store {
    /// Cuts the body into parts: one `PutObject` if it fits in one, else a multipart upload
    /// (left in `upload`, so the caller can abort it if this fails). The body is checked to be
    /// whole before the object is committed: a file that shrank is not stored cut short.
    async fn stream(
        &self,
        key: &str,
        mut reader: BodyReader<'_>,
        tags: &Tags,
        metadata: &Metadata,
        upload: &mut Option<Multipart>,
    ) -> Result<(BodyDigest, Option<TransferStats>), StoreError> {
        let part_size = self.tuning.part_size(reader.size());
        let mut backing = Backing::for_body(&reader, &self.spill_dir).await?;
        let mut hasher = parts::PartHasher::new(self.checksum, self.sign_payload);
        let mut progress = Progress::new(key, reader.size(), self.tuning.progress_interval);
        // Offsets in the stored bytes: where the current part starts, and how far it is.
        let (mut part_start, mut end) = (0u64, 0u64);
        while let Some(mut chunk) = reader.next_chunk().await? {
            while !chunk.is_empty() {
                if end - part_start == part_size {
                    // A full part, and more to come: it goes as a part of a multipart upload.
                    let body = backing.part(part_start, end).await?;
                    let multipart = match upload {
                        Some(m) => m,
                        None => upload
                            .insert(self.start_multipart(key, tags, metadata, part_size).await?),
                    };
                    multipart.send(body, hasher.finish()).await?;
                    part_start = end;
                }
                let room = usize::try_from(part_size - (end - part_start)).unwrap_or(usize::MAX);
                let (now, rest) = chunk.split_at(chunk.len().min(room));
                hasher.update(now);
                backing.append(now).await?;
                end += now.len() as u64;
                chunk = rest;
            }
            progress.update(reader.source_read());
        }
        let digest = reader.finish()?;
        let last = backing.part(part_start, end).await?;
        let sums = hasher.finish();
        let stored = match upload {
            None => self.put_object(key, &last, &sums, tags, metadata).await,
            Some(multipart) => match multipart.send(last, sums).await {
                Ok(()) => multipart.complete(digest.size).await,
                Err(e) => Err(e),
            },
        };
        match stored {
            // A retry of a put that did complete (its answer was lost): the object there is
            // this very body, or it is not ours to replace.
            Err(StoreError::Exists { .. }) if self.holds(key, &digest).await? => {
                tracing::info!(key, "already stored, byte for byte: not written again");
                if let Some(m) = upload.take() {
                    m.abort().await;
                }
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let stats = upload
            .as_ref()
            .map(|m| m.stats(backing.copied(), progress.started.elapsed()));
        Ok((digest, stats))
    }
}

/// Where a body's parts are read from when they are sent.
enum Backing {
    /// The body's own file, uploaded as it is: parts are ranges of it.
    Source(Arc<OwnedFd>),
    /// Compressed bytes, written to a spill file ahead of their upload.
    Spill(parts::Spill),
    /// A body in memory (a record): the part being filled.
    Memory { part: Vec<u8>, copied: u64 },
}

impl Backing {
    async fn for_body(reader: &BodyReader<'_>, spill_dir: &Path) -> Result<Self, StoreError> {
        if reader.compressed() {
            return Ok(Self::Spill(parts::Spill::create(spill_dir).await?));
        }
        match reader.plain_file() {
            Some((fd, path)) => Ok(Self::Source(Arc::new(
                fd.try_clone_to_owned()
                    .map_err(StoreError::io("dup", path))?,
            ))),
            None => Ok(Self::Memory {
                part: Vec::new(),
                copied: 0,
            }),
        }
    }

    /// The bytes of the stored stream at `start..end` were read.
    async fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Source(_) => Ok(()),
            Self::Spill(spill) => spill.write(bytes).await,
            Self::Memory { part, copied } => {
                part.extend_from_slice(bytes);
                *copied += bytes.len() as u64;
                Ok(())
            }
        }
    }

    /// The part at `start..end` of the stored stream (everything appended since the last).
    async fn part(&mut self, start: u64, end: u64) -> Result<parts::PartBody, StoreError> {
        Ok(match self {
            Self::Source(file) => parts::PartBody::Range {
                file: file.clone(),
                offset: start,
                len: end - start,
            },
            Self::Spill(spill) => {
                spill.flush().await?;
                spill.range(start)
            }
            Self::Memory { part, .. } => parts::PartBody::Memory(Bytes::from(std::mem::take(part))),
        })
    }

    /// Bytes this process copied on their way to the store (into memory or the spill file).
    fn copied(&self) -> u64 {
        match self {
            Self::Source(_) => 0,
            Self::Spill(spill) => spill.written,
            Self::Memory { copied, .. } => *copied,
        }
    }
}

/// An SDK time as a `SystemTime` (the epoch if missing or out of range).
fn system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The multipart uploads this node has in progress, one small JSON file each, so that those a
/// crash or an outage left unfinished can be aborted later.
#[derive(Debug)]
struct UploadLog {
    dir: PathBuf,
    /// Records of uploads running in this process: not stale.
    active: Mutex<HashSet<PathBuf>>,
}

/// One recorded multipart upload.
#[derive(Debug, Serialize, Deserialize)]
struct UploadRecord {
    bucket: String,
    key: String,
    upload_id: String,
    #[serde(with = "crate::crash::rfc3339")]
    started: SystemTime,
}

impl UploadLog {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            active: Mutex::default(),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        // A panic while holding it cannot leave the set half-changed.
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an upload that just started; returns its record's path.
    async fn record(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<PathBuf, StoreError> {
        use sha2::Digest as _;
        let name = hex(&sha2::Sha256::digest(format!(
            "{bucket}\n{key}\n{upload_id}"
        )));
        let path = self.dir.join(format!("{}.json", &name[..32]));
        let record = UploadRecord {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
            started: SystemTime::now(),
        };
        let json = serde_json::to_vec(&record).map_err(|e| StoreError::Io {
            op: "serialize an upload record",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(StoreError::io("create the upload log", &self.dir))?;
        let temp = path.with_extension("tmp");
        tokio::fs::write(&temp, json)
            .await
            .map_err(StoreError::io("write an upload record", &temp))?;
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(StoreError::io("rename an upload record into place", &path))?;
        self.active().insert(path.clone());
        Ok(path)
    }

    /// Marks a record stale: its upload is no longer running here, but is not finished.
    fn release(&self, path: &Path) {
        self.active().remove(path);
    }

    /// Removes a record (the upload was completed or aborted).
    async fn forget(&self, path: &Path) {
        self.active().remove(path);
        if let Err(e) = tokio::fs::remove_file(path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an upload record");
        }
    }

    /// Recorded uploads that no put of this process is running.
    async fn stale(&self) -> Result<Vec<(PathBuf, UploadRecord)>, StoreError> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "list the upload log",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut stale = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(StoreError::io("list the upload log", &self.dir))?
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") || self.active().contains(&path) {
                continue;
            }
            let parsed = tokio::fs::read(&path)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => stale.push((path, record)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = e, "unreadable upload record: removed");
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_so_that_any_dump_fits_in_ten_thousand_parts() {
        let t = Tuning::default();
        assert_eq!(t.part_size(0), 8 * MIB);
        assert_eq!(t.part_size(1 << 30), 8 * MIB);
        assert_eq!(t.part_size(50 << 30), 8 * MIB);
        for size in [64u64 << 30, 100 << 30, 1 << 40, 5 << 40] {
            let part = t.part_size(size);
            assert_eq!(part % MIB, 0);
            assert!(size.div_ceil(part) <= PLANNED_PARTS, "{size}: {part}");
            // Room for a compressed body up to 10% larger than planned.
            assert!((size + size / 10).div_ceil(part) <= MAX_PARTS as u64);
        }
        assert_eq!(t.part_size(100 << 30), 12 * MIB);
        assert_eq!(t.part_size(u64::MAX), MAX_PART_SIZE);
    }

    #[test]
    fn tags_are_url_encoded() {
        let tags = Tags::from([
            ("pod".to_owned(), "web-1".to_owned()),
            ("comm".to_owned(), "my app+x=y/z:@".to_owned()),
        ]);
        assert_eq!(
            encode_tags(&tags),
            "comm=my%20app%2Bx%3Dy%2Fz%3A%40&pod=web-1"
        );
        assert_eq!(encode_tags(&Tags::new()), "");
    }

    #[tokio::test]
    async fn the_upload_log_keeps_what_runs_out_of_the_stale_list() {
        let dir = std::env::temp_dir().join(format!("coredump-uploads-{}", std::process::id()));
        let log = UploadLog::new(dir.clone());
        assert!(log.stale().await.unwrap().is_empty(), "no directory yet");
        let running = log.record("b", "k1", "u1").await.unwrap();
        let left = log.record("b", "k2", "u2").await.unwrap();
        log.active().remove(&left); // as after a restart
        let stale = log.stale().await.unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(
            (stale[0].1.key.as_str(), stale[0].1.upload_id.as_str()),
            ("k2", "u2")
        );
        log.forget(&left).await;
        log.forget(&running).await;
        assert!(log.stale().await.unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describe_names_the_endpoint_and_payload_signing_follows_tls() {
        let config = || {
            sdk::config::Builder::new()
                .behavior_version(sdk::config::BehaviorVersion::latest())
                .region(sdk::config::Region::from_static("us-east-1"))
        };
        let options = ConnectOptions {
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            ..ConnectOptions::default()
        };
        let store = S3Store::with_config(config(), "b", "/p/q/", &options).unwrap();
        assert_eq!(store.describe(), "s3://b/p/q at http://127.0.0.1:9000");
        assert!(store.sign_payload);
        let never = ConnectOptions {
            s3_sign_payload: SignPayload::Never,
            ..options
        };
        assert!(
            !S3Store::with_config(config(), "b", "", &never)
                .unwrap()
                .sign_payload
        );
        let store = S3Store::with_config(config(), "b", "", &ConnectOptions::default()).unwrap();
        assert_eq!(store.describe(), "s3://b");
        assert!(!store.sign_payload);
        let always = ConnectOptions {
            s3_sign_payload: SignPayload::Always,
            ..ConnectOptions::default()
        };
        assert!(
            S3Store::with_config(config(), "b", "", &always)
                .unwrap()
                .sign_payload
        );
        assert_eq!(store.check_key(), "_agent-check/unknown");

        let err = S3Store::with_config(
            sdk::config::Builder::new().behavior_version(sdk::config::BehaviorVersion::latest()),
            "b",
            "",
            &ConnectOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no AWS region"), "{err}");
    }
}
