//! store::local: the embedded default store, a folder on the node (or any mounted volume).
//!
//! What lives under the root:
//! - `<root>/<key>`: the object's bytes, exactly as put.
//! - `<root>/.meta/<key>.json`: its sidecar: tags, metadata, size, time and sha256, so `find`
//!   reads tags without opening dumps.
//! - `.tmp-*`: files being written; a failed or cancelled put removes its own.
//!
//! An object exists once its sidecar does. A put writes the data, then the sidecar, each into a
//! temporary file in the destination directory that is fsynced, renamed into place, and whose
//! directory is fsynced. A crash part-way leaves no half object visible, and the retried put
//! (keys are deterministic) replaces whatever was there; while it does, a reader may see the new
//! bytes with the old sidecar for a moment. Names starting with `.` are the store's own, so keys
//! may not have such components.
//!
//! Symbolic links under the root are never followed when reading or writing: the folder may be
//! shared, and an object must be the bytes that were put, not whatever a link points at.
//! Files are created `0600` and directories `0700`: dumps hold process memory.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use super::{
    Body, BodyReader, Metadata, ObjectInfo, PutReceipt, Store, StoreError, Tags, validate_key,
};

/// Directory under the root holding the sidecars.
const META_DIR: &str = ".meta";
/// Suffix of a sidecar's name, after the object's.
const SIDECAR_SUFFIX: &str = ".json";
/// Start of the names of files being written.
const TEMP_PREFIX: &str = ".tmp-";
/// Longest key component: `NAME_MAX` (255) less the sidecar suffix.
const MAX_COMPONENT_LEN: usize = 255 - SIDECAR_SUFFIX.len();
/// Sidecars are small (metadata is capped at 2 KiB); refuse to parse anything much larger.
const MAX_SIDECAR_LEN: u64 = 1 << 20;
/// Permissions of files the store creates (before the umask).
const FILE_MODE: u32 = 0o600;
/// Permissions of directories the store creates (before the umask).
const DIR_MODE: u32 = 0o700;

/// What the store keeps about an object besides its bytes, as `.meta/<key>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    key: String,
    size: u64,
    #[serde(with = "crate::crash::rfc3339")]
    last_modified: SystemTime,
    sha256: String,
    tags: Tags,
    metadata: Metadata,
}

/// A store in a folder. See the module docs for the layout on disk.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (made absolute against the working directory). Touches nothing
    /// on disk: [`Store::check`] creates the folder.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        let root = std::path::absolute(root).map_err(StoreError::io("resolve", root))?;
        Ok(Self { root })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a key's sidecar, relative to the root.
    fn sidecar_rel(key: &str) -> String {
        format!("{META_DIR}/{key}{SIDECAR_SUFFIX}")
    }

    /// Reads and parses a key's sidecar: the object's commit marker.
    fn read_sidecar(root: &Path, key: &str) -> Result<Sidecar, StoreError> {
        let rel = Self::sidecar_rel(key);
        let path = root.join(&rel);
        let file = open_under(root, &rel).map_err(|e| not_found_or(e, key, "open", &path))?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, MAX_SIDECAR_LEN), &mut bytes)
            .map_err(StoreError::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::CorruptMetadata {
            key: key.to_owned(),
            path,
            source,
        })
    }

    /// The data file's size and time, which must be a regular file reached without links.
    fn stat_data(root: &Path, key: &str) -> Result<ObjectInfo, StoreError> {
        let meta = walk_under(root, key)
            .and_then(fs::symlink_metadata)
            .map_err(|e| not_found_or(e, key, "stat", &root.join(key)))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(object_info(key.to_owned(), &meta))
    }
}

/// Checks a key against the shared rules and the local ones: no component may start with `.`
/// (those names are the store's own) or be too long for a file name beside its sidecar.
fn check_key(key: &str) -> Result<(), StoreError> {
    validate_key(key)?;
    let invalid = |reason| StoreError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    for component in key.split('/') {
        if component.starts_with('.') {
            return Err(invalid(
                "a component starts with '.' (reserved for the store's own files)",
            ));
        }
        if component.len() > MAX_COMPONENT_LEN {
            return Err(invalid("a component is longer than 250 bytes"));
        }
    }
    Ok(())
}

