//! store: where dumps and their records end up; the last stage of the pipeline.
//!
//! `spool` hands each finished dump (a file) and its [`Record`](crate::record::Record) (bytes)
//! to a [`Store`], and deletes the local dump only once `put` has returned a [`PutReceipt`].
//! `find`, `get` and `info` read back through the same trait.
//!
//! Two stores implement it: [`local::LocalStore`], a folder (the default, used by
//! `cargo xtask run` and the tests), and [`s3::S3Store`], S3 or an S3-compatible server. What
//! they share lives here, in [`layout`] and in [`compress`]: the key rules ([`validate_key`]),
//! reading a body in bounded chunks while hashing (and optionally compressing) it
//! ([`BodyReader`]), parsing `--dest` ([`Dest`]), opening one ([`connect`]), and the
//! key/tag/metadata contract.

pub mod compress;
pub mod concurrency;
pub mod layout;
pub mod local;
pub mod s3;

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
    str::FromStr,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

pub use compress::Zstd;
pub use local::LocalStore;
pub use s3::{ChecksumMode, S3Store};

/// Object tags: the pod's identity, queried by `find` (S3 object tags; at most 10).
pub type Tags = BTreeMap<String, String>;

/// User metadata: facts shown by `info` that nobody searches by (S3 `x-amz-meta-*`).
pub type Metadata = BTreeMap<String, String>;

/// Longest key any store accepts, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Bodies are read and written in chunks of this size, so a put holds at most one chunk of a
/// dump in memory however large the dump is.
pub const CHUNK_SIZE: usize = 1 << 20;

/// An error from a remote store's client, kept as the cause of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One stored object, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    /// When it was last written.
    #[serde(with = "crate::crash::rfc3339")]
    pub last_modified: SystemTime,
}

/// What to store: a file, streamed from disk, or bytes already in memory (a record).
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// A regular file, read in [`CHUNK_SIZE`] chunks. Opened without following a symbolic link,
    /// since the dump directory may be writable by containers.
    File(&'a Path),
    /// A file the caller already opened and checked (the pipeline's dumps): read through the
    /// handle from its start, so swapping the name meanwhile changes nothing.
    Opened {
        /// The open file.
        file: &'a std::fs::File,
        /// Where it was opened from, for messages.
        path: &'a Path,
    },
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// Another body, zstd-compressed as it is read (see [`compress`]): the store receives and
    /// stores the compressed bytes. The inner body must not be compressed itself.
    Zstd {
        /// What to compress.
        body: &'a Body<'a>,
        /// How.
        settings: Zstd,
    },
}

/// What the store confirmed after a put: the key, stored size, and a checksum it verified.
#[derive(Clone, Debug, PartialEq)]
pub struct PutReceipt {
    /// Key the object was stored under.
    pub key: String,
    /// Stored size in bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
    /// Bytes read from the body before compression (`size` when it was not compressed): what
    /// the caller compares with the file it handed over.
    pub source_size: u64,
    /// How a multipart upload went (S3 only).
    pub transfer: Option<TransferStats>,
}

/// How a multipart upload went: logged with the upload, and what `cargo xtask bench upload`
/// breaks its figures down with.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TransferStats {
    pub parts: usize,
    pub part_size: u64,
    pub seconds: f64,
    /// Time from sending a part to its answer, tries included: median, 90th percentile, most.
    pub part_ms_p50: f64,
    pub part_ms_p90: f64,
    pub part_ms_max: f64,
    /// Parts allowed in flight at the end (see `concurrency`), the most that were, and the
    /// mean each time a part was sent.
    pub in_flight_final: usize,
    pub in_flight_max: usize,
    pub in_flight_mean: f64,
    /// Bytes copied by this process (into memory, or a spill file) per byte stored: 0 for a
    /// dump sent from its own file.
    pub copied_per_byte: f64,
}

