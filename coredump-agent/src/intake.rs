//! intake: opens a file from the dump directory safely, or says why it will not.
//!
//! The dump directory may be writable by containers, so any name in it may be hostile: a
//! symlink to `/etc/shadow`, a hard link to another user's file, a FIFO that would block a
//! reader, a device node. The checks run on the file itself, not on its name: `lstat` first
//! (nothing that is not a regular file is ever opened), then an `O_NOFOLLOW | O_NONBLOCK`
//! open and `fstat`, which must be the same inode. The caller then reads only through the
//! returned handle, so swapping the name afterwards changes nothing.
//!
//! Policy for rejected files (documented in the README): they are moved to the `quarantine/`
//! folder of the dump directory (a rename of the name itself, never of a symlink's target),
//! logged with the reason and counted. Directories are left alone.

use std::{
    ffi::OsStr,
    fs::{File, Metadata},
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Sub-folder of the dump directory where rejected files are moved.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Sub-folder of the dump directory where stored dumps go with `--keep-local`.
pub const KEPT_DIR: &str = "stored";

/// Why a file in the dump directory is not taken as a dump.
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
    Writing,
    /// The name no longer exists.
    Gone,
    /// Not acceptable as a dump.
    Rejected(Rejection),
}

/// A dump file opened for reading, checked, with the metadata of the opened inode.
#[derive(Debug)]
pub struct OpenedDump {
    /// Read-only handle; read the dump only through it.
    pub file: File,
    /// `fstat` of the handle.
    pub meta: Metadata,
    /// Full path it was opened from.
    pub path: PathBuf,
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Looks at `dir/name` and opens it if it is an acceptable, finished dump.
pub fn inspect(dir: &Path, name: &OsStr, max_size: u64) -> io::Result<Inspect> {
    let path = dir.join(name);
    let lmeta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Inspect::Gone),
        Err(e) => return Err(e),
    };
    let ft = lmeta.file_type();
    if ft.is_symlink() {
        return Ok(Inspect::Rejected(Rejection::Symlink));
    }
    if !ft.is_file() {
        return Ok(Inspect::Rejected(Rejection::NotRegular(kind(ft))));
    }
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Inspect::Gone),
        // ELOOP: the name became a symlink between lstat and open.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Inspect::Rejected(Rejection::Symlink));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (lmeta.dev(), lmeta.ino()) || !meta.file_type().is_file() {
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
    match crate::sys::is_open_for_write(&file) {
        Ok(true) => return Ok(Inspect::Writing),
        Ok(false) => {}
        // Filesystems without leases (some network or FUSE ones): rely on the close event.
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "no lease support"),
    }
    Ok(Inspect::Ready(OpenedDump { file, meta, path }))
}

/// Whether `path` still names the very inode of `meta` (so removing it removes our file).
pub fn same_file(path: &Path, meta: &Metadata) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
}

/// Creates (or checks) a private sub-folder of the dump directory: a real directory, not a
/// symlink, owned by us, mode 0700, so nothing in a container can redirect what goes there.
pub fn private_dir(dump_dir: &Path, name: &str) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = dump_dir.join(name);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.file_type().is_dir() || meta.uid() != crate::sys::euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by this agent (uid {}): remove it",
                dir.display(),
                crate::sys::euid()
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Moves `dump_dir/name` into the `sub` folder without replacing anything there (a numeric
/// suffix is added on collision). Returns the new path.
pub fn move_into(dump_dir: &Path, name: &OsStr, sub: &str) -> io::Result<PathBuf> {
    let target_dir = private_dir(dump_dir, sub)?;
    let from = dump_dir.join(name);
    let mut to = target_dir.join(name);
    for n in 1..1000 {
        match crate::sys::rename_noreplace(&from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mut with_suffix = name.to_os_string();
                with_suffix.push(format!(".{n}"));
                to = target_dir.join(with_suffix);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many files of that name",
    ))
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
        match inspect(&d, OsStr::new("core.1"), 1 << 20).unwrap() {
            Inspect::Ready(o) => assert_eq!(o.meta.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            inspect(&d, OsStr::new("missing"), 10).unwrap(),
            Inspect::Gone
        ));
    }

    #[test]
    fn hostile_files_are_rejected_without_reading_them() {
        let d = tempdir("hostile");
        symlink("/etc/shadow", d.join("core.link")).unwrap();
        assert_eq!(
            rejected(inspect(&d, OsStr::new("core.link"), 1 << 30).unwrap()),
            Rejection::Symlink
        );
        std::fs::write(d.join("core.a"), b"x").unwrap();
        std::fs::hard_link(d.join("core.a"), d.join("core.b")).unwrap();
        assert_eq!(
            rejected(inspect(&d, OsStr::new("core.b"), 1 << 30).unwrap()),
            Rejection::HardLinked(2)
        );
        std::fs::create_dir(d.join("core.dir")).unwrap();
        assert_eq!(
            rejected(inspect(&d, OsStr::new("core.dir"), 1 << 30).unwrap()),
            Rejection::NotRegular("directory")
        );
        let fifo = std::ffi::CString::new(d.join("core.fifo").to_str().unwrap()).unwrap();
        let _ = std::process::Command::new("mkfifo")
            .arg(fifo.to_str().unwrap())
            .status();
        assert_eq!(
            rejected(inspect(&d, OsStr::new("core.fifo"), 1 << 30).unwrap()),
            Rejection::NotRegular("FIFO")
        );
        std::fs::write(d.join("core.big"), vec![0u8; 100]).unwrap();
        assert_eq!(
            rejected(inspect(&d, OsStr::new("core.big"), 99).unwrap()),
            Rejection::TooLarge { size: 100, max: 99 }
        );
    }

    #[test]
    fn file_open_for_writing_is_not_ready() {
        if crate::sys::euid() != 0 {
            return; // leases need ownership or CAP_LEASE; files here are ours anyway
        }
        let d = tempdir("writing");
        let w = File::create(d.join("core.w")).unwrap();
        assert!(matches!(
            inspect(&d, OsStr::new("core.w"), 1 << 20).unwrap(),
            Inspect::Writing
        ));
        drop(w);
        assert!(matches!(
            inspect(&d, OsStr::new("core.w"), 1 << 20).unwrap(),
            Inspect::Ready(_)
        ));
    }

    #[test]
    fn quarantine_moves_the_link_not_its_target() {
        let d = tempdir("quarantine");
        let target = d.join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        symlink(&target, d.join("core.x")).unwrap();
        let moved = move_into(&d, OsStr::new("core.x"), QUARANTINE_DIR).unwrap();
        assert!(
            std::fs::symlink_metadata(&moved)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        symlink(&target, d.join("core.x")).unwrap();
        let again = move_into(&d, OsStr::new("core.x"), QUARANTINE_DIR).unwrap();
        assert_ne!(moved, again, "no clobbering");
    }

    #[test]
    fn private_dir_refuses_a_planted_symlink() {
        let d = tempdir("planted");
        symlink("/etc", d.join(QUARANTINE_DIR)).unwrap();
        assert!(private_dir(&d, QUARANTINE_DIR).is_err());
    }
}
