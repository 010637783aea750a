//! intake::dir: directories the agent works in, held open, and the checks a file in one must
//! pass before it is read as a dump.
//!
//! The dump directory of file mode may be writable by containers, so any name in it may be
//! hostile: a symlink to `/etc/shadow`, a hard link to another user's file, a FIFO that would
//! block a reader, a device node, or a name swapped for another between two steps. So nothing
//! here goes by path twice. Each [`Dir`] is opened once and every operation is relative to its
//! file descriptor: `lstat` of the name, an `openat2` that resolves no symlink and stays
//! beneath the directory, an `fstat` that must show the same inode, and renames between two
//! held directories (`renameat2(RENAME_NOREPLACE)`), never into a path that could have been
//! swapped. The caller then reads only through the returned handle.
//!
//! Rejected files are moved to the agent's `quarantine/` (in the state directory, where no pod
//! can see), logged with the reason and counted. Directories are left alone.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};

pub use crate::job::OpenedDump;

/// Sub-folder of the state directory where rejected files are moved.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Sub-folder where stored dumps go with `--keep-local`.
pub const KEPT_DIR: &str = "stored";

/// Why a file is not taken as a dump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A symbolic link: never followed.
    #[error("is a symbolic link")]
    Symlink,
    /// Not a regular file.
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// More than one name points at the file (it could be someone else's file).
    #[error("has {0} hard links (a dump has exactly one)")]
    HardLinked(u64),
    /// Larger than `--max-dump-size`.
    #[error("is {size} bytes, more than --max-dump-size {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Owned by a user other than the crashing one (or root).
    #[error("is owned by uid {owner}, but the crashing process ran as uid {crash_uid}")]
    Owner {
        /// File owner.
        owner: u32,
        /// Crash's uid.
        crash_uid: u32,
    },
    /// The name changed to another file while it was being checked.
    #[error("was replaced while being checked")]
    Replaced,
    /// The name is not valid UTF-8 or not a name the core_pattern produces.
    #[error("has a name the core_pattern does not produce")]
    UnknownName,
}

impl Rejection {
    /// Label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Symlink => "symlink",
            Self::NotRegular(_) => "not_regular",
            Self::HardLinked(_) => "hard_link",
            Self::TooLarge { .. } => "too_large",
            Self::Owner { .. } => "owner_mismatch",
            Self::Replaced => "replaced",
            Self::UnknownName => "unknown_name",
        }
    }
}

/// Outcome of a look at a name.
#[derive(Debug)]
pub enum Inspect {
    /// A regular file that nothing is writing any more: ready to process.
    Ready(OpenedDump),
    /// A regular file still open for writing (the kernel or a pipe helper is writing it).
    Writing {
        /// Its size now.
        size: u64,
    },
    /// The name no longer exists.
    Gone,
    /// Not acceptable as a dump.
    Rejected(Rejection),
}

fn kind(ft: FileType) -> &'static str {
    match ft {
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "character device",
        _ => "special file",
    }
}

/// Only a plain name (one path component) is ever looked up in a [`Dir`].
fn plain_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a plain file name", name.to_string_lossy()),
        ));
    }
    Ok(name)
}

/// A directory held open; every operation is relative to its descriptor.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    fd: OwnedFd,
}

