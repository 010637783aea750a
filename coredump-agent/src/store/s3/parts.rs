//! The bytes of a part and what a request for them carries.
//!
//! A part is never held in memory when it can be read again: an uncompressed dump is sent as
//! ranges of its own file, a compressed one as ranges of a spill file the compressor writes
//! ahead of the upload ([`Spill`]). So the number of parts in flight costs no memory, and can
//! be as large as the store's latency wants. Only small in-memory bodies (records) are sent
//! from memory.
//!
//! Every part's checksums are computed as its bytes go by ([`PartHasher`]) and sent as
//! headers: the store verifies them, and the SDK neither reads the body again to compute them
//! nor switches to an aws-chunked body with a trailer (which radosgw 16 stores as if it were
//! the data). Over plain HTTP the part's SHA-256 signs the request as well
//! ([`PrecomputedPayload`]): without TLS, only a signed payload shows tampering.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    sync::Arc,
};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_smithy_runtime_api::{
    box_error::BoxError,
    client::{
        interceptors::{Intercept, context::BeforeTransmitInterceptorContextMut},
        runtime_components::RuntimeComponents,
    },
};
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use md5::Digest as _;
use sha2::Sha256;

use super::ChecksumMode;
use crate::store::{StoreError, hex};

/// Read buffer of a part streamed from a file: large enough for few system calls, small
/// enough that many parts in flight cost little.
const RANGE_BUFFER: usize = 256 << 10;

/// The bytes of one part (or of a one-part object).
#[derive(Clone, Debug)]
pub(super) enum PartBody {
    Memory(Bytes),
    /// `len` bytes at `offset` of a file the upload holds open. Read again through
    /// `/proc/self/fd`, which opens the same file with an offset of its own: never by its
    /// path, which in a dump directory may name another file by now.
    Range {
        file: Arc<OwnedFd>,
        offset: u64,
        len: u64,
    },
}

impl PartBody {
    pub(super) fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::Range { len, .. } => *len,
        }
    }

    /// A body for a request: the SDK opens a range again on a retry.
    pub(super) async fn stream(&self) -> Result<ByteStream, StoreError> {
        match self {
            Self::Memory(bytes) => Ok(ByteStream::from(bytes.clone())),
            Self::Range { file, offset, len } => {
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                ByteStream::read_from()
                    .path(&path)
                    .offset(*offset)
                    .length(Length::Exact(*len))
                    .buffer_size(RANGE_BUFFER)
                    .build()
                    .await
                    .map_err(|e| StoreError::Io {
                        op: "read a part",
                        path: path.into(),
                        source: std::io::Error::other(e),
                    })
            }
        }
    }
}

/// Checksums of one part, as request headers want them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PartSums {
    /// CRC32C, base64 (`x-amz-checksum-crc32c`): with [`ChecksumMode::WhenSupported`].
    pub crc32c: Option<String>,
    /// MD5, base64 (`Content-MD5`): with [`ChecksumMode::WhenRequired`].
    pub md5: Option<String>,
    /// SHA-256, hex: signs the payload (plain HTTP only).
    pub sha256: Option<String>,
}

/// Computes a part's [`PartSums`] from its bytes, in order.
pub(super) struct PartHasher {
    crc32c: Option<crc_fast::Digest>,
    md5: Option<md5::Md5>,
    sha256: Option<Sha256>,
}

impl PartHasher {
    pub(super) fn new(mode: ChecksumMode, sign_payload: bool) -> Self {
        Self {
            crc32c: (mode == ChecksumMode::WhenSupported)
                .then(|| crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)),
            md5: (mode == ChecksumMode::WhenRequired).then(md5::Md5::new),
            sha256: sign_payload.then(Sha256::new),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        if let Some(crc) = &mut self.crc32c {
            crc.update(bytes);
        }
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
        if let Some(sha) = &mut self.sha256 {
            sha.update(bytes);
        }
    }