/// Why a store operation failed. Messages name the operation; the cause is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object has this key (or it was not completely stored).
    #[error("object {key:?} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A filesystem operation failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What was being done, e.g. `"rename into place"`.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An object already has this key, and the store keeps it (a conditional write,
    /// `If-None-Match: *`, refused to replace it).
    #[error("an object already exists under {key:?}")]
    Exists {
        /// The key.
        key: String,
    },
    /// The key cannot name an object.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The file to store is not something the agent stores (a symbolic link, a FIFO, …).
    #[error("refusing to store {}: {reason}", path.display())]
    InvalidBody {
        /// The file given as body.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file to store changed size while it was read: the stored copy would not be the dump.
    #[error("{} changed while it was stored: {expected} bytes when opened, {read} read", path.display())]
    BodyChanged {
        /// The file given as body.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
        /// Bytes read before the change was noticed.
        read: u64,
    },
    /// An object's stored tags and metadata cannot be read back.
    #[error("failed to parse the stored metadata of {key:?} at {}", path.display())]
    CorruptMetadata {
        /// The object's key.
        key: String,
        /// Where the metadata is.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The store could not be reached (network, DNS, timeout).
    #[error("cannot reach {dest} to {op}")]
    Unreachable {
        /// [`Store::describe`] of the store.
        dest: String,
        /// What was being done, e.g. `"upload a part"`.
        op: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The store refused: missing permission or bad credentials.
    #[error("access denied by {dest} to {op}")]
    AccessDenied {
        /// [`Store::describe`] of the store.
        dest: String,
        /// What was being done.
        op: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The store answered with an error not covered above.
    #[error("{dest} failed to {op}")]
    Other {
        /// [`Store::describe`] of the store.
        dest: String,
        /// What was being done.
        op: &'static str,
        /// Whether the store said to retry (throttling, 5xx).
        transient: bool,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// No credentials could be found or loaded (environment, web identity, EKS Pod Identity,
    /// instance profile). Worth retrying: an instance profile or a token file may appear.
    #[error("no credentials to {op} on {dest}")]
    NoCredentials {
        /// [`Store::describe`] of the store.
        dest: String,
        /// What was being done.
        op: &'static str,
        /// The credential chain's error.
        #[source]
        source: BoxError,
    },
    /// The bucket does not exist (or is not visible with these credentials and endpoint).
    #[error("bucket {bucket:?} does not exist at {dest} (while trying to {op})")]
    BucketNotFound {
        /// [`Store::describe`] of the store.
        dest: String,
        /// The bucket.
        bucket: String,
        /// What was being done.
        op: &'static str,
    },
    /// Compressing a body failed.
    #[error("failed to {op}")]
    Compress {
        /// What was being done.
        op: &'static str,
        /// zstd's error.
        #[source]
        source: io::Error,
    },
    /// The store's settings cannot work (e.g. no AWS region).
    #[error("cannot use {dest}: {what}")]
    Config {
        /// The destination.
        dest: String,
        /// What is wrong, and what to do about it.
        what: String,
    },
}

impl StoreError {
    /// Worth retrying with backoff: the same call may succeed later (network, throttling, a
    /// full disk that gets cleaned up). Anything else fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { source, .. } => io_is_transient(source.kind()),
            Self::Unreachable { .. } | Self::NoCredentials { .. } => true,
            Self::Other { transient, .. } => *transient,
            Self::NotFound { .. }
            | Self::Exists { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidBody { .. }
            | Self::BodyChanged { .. }
            | Self::CorruptMetadata { .. }
            | Self::AccessDenied { .. }
            | Self::BucketNotFound { .. }
            | Self::Compress { .. }
            | Self::Config { .. } => false,
        }
    }

    /// A short class for metrics: `unreachable`, `access_denied`, `no_credentials`, … .
    pub fn class(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Exists { .. } => "exists",
            Self::Io { .. } => "io",
            Self::InvalidKey { .. } | Self::InvalidBody { .. } | Self::BodyChanged { .. } => "dump",
            Self::CorruptMetadata { .. } => "corrupt_metadata",
            Self::Unreachable { .. } => "unreachable",
            Self::AccessDenied { .. } => "access_denied",
            Self::Other {
                transient: true, ..
            } => "transient",
            Self::Other { .. } => "other",
            Self::NoCredentials { .. } => "no_credentials",
            Self::BucketNotFound { .. } => "bucket_not_found",
            Self::Compress { .. } => "compress",
            Self::Config { .. } => "config",
        }
    }

    /// Whether the error is about this dump, not the store: the same dump fails the same way
    /// whatever the store does (it changes while read, it is not a regular file). Such a dump is
    /// set aside after a second look, instead of holding an upload slot forever.
    pub fn is_about_the_dump(&self) -> bool {
        matches!(
            self,
            Self::BodyChanged { .. }
                | Self::InvalidBody { .. }
                | Self::InvalidKey { .. }
                | Self::Compress { .. }
        )
    }

    /// An [`StoreError::Io`] for `op` on `path`, for `map_err`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

fn io_is_transient(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(
        kind,
        K::Interrupted
            | K::WouldBlock
            | K::TimedOut
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::StaleNetworkFileHandle
            | K::ResourceBusy
            // Space comes back when older dumps are uploaded or cleaned up.
            | K::StorageFull
            | K::QuotaExceeded
    )
}

/// A place dumps are stored. Implemented by [`LocalStore`] and [`S3Store`]; the pipeline is
/// generic over it and the CLI holds an [`AnyStore`].
///
/// Keys are `/`-separated and checked with [`validate_key`] before anything is touched.
pub trait Store: Send + Sync + 'static {
    /// `file:///path` or `s3://bucket/prefix`, for logs and `info`.
    fn describe(&self) -> String;

    /// Fails with a message naming the cause if the destination is not reachable and writable.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the destination still answers with these credentials: what readiness polls,
    /// so it must be cheap and leave nothing behind. By default, [`Store::check`].
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.check()
    }

    /// Stores `body` under `key` with its tags and metadata, all or nothing: a failed or
    /// cancelled put leaves no partial object, and a retried put with the same key replaces the
    /// object (keys are deterministic). Streams files; never reads one whole into memory.
    fn put(
        &self,
        key: &str,
        body: Body<'_>,
        tags: &Tags,
        metadata: &Metadata,
    ) -> impl Future<Output = Result<PutReceipt, StoreError>> + Send;

    /// Objects whose key starts with `prefix` (a plain string prefix, not only whole
    /// components), sorted by key. `""` lists everything.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;

    /// An object's tags, without reading its data.
    fn tags(&self, key: &str) -> impl Future<Output = Result<Tags, StoreError>> + Send;

    /// An object's size, time and user metadata, without reading its data.
    fn head(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(ObjectInfo, Metadata), StoreError>> + Send;

    /// Whether an object exists (a `HEAD`): what stores a module once per build-id.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            match self.head(key).await {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }

    /// A reader of an object's data.
    fn open(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError>> + Send;

    /// Deletes an object. Deleting a key that does not exist succeeds, as on S3, so a retried
    /// delete is harmless.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Checks the rules every store applies to keys: non-empty, at most [`MAX_KEY_LEN`] bytes, no
/// leading `/`, no NUL, and no empty, `.` or `..` component. Keys made by [`layout`] always pass;
/// the check is for keys that come from users (`get <key>`).
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    match key_problem(key) {
        None => Ok(()),
        Some(reason) => Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        }),
    }
}

/// The first rule of [`validate_key`] that `key` breaks.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("it is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Some("it is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return Some("it starts with '/'");
    }
    if key.contains('\0') {
        return Some("it contains a NUL byte");
    }
    key.split('/').find_map(|component| match component {
        "" => Some("it has an empty component ('//' or a trailing '/')"),
        "." | ".." => Some("it has a '.' or '..' component"),
        _ => None,
    })
}

