//! state: the agent's own files on the node (spool, crash journal, sysctl backups), written so
//! that a crash of the agent or of the node never leaves a half-written one, in directories
//! only the agent can read or change.
//!
//! The spool ([`crate::spool`]), the crash journal and the core_pattern backups all go through
//! here: [`write_atomic`] for one file, [`private_dir`] for a directory, and [`Entries`] for a
//! directory of JSON entries keyed by id.

use std::{
    io::{self, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use serde::{Serialize, de::DeserializeOwned};

/// Writes `bytes` to `path` atomically and durably: a new temporary file beside it (never an
/// existing one, never through a symlink), fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates (or checks) `parent/name` as a directory only this agent can use: a real directory,
/// not a symlink, owned by the agent's user, mode 0700 (tightened if it was looser). Parents
/// are created as needed.
pub fn private_dir(parent: &Path, name: &str) -> io::Result<PathBuf> {
    let dir = parent.join(name);
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
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

/// The state directory's lock, held for as long as an agent runs on it: a second agent on the
/// same state (a rollout with surge, a manual `run` in the pod) would restore core_pattern under
/// the first one and deliver the same spool twice.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the lock on `state_dir` (`agent.lock`, holding the holder's pid), or says who has it.
pub fn lock(state_dir: &Path) -> io::Result<StateLock> {
    use std::io::{Read as _, Seek as _};
    let path = state_dir.join("agent.lock");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another agent (pid {}) runs with the state directory {}: stop it first",
                    holder.trim(),
                    state_dir.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(StateLock { _file: file })
}

/// A directory of JSON entries, `<id>.json`, each written with [`write_atomic`]. Ids are the
/// agent's own (crash and record ids), never names from outside.
#[derive(Debug, Clone)]
pub struct Entries {
    dir: PathBuf,
}

/// One entry read back: its id and the value, or why it could not be read.
pub type Loaded<T> = (String, Result<T, String>);

impl Entries {
    /// Opens (creating) the private directory `parent/name`.
    pub fn open(parent: &Path, name: &str) -> io::Result<Self> {
        Ok(Self {
            dir: private_dir(parent, name)?,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where entry `id` is.
    pub fn path(&self, id: &str) -> PathBuf {
        debug_assert!(
            !id.is_empty() && !id.contains('/') && !id.starts_with('.'),
            "entry ids are the agent's own: {id:?}"
        );
        self.dir.join(format!("{id}.json"))
    }

    /// Writes entry `id`, durably.
    pub fn save<T: Serialize>(&self, id: &str, value: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
        write_atomic(&self.path(id), &bytes)
    }

    /// Removes entry `id` (gone already is fine).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The ids of the entries there now.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| id.to_owned())
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Number of entries.
    pub fn count(&self) -> usize {
        self.ids().map_or(0, |ids| ids.len())
    }

    /// Every entry. One that cannot be read or parsed is moved aside to `<id>.json.bad`, never
    /// deleted: an operator may still want what it holds.
    pub fn load<T: DeserializeOwned>(&self) -> io::Result<Vec<Loaded<T>>> {
        Ok(self
            .ids()?
            .into_iter()
            .map(|id| {
                let path = self.path(&id);
                let value = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()));
                if let Err(e) = &value {
                    let aside = path.with_extension("json.bad");
                    tracing::error!(path = %path.display(), aside = %aside.display(), error = %e, "unreadable entry: moved aside");
                    let _ = std::fs::rename(&path, aside);
                }
                (id, value)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_kept_aside() {
        let d = tempdir("entries");
        let e = Entries::open(&d, "things").unwrap();
        e.save("a-1", &serde_json::json!({"n": 1})).unwrap();
        e.save("b-2", &serde_json::json!({"n": 2})).unwrap();
        std::fs::write(e.dir().join("c-3.json"), b"{not json").unwrap();
        std::fs::write(e.dir().join(".tmp-x.json-1"), b"partial").unwrap();
        assert_eq!(e.count(), 3);
        let loaded = e.load::<serde_json::Value>().unwrap();
        let ok: Vec<&str> = loaded
            .iter()
            .filter(|(_, v)| v.is_ok())
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(ok, ["a-1", "b-2"]);
        assert!(loaded[2].1.is_err());
        assert!(e.dir().join("c-3.json.bad").exists(), "kept, not deleted");
        assert_eq!(e.count(), 2);
        e.remove("a-1").unwrap();
        e.remove("a-1").unwrap();
        assert_eq!(e.ids().unwrap(), ["b-2"]);
    }

    #[test]
    fn private_dirs_are_tightened_and_refuse_symlinks() {
        use std::os::unix::fs::symlink;
        let d = tempdir("private");
        std::fs::create_dir(d.join("loose")).unwrap();
        std::fs::set_permissions(d.join("loose"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let loose = private_dir(&d, "loose").unwrap();
        assert_eq!(
            std::fs::metadata(loose).unwrap().permissions().mode() & 0o777,
            0o700
        );
        symlink("/etc", d.join("planted")).unwrap();
        assert!(private_dir(&d, "planted").is_err());
    }

    #[test]
    fn one_agent_per_state_directory() {
        let d = tempdir("lock");
        let held = lock(&d).unwrap();
        let err = lock(&d).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        lock(&d).unwrap();
    }

    #[test]
    fn write_atomic_replaces_and_never_follows_a_planted_temp_link() {
        use std::os::unix::fs::symlink;
        let d = tempdir("atomic");
        let target = d.join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let path = d.join("value");
        symlink(
            &target,
            d.join(format!(".tmp-value-{}", std::process::id())),
        )
        .unwrap();
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
