//! intake::received: the receive directory, where dumps the kernel hands over (socket, pipe)
//! land: private to the agent (mode 0700, on a host path no pod mounts), compressed as they
//! arrive, so the node's disk holds the compressed dump only.
//!
//! For each dump, `<id>.json` (the [`Header`]: what the kernel said and what was read while the
//! process was pinned) is written first, then the data goes to `.partial-<id>.core.zst`
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`), which is renamed to `<id>.core.zst` once complete and
//! synced. A restart therefore finds either a complete dump with its header, which it stores,
//! or a partial one, which it records as cut short and removes: never half a dump stored as a
//! whole one. The pipe helper writes here too, the same way, when no agent runs.
//!
//! Blocking I/O: call from a blocking thread (the helper is synchronous anyway).

use std::{
    collections::HashSet,
    ffi::OsStr,
    fs::File,
    io::{self, BufWriter, Read, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::{Intake, dir::Dir};
use crate::{
    crash::rfc3339,
    identity::Identity,
    job::{Claims, OpenedDump},
    pattern::{Compression, NameFields},
    record::ProcessInfo,
    store::Zstd,
};

/// Prefix of a dump still being received.
const PARTIAL: &str = ".partial-";
/// Read buffer of a receive.
const BUFFER: usize = 1 << 20;
/// Free space is checked again after this many bytes.
const DISK_CHECK_EVERY: u64 = 64 << 20;

/// What the kernel said about a crash it handed over, and what was read while the process was
/// pinned; written beside the dump before its first byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The receive id: names the files, unique on the node.
    pub id: String,
    /// How the kernel handed it over.
    pub intake: Intake,
    /// The kernel's facts: host pid always; with pipe intake, its `%` arguments.
    pub kernel: NameFields,
    /// When the kernel began handing it over.
    #[serde(with = "rfc3339")]
    pub received_at: SystemTime,
    /// `/proc/<pid>` while the process was pinned.
    pub process: Option<ProcessInfo>,
    /// Its identity, from the kernel's cgroup id or its `/proc/<pid>/cgroup`.
    pub identity: Identity,
    /// How the dump is stored here.
    pub compression: Option<Compression>,
    /// Bytes the kernel wrote (before compression), once complete.
    #[serde(default)]
    pub original_size: Option<u64>,
    /// Whether the whole dump arrived and was synced.
    #[serde(default)]
    pub complete: bool,
    /// Why there is no dump, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

impl Header {
    /// The complete dump's file name.
    pub fn dump_name(&self) -> String {
        dump_name(&self.id, self.compression)
    }
}

fn dump_name(id: &str, compression: Option<Compression>) -> String {
    format!("{id}.core{}", compression.map_or("", Compression::suffix))
}

/// A crash the kernel handed over: its header, and the dump when it came.
#[derive(Debug)]
pub struct Received {
    /// What is known of the crash.
    pub header: Header,
    /// The complete dump, opened. `None` when there is none (see `missing`).
    pub dump: Option<OpenedDump>,
    /// Why there is no dump: refused, cut short, or not wanted.
    pub missing: Option<String>,
    /// Refused by the per-container rate limit.
    pub rate_limited: bool,
    /// What was gathered for the crash report while the process was pinned.
    pub evidence: Option<crate::report::Evidence>,
}

impl Received {
    /// A crash the kernel named whose dump is not here, and why.
    pub fn without_dump(header: Header, why: String) -> Self {
        Self {
            header,
            dump: None,
            missing: Some(why),
            rate_limited: false,
            evidence: None,
        }
    }
}

/// Why a dump was not received whole.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    /// More than `--max-dump-size`.
    #[error("it is larger than --max-dump-size {max} bytes: cut there and not stored")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The receive directory's disk fell below `--min-free-disk`.
    #[error("the disk of the receive directory has {free} bytes free, below --min-free-disk")]
    LowDisk {
        /// Free bytes.
        free: u64,
    },
    /// Reading the kernel's stream failed or stalled.
    #[error("the kernel's stream broke off after {read} bytes")]
    Read {
        /// Bytes read before.
        read: u64,
        /// The cause (a timeout when the kernel stalled).
        #[source]
        source: io::Error,
    },
    /// Writing to the receive directory failed.
    #[error("writing the dump failed")]
    Write(#[source] io::Error),
}

/// What a receive may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Dumps larger than this are cut and not stored.
    pub max_size: u64,
    /// Below this many free bytes, a receive stops.
    pub min_free_disk: u64,
    /// Compression while receiving (`None`: stored as sent).
    pub compress: Option<Zstd>,
}

/// The receive directory, held open.
#[derive(Debug)]
pub struct ReceiveDir {
    dir: Dir,
}

impl ReceiveDir {
    /// Opens (creating) the private directory at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n.to_string_lossy()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} cannot be the receive directory", path.display()),
                ));
            }
        };
        Ok(Self {
            dir: Dir::private(parent, &name)?,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory, held open.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// A new receive id for a crash of `host_pid`.
    pub fn new_id(host_pid: u32) -> String {
        let boot = crate::sys::boot_time().map_or(0, |d| d.as_nanos());
        format!("{}-r{host_pid}-{boot}", crate::record::boot_tag())
    }

    fn create(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            self.dir.fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    fn header_path(&self, id: &str) -> PathBuf {
        self.path().join(format!("{id}.json"))
    }

    fn save_header(&self, header: &Header) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(header).map_err(io::Error::other)?;
        crate::state::write_atomic(&self.header_path(&header.id), &bytes)
    }

    /// Starts receiving the dump `header` describes: writes the header, creates the partial
    /// file.
    pub fn begin(&self, mut header: Header, limits: Limits) -> io::Result<Incoming<'_>> {
        header.compression = limits.compress.map(|_| Compression::Zstd);
        header.complete = false;
        self.save_header(&header)?;
        let partial = format!("{PARTIAL}{}", header.dump_name());
        let file = match self.create(&partial) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(self.header_path(&header.id));
                return Err(e);
            }
        };
        let out = BufWriter::with_capacity(BUFFER, file);
        let sink = match limits.compress {
            Some(settings) => Sink::Zstd(zstd::stream::zio::Writer::new(
                out,
                crate::store::compress::encoder(settings)?,
            )),
            None => Sink::Plain(out),
        };
        Ok(Incoming {
            dir: self,
            header,
            partial,
            sink: Some(sink),
            limits,
            received: 0,
        })
    }

    /// Records a crash whose dump did not come (written by the helper when no agent runs).
    pub fn record_only(&self, mut header: Header, why: &str) -> io::Result<()> {
        header.complete = false;
        header.missing = Some(why.to_owned());
        self.save_header(&header)
    }

    /// Forgets a crash once its record is stored: its header (the dump itself is removed
    /// like any other, by the deliver stage).
    pub fn forget(&self, id: &str) {
        let path = self.header_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a receive header");
            }
            _ => {}
        }
    }

    /// What a previous run (or the pipe helper, while no agent ran) left: each complete dump
    /// with its header, reopened, and each dump that was cut short by a stop, as a crash
    /// without a dump (its partial file removed). Skips dumps already claimed by the spool and
    /// receive ids the spool already holds a record of.
    pub fn recover(&self, claims: &Claims, spooled: &HashSet<String>) -> io::Result<Vec<Received>> {
        let mut out = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(self.path())?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if id.starts_with('.') || spooled.contains(id) {
                continue;
            }
            let header: Header = match std::fs::read(self.header_path(id))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(file = %self.header_path(id).display(), error = %e, "unreadable receive header: left in place");
                    continue;
                }
            };
            let final_name = header.dump_name();
            let final_path = self.path().join(&final_name);
            if claims.contains(final_path.as_os_str()) {
                continue;
            }
            let partial = format!("{PARTIAL}{final_name}");
            if header.complete {
                match self.dir.inspect(OsStr::new(&final_name), u64::MAX)? {
                    super::dir::Inspect::Ready(dump) => out.push(Received {
                        header,
                        dump: Some(dump),
                        missing: None,
                        rate_limited: false,
                        evidence: None,
                    }),
                    // Stored and removed, but the header stayed: nothing left to do.
                    super::dir::Inspect::Gone => {
                        let _ = std::fs::remove_file(self.header_path(id));
                    }
                    other => {
                        tracing::error!(file = %final_path.display(), found = ?other, "unexpected file in the receive directory: left in place");
                    }
                }
                continue;
            }
            let _ = std::fs::remove_file(self.path().join(&partial));
            let why = header.missing.clone().unwrap_or_else(|| {
                "the agent stopped while the kernel was handing over the dump: it is incomplete and was not stored".into()
            });
            out.push(Received::without_dump(header, why));
        }
        Ok(out)
    }
}

enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::zio::Writer<BufWriter<File>, zstd::stream::raw::Encoder<'static>>),
}

impl Sink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(buf),
            Self::Zstd(w) => w.write_all(buf),
        }
    }

    /// Ends the stream (the zstd frame), flushes and syncs; the file.
    fn finish(self) -> io::Result<File> {
        let out = match self {
            Self::Plain(w) => w,
            Self::Zstd(mut w) => {
                w.finish()?;
                w.into_inner().0
            }
        };
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(file)
    }
}

/// A dump being received into the receive directory.
pub struct Incoming<'d> {
    dir: &'d ReceiveDir,
    header: Header,
    partial: String,
    sink: Option<Sink>,
    limits: Limits,
    received: u64,
}

impl Incoming<'_> {
    /// The header it was begun with.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Copies the kernel's stream until its end, within the limits, showing every chunk to
    /// `scan` on the way (the crash report reads the core as it passes).
    pub fn copy_from(
        &mut self,
        stream: &mut impl Read,
        mut scan: Option<&mut crate::report::scan::Scanner>,
    ) -> Result<(), Cut> {
        let mut buf = vec![0u8; BUFFER];
        let mut next_disk_check = DISK_CHECK_EVERY;
        let sink = self.sink.as_mut().expect("not finished");
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Cut::Read {
                        read: self.received,
                        source,
                    });
                }
            };
            if let Some(scan) = scan.as_deref_mut() {
                scan.feed(self.received, &buf[..n]);
            }
            self.received += n as u64;
            if self.received > self.limits.max_size {
                return Err(Cut::TooLarge {
                    max: self.limits.max_size,
                });
            }
            if self.received >= next_disk_check {
                next_disk_check += DISK_CHECK_EVERY;
                if self.limits.min_free_disk > 0
                    && let Ok(free) = crate::sys::free_bytes(self.dir.path())
                    && free < self.limits.min_free_disk
                {
                    return Err(Cut::LowDisk { free });
                }
            }
            sink.write_all(&buf[..n]).map_err(Cut::Write)?;
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Completes the dump: ends and syncs the file, marks the header complete, renames the
    /// file into place. Returns what was received.
    pub fn finish(mut self) -> io::Result<Received> {
        let sink = self.sink.take().expect("not finished");
        let file = sink.finish()?;
        let final_name = self.header.dump_name();
        self.header.original_size = Some(self.received);
        self.header.complete = true;
        self.dir.save_header(&self.header)?;
        rustix::fs::renameat(
            self.dir.dir.fd(),
            &*self.partial,
            self.dir.dir.fd(),
            &*final_name,
        )?;
        File::open(self.dir.path())?.sync_all()?;
        let meta = file.metadata()?;
        debug_assert_eq!(meta.nlink(), 1);
        // Reopened read-only: the pipeline reads dumps through a read-only handle.
        let path = self.dir.path().join(&final_name);
        let file = File::open(&path)?;
        let header = self.header.clone();
        self.partial.clear();
        Ok(Received {
            header,
            dump: Some(OpenedDump {
                meta: file.metadata()?,
                file,
                path,
            }),
            missing: None,
            rate_limited: false,
            evidence: None,
        })
    }

    /// Gives up: removes the partial file; the header stays for the record of the crash
    /// (removed with it, once stored).
    pub fn abandon(mut self, why: &Cut) -> Received {
        self.sink.take();
        let _ = std::fs::remove_file(self.dir.path().join(&self.partial));
        self.partial.clear();
        let why = format!("the dump was not stored: {}", crate::error_chain(why));
        // Kept in the header too, so a restart before the record is stored says why.
        if let Err(e) = self.dir.record_only(self.header.clone(), &why) {
            tracing::warn!(id = %self.header.id, error = %e, "could not update the receive header");
        }
        Received::without_dump(self.header.clone(), why)
    }
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let _ = std::fs::remove_file(self.dir.path().join(&self.partial));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("received-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn header(id: &str) -> Header {
        Header {
            id: id.into(),
            intake: Intake::Socket,
            kernel: NameFields {
                host_pid: Some(42),
                ..NameFields::default()
            },
            received_at: SystemTime::now(),
            process: None,
            identity: Identity::default(),
            compression: None,
            original_size: None,
            complete: false,
            missing: None,
        }
    }

    const LIMITS: Limits = Limits {
        max_size: 1 << 30,
        min_free_disk: 0,
        compress: Some(Zstd {
            level: 3,
            workers: 0,
        }),
    };

    #[test]
    fn a_dump_is_compressed_on_the_way_and_renamed_when_whole() {
        let d = tempdir("whole");
        let rd = ReceiveDir::open(&d.join("received")).unwrap();
        let data = crate::testdata::core_like(3 << 20);
        let mut incoming = rd.begin(header("a-r42-1"), LIMITS).unwrap();
        incoming.copy_from(&mut &data[..], None).unwrap();
        let received = incoming.finish().unwrap();
        let dump = received.dump.unwrap();
        assert!(dump.path.ends_with("a-r42-1.core.zst"));
        assert!(dump.meta.len() < data.len() as u64 / 2, "compressed");
        let back = zstd::decode_all(std::fs::File::open(&dump.path).unwrap()).unwrap();
        assert!(back == data);
        assert_eq!(received.header.original_size, Some(data.len() as u64));
        // A restart finds it, complete, with its header.
        let found = rd.recover(&Claims::default(), &HashSet::new()).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].dump.is_some() && found[0].header.complete);
        // Claimed by the spool: not found again.
        let claims = Claims::default();
        claims.claim(dump.path.as_os_str());
        assert!(rd.recover(&claims, &HashSet::new()).unwrap().is_empty());
        // Stored: the dump removed, then the header.
        std::fs::remove_file(&dump.path).unwrap();
        assert!(
            rd.recover(&Claims::default(), &HashSet::new())
                .unwrap()
                .is_empty(),
            "a complete header without its dump is a stored one"
        );
        rd.forget("a-r42-1");
        assert!(!d.join("received/a-r42-1.json").exists());
    }

    #[test]
    fn a_dump_cut_short_is_never_kept_as_a_whole_one() {
        let d = tempdir("cut");
        let rd = ReceiveDir::open(&d.join("received")).unwrap();
        let mut incoming = rd
            .begin(
                header("b-r7-2"),
                Limits {
                    max_size: 1000,
                    ..LIMITS
                },
            )
            .unwrap();
        let cut = incoming.copy_from(&mut &[1u8; 5000][..], None).unwrap_err();
        assert!(matches!(cut, Cut::TooLarge { max: 1000 }));
        let received = incoming.abandon(&cut);
        assert!(received.dump.is_none());
        assert!(received.missing.unwrap().contains("--max-dump-size"));
        // A stop in the middle: the partial file and header are left; a restart records the
        // crash and removes the partial.
        let mut incoming = rd.begin(header("c-r8-3"), LIMITS).unwrap();
        incoming.copy_from(&mut &[2u8; 100][..], None).unwrap();
        std::mem::forget(incoming);
        let found = rd.recover(&Claims::default(), &HashSet::new()).unwrap();
        let ids: Vec<&str> = found.iter().map(|r| r.header.id.as_str()).collect();
        assert_eq!(ids, ["b-r7-2", "c-r8-3"]);
        assert!(
            found
                .iter()
                .all(|r| r.dump.is_none() && r.missing.is_some())
        );
        let left: Vec<_> = std::fs::read_dir(rd.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with(PARTIAL))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // Spooled already: skipped.
        let spooled = HashSet::from(["b-r7-2".to_owned(), "c-r8-3".to_owned()]);
        assert!(rd.recover(&Claims::default(), &spooled).unwrap().is_empty());
    }
}