/// Reads a [`Body`] front to back in chunks of at most [`CHUNK_SIZE`] (compressed chunks, for
/// a [`Body::Zstd`], are of any size up to a few MiB), hashing what it hands out.
///
/// Shared by every store so they all stream the same way and report the same checksum: call
/// [`BodyReader::next_chunk`] until it returns `None`, then [`BodyReader::finish`].
pub struct BodyReader<'a> {
    source: Source<'a>,
    size: u64,
    /// Bytes read from the source.
    read: u64,
    /// Bytes handed out (after compression).
    stored: u64,
    hasher: Sha256,
    zstd: Option<Compressing>,
}

/// A [`Body::Zstd`] being read.
struct Compressing {
    compressor: compress::Compressor,
    /// The frame is finished: everything was handed out.
    ended: bool,
}

enum Source<'a> {
    File {
        path: &'a Path,
        file: tokio::fs::File,
        buf: Vec<u8>,
    },
    Bytes(&'a [u8]),
}

/// Size and checksum of a body that was read completely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyDigest {
    /// Bytes handed out (the stored size: after compression, if any).
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
    /// Bytes read from the source (equal to `size` without compression).
    pub source_size: u64,
}

impl<'a> BodyReader<'a> {
    /// Opens a body. A file must be a regular file and is opened without following a symbolic
    /// link (and without blocking on a FIFO planted in its place).
    pub async fn open(body: Body<'a>) -> Result<Self, StoreError> {
        let (plain, settings) = match body {
            Body::Zstd { body, settings } => (*body, Some(settings)),
            plain => (plain, None),
        };
        let (source, size) = match plain {
            Body::Zstd { .. } => {
                return Err(StoreError::InvalidBody {
                    path: PathBuf::from("(a compressed body)"),
                    reason: "it is compressed twice",
                });
            }
            Body::Bytes(bytes) => (Source::Bytes(bytes), bytes.len() as u64),
            Body::Opened { file, path } => {
                let dup = file.try_clone().map_err(StoreError::io("dup", path))?;
                let mut file = tokio::fs::File::from_std(dup);
                // A dup shares the offset: a retried put must start from the beginning.
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(StoreError::io("seek", path))?;
                Self::regular_file(file, path).await?
            }
            Body::File(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .await
                    .map_err(|source| match source.raw_os_error() {
                        Some(libc::ELOOP) => StoreError::InvalidBody {
                            path: path.to_owned(),
                            reason: "it is a symbolic link",
                        },
                        _ => StoreError::Io {
                            op: "open",
                            path: path.to_owned(),
                            source,
                        },
                    })?;
                Self::regular_file(file, path).await?
            }
        };
        let zstd = settings
            .map(|settings| {
                Ok::<_, StoreError>(Compressing {
                    compressor: compress::Compressor::new(settings)?,
                    ended: false,
                })
            })
            .transpose()?;
        Ok(Self {
            source,
            size,
            read: 0,
            stored: 0,
            hasher: Sha256::new(),
            zstd,
        })
    }

