//! report::files: the module files of a crashed process, opened while it is still there, and
//! what is read from them (build-id, program headers, unwind sections).
//!
//! A module is opened through `/proc/<pid>/map_files/<start>-<end>`: the kernel's own
//! reference to the inode the process mapped, whatever its path says now (needs
//! `CAP_SYS_ADMIN` or `CAP_CHECKPOINT_RESTORE`). Failing that, by its path under
//! `/proc/<pid>/root`, resolved inside that root (`RESOLVE_IN_ROOT`, no magic links), and then
//! only trusted when its build-id is the core's. Nothing the process named is ever looked up in
//! the agent's own filesystem.
//!
//! A file is hostile input: sizes are checked before anything is read, reads are positional
//! (the descriptor's offset is shared with uploads), and nothing is mapped into memory (a
//! file someone truncates meanwhile would crash the agent with SIGBUS).
//!
//! Blocking: call from a blocking thread.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::FileExt as _,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ReadCache, read::elf::ElfFile64,
};

/// Module files held open at once by the whole agent (each crash holds its own until its
/// report is built and its modules stored).
pub const MAX_OPEN: usize = 4096;
/// Module files opened for one crash.
pub const MAX_PER_CRASH: usize = 512;
/// Largest section read from a module file (an `.eh_frame` is rarely above a few MiB).
pub const MAX_SECTION: u64 = 64 << 20;

static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A place among the [`MAX_OPEN`] module files, given back on drop.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        OPEN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_OPEN).then_some(n + 1)
        })
        .ok()
        .map(|_| Self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a module file was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `/proc/<pid>/map_files/`: the very inode the process had mapped.
    MapFiles,
    /// Its path under `/proc/<pid>/root`: trusted only with a matching build-id.
    Root,
}

/// An opened module file.
#[derive(Debug)]
pub struct Opened {
    /// Read-only, positional reads only.
    pub file: File,
    /// How it was found.
    pub via: Via,
    /// Its size when opened.
    pub size: u64,
    _slot: Slot,
}

/// The module files of one crash, by the address their file offset 0 was mapped at.
#[derive(Debug, Default)]
pub struct ModuleFiles {
    files: BTreeMap<u64, Opened>,
    /// Why some could not be opened (one line per cause, with a count).
    pub problems: Vec<String>,
}

impl ModuleFiles {
    /// The file mapped at `start`.
    pub fn get(&self, start: u64) -> Option<&Opened> {
        self.files.get(&start)
    }

    /// Forgets the file mapped at `start` (it is not the module the core names).
    pub fn remove(&mut self, start: u64) -> Option<Opened> {
        self.files.remove(&start)
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Adds an opened file (tests, and files found by other means).
    pub fn insert(&mut self, start: u64, file: File, via: Via) -> bool {
        let Some(slot) = Slot::take() else {
            return false;
        };
        let size = file.metadata().map_or(0, |m| m.len());
        self.files.insert(
            start,
            Opened {
                file,
                via,
                size,
                _slot: slot,
            },
        );
        true
    }
}

/// A mapping to open: where file offset 0 is mapped, the mapping's end, and the path the
/// process saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Start of the mapping of file offset 0.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// The process's path (` (deleted)` suffix included, if the kernel gave one).
    pub path: String,
}