    /// The sums of everything given since the last call; starts over for the next part.
    pub(super) fn finish(&mut self) -> PartSums {
        use aws_smithy_types::base64::encode;
        PartSums {
            crc32c: self.crc32c.as_mut().map(|crc| {
                let sum = u32::try_from(crc.finalize_reset()).unwrap_or_default();
                encode(sum.to_be_bytes())
            }),
            md5: self.md5.as_mut().map(|md5| encode(md5.finalize_reset())),
            sha256: self.sha256.as_mut().map(|sha| hex(&sha.finalize_reset())),
        }
    }
}

/// Signs a request with a payload SHA-256 computed beforehand, instead of the SDK reading the
/// body for it (which it can only do for a body in memory; a streamed one would go unsigned).
#[derive(Debug)]
pub(super) struct PrecomputedPayload(pub String);

impl Intercept for PrecomputedPayload {
    fn name(&self) -> &'static str {
        "PrecomputedPayload"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// A file the compressed body is written to ahead of its upload, in a directory of the
/// agent's own. Anonymous (`O_TMPFILE`): nothing to clean up after a crash, and no name
/// another process could open.
pub(super) struct Spill {
    pub file: Arc<OwnedFd>,
    writer: tokio::fs::File,
    pub written: u64,
}

impl Spill {
    pub(super) async fn create(dir: &Path) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(StoreError::io("create the spill directory", dir))?;
        let std_file = open_anonymous(dir)
            .await
            .map_err(StoreError::io("create a spill file in", dir))?;
        let file = Arc::new(OwnedFd::from(
            std_file
                .try_clone()
                .map_err(StoreError::io("dup the spill file in", dir))?,
        ));
        Ok(Self {
            file,
            writer: tokio::fs::File::from_std(std_file),
            written: 0,
        })
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt as _;
        self.writer
            .write_all(bytes)
            .await
            .map_err(StoreError::io("write the spill file", Path::new("(spill)")))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Everything written reaches the file (tokio's file writes in the background).
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt as _;
        self.writer
            .flush()
            .await
            .map_err(StoreError::io("write the spill file", Path::new("(spill)")))
    }

    /// The range `offset..written` as a part.
    pub(super) fn range(&self, offset: u64) -> PartBody {
        PartBody::Range {
            file: self.file.clone(),
            offset,
            len: self.written - offset,
        }
    }
}

/// An unnamed file in `dir`, readable and writable by us only: `O_TMPFILE` where the file
/// system has it, else a new file removed right after it is opened.
async fn open_anonymous(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let tmpfile = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir);
        match tmpfile {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let path = dir.join(format!(".spill-{}-{:x}", std::process::id(), rand_u64()));
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                Ok(file)
            }
            other => other,
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A number unlikely to repeat, for a temporary name.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_those_s3_documents() {
        let mut h = PartHasher::new(ChecksumMode::WhenSupported, true);
        h.update(b"123456");
        h.update(b"789");
        let sums = h.finish();
        // CRC32C of "123456789" is 0xe3069283.
        assert_eq!(
            sums.crc32c.as_deref(),
            Some(aws_smithy_types::base64::encode(0xe306_9283u32.to_be_bytes()).as_str())
        );
        assert_eq!(
            sums.sha256.as_deref(),
            Some("15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225")
        );
        assert_eq!(sums.md5, None);
        // The next part starts over.
        h.update(b"123456789");
        assert_eq!(h.finish(), sums);

        let mut h = PartHasher::new(ChecksumMode::WhenRequired, false);
        h.update(b"hello");
        let sums = h.finish();
        assert_eq!(sums.md5.as_deref(), Some("XUFAKrxLKna5cZ2REBfFkg=="));
        assert_eq!((sums.crc32c, sums.sha256), (None, None));
    }

    #[tokio::test]
    async fn a_spill_file_has_no_name_and_reads_back_by_range() {
        let dir = std::env::temp_dir().join(format!("spill-test-{}", std::process::id()));
        let mut spill = Spill::create(&dir).await.unwrap();
        spill.write(b"hello ").await.unwrap();
        spill.write(b"world").await.unwrap();
        spill.flush().await.unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no name");
        let part = spill.range(6);
        assert_eq!(part.len(), 5);
        let bytes = part.stream().await.unwrap().collect().await.unwrap();
        assert_eq!(&bytes.into_bytes()[..], b"world");
        std::fs::remove_dir(&dir).unwrap();
    }
}
