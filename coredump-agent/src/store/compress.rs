//! store::compress: streaming zstd for bodies, shared by every store.
//!
//! A [`Body::Zstd`](super::Body::Zstd) is compressed while [`BodyReader`](super::BodyReader)
//! reads it, one [`CHUNK_SIZE`] input chunk at a time, so a store sees compressed chunks and
//! memory stays bounded whatever the size of the dump. zstd runs multithreaded (its own worker
//! threads); each step is handed to tokio's blocking pool because a step may wait for a
//! worker, and the async threads must not.
//!
//! The deliver stage decides whether to compress: not when the dump is already compressed
//! (see [`Compression::from_magic`](crate::pattern::Compression::from_magic)) and not with
//! `--compress none`.

use std::io;

use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation as _, OutBuffer};

use super::{CHUNK_SIZE, StoreError};

/// Default zstd level: fast (about pigz's speed on one core) and still well below gzip's size.
pub const DEFAULT_LEVEL: i32 = 3;

/// zstd job size with worker threads. Each job holds its input and output in memory, so this
/// bounds the compressor's memory: zstd's own default at level 3 is 8 MiB a job; 1 MiB jobs
/// took 8 MiB less RSS than 2 MiB ones, ran as fast, and compressed core-like data as well.
const JOB_SIZE: u32 = 1 << 20;

/// Output space kept free before each zstd call: enough for one block and its header.
const MIN_SPARE: usize = 256 << 10;

/// How bodies are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zstd {
    /// zstd level, 1 (fastest) to 19 (the command line accepts that range).
    pub level: i32,
    /// zstd worker threads; 0 compresses on the calling (blocking-pool) thread.
    pub workers: u32,
}

impl Default for Zstd {
    /// [`DEFAULT_LEVEL`], one worker per CPU.
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            level: DEFAULT_LEVEL,
            workers: u32::try_from(workers).unwrap_or(1),
        }
    }
}

impl Zstd {
    /// Default settings at `level`.
    pub fn level(level: i32) -> Self {
        Self {
            level,
            ..Self::default()
        }
    }
}

/// A zstd encoder with these settings: what the upload path and the receive path both use, so
/// a dump compressed while the kernel hands it over is the same as one compressed on upload.
pub(crate) fn encoder(settings: Zstd) -> io::Result<Encoder<'static>> {
    let mut encoder = Encoder::new(settings.level)?;
    if settings.workers > 0 {
        encoder.set_parameter(CParameter::NbWorkers(settings.workers))?;
        encoder.set_parameter(CParameter::JobSize(JOB_SIZE))?;
    }
    Ok(encoder)
}

/// A zstd frame being written: input chunks in, compressed bytes out.
pub(crate) struct Compressor {
    /// `None` only while a step runs on the blocking pool (or after it was cancelled).
    state: Option<State>,
}

struct State {
    encoder: Encoder<'static>,
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Compressor {
    /// Starts a frame.
    pub(crate) fn new(settings: Zstd) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Compress {
            op: "set up the zstd encoder",
            source,
        };
        let encoder = encoder(settings).map_err(fail)?;
        Ok(Self {
            state: Some(State {
                encoder,
                input: Vec::with_capacity(CHUNK_SIZE),
                output: Vec::with_capacity(CHUNK_SIZE + MIN_SPARE),
            }),
        })
    }

    /// Compresses all of `input` (and with `end`, finishes the frame) and returns what zstd
    /// produced meanwhile: often nothing while its workers are busy, then a job's worth.
    pub(crate) async fn step(&mut self, input: &[u8], end: bool) -> Result<&[u8], StoreError> {
        let mut state = self.state.take().ok_or_else(|| StoreError::Compress {
            op: "compress",
            source: io::Error::other("an earlier step was cancelled"),
        })?;
        state.input.clear();
        state.input.extend_from_slice(input);
        let state = tokio::task::spawn_blocking(move || state.run(end).map(|()| state))
            .await
            .unwrap_or_else(|e| match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(io::Error::other(e)),
            })
            .map_err(|source| StoreError::Compress {
                op: "compress",
                source,
            })?;
        Ok(&self.state.insert(state).output)
    }

    /// What the last [`Compressor::step`] produced.
    pub(crate) fn output(&self) -> &[u8] {
        self.state.as_ref().map_or(&[], |s| &s.output)
    }
}