    /// A file source, after checking that it is a regular file.
    async fn regular_file(
        file: tokio::fs::File,
        path: &'a Path,
    ) -> Result<(Source<'a>, u64), StoreError> {
        let meta = file
            .metadata()
            .await
            .map_err(StoreError::io("stat", path))?;
        if !meta.is_file() {
            return Err(StoreError::InvalidBody {
                path: path.to_owned(),
                reason: "it is not a regular file",
            });
        }
        let source = Source::File {
            path,
            file,
            buf: Vec::new(),
        };
        Ok((source, meta.len()))
    }

    /// Whether the body is compressed on its way (a [`Body::Zstd`]).
    pub fn compressed(&self) -> bool {
        self.zstd.is_some()
    }

    /// The source file and its path, when the body is a file handed out as it is: the bytes
    /// at an offset of what [`BodyReader::next_chunk`] hands out are at that offset of it.
    pub fn plain_file(&self) -> Option<(std::os::fd::BorrowedFd<'_>, &Path)> {
        use std::os::fd::AsFd as _;
        match (&self.source, &self.zstd) {
            (Source::File { file, path, .. }, None) => Some((file.as_fd(), path)),
            _ => None,
        }
    }

    /// Size of the source when it was opened: what a store may plan with up front (S3 part
    /// size). A compressed body usually ends up smaller, and at worst a little larger.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes read from the source so far (before compression): progress towards [`size`].
    ///
    /// [`size`]: BodyReader::size
    pub fn source_read(&self) -> u64 {
        self.read
    }