/// Opens the files of `wanted` for the process `pid` under the proc root `proc`, while it is
/// held (pinned, or dumping core).
pub fn open(proc: &Path, pid: u32, wanted: &[Wanted]) -> ModuleFiles {
    let mut out = ModuleFiles::default();
    let dir = proc.join(pid.to_string());
    let root = rustix::fs::open(
        dir.join("root"),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let (mut map_files_err, mut root_err, mut full) = (None, None, 0usize);
    for w in wanted.iter().take(MAX_PER_CRASH) {
        let Some(slot) = Slot::take() else {
            full += 1;
            continue;
        };
        let by_map = open_regular(&dir.join(format!("map_files/{:x}-{:x}", w.start, w.end)));
        let opened = match by_map {
            Ok(f) => Some((f, Via::MapFiles)),
            Err(e) => {
                map_files_err.get_or_insert(e);
                match (&root, w.path.ends_with(" (deleted)")) {
                    (Ok(root), false) => match open_in_root(root, &w.path) {
                        Ok(f) => Some((f, Via::Root)),
                        Err(e) => {
                            root_err.get_or_insert(e);
                            None
                        }
                    },
                    _ => None,
                }
            }
        };
        if let Some((file, via)) = opened {
            let size = file.metadata().map_or(0, |m| m.len());
            out.files.insert(
                w.start,
                Opened {
                    file,
                    via,
                    size,
                    _slot: slot,
                },
            );
        }
    }
    if wanted.len() > MAX_PER_CRASH {
        out.problems.push(format!(
            "{} files are mapped: only the first {MAX_PER_CRASH} were opened",
            wanted.len()
        ));
    }
    if full > 0 {
        out.problems.push(format!(
            "{full} module files were not opened: the agent holds {MAX_OPEN} already"
        ));
    }
    if let Some(e) = map_files_err {
        out.problems.push(format!(
            "/proc/{pid}/map_files: {e} (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)"
        ));
    }
    if let Some(e) = root_err {
        out.problems.push(format!("/proc/{pid}/root: {e}"));
    }
    if let Err(e) = &root
        && out.files.len() < wanted.len()
    {
        out.problems.push(format!("/proc/{pid}/root: {e}"));
    }
    out
}

/// Opens a regular file, read-only, without blocking on a FIFO.
fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    check_regular(file)
}

fn check_regular(file: File) -> io::Result<File> {
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Opens `path` as the process saw it: resolved inside its root (symlinks included, but never
/// out of that root, and no magic links).
fn open_in_root(root: &rustix::fd::OwnedFd, path: &str) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let fd = rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    check_regular(File::from(fd))
}

/// The mappings of file offset 0 in `/proc/<pid>/maps` (the crash event's moment, file intake:
/// the core's `NT_FILE` is not known yet).
pub fn from_maps(maps: &str) -> Vec<Wanted> {
    maps.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(6, ' ');
            let range = parts.next()?;
            let _perms = parts.next()?;
            let offset = parts.next()?;
            let _dev = parts.next()?;
            let _inode = parts.next()?;
            let path = parts.next()?.trim_start();
            if !path.starts_with('/') || u64::from_str_radix(offset, 16).ok()? != 0 {
                return None;
            }
            let (s, e) = range.split_once('-')?;
            Some(Wanted {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                path: path.to_owned(),
            })
        })
        .collect()
}

/// A file read only at explicit offsets (`pread`), as `Read + Seek` for the ELF parser, so
/// that it never moves the descriptor's shared offset.
struct Pread<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for Pread<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Pread<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let len = self.file.metadata()?.len();
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// What a module file says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileFacts {
    /// Its GNU build-id, lowercase hex.
    pub build_id: Option<String>,
    /// `(p_vaddr, p_offset)` of its `PT_LOAD` segments.
    pub loads: Vec<(u64, u64)>,
}

/// Unwind sections of a module file, with their addresses as the file states them.
#[derive(Debug, Default)]
pub struct UnwindSections {
    /// `.text`.
    pub text: Option<std::ops::Range<u64>>,
    /// `.got`.
    pub got: Option<std::ops::Range<u64>>,
    /// `.eh_frame`, address and bytes.
    pub eh_frame: Option<(std::ops::Range<u64>, Vec<u8>)>,
    /// `.eh_frame_hdr`, address and bytes.
    pub eh_frame_hdr: Option<(std::ops::Range<u64>, Vec<u8>)>,
    /// `.debug_frame`.
    pub debug_frame: Option<Vec<u8>>,
}

fn parse_err(e: object::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads the build-id and program headers of a module file.
pub fn facts(file: &File) -> io::Result<FileFacts> {
    let cache = ReadCache::new(Pread { file, pos: 0 });
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).map_err(parse_err)?;
    let build_id = match elf.build_id() {
        Ok(Some(id)) if (8..=64).contains(&id.len()) => Some(super::modules::hex(id)),
        _ => None,
    };
    let loads = elf
        .segments()
        .map(|s| (s.address(), s.file_range().0))
        .collect();
    Ok(FileFacts { build_id, loads })
}