impl Dir {
    /// Opens the directory at `path` (configured by the operator: trusted, symlinks allowed).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    /// Creates (or checks) the agent's private directory `parent/name` and opens it.
    pub fn private(parent: &Path, name: &str) -> io::Result<Self> {
        let path = crate::state::private_dir(parent, name)?;
        let fd = rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self { path, fd })
    }

    /// The path it was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, for messages and records.
    pub fn join(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// `lstat` of a name in this directory.
    fn lstat(&self, name: &OsStr) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            plain_name(name)?,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Looks at `name` and opens it if it is an acceptable, finished dump.
    pub fn inspect(&self, name: &OsStr, max_size: u64) -> io::Result<Inspect> {
        let lstat = match self.lstat(name) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Inspect::Gone),
            Err(e) => return Err(e),
        };
        match FileType::from_raw_mode(lstat.st_mode) {
            FileType::Symlink => return Ok(Inspect::Rejected(Rejection::Symlink)),
            FileType::RegularFile => {}
            other => return Ok(Inspect::Rejected(Rejection::NotRegular(kind(other)))),
        }
        // Resolve nothing: no symlink (the name may have become one since the lstat), no
        // magic link, nothing outside this directory.
        let opened = rustix::fs::openat2(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOENT => return Ok(Inspect::Gone),
            Err(e) if e == rustix::io::Errno::LOOP => {
                return Ok(Inspect::Rejected(Rejection::Symlink));
            }
            // Kernels before 5.6 have no openat2: a plain name with O_NOFOLLOW is the same.
            Err(e) if e == rustix::io::Errno::NOSYS => rustix::fs::openat(
                &self.fd,
                name,
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
            Err(e) => return Err(e.into()),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        use std::os::unix::fs::MetadataExt as _;
        if (meta.dev(), meta.ino()) != (lstat.st_dev, lstat.st_ino) || !meta.file_type().is_file() {
            return Ok(Inspect::Rejected(Rejection::Replaced));
        }
        if meta.nlink() != 1 {
            return Ok(Inspect::Rejected(Rejection::HardLinked(meta.nlink())));
        }
        if meta.len() > max_size {
            return Ok(Inspect::Rejected(Rejection::TooLarge {
                size: meta.len(),
                max: max_size,
            }));
        }
        let path = self.join(name);
        match crate::sys::is_open_for_write(&file) {
            Ok(true) => return Ok(Inspect::Writing { size: meta.len() }),
            Ok(false) => {}
            // Filesystems without leases (some network or FUSE ones): rely on the close event.
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "no lease support"),
        }
        Ok(Inspect::Ready(OpenedDump { file, meta, path }))
    }

    /// Whether `name` still is the very inode of `meta` (so removing it removes our file).
    pub fn still_names(&self, name: &OsStr, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.lstat(name)
            .is_ok_and(|s| s.st_dev == meta.dev() && s.st_ino == meta.ino())
    }

    /// Removes `name` if it still is the inode of `meta`; false if it is not (left alone).
    pub fn remove_if_same(&self, name: &OsStr, meta: &std::fs::Metadata) -> io::Result<bool> {
        if !self.still_names(name, meta) {
            return Ok(false);
        }
        rustix::fs::unlinkat(&self.fd, plain_name(name)?, AtFlags::empty())?;
        Ok(true)
    }

    /// Moves `name` into `to` (another held directory) without replacing anything there: a
    /// numeric suffix is added on collision. Moves the name itself, never a symlink's target.
    /// Returns the new path. Fails with `EXDEV` across filesystems (or mounts).
    pub fn move_to(&self, name: &OsStr, to: &Dir) -> io::Result<PathBuf> {
        let name = plain_name(name)?;
        let mut target = name.to_os_string();
        for n in 1..1000 {
            match rustix::fs::renameat_with(&self.fd, name, &to.fd, &target, RenameFlags::NOREPLACE)
            {
                Ok(()) => return Ok(to.join(&target)),
                Err(e) if e == rustix::io::Errno::EXIST => {
                    target = OsString::from(name);
                    target.push(format!(".{n}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "too many files of that name",
        ))
    }

    /// The descriptor, for `*at` calls elsewhere.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("intake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rejected(i: Inspect) -> Rejection {
        match i {
            Inspect::Rejected(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn regular_file_is_ready() {
        let d = tempdir("ok");
        std::fs::write(d.join("core.1"), b"ELF").unwrap();
        let dir = Dir::open(&d).unwrap();
        match dir.inspect(OsStr::new("core.1"), 1 << 20).unwrap() {
            Inspect::Ready(o) => assert_eq!(o.meta.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            dir.inspect(OsStr::new("missing"), 10).unwrap(),
            Inspect::Gone
        ));
        assert!(dir.inspect(OsStr::new("../core.1"), 10).is_err());
        assert!(dir.inspect(OsStr::new(".."), 10).is_err());
    }

    #[test]
    fn hostile_files_are_rejected_without_reading_them() {
        let d = tempdir("hostile");
        let dir = Dir::open(&d).unwrap();
        symlink("/etc/shadow", d.join("core.link")).unwrap();
        assert_eq!(
            rejected(dir.inspect(OsStr::new("core.link"), 1 << 30).unwrap()),
            Rejection::Symlink
        );
        std::fs::write(d.join("core.a"), b"x").unwrap();
        std::fs::hard_link(d.join("core.a"), d.join("core.b")).unwrap();
        assert_eq!(
            rejected(dir.inspect(OsStr::new("core.b"), 1 << 30).unwrap()),
            Rejection::HardLinked(2)
        );
        std::fs::create_dir(d.join("core.dir")).unwrap();
        assert_eq!(
            rejected(dir.inspect(OsStr::new("core.dir"), 1 << 30).unwrap()),
            Rejection::NotRegular("directory")
        );
        let _ = std::process::Command::new("mkfifo")
            .arg(d.join("core.fifo"))
            .status();
        assert_eq!(
            rejected(dir.inspect(OsStr::new("core.fifo"), 1 << 30).unwrap()),
            Rejection::NotRegular("FIFO")
        );
        std::fs::write(d.join("core.big"), vec![0u8; 100]).unwrap();
        assert_eq!(
            rejected(dir.inspect(OsStr::new("core.big"), 99).unwrap()),
            Rejection::TooLarge { size: 100, max: 99 }
        );
    }

    #[test]
    fn file_open_for_writing_is_not_ready() {
        // Leases need ownership or CAP_LEASE: files made here are ours, as root or not.
        let d = tempdir("writing");
        let dir = Dir::open(&d).unwrap();
        let w = File::create(d.join("core.w")).unwrap();
        assert!(matches!(
            dir.inspect(OsStr::new("core.w"), 1 << 20).unwrap(),
            Inspect::Writing { size: 0 }
        ));
        drop(w);
        assert!(matches!(
            dir.inspect(OsStr::new("core.w"), 1 << 20).unwrap(),
            Inspect::Ready(_)
        ));
    }

    #[test]
    fn moves_go_into_the_held_directory_even_if_its_name_is_swapped() {
        let d = tempdir("move");
        std::fs::create_dir(d.join("dumps")).unwrap();
        let dumps = Dir::open(&d.join("dumps")).unwrap();
        let quarantine = Dir::private(&d, QUARANTINE_DIR).unwrap();
        // The held quarantine is renamed away and a symlink to somewhere else put in its place:
        // the move still lands in the directory that was opened.
        let elsewhere = d.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::rename(d.join(QUARANTINE_DIR), d.join("moved-quarantine")).unwrap();
        symlink(&elsewhere, d.join(QUARANTINE_DIR)).unwrap();
        let target = d.join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        symlink(&target, d.join("dumps/core.x")).unwrap();
        let moved = dumps.move_to(OsStr::new("core.x"), &quarantine).unwrap();
        assert!(
            d.join("moved-quarantine/core.x")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink(),
            "{}",
            moved.display()
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        symlink(&target, d.join("dumps/core.x")).unwrap();
        dumps.move_to(OsStr::new("core.x"), &quarantine).unwrap();
        assert!(
            d.join("moved-quarantine/core.x.1")
                .symlink_metadata()
                .is_ok(),
            "no clobbering"
        );
    }

    #[test]
    fn remove_only_removes_the_file_that_was_read() {
        let d = tempdir("remove");
        let dir = Dir::open(&d).unwrap();
        std::fs::write(d.join("core.r"), b"mine").unwrap();
        let Inspect::Ready(dump) = dir.inspect(OsStr::new("core.r"), 1 << 20).unwrap() else {
            panic!("ready")
        };
        std::fs::remove_file(d.join("core.r")).unwrap();
        std::fs::write(d.join("core.r"), b"someone else's").unwrap();
        assert!(
            !dir.remove_if_same(OsStr::new("core.r"), &dump.meta)
                .unwrap()
        );
        assert!(d.join("core.r").exists());
    }
}
