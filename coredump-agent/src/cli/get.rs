//! `coredump-agent get`: download one dump, decompressed, verified, written atomically.

use std::{
    io::{self, IsTerminal as _, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use tokio_util::io::SyncIoBridge;

use super::args::GetArgs;
use crate::{
    record::Record,
    store::{Dest, Store as _, layout},
};

/// Counts and hashes the bytes read through it, and moves the progress bar.
struct Verifying<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    progress: indicatif::ProgressBar,
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// A progress bar of the download (bytes, rate, time left) on stderr, drawn only when stderr
/// is a terminal and not `--quiet`.
fn progress_bar(total: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta} left",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A download in progress: removed on drop unless committed, so a failed download never
/// leaves a half-written file, under the final name or any other.
struct PartFile {
    temp: PathBuf,
    target: PathBuf,
    file: std::fs::File,
    committed: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Where the bytes go: a temp file renamed into place on success, or stdout.
enum Sink {
    File(PartFile),
    Stdout,
}

impl Sink {
    fn open(target: &Path) -> anyhow::Result<Self> {
        if target == Path::new("-") {
            return Ok(Self::Stdout);
        }
        let target = target.to_owned();
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .context("the output path has no file name")?;
        if std::fs::symlink_metadata(&target).is_ok() {
            bail!(
                "{} exists: remove it or choose another -o",
                target.display()
            );
        }
        let temp = dir.join(format!(
            ".{}.part-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // A new file, never an existing one and never through a link someone planted.
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
                .with_context(|| format!("creating {}", temp.display()))?
        };
        Ok(Self::File(PartFile {
            temp,
            target,
            file,
            committed: false,
        }))
    }

    fn writer(&mut self) -> Box<dyn Write + '_> {
        match self {
            Self::File(p) => Box::new(io::BufWriter::with_capacity(1 << 20, &p.file)),
            Self::Stdout => Box::new(io::stdout().lock()),
        }
    }

    /// Keeps the file under its final name (after an fsync), never replacing one that
    /// appeared meanwhile.
    fn commit(self) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Self::File(mut p) => {
                p.file.sync_all().context("flushing the download")?;
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &p.temp,
                    rustix::fs::CWD,
                    &p.target,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .with_context(|| format!("renaming to {}", p.target.display()))?;
                p.committed = true;
                Ok(Some(p.target.clone()))
            }
            Self::Stdout => Ok(None),
        }
    }
}

/// `s3://bucket/key` names its own destination; anything else is a key in `--dest`.
fn target(args: &GetArgs) -> anyhow::Result<(Option<Dest>, String)> {
    if let Some(rest) = args.key.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("{:?} names no object (s3://bucket/key)", args.key))?;
        let dest: Dest = format!("s3://{bucket}").parse()?;
        return Ok((Some(dest), key.to_owned()));
    }
    Ok((None, args.key.clone()))
}

/// The dump's name once decompressed: the key's last part without `.zst`/`.gz`.
fn default_name(key: &str, decompress: bool) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    if decompress {
        for suffix in [".zst", ".gz"] {
            if let Some(stem) = name.strip_suffix(suffix) {
                return stem.to_owned();
            }
        }
    }
    name.to_owned()
}