    /// The next chunk, or `None` at the end. Fails if a file grew beyond its size at open.
    pub async fn next_chunk(&mut self) -> Result<Option<&[u8]>, StoreError> {
        let Self {
            source,
            size,
            read,
            stored,
            hasher,
            zstd,
        } = self;
        let chunk: &[u8] = match zstd {
            None => source.next_chunk(*size, read).await?,
            Some(Compressing { ended: true, .. }) => return Ok(None),
            Some(Compressing { compressor, ended }) => {
                // zstd's workers may hold on to several chunks before any output appears.
                loop {
                    let input = source.next_chunk(*size, read).await?;
                    *ended = input.is_empty();
                    if !compressor.step(input, *ended).await?.is_empty() || *ended {
                        break;
                    }
                }
                compressor.output()
            }
        };
        if chunk.is_empty() {
            return Ok(None);
        }
        *stored += chunk.len() as u64;
        hasher.update(chunk);
        Ok(Some(chunk))
    }

    /// Size and checksum of everything handed out; call after [`BodyReader::next_chunk`]
    /// returned `None`. Fails if a file shrank while it was read.
    pub fn finish(self) -> Result<BodyDigest, StoreError> {
        if let Source::File { path, .. } = self.source
            && self.read != self.size
        {
            return Err(StoreError::BodyChanged {
                path: path.to_owned(),
                expected: self.size,
                read: self.read,
            });
        }
        Ok(BodyDigest {
            size: self.stored,
            sha256: hex(&self.hasher.finalize()),
            source_size: self.read,
        })
    }
}

impl Source<'_> {
    /// The source's next chunk of at most [`CHUNK_SIZE`], empty at the end. `read` counts the
    /// bytes read so far; a file must not grow beyond `size`.
    async fn next_chunk(&mut self, size: u64, read: &mut u64) -> Result<&[u8], StoreError> {
        let chunk: &[u8] = match self {
            Source::Bytes(rest) => {
                let (chunk, tail) = rest.split_at(rest.len().min(CHUNK_SIZE));
                *rest = tail;
                chunk
            }
            Source::File { path, file, buf } => {
                buf.resize(CHUNK_SIZE, 0);
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file
                        .read(&mut buf[filled..])
                        .await
                        .map_err(StoreError::io("read", *path))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if *read + filled as u64 > size {
                    return Err(StoreError::BodyChanged {
                        path: path.to_path_buf(),
                        expected: size,
                        read: *read + filled as u64,
                    });
                }
                &buf[..filled]
            }
        };
        *read += chunk.len() as u64;
        Ok(chunk)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A destination parsed from `--dest`: `file:///abs/path`, a plain absolute or relative path,
/// or `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// A folder on this machine (plain paths are taken verbatim; `file://` URLs are not
    /// percent-decoded).
    Local(PathBuf),
    /// An S3 bucket, with a key prefix (no leading or trailing `/`; may be empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix under which [`layout::object_key`] places objects.
        prefix: String,
    },
}