impl State {
    fn run(&mut self, end: bool) -> io::Result<()> {
        let Self {
            encoder,
            input,
            output,
        } = self;
        output.clear();
        let mut src = InBuffer::around(input);
        loop {
            if output.capacity() - output.len() < MIN_SPARE {
                output.reserve(CHUNK_SIZE);
            }
            let pos = output.len();
            let mut dst = OutBuffer::around_pos(output, pos);
            if src.pos() < src.src.len() {
                encoder.run(&mut src, &mut dst)?;
            } else if !end || encoder.finish(&mut dst, true)? == 0 {
                return Ok(());
            }
        }
    }
}

/// Reads back what [`Zstd`] wrote: a reader of the original bytes of a `.zst` object.
pub fn decoder<R: io::Read>(compressed: R) -> io::Result<impl io::Read> {
    zstd::stream::read::Decoder::new(compressed)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::{
        store::{Body, BodyReader, hex},
        testdata::core_like,
    };

    async fn compress(body: Body<'_>) -> (Vec<u8>, crate::store::BodyDigest, u64) {
        let mut reader = BodyReader::open(body).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().await.unwrap() {
            assert!(chunk.len() <= 4 * CHUNK_SIZE, "chunk of {}", chunk.len());
            out.extend_from_slice(chunk);
        }
        let read = reader.source_read();
        (out, reader.finish().unwrap(), read)
    }

    fn decompress(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compressed_body_decompresses_to_the_original() {
        let data = core_like(9 * CHUNK_SIZE + 4321);
        for settings in [
            Zstd::default(),
            Zstd {
                level: 1,
                workers: 0,
            },
        ] {
            let plain = Body::Bytes(&data);
            let (out, digest, read) = compress(Body::Zstd {
                body: &plain,
                settings,
            })
            .await;
            assert!(out.len() < data.len() / 2, "{} bytes", out.len());
            assert_eq!(decompress(&out), data);
            assert_eq!(read, data.len() as u64);
            assert_eq!(digest.size, out.len() as u64);
            assert_eq!(digest.sha256, hex(&Sha256::digest(&out)));
        }
    }

    #[tokio::test]
    async fn a_compressed_file_is_streamed() {
        let dir = std::env::temp_dir().join(format!("coredump-compress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core");
        let data = core_like(3 * CHUNK_SIZE + 7);
        std::fs::write(&path, &data).unwrap();
        let file = Body::File(&path);
        let (out, _, read) = compress(Body::Zstd {
            body: &file,
            settings: Zstd::level(5),
        })
        .await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, data.len() as u64);
        assert_eq!(decompress(&out), data);
    }

    #[tokio::test]
    async fn empty_input_is_an_empty_frame() {
        let plain = Body::Bytes(b"");
        let (out, digest, _) = compress(Body::Zstd {
            body: &plain,
            settings: Zstd::default(),
        })
        .await;
        assert!(!out.is_empty(), "a frame header at least");
        assert_eq!(digest.size, out.len() as u64);
        assert!(decompress(&out).is_empty());
    }

    #[tokio::test]
    async fn compressing_twice_is_refused() {
        let plain = Body::Bytes(b"x");
        let once = Body::Zstd {
            body: &plain,
            settings: Zstd::default(),
        };
        let twice = Body::Zstd {
            body: &once,
            settings: Zstd::default(),
        };
        assert!(matches!(
            BodyReader::open(twice).await.map(drop),
            Err(StoreError::InvalidBody { .. })
        ));
    }
}