/// Downloads the object.
pub async fn execute(args: GetArgs) -> anyhow::Result<ExitCode> {
    let (dest, key) = target(&args)?;
    let store = args.store.open(dest.as_ref()).await?;
    crate::store::validate_key(&key)?;
    let (info, _metadata) = store
        .head(&key)
        .await
        .with_context(|| format!("looking up {key} in {}", store.describe()))?;
    // The record beside the dump knows the checksum of the stored bytes and the size of the
    // dump: without it, nothing can be verified, and a decompression could be endless.
    let record = match super::read_record(&store, &layout::record_key(&key)).await {
        Ok(found) => {
            found.map(|buf| serde_json::from_slice::<Record>(&buf).map_err(|e| e.to_string()))
        }
        Err(e) if args.no_verify => Some(Err(format!("{e:#}"))),
        Err(e) => return Err(e),
    };
    let (expected_sha, original_size) = match record {
        Some(Ok(Record {
            stored: Some(stored),
            dump,
            ..
        })) => (
            Some(stored.sha256),
            dump.map(|d| d.original_size.unwrap_or(d.size)),
        ),
        _ if args.no_verify => {
            eprintln!("warning: {key} has no usable record beside it: not verified (--no-verify)");
            (None, None)
        }
        Some(Ok(_)) => bail!(
            "the record beside {key} says nothing about the stored bytes: cannot verify (--no-verify to download anyway)"
        ),
        Some(Err(e)) => bail!(
            "the record beside {key} cannot be read ({e}): cannot verify (--no-verify to download anyway)"
        ),
        None => bail!("no record beside {key}: cannot verify it (--no-verify to download anyway)"),
    };
    // What a decompressed dump may grow to: its recorded size, else --max-size.
    let decompress = !args.raw && (key.ends_with(".zst") || key.ends_with(".gz"));
    let expect = Expect {
        size: info.size,
        sha256: expected_sha,
        cap: original_size.unwrap_or(args.max_size),
        decompress,
    };
    let target = args.output.clone();
    let name = default_name(&key, decompress);
    let show_progress = io::stderr().is_terminal() && !args.quiet;
    let (path, written) = download(
        &store,
        &key,
        target.as_deref().unwrap_or(Path::new(&name)),
        expect,
        show_progress,
    )
    .await?;
    if let Some(path) = path
        && !args.quiet
    {
        eprintln!("{} ({written} bytes)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What a download is checked against.
pub(super) struct Expect {
    /// The stored size.
    pub size: u64,
    /// SHA-256 of the stored bytes, when known.
    pub sha256: Option<String>,
    /// Most bytes a decompression may give.
    pub cap: u64,
    /// Decompress (`.zst`, `.gz`) on the way.
    pub decompress: bool,
}

/// Downloads `key` to `output` (`-`: stdout) through a temporary name, decompressed when
/// asked, counting and hashing the stored bytes: refused when they are not what `expect`
/// says. The path written (none for stdout) and the bytes written.
pub(super) async fn download(
    store: &crate::store::AnyStore,
    key: &str,
    output: &Path,
    expect: Expect,
    show_progress: bool,
) -> anyhow::Result<(Option<PathBuf>, u64)> {
    let Expect {
        size: total,
        sha256: expected_sha,
        cap,
        decompress,
    } = expect;
    let body = store
        .open(key)
        .await
        .with_context(|| format!("downloading {key}"))?;
    let mut sink = Sink::open(output)?;
    let key_owned = key.to_owned();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(Sink, u64, String)> {
        let mut reader = Verifying {
            inner: SyncIoBridge::new(body),
            hasher: Sha256::new(),
            read: 0,
            progress: progress_bar(total, show_progress),
        };
        let copied = {
            let mut out = sink.writer();
            // One byte past the cap tells that a decoder would have gone on.
            let n = if !decompress {
                io::copy(&mut (&mut reader).take(total + 1), &mut out)
            } else if key_owned.ends_with(".zst") {
                let d = zstd::stream::read::Decoder::new(&mut reader)?;
                io::copy(&mut d.take(cap + 1), &mut out)
            } else {
                io::copy(&mut flate2::read::GzDecoder::new(&mut reader).take(cap + 1), &mut out)
            }
            .context("writing the dump")?;
            out.flush()?;
            n
        };
        if decompress && copied > cap {
            bail!(
                "{key_owned} decompresses to more than {cap} bytes, the size of the dump: refused (a damaged or crafted object)"
            );
        }
        // Drain anything a decoder did not need, so the checksum covers every byte (and no
        // more than the store said there is).
        io::copy(&mut (&mut reader).take(total + 1), &mut io::sink())?;
        reader.progress.finish_and_clear();
        let sha = hex(&reader.hasher.finalize_reset());
        if reader.read != total {
            bail!("downloaded {} bytes, the store says {total}", reader.read);
        }
        Ok((sink, copied, sha))
    })
    .await
    .context("download task")?;
    let (sink, written, sha) = result?;
    if let Some(expected) = expected_sha
        && expected != sha
    {
        drop(sink);
        bail!("checksum mismatch for {key}: sha256 {sha}, the record says {expected}");
    }
    Ok((sink.commit()?, written))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(
            default_name("a/b/20261126T000000Z_c_x_1_SIGSEGV.core.zst", true),
            "20261126T000000Z_c_x_1_SIGSEGV.core"
        );
        assert_eq!(default_name("x.core.gz", false), "x.core.gz");
        assert_eq!(default_name("x.core", true), "x.core");
    }
}