/// Why a `--dest` value is not a destination.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestError {
    /// Nothing was given.
    #[error(
        "the destination is empty; give a folder (/var/lib/coredumps or file:///var/lib/coredumps) or a bucket (s3://bucket/prefix)"
    )]
    Empty,
    /// `s3://` with nothing before the first `/`.
    #[error("destination {dest:?} names no bucket; use s3://bucket or s3://bucket/prefix")]
    NoBucket {
        /// The value given.
        dest: String,
    },
    /// The bucket name has characters no bucket name has.
    #[error(
        "destination {dest:?}: {bucket:?} is not a bucket name (letters, digits, '.', '-' and '_' only)"
    )]
    InvalidBucket {
        /// The value given.
        dest: String,
        /// The bucket part.
        bucket: String,
    },
    /// The prefix could not start a valid key.
    #[error("destination {dest:?}: the key prefix is invalid: {reason}")]
    InvalidPrefix {
        /// The value given.
        dest: String,
        /// Which key rule it breaks.
        reason: &'static str,
    },
    /// `file://` followed by a host or a relative path.
    #[error(
        "destination {dest:?} is not an absolute file URL; use file:///absolute/path, or a plain path"
    )]
    FileUrlNotAbsolute {
        /// The value given.
        dest: String,
    },
    /// A URL scheme other than `file` or `s3`.
    #[error(
        "destination {dest:?} has unsupported scheme {scheme:?}; use a path, file:///path or s3://bucket/prefix"
    )]
    UnknownScheme {
        /// The value given.
        dest: String,
        /// The scheme part.
        scheme: String,
    },
}