/// NotFound when the object is not there (or not reachable without a link), else an Io error.
fn not_found_or(error: io::Error, key: &str, op: &'static str, path: &Path) -> StoreError {
    match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => StoreError::NotFound {
            key: key.to_owned(),
        },
        _ if error.raw_os_error() == Some(libc::ELOOP) => StoreError::NotFound {
            key: key.to_owned(),
        },
        _ => StoreError::Io {
            op,
            path: path.to_owned(),
            source: error,
        },
    }
}

fn object_info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        last_modified: mtime(meta),
    }
}

/// A file's modification time. One before 1970 (a hand-touched file) cannot be written as
/// RFC 3339, so it reads as 1970.
fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .max(SystemTime::UNIX_EPOCH)
}

/// Checks that every directory on the way to `root/rel` is a real directory, not a symbolic
/// link, and returns the full path. A link or a file on the way reads as NotFound/NotADirectory.
fn walk_under(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut path = root.to_path_buf();
    let mut components = rel.split('/').peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_some() && !fs::symlink_metadata(&path)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory (symbolic links are not followed)",
            ));
        }
    }
    Ok(path)
}

/// Opens the regular file `root/rel` for reading without following any symbolic link.
fn open_under(root: &Path, rel: &str) -> io::Result<fs::File> {
    let path = walk_under(root, rel)?;
    let file = fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO in the tree must not hang the agent; no effect on regular files.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok(file)
}

/// Creates `base/<dirs…>` as needed, fsyncing each parent that gained an entry so the new
/// directories survive a crash, and refusing anything on the way that is not a real directory.
fn ensure_dirs<'a>(base: &Path, dirs: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
    let mut dir = base.to_path_buf();
    for component in dirs {
        let parent = dir.clone();
        dir.push(component);
        match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => fsync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Io {
                    op: "create directory",
                    path: dir,
                    source,
                });
            }
        }
        let meta = fs::symlink_metadata(&dir).map_err(StoreError::io("stat", &dir))?;
        if !meta.is_dir() {
            return Err(StoreError::Io {
                op: "create directory",
                path: dir,
                source: io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "exists and is not a directory (symbolic links are not followed)",
                ),
            });
        }
    }
    Ok(())
}

/// fsync of a directory: makes a rename or new entry in it durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Removes `root/rel` if it is there; a missing file (or directory on the way) is fine.
fn remove_under(root: &Path, rel: &str) -> Result<(), StoreError> {
    let path = match walk_under(root, rel) {
        Ok(path) => path,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(source) => {
            return Err(StoreError::Io {
                op: "stat",
                path: root.join(rel),
                source,
            });
        }
    };
    match fs::remove_file(&path) {
        Ok(()) => fsync_dir(path.parent().unwrap_or(root)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            op: "remove",
            path,
            source,
        }),
    }
}

/// A unique temporary name: pid (another agent may share the folder) and a sequence number.
fn temp_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}-{seq}", std::process::id())
}

/// Removes a temporary file when dropped, unless disarmed: covers errors and cancelled futures.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Best effort: the put already failed, and a leftover is only wasted space.
            let _ = fs::remove_file(path);
        }
    }
}

