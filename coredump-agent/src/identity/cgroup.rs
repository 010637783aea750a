//! cgroup id → cgroup path.
//!
//! The probe reports the cgroup v2 id, which is the inode number of the cgroup's directory.
//! `open_by_handle_at` with a kernfs handle opens that directory in O(1) (needs
//! `CAP_DAC_READ_SEARCH`); otherwise a bounded scan of the hierarchy finds it. Results are
//! cached: cgroup ids are never reused while the machine runs.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Where the cgroup v2 hierarchy is mounted: the first `cgroup2` entry of
/// `/proc/self/mountinfo` (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&mounts)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Directories visited at most by the fallback scan (a busy node has a few thousand cgroups).
const SCAN_LIMIT: usize = 100_000;

/// Resolves cgroup ids to paths relative to the cgroup2 root (`/kubepods.slice/…`).
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    root_dir: Option<File>,
    cache: Mutex<HashMap<u64, String>>,
}

impl CgroupResolver {
    /// A resolver for the hierarchy mounted at `root` (see [`cgroup2_mount`]; a containerized
    /// agent may see the host's mounted elsewhere).
    pub fn new(root: PathBuf) -> Self {
        let root_dir = File::open(&root).ok();
        Self {
            root,
            root_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cgroup2 root this resolver reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (relative to the root) is the cgroup with inode `id`: a path read from
    /// `/proc` is trusted only if so, since the pid it was read for may have been reused.
    pub fn is(&self, path: &str, id: u64) -> bool {
        std::fs::symlink_metadata(self.root.join(path.trim_start_matches('/')))
            .is_ok_and(|m| m.is_dir() && m.ino() == id)
    }

    /// The cgroup's path relative to the root, beginning with `/`; `None` if it is gone.
    pub fn resolve(&self, id: u64) -> Option<String> {
        if let Some(hit) = self.cache.lock().ok()?.get(&id) {
            return Some(hit.clone());
        }
        let path = self.by_handle(id).or_else(|| self.by_scan(id))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id, path.clone());
        }
        Some(path)
    }

    fn relative(&self, absolute: &Path) -> Option<String> {
        let rel = absolute.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()))
    }

    fn by_handle(&self, id: u64) -> Option<String> {
        let root = self.root_dir.as_ref()?;
        let fd = crate::sys::open_cgroup_by_id(root.as_fd(), id)
            .map_err(|e| tracing::debug!(cgroup_id = id, error = %e, "open_by_handle_at"))
            .ok()?;
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd as _;
            fd.as_raw_fd()
        }));
        // The link names the path in *our* mount namespace view of the cgroup2 filesystem,
        // i.e. relative to the mount's root, which is what we want.
        let target = std::fs::read_link(fd_path).ok()?;
        let s = target.to_string_lossy();
        if s.starts_with('/') && !target.starts_with(&self.root) {
            // Mounted with a different root than the path says: report as the kernel does.
            return Some(s.into_owned());
        }
        self.relative(&target)
    }

    fn by_scan(&self, id: u64) -> Option<String> {
        let mut stack = vec![self.root.clone()];
        let mut visited = 0;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > SCAN_LIMIT {
                return None;
            }
            let meta = std::fs::symlink_metadata(&dir).ok()?;
            if meta.ino() == id {
                return self.relative(&dir);
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount_in("1 0 0:1 / / rw - ext4 /dev/vda rw"), None);
    }

    #[test]
    fn resolves_own_cgroup_by_scan_and_handle() {
        let Some(root) = cgroup2_mount() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let resolver = CgroupResolver::new(root.clone());
        let id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(resolver.by_scan(id).as_deref(), Some("/"));
        assert_eq!(resolver.resolve(id).as_deref(), Some("/"));
        assert_eq!(resolver.resolve(u64::MAX - 7), None);
    }
}