impl FromStr for Dest {
    type Err = DestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DestError::Empty);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(Self::Local(PathBuf::from(s)));
        };
        if scheme.eq_ignore_ascii_case("file") {
            // RFC 8089: `file:///p` and `file://localhost/p` name a local path; any other host
            // cannot be reached as a path.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(DestError::FileUrlNotAbsolute { dest: s.to_owned() });
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if !scheme.eq_ignore_ascii_case("s3") {
            return Err(DestError::UnknownScheme {
                dest: s.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(DestError::NoBucket { dest: s.to_owned() });
        }
        let bucket_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !bucket.chars().all(bucket_char) {
            return Err(DestError::InvalidBucket {
                dest: s.to_owned(),
                bucket: bucket.to_owned(),
            });
        }
        // `s3://b/p/` and `s3://b/p` mean the same prefix; keys get the `/` from the layout.
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && let Some(reason) = key_problem(prefix)
        {
            return Err(DestError::InvalidPrefix {
                dest: s.to_owned(),
                reason,
            });
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl Dest {
    /// The prefix to pass to [`layout::object_key`]: the bucket's prefix for S3, none for a
    /// folder (the folder itself is the namespace).
    pub fn key_prefix(&self) -> &str {
        match self {
            Self::Local(_) => "",
            Self::S3 { prefix, .. } => prefix,
        }
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) if path.is_absolute() => write!(f, "file://{}", path.display()),
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What [`connect`] needs besides the destination. The defaults suit AWS S3 and a local folder.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// S3 endpoint URL, for S3-compatible stores (`http://minio:9000`). `None`: AWS, or the
    /// endpoint in `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
    pub s3_endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of a virtual host per bucket:
    /// what most S3-compatible stores need.
    pub s3_path_style: bool,
    /// Which checksums uploads carry.
    pub s3_checksum: ChecksumMode,
    /// Most parts of one upload in flight (`None`: [`s3::MAX_PARTS_IN_FLIGHT`]).
    pub s3_max_parts_in_flight: Option<usize>,
    /// Whether payloads are hashed into request signatures.
    pub s3_sign_payload: s3::SignPayload,
    /// The agent's state directory. Multipart uploads in progress are recorded under
    /// `<state_dir>/uploads/`, so that ones cut short by a crash are aborted at the next start
    /// ([`S3Store::recover_uploads`]). `None`: not recorded.
    pub state_dir: Option<PathBuf>,
    /// This node's name: where the S3 write check writes.
    pub node: Option<String>,
}

/// Opens the store a destination names. Does not check it: call [`Store::check`] for that.
/// For S3, loads credentials and region the way the AWS CLI does.
pub async fn connect(dest: &Dest, options: &ConnectOptions) -> Result<AnyStore, StoreError> {
    match dest {
        Dest::Local(root) => Ok(AnyStore::Local(LocalStore::new(root)?)),
        Dest::S3 { bucket, prefix } => Ok(AnyStore::S3(
            S3Store::connect(bucket, prefix, options).await?,
        )),
    }
}

/// Any store, chosen at run time from `--dest`: what the CLI holds. Implements [`Store`] by
/// delegating, so code generic over `S: Store` takes it too.
#[derive(Debug)]
pub enum AnyStore {
    /// A folder.
    Local(LocalStore),
    /// An S3 bucket.
    S3(S3Store),
}

impl From<LocalStore> for AnyStore {
    fn from(store: LocalStore) -> Self {
        Self::Local(store)
    }
}

impl From<S3Store> for AnyStore {
    fn from(store: S3Store) -> Self {
        Self::S3(store)
    }
}

/// Calls the same method on whichever store it is.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Local($s) => $call,
            AnyStore::S3($s) => $call,
        }
    };
}

impl Store for AnyStore {
    fn describe(&self) -> String {
        delegate!(self, s => s.describe())
    }

    async fn check(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.check().await)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping().await)
    }

    async fn put(
        &self,
        key: &str,
        body: Body<'_>,
        tags: &Tags,
        metadata: &Metadata,
    ) -> Result<PutReceipt, StoreError> {
        delegate!(self, s => s.put(key, body, tags, metadata).await)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        delegate!(self, s => s.list(prefix).await)
    }

    async fn tags(&self, key: &str) -> Result<Tags, StoreError> {
        delegate!(self, s => s.tags(key).await)
    }

    async fn head(&self, key: &str) -> Result<(ObjectInfo, Metadata), StoreError> {
        delegate!(self, s => s.head(key).await)
    }

    async fn open(
        &self,
        key: &str,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError> {
        delegate!(self, s => s.open(key).await)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.delete(key).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_against_the_shared_rules() {
        for good in ["a", "ns/pod/x.core", "a/b.c/d", "_host/n/x.core.zst.json"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [
            "", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "a\0b", &long,
        ] {
            let err = validate_key(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidKey { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
    }

    #[test]
    fn dest_parses_paths_file_urls_and_buckets() {
        let cases = [
            ("/var/lib/dumps", Dest::Local("/var/lib/dumps".into())),
            ("dumps", Dest::Local("dumps".into())),
            ("./a/b", Dest::Local("./a/b".into())),
            (
                "file:///var/lib/dumps",
                Dest::Local("/var/lib/dumps".into()),
            ),
            ("FILE:///x", Dest::Local("/x".into())),
            ("file://localhost/x", Dest::Local("/x".into())),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Dest>().unwrap(), want, "{input}");
        }
        let s3 = |bucket: &str, prefix: &str| Dest::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        assert_eq!("s3://b".parse::<Dest>().unwrap(), s3("b", ""));
        assert_eq!("s3://b/".parse::<Dest>().unwrap(), s3("b", ""));
        assert_eq!("s3://b/p/q/".parse::<Dest>().unwrap(), s3("b", "p/q"));
        assert_eq!("s3://b/p/q/".parse::<Dest>().unwrap().key_prefix(), "p/q");
        assert_eq!("/x".parse::<Dest>().unwrap().key_prefix(), "");
        assert_eq!(
            "S3://my.bucket-1/p".parse::<Dest>().unwrap(),
            s3("my.bucket-1", "p")
        );
    }

    #[test]
    fn dest_errors_say_what_is_wrong() {
        assert_eq!("".parse::<Dest>(), Err(DestError::Empty));
        assert!(matches!(
            "s3://".parse::<Dest>(),
            Err(DestError::NoBucket { .. })
        ));
        assert!(matches!(
            "s3:///prefix".parse::<Dest>(),
            Err(DestError::NoBucket { .. })
        ));
        assert!(matches!(
            "s3://b a/x".parse::<Dest>(),
            Err(DestError::InvalidBucket { .. })
        ));
        for prefix in ["s3://b//x", "s3://b/a/../x", "s3://b/a/./x"] {
            assert!(
                matches!(prefix.parse::<Dest>(), Err(DestError::InvalidPrefix { .. })),
                "{prefix}"
            );
        }
        for not_absolute in ["file://relative/x", "file://", "file://host/x"] {
            assert!(
                matches!(
                    not_absolute.parse::<Dest>(),
                    Err(DestError::FileUrlNotAbsolute { .. })
                ),
                "{not_absolute}"
            );
        }
        let err = "http://example.com/x".parse::<Dest>().unwrap_err();
        assert_eq!(
            err,
            DestError::UnknownScheme {
                dest: "http://example.com/x".into(),
                scheme: "http".into()
            }
        );
        assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
    }

    #[test]
    fn dest_displays_as_a_url() {
        for s in ["file:///var/x", "s3://b", "s3://b/p/q", "rel/dir"] {
            assert_eq!(s.parse::<Dest>().unwrap().to_string(), s);
        }
    }

    #[tokio::test]
    async fn connect_opens_a_local_store_or_an_s3_one() {
        let options = ConnectOptions::default();
        let store = connect(&"file:///tmp/x".parse().unwrap(), &options)
            .await
            .unwrap();
        assert!(matches!(store, AnyStore::Local(_)));
        assert_eq!(store.describe(), "file:///tmp/x");
        // Nothing is sent before `check`, so this needs neither credentials nor a server.
        let options = ConnectOptions {
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            ..options
        };
        let store = connect(&"s3://b/p".parse().unwrap(), &options)
            .await
            .unwrap();
        assert!(matches!(store, AnyStore::S3(_)));
        assert_eq!(store.describe(), "s3://b/p at http://127.0.0.1:9");
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let io = |kind| StoreError::Io {
            op: "write",
            path: "/x".into(),
            source: io::Error::from(kind),
        };
        assert!(io(io::ErrorKind::TimedOut).is_transient());
        assert!(io(io::ErrorKind::StorageFull).is_transient());
        assert!(!io(io::ErrorKind::PermissionDenied).is_transient());
        assert!(!io(io::ErrorKind::NotFound).is_transient());
        let other = |transient| StoreError::Other {
            dest: "s3://b".into(),
            op: "put",
            transient,
            source: "503 SlowDown".into(),
        };
        assert!(other(true).is_transient());
        assert!(!other(false).is_transient());
        assert!(!StoreError::NotFound { key: "k".into() }.is_transient());
    }

    #[tokio::test]
    async fn body_reader_streams_bytes_in_bounded_chunks() {
        let data: Vec<u8> = (0..CHUNK_SIZE * 2 + 7).map(|i| (i % 251) as u8).collect();
        let mut reader = BodyReader::open(Body::Bytes(&data)).await.unwrap();
        assert_eq!(reader.size(), data.len() as u64);
        let mut sizes = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            sizes.push(chunk.len());
        }
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, 7]);
        let digest = reader.finish().unwrap();
        assert_eq!(digest.size, data.len() as u64);
        assert_eq!(digest.sha256, hex(&Sha256::digest(&data)));
    }

    #[tokio::test]
    async fn empty_body_has_the_empty_checksum() {
        let mut reader = BodyReader::open(Body::Bytes(b"")).await.unwrap();
        assert_eq!(reader.next_chunk().await.unwrap(), None);
        assert_eq!(
            reader.finish().unwrap().sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