/// A file written under a temporary name and renamed over `target` on commit.
struct AtomicFile {
    file: tokio::fs::File,
    /// Removes the temporary file unless committed.
    guard: TempPath,
    temp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file in `target`'s directory (which must exist), so the rename
    /// stays within one filesystem and is atomic.
    async fn create(target: PathBuf) -> Result<Self, StoreError> {
        let temp = target.with_file_name(temp_name());
        // Armed before the file exists. If this future is dropped while the blocking task
        // creates the file, whichever of the two finishes last removes it.
        let guard = TempPath(Some(temp.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = temp.clone();
        tokio::task::spawn_blocking(move || {
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            if let Err(Ok(_orphan)) = tx.send(created) {
                let _ = fs::remove_file(&path);
            }
        });
        let created = rx.await.unwrap_or_else(|_| {
            Err(io::Error::other(
                "the task creating the file ended without an answer",
            ))
        });
        let file = created.map_err(StoreError::io("create", &temp))?;
        Ok(Self {
            file: tokio::fs::File::from_std(file),
            guard,
            temp,
            target,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let result = self.file.write_all(bytes).await;
        result.map_err(StoreError::io("write", &self.temp))
    }

    /// Makes the bytes durable and puts them in place; returns the file's modification time.
    async fn commit(mut self) -> Result<SystemTime, StoreError> {
        let temp = &self.temp;
        self.file
            .flush()
            .await
            .map_err(StoreError::io("write", temp))?;
        self.file
            .sync_all()
            .await
            .map_err(StoreError::io("fsync", temp))?;
        let meta = self
            .file
            .metadata()
            .await
            .map_err(StoreError::io("stat", temp))?;
        tokio::fs::rename(temp, &self.target)
            .await
            .map_err(StoreError::io("rename into place", &self.target))?;
        self.guard.0 = None;
        let dir = self.target.parent().unwrap_or(Path::new("/"));
        let owned = dir.to_owned();
        blocking(dir, move || fsync_dir(&owned)).await?;
        Ok(mtime(&meta))
    }
}

/// Runs blocking filesystem work on `path` off the async threads.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only when the runtime is shutting down.
            Err(e) => Err(StoreError::Io {
                op: "finish a filesystem task on",
                path: path.to_owned(),
                source: io::Error::other(e),
            }),
        },
    }
}

/// The objects under `root` whose keys start with `prefix`, sorted by key.
fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    if prefix.contains('\0') || prefix.starts_with('/') {
        return Err(StoreError::InvalidKey {
            key: prefix.to_owned(),
            reason: "a prefix must be the start of a valid key",
        });
    }
    // Start at the deepest directory the prefix names in full; its last part only filters.
    let start = match prefix.rsplit_once('/') {
        Some((dir, _)) => {
            check_key(dir).map_err(|_| StoreError::InvalidKey {
                key: prefix.to_owned(),
                reason: "a prefix must be the start of a valid key",
            })?;
            format!("{dir}/")
        }
        None => String::new(),
    };
    let root_meta = fs::metadata(root).map_err(StoreError::io("list", root))?;
    if !root_meta.is_dir() {
        return Err(StoreError::Io {
            op: "list",
            path: root.to_owned(),
            source: io::Error::from(io::ErrorKind::NotADirectory),
        });
    }
    let mut found = Vec::new();
    // Directories still to read, with the key prefix of their entries.
    let mut pending = vec![start];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            match walk_under(root, rel.trim_end_matches('/')) {
                Ok(dir) if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => dir,
                _ => continue,
            }
        };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed since it was seen (a concurrent delete): nothing to list there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(source) => {
                return Err(StoreError::Io {
                    op: "list",
                    path: dir,
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let name = entry.file_name();
            // Not a key: the store's own files, and names no key can spell.
            let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let key = format!("{rel}{name}");
            // file_type() does not follow links, so a link is neither dir nor file: skipped.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    pending.push(sub);
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                let committed = fs::symlink_metadata(root.join(LocalStore::sidecar_rel(&key)))
                    .is_ok_and(|m| m.is_file());
                if committed && let Ok(meta) = entry.metadata() {
                    found.push(object_info(key, &meta));
                }
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        blocking(&self.root, move || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&root)
                .map_err(StoreError::io("create the store directory", &root))?;
            let path = root.join(temp_name());
            let probe = TempPath(Some(path.clone()));
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|mut f| {
                    io::Write::write_all(&mut f, b"coredump-agent store check\n")?;
                    f.sync_all()
                })
                .map_err(StoreError::io("write a probe file", &path))?;
            drop(probe);
            Ok(())
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Body<'_>,
        tags: &Tags,
        metadata: &Metadata,
    ) -> Result<PutReceipt, StoreError> {
        check_key(key)?;
        // Open the body first: a bad body should not leave directories behind.
        let mut reader = BodyReader::open(body).await?;

        let root = self.root.clone();
        let owned_key = key.to_owned();
        blocking(&self.root, move || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&root)
                .map_err(StoreError::io("create the store directory", &root))?;
            let dirs: Vec<&str> = owned_key.split('/').collect();
            let dirs = &dirs[..dirs.len() - 1];
            ensure_dirs(&root, dirs.iter().copied())?;
            ensure_dirs(&root, std::iter::once(META_DIR).chain(dirs.iter().copied()))
        })
        .await?;

        let mut data = AtomicFile::create(self.root.join(key)).await?;
        while let Some(chunk) = reader.next_chunk().await? {
            data.write(chunk).await?;
        }
        let digest = reader.finish()?;
        let source_size = digest.source_size;
        let last_modified = data.commit().await?;

        let sidecar = Sidecar {
            key: key.to_owned(),
            size: digest.size,
            last_modified,
            sha256: digest.sha256,
            tags: tags.clone(),
            metadata: metadata.clone(),
        };
        let sidecar_path = self.root.join(Self::sidecar_rel(key));
        let json = serde_json::to_vec_pretty(&sidecar).map_err(|e| StoreError::Io {
            op: "serialize",
            path: sidecar_path.clone(),
            source: io::Error::other(e),
        })?;
        let mut meta = AtomicFile::create(sidecar_path).await?;
        meta.write(&json).await?;
        meta.commit().await?;

        Ok(PutReceipt {
            key: sidecar.key,
            size: sidecar.size,
            sha256: sidecar.sha256,
            source_size,
            transfer: None,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(&self.root, move || list_blocking(&root, &prefix)).await
    }

    async fn tags(&self, key: &str) -> Result<Tags, StoreError> {
        check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        blocking(&self.root, move || {
            let sidecar = Self::read_sidecar(&root, &key)?;
            // Only an lstat: an object is its sidecar and a regular data file, as `list` sees it.
            Self::stat_data(&root, &key)?;
            Ok(sidecar.tags)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<(ObjectInfo, Metadata), StoreError> {
        check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        blocking(&self.root, move || {
            let sidecar = Self::read_sidecar(&root, &key)?;
            Ok((Self::stat_data(&root, &key)?, sidecar.metadata))
        })
        .await
    }

    async fn open(
        &self,
        key: &str,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>, StoreError> {
        check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        let file = blocking(&self.root, move || {
            // The sidecar is the commit marker: no reading a put that has not finished.
            Self::read_sidecar(&root, &key)?;
            open_under(&root, &key).map_err(|e| not_found_or(e, &key, "open", &root.join(&key)))
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let root = self.root.clone();
        let key = key.to_owned();
        blocking(&self.root, move || {
            // Sidecar first: the object disappears at once, and a crash in between leaves only
            // an invisible data file that a later put of the same key replaces.
            remove_under(&root, &Self::sidecar_rel(&key))?;
            remove_under(&root, &key)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use sha2::{Digest as _, Sha256};
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> Self {
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "coredump-store-test-{}-{}-{nanos}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn store(&self) -> LocalStore {
            LocalStore::new(self.0.join("store")).unwrap()
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sha256(bytes: &[u8]) -> String {
        super::super::hex(&Sha256::digest(bytes))
    }

    async fn read_all(store: &LocalStore, key: &str) -> Vec<u8> {
        let mut out = Vec::new();
        store
            .open(key)
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// Every file name under `dir`, recursively (links not followed).
    fn all_names(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                names.push(entry.file_name().to_string_lossy().into_owned());
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        names
    }

    fn assert_no_temp_files(store: &LocalStore) {
        let temps: Vec<_> = all_names(store.root())
            .into_iter()
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        assert!(temps.is_empty(), "temporary files left: {temps:?}");
    }

    fn keys(objects: &[ObjectInfo]) -> Vec<&str> {
        objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[tokio::test]
    async fn bytes_round_trip_with_tags_and_metadata() {
        let dir = TestDir::new();
        let store = dir.store();
        store.check().await.unwrap();
        let t = tags(&[("namespace", "prod"), ("pod", "web-1")]);
        let m = tags(&[("exe", "/bin/web")]);
        let receipt = store
            .put("prod/web-1/a.core", Body::Bytes(b"hello"), &t, &m)
            .await
            .unwrap();
        assert_eq!(
            receipt,
            PutReceipt {
                key: "prod/web-1/a.core".into(),
                size: 5,
                sha256: sha256(b"hello"),
                source_size: 5,
                transfer: None,
            }
        );
        assert_eq!(read_all(&store, "prod/web-1/a.core").await, b"hello");
        assert_eq!(store.tags("prod/web-1/a.core").await.unwrap(), t);
        let (info, metadata) = store.head("prod/web-1/a.core").await.unwrap();
        assert_eq!((info.key.as_str(), info.size), ("prod/web-1/a.core", 5));
        assert_eq!(metadata, m);
        let listed = store.list("").await.unwrap();
        assert_eq!(listed, [info]);

        let sidecar: serde_json::Value = serde_json::from_slice(
            &fs::read(store.root().join(".meta/prod/web-1/a.core.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar["sha256"], sha256(b"hello"));
        assert_eq!(sidecar["size"], 5);
        assert_eq!(sidecar["tags"]["pod"], "web-1");
        assert_no_temp_files(&store);
    }

    #[tokio::test]
    async fn multi_mib_file_is_streamed_and_checksummed() {
        let dir = TestDir::new();
        let store = dir.store();
        let data: Vec<u8> = (0..5 * super::super::CHUNK_SIZE + 12345)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let src = dir.0.join("core.1");
        fs::write(&src, &data).unwrap();
        let receipt = store
            .put(
                "ns/p/big.core",
                Body::File(&src),
                &Tags::new(),
                &Metadata::new(),
            )
            .await
            .unwrap();
        assert_eq!(receipt.size, data.len() as u64);
        assert_eq!(receipt.sha256, sha256(&data));
        assert!(read_all(&store, "ns/p/big.core").await == data);
        assert_eq!(
            store.head("ns/p/big.core").await.unwrap().0.size,
            data.len() as u64
        );
        assert_no_temp_files(&store);
    }

    #[tokio::test]
    async fn put_again_overwrites_data_and_tags() {
        let dir = TestDir::new();
        let store = dir.store();
        let key = "ns/p/x.core";
        store
            .put(
                key,
                Body::Bytes(b"first"),
                &tags(&[("v", "1")]),
                &Metadata::new(),
            )
            .await
            .unwrap();
        let receipt = store
            .put(
                key,
                Body::Bytes(b"second!"),
                &tags(&[("v", "2")]),
                &Metadata::new(),
            )
            .await
            .unwrap();
        assert_eq!(receipt.sha256, sha256(b"second!"));
        assert_eq!(read_all(&store, key).await, b"second!");
        assert_eq!(store.tags(key).await.unwrap(), tags(&[("v", "2")]));
        assert_eq!(keys(&store.list("").await.unwrap()), [key]);
        assert_no_temp_files(&store);
    }

    #[tokio::test]
    async fn list_filters_by_string_prefix_and_sorts() {
        let dir = TestDir::new();
        let store = dir.store();
        for key in [
            "ns2/p/z.core",
            "ns1/pod-b/y.core",
            "ns1/pod-a/x.core.json",
            "ns1/pod-a/x.core",
            "top.core",
        ] {
            store
                .put(
                    key,
                    Body::Bytes(key.as_bytes()),
                    &Tags::new(),
                    &Metadata::new(),
                )
                .await
                .unwrap();
        }
        let list = |prefix: &'static str| {
            let store = store.clone();
            async move { store.list(prefix).await.unwrap() }
        };
        assert_eq!(
            keys(&list("").await),
            [
                "ns1/pod-a/x.core",
                "ns1/pod-a/x.core.json",
                "ns1/pod-b/y.core",
                "ns2/p/z.core",
                "top.core"
            ]
        );
        assert_eq!(
            keys(&list("ns1/").await),
            [
                "ns1/pod-a/x.core",
                "ns1/pod-a/x.core.json",
                "ns1/pod-b/y.core"
            ]
        );
        assert_eq!(
            keys(&list("ns1/pod-a").await),
            ["ns1/pod-a/x.core", "ns1/pod-a/x.core.json"]
        );
        assert_eq!(
            keys(&list("ns1/pod-a/x.core.").await),
            ["ns1/pod-a/x.core.json"]
        );
        assert_eq!(
            keys(&list("ns").await),
            [
                "ns1/pod-a/x.core",
                "ns1/pod-a/x.core.json",
                "ns1/pod-b/y.core",
                "ns2/p/z.core"
            ]
        );
        assert!(list("nope/").await.is_empty());
        assert!(list("ns1/pod-a/x.core/").await.is_empty());
        let objects = list("top").await;
        assert_eq!(objects[0].size, "top.core".len() as u64);
        for bad in ["../", "/abs", "a//b", ".meta/"] {
            assert!(
                matches!(store.list(bad).await, Err(StoreError::InvalidKey { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn list_of_a_missing_root_is_an_error_naming_it() {
        let dir = TestDir::new();
        let store = dir.store();
        let err = store.list("").await.unwrap_err();
        assert!(
            err.to_string().contains(&dir.0.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn delete_removes_the_object_and_is_idempotent() {
        let dir = TestDir::new();
        let store = dir.store();
        let key = "ns/p/x.core";
        store
            .put(key, Body::Bytes(b"x"), &Tags::new(), &Metadata::new())
            .await
            .unwrap();
        store.delete(key).await.unwrap();
        assert!(store.list("").await.unwrap().is_empty());
        assert!(matches!(
            store.head(key).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(!store.root().join(key).exists());
        assert!(!store.root().join(".meta/ns/p/x.core.json").exists());
        store.delete(key).await.unwrap();
        store.delete("never/was/there").await.unwrap();
    }

    #[tokio::test]
    async fn missing_objects_are_not_found() {
        let dir = TestDir::new();
        let store = dir.store();
        store.check().await.unwrap();
        let not_found = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound { .. }));
        assert!(not_found(store.tags("a/b").await.map(drop)));
        assert!(not_found(store.head("a/b").await.map(drop)));
        assert!(not_found(store.open("a/b").await.map(drop)));
        let err = store.tags("a/b").await.unwrap_err();
        assert_eq!(err.to_string(), "object \"a/b\" not found");
    }

    #[tokio::test]
    async fn data_without_sidecar_is_an_unfinished_put_and_invisible() {
        let dir = TestDir::new();
        let store = dir.store();
        store
            .put(
                "ns/p/x.core",
                Body::Bytes(b"x"),
                &Tags::new(),
                &Metadata::new(),
            )
            .await
            .unwrap();
        fs::remove_file(store.root().join(".meta/ns/p/x.core.json")).unwrap();
        assert!(store.list("").await.unwrap().is_empty());
        assert!(matches!(
            store.open("ns/p/x.core").await.map(drop),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn hostile_keys_are_rejected_before_touching_the_disk() {
        let dir = TestDir::new();
        let store = dir.store();
        let long = "k".repeat(2000);
        let long_component = format!("a/{}", "c".repeat(251));
        for key in [
            "../x",
            "/abs",
            "a//b",
            ".meta/x",
            "a/./b",
            long.as_str(),
            "",
            "a/",
            "a/../b",
            "a\0b",
            ".tmp-1",
            "a/.hidden",
            long_component.as_str(),
        ] {
            let put = store
                .put(key, Body::Bytes(b"x"), &Tags::new(), &Metadata::new())
                .await;
            assert!(
                matches!(put, Err(StoreError::InvalidKey { .. })),
                "put {key:?}: {put:?}"
            );
            let invalid =
                |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey { .. }));
            assert!(invalid(store.tags(key).await.map(drop)), "tags {key:?}");
            assert!(invalid(store.head(key).await.map(drop)), "head {key:?}");
            assert!(invalid(store.open(key).await.map(drop)), "open {key:?}");
            assert!(invalid(store.delete(key).await), "delete {key:?}");
        }
        assert!(!store.root().exists(), "a rejected key created the store");
        assert!(!dir.0.join("x").exists());
    }

    #[tokio::test]
    async fn symbolic_links_under_the_root_are_not_followed() {
        let dir = TestDir::new();
        let store = dir.store();
        store
            .put(
                "ns/p/real.core",
                Body::Bytes(b"real"),
                &Tags::new(),
                &Metadata::new(),
            )
            .await
            .unwrap();
        let secret = dir.0.join("secret");
        fs::write(&secret, b"secret").unwrap();
        // A link as the object, with a sidecar that makes it look committed.
        symlink(&secret, store.root().join("ns/p/link.core")).unwrap();
        fs::copy(
            store.root().join(".meta/ns/p/real.core.json"),
            store.root().join(".meta/ns/p/link.core.json"),
        )
        .unwrap();
        // A link as a directory on the way.
        symlink(store.root().join("ns/p"), store.root().join("ns/q")).unwrap();
        symlink(
            store.root().join(".meta/ns/p"),
            store.root().join(".meta/ns/q"),
        )
        .unwrap();

        assert_eq!(keys(&store.list("").await.unwrap()), ["ns/p/real.core"]);
        for key in ["ns/p/link.core", "ns/q/real.core"] {
            assert!(
                matches!(
                    store.open(key).await.map(drop),
                    Err(StoreError::NotFound { .. })
                ),
                "{key}"
            );
            assert!(matches!(
                store.tags(key).await,
                Err(StoreError::NotFound { .. })
            ));
        }
        // Writing through a linked directory is refused too.
        let err = store
            .put(
                "ns/q/new.core",
                Body::Bytes(b"x"),
                &Tags::new(),
                &Metadata::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(!store.root().join("ns/p/new.core").exists());
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
    }

    #[tokio::test]
    async fn failed_puts_leave_no_temporary_files() {
        let dir = TestDir::new();
        let store = dir.store();
        store
            .put("a/b", Body::Bytes(b"x"), &Tags::new(), &Metadata::new())
            .await
            .unwrap();
        // "a" is a directory: the rename into place fails after the data was written.
        let err = store
            .put("a", Body::Bytes(b"y"), &Tags::new(), &Metadata::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Io {
                    op: "rename into place",
                    ..
                }
            ),
            "{err}"
        );
        // "a/b" is a file: no directory can be made there.
        let err = store
            .put("a/b/c", Body::Bytes(b"y"), &Tags::new(), &Metadata::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        // The body is missing.
        let err = store
            .put(
                "a/c",
                Body::File(&dir.0.join("missing")),
                &Tags::new(),
                &Metadata::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io { op: "open", .. }), "{err}");
        assert_no_temp_files(&store);
        assert_eq!(keys(&store.list("").await.unwrap()), ["a/b"]);
    }

    #[tokio::test]
    async fn cancelled_put_leaves_no_temporary_file() {
        let dir = TestDir::new();
        let store = dir.store();
        let data = vec![7u8; 3 * super::super::CHUNK_SIZE];
        let src = dir.0.join("core.2");
        fs::write(&src, &data).unwrap();
        let (t, m) = (Tags::new(), Metadata::new());
        let mut put = Box::pin(store.put("ns/p/c.core", Body::File(&src), &t, &m));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Drive the put until its temporary file exists, then drop it mid-way.
        let dir_of_key = store.root().join("ns/p");
        let mut started = false;
        for _ in 0..2000 {
            assert!(
                put.as_mut().poll(&mut cx).is_pending(),
                "put finished first"
            );
            started = fs::read_dir(&dir_of_key).is_ok_and(|mut entries| {
                entries.any(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(TEMP_PREFIX)
                })
            });
            if started {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(started, "the put never created its temporary file");
        drop(put);
        assert_no_temp_files(&store);
    }

    #[tokio::test]
    async fn links_and_non_files_are_refused_as_bodies() {
        let dir = TestDir::new();
        let store = dir.store();
        let real = dir.0.join("real");
        fs::write(&real, b"x").unwrap();
        let link = dir.0.join("link");
        symlink(&real, &link).unwrap();
        for body in [&link, &dir.0] {
            let err = store
                .put("k", Body::File(body), &Tags::new(), &Metadata::new())
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::InvalidBody { .. }), "{err}");
        }
    }

    #[tokio::test]
    async fn check_creates_the_root_and_names_the_path_when_it_fails() {
        let dir = TestDir::new();
        let store = LocalStore::new(dir.0.join("a/b/store")).unwrap();
        store.check().await.unwrap();
        assert!(store.root().is_dir());
        assert_no_temp_files(&store);
        assert_eq!(
            store.describe(),
            format!("file://{}", store.root().display())
        );

        let file = dir.0.join("file");
        fs::write(&file, b"").unwrap();
        let store = LocalStore::new(file.join("store")).unwrap();
        let err = store.check().await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("create the store directory"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn relative_roots_are_made_absolute() {
        let store = LocalStore::new("some/dir").unwrap();
        assert!(store.root().is_absolute());
        assert!(store.root().ends_with("some/dir"));
    }
}