/// Reads the sections the unwinder uses, none larger than [`MAX_SECTION`].
pub fn unwind_sections(file: &File) -> io::Result<UnwindSections> {
    let cache = ReadCache::new(Pread { file, pos: 0 });
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).map_err(parse_err)?;
    let range = |s: &object::read::elf::ElfSection64<'_, '_, object::Endianness, _>| {
        s.address()..s.address().saturating_add(s.size())
    };
    let data = |name: &str| -> Option<(std::ops::Range<u64>, Vec<u8>)> {
        let s = elf.section_by_name(name)?;
        let (_, size) = s.file_range()?;
        (size <= MAX_SECTION).then_some(())?;
        Some((range(&s), s.data().ok()?.to_vec()))
    };
    Ok(UnwindSections {
        text: elf.section_by_name(".text").map(|s| range(&s)),
        got: elf.section_by_name(".got").map(|s| range(&s)),
        eh_frame: data(".eh_frame"),
        eh_frame_hdr: data(".eh_frame_hdr"),
        debug_frame: data(".debug_frame").map(|(_, d)| d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_the_mappings_of_offset_zero() {
        let maps = "\
5583a000-5583b000 r--p 00000000 fd:01 131 /usr/bin/app
5583b000-5583c000 r-xp 00001000 fd:01 131 /usr/bin/app
7f00-8f00 rw-p 00000000 00:00 0 
7fa0000-7fa1000 r--p 00000000 fd:01 99 /lib/x86_64-linux-gnu/libc.so.6
7fb0000-7fb1000 r--p 00000000 00:05 7 /memfd:jit (deleted)
7ffc000-7ffd000 rw-p 00000000 00:00 0 [stack]
";
        let w = from_maps(maps);
        let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/app",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/memfd:jit (deleted)"
            ]
        );
        assert_eq!((w[0].start, w[0].end), (0x5583a000, 0x5583b000));
    }

    #[test]
    fn this_test_binary_has_facts_and_unwind_sections() {
        let me = File::open(std::env::current_exe().unwrap()).unwrap();
        let f = facts(&me).unwrap();
        assert!(!f.loads.is_empty());
        let u = unwind_sections(&me).unwrap();
        assert!(u.eh_frame.is_some() && u.text.is_some());
        // Nothing moved the descriptor's offset.
        assert_eq!((&me).stream_position().unwrap(), 0);
        let not_elf = File::open("/proc/self/status").unwrap();
        assert!(facts(&not_elf).is_err());
    }

    #[test]
    fn files_are_opened_through_map_files_or_inside_the_root() {
        // This very process: its executable is mapped at offset 0.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let wanted: Vec<Wanted> = from_maps(&maps)
            .into_iter()
            .filter(|w| Path::new(&w.path) == exe)
            .take(1)
            .collect();
        assert_eq!(wanted.len(), 1);
        let files = open(Path::new("/proc"), std::process::id(), &wanted);
        let opened = files.get(wanted[0].start).expect("opened");
        assert!(opened.size > 0);
        // By path, inside a root: `..` and absolute symlinks stay inside it, as in the
        // container whose root it is.
        let dir = std::env::temp_dir().join(format!("report-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/libx.so"), b"inside").unwrap();
        std::os::unix::fs::symlink("/lib/libx.so", dir.join("lib/link.so")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("lib/host")).unwrap();
        let root = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let read = |p: &str| {
            open_in_root(&root, p).map(|f| {
                let mut s = String::new();
                let _ = (&f).read_to_string(&mut s);
                s
            })
        };
        assert_eq!(read("/lib/link.so").unwrap(), "inside");
        assert_eq!(read("/../../../lib/libx.so").unwrap(), "inside");
        // The container's /etc/hostname, which it does not have: never the agent's.
        assert!(read("/lib/host").is_err());
        assert!(read("/lib").is_err(), "a directory");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
