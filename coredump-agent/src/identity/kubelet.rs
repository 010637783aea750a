//! identity::kubelet: pod uid / container id → namespace, pod and container names, from the
//! log files the kubelet keeps on every node. The fallback when the agent has no API access,
//! and for what the API cache does not know yet (a container that crashed before its status
//! was posted) or any more (a pod deleted before the watch saw it).
//!
//! The kubelet names them (all three parts are DNS names, which cannot contain `_`):
//!
//! ```text
//! <pod-log-root>/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log
//! <container-log-root>/<pod>_<namespace>_<container>-<container-id>.log   (symlinks)
//! ```
//!
//! Only directory entries' names are read: links are not followed, files are not opened.
//! Nothing is cached: a lookup lists two directories of a few hundred entries, at crash time.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// [`super::Identity::source`] of names that came from the kubelet's files.
pub const SOURCE: &str = "kubelet-logs";

/// Where the kubelet keeps its per-pod log directories.
pub const DEFAULT_POD_LOG_ROOT: &str = "/var/log/pods";
/// Where the kubelet keeps its per-container log symlinks.
pub const DEFAULT_CONTAINER_LOG_ROOT: &str = "/var/log/containers";

/// Kubernetes' limit on a namespace or container name (a DNS label).
const MAX_LABEL: usize = 63;
/// Kubernetes' limit on a pod name (a DNS subdomain).
const MAX_SUBDOMAIN: usize = 253;
/// Container ids are 64 lowercase hex (a SHA-256), as in the cgroup names.
const CONTAINER_ID_LEN: usize = 64;

/// A pod's log directory name, parsed: `<namespace>_<pod>_<uid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLogDir {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid as the kubelet knows it (a static pod's config hash for static pods).
    pub uid: String,
}

impl PodLogDir {
    /// Parses a directory name; `None` if it is not one the kubelet makes.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('_');
        let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || !is_dns_label(namespace)
            || !is_dns_subdomain(pod)
            || !is_uid(uid)
        {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            uid: uid.to_owned(),
        })
    }
}

/// A container's log symlink name, parsed: `<pod>_<namespace>_<container>-<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLog {
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Container name.
    pub container: String,
    /// Container id (64 hex, without the runtime's `containerd://` prefix).
    pub container_id: String,
}

impl ContainerLog {
    /// Parses a file name; `None` if it is not one the kubelet makes.
    pub fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(".log")?;
        let mut parts = stem.split('_');
        let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        // The container name may itself contain dashes; the id is the fixed-length tail.
        let (container, id) = rest.rsplit_once('-')?;
        if !is_dns_subdomain(pod)
            || !is_dns_label(namespace)
            || !is_dns_label(container)
            || !is_container_id(id)
        {
            return None;
        }
        Some(Self {
            pod: pod.to_owned(),
            namespace: namespace.to_owned(),
            container: container.to_owned(),
            container_id: id.to_owned(),
        })
    }
}

/// What the kubelet's files say about a crash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeletMatch {
    /// Namespace, when the pod was found.
    pub namespace: Option<String>,
    /// Pod name, when the pod was found.
    pub pod: Option<String>,
    /// Container name, when the container's log link was found (and agrees with the pod).
    pub container: Option<String>,
}

/// Reads the kubelet's log directories under two roots (the host's, mounted into the agent's
/// container, possibly elsewhere).
#[derive(Debug, Clone)]
pub struct KubeletLogs {
    pod_root: PathBuf,
    container_root: PathBuf,
}

impl Default for KubeletLogs {
    fn default() -> Self {
        Self::new(DEFAULT_POD_LOG_ROOT, DEFAULT_CONTAINER_LOG_ROOT)
    }
}

impl KubeletLogs {
    /// Reads `<pod_root>/<ns>_<pod>_<uid>/` and `<container_root>/<pod>_<ns>_<c>-<id>.log`.
    pub fn new(pod_root: impl Into<PathBuf>, container_root: impl Into<PathBuf>) -> Self {
        Self {
            pod_root: pod_root.into(),
            container_root: container_root.into(),
        }
    }

    /// The pod directory of the pod with this uid.
    pub fn pod_by_uid(&self, uid: &str) -> Option<PodLogDir> {
        names(&self.pod_root)
            .filter_map(|n| PodLogDir::parse(n.to_str()?))
            .find(|d| d.uid == uid)
    }

    /// The log link of the container with this id.
    pub fn container_by_id(&self, container_id: &str) -> Option<ContainerLog> {
        names(&self.container_root)
            .filter_map(|n| ContainerLog::parse(n.to_str()?))
            .find(|c| c.container_id == container_id)
    }

    /// Names for a crash from its cgroup-derived pod uid and container id. The pod comes from
    /// its directory (found by uid), else from the container's link; a container link that
    /// names another pod than the uid's directory is ignored (the kubelet never makes one; it
    /// would mean the files were tampered with).
    pub fn lookup(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> KubeletMatch {
        let dir = pod_uid.and_then(|uid| self.pod_by_uid(uid));
        let link = container_id.and_then(|id| self.container_by_id(id));
        let link = match (&dir, link) {
            (Some(d), Some(l)) if (d.namespace != l.namespace || d.pod != l.pod) => {
                tracing::warn!(
                    pod_uid,
                    container_id,
                    dir_namespace = %d.namespace,
                    dir_pod = %d.pod,
                    link_namespace = %l.namespace,
                    link_pod = %l.pod,
                    "kubelet log link and pod directory disagree: not naming the container"
                );
                None
            }
            // Without the directory the link alone is trusted: container ids are unique, and
            // the kubelet made this link for this very container.
            (_, link) => link,
        };
        match (dir, link) {
            (Some(d), link) => KubeletMatch {
                namespace: Some(d.namespace),
                pod: Some(d.pod),
                container: link.map(|l| l.container),
            },
            (None, Some(l)) => KubeletMatch {
                namespace: Some(l.namespace),
                pod: Some(l.pod),
                container: Some(l.container),
            },
            (None, None) => KubeletMatch::default(),
        }
    }
}

/// Entry names of a directory; nothing if it cannot be read (no kubelet on this machine, or
/// the directory is not mounted into the agent's container).
fn names(dir: &Path) -> impl Iterator<Item = OsString> {
    std::fs::read_dir(dir)
        .map_err(|e| tracing::debug!(dir = %dir.display(), error = %e, "kubelet log directory"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN && s.split('.').all(is_dns_label)
}

/// A pod uid: a UUID, or a static pod's 32-hex config hash. Hex and dashes either way.
fn is_uid(s: &str) -> bool {
    (s.len() == 32 || s.len() == 36)
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4a1c8f2e-9b3d-4e6f-8a7b-1c2d3e4f5a6b";
    const HASH: &str = "5f2b3a8c9d0e1f2a3b4c5d6e7f8a9b0c";
    const CID: &str = "3c1f9e0a7b2d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const CID2: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

    #[test]
    fn parses_pod_directories() {
        assert_eq!(
            PodLogDir::parse(&format!("shop-prod_web-5d9c7b8f6d-x2x7q_{UID}")),
            Some(PodLogDir {
                namespace: "shop-prod".into(),
                pod: "web-5d9c7b8f6d-x2x7q".into(),
                uid: UID.into(),
            })
        );
        // Dots in pod names (a StatefulSet of a dotted name), a static pod's hash uid.
        let d = PodLogDir::parse(&format!(
            "kube-system_etcd-ip-10-0-1-23.ec2.internal_{HASH}"
        ))
        .unwrap();
        assert_eq!(d.pod, "etcd-ip-10-0-1-23.ec2.internal");
        assert_eq!(d.uid, HASH);
        for bad in [
            "",
            "a_b",
            &format!("a_b_c_{UID}"),
            &format!("Shop_web_{UID}"),
            &format!("shop_web_{}", &UID[..20]),
            &format!("-shop_web_{UID}"),
            &format!("shop_web._{UID}"),
            &format!("shop.prod_web_{UID}"),
            &format!("{}_web_{UID}", "n".repeat(64)),
            "lost+found",
        ] {
            assert_eq!(PodLogDir::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_container_links() {
        assert_eq!(
            ContainerLog::parse(&format!(
                "web-5d9c7b8f6d-x2x7q_shop-prod_app-server-{CID}.log"
            )),
            Some(ContainerLog {
                pod: "web-5d9c7b8f6d-x2x7q".into(),
                namespace: "shop-prod".into(),
                container: "app-server".into(),
                container_id: CID.into(),
            })
        );
        let c = ContainerLog::parse(&format!(
            "coredns-7db6d8ff4d-mx9kq.v2_kube-system_coredns-{CID}.log"
        ))
        .unwrap();
        assert_eq!(
            (c.pod.as_str(), c.container.as_str()),
            ("coredns-7db6d8ff4d-mx9kq.v2", "coredns")
        );
        for bad in [
            format!("web_shop_app-{CID}"),
            format!("web_shop_app-{CID}.log.1"),
            format!("web_shop_app{CID}.log"),
            format!("web_shop_-{CID}.log"),
            format!("web_shop_app-{}.log", &CID[..63]),
            format!("web_shop_app-{}.log", CID.to_uppercase()),
            format!("web_shop_app.x-{CID}.log"),
            format!("web_shop_x_app-{CID}.log"),
            format!("web_shop.prod_app-{CID}.log"),
        ] {
            assert_eq!(ContainerLog::parse(&bad), None, "{bad:?}");
        }
    }

    /// A kubelet-style tree under a temp dir: `pods/<ns>_<pod>_<uid>/<c>/0.log` and
    /// `containers/<pod>_<ns>_<c>-<id>.log` → the pod's log.
    struct Tree {
        root: PathBuf,
    }

    impl Tree {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!("kubelet-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("pods")).unwrap();
            std::fs::create_dir_all(root.join("containers")).unwrap();
            Self { root }
        }

        fn add(&self, ns: &str, pod: &str, uid: &str, container: &str, id: &str) {
            let dir = self.root.join(format!("pods/{ns}_{pod}_{uid}/{container}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("0.log"), b"").unwrap();
            std::os::unix::fs::symlink(
                dir.join("0.log"),
                self.root
                    .join(format!("containers/{pod}_{ns}_{container}-{id}.log")),
            )
            .unwrap();
        }

        fn logs(&self) -> KubeletLogs {
            KubeletLogs::new(self.root.join("pods"), self.root.join("containers"))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn looks_up_by_uid_and_container_id() {
        let tree = Tree::new("lookup");
        tree.add("shop-prod", "web-5d9c7b8f6d-x2x7q", UID, "app-server", CID);
        tree.add("kube-system", "etcd-node-a", HASH, "etcd", CID2);
        std::fs::create_dir(tree.root.join("pods/not-a-pod-dir")).unwrap();
        let logs = tree.logs();

        let full = KubeletMatch {
            namespace: Some("shop-prod".into()),
            pod: Some("web-5d9c7b8f6d-x2x7q".into()),
            container: Some("app-server".into()),
        };
        assert_eq!(logs.lookup(Some(UID), Some(CID)), full);
        assert_eq!(
            logs.lookup(None, Some(CID)),
            full,
            "no pod uid: the link alone"
        );
        assert_eq!(
            logs.lookup(Some(UID), None),
            KubeletMatch {
                container: None,
                ..full.clone()
            }
        );
        // The link belongs to another pod than the uid's directory.
        assert_eq!(logs.lookup(Some(UID), Some(CID2)).container, None);
        assert_eq!(
            logs.lookup(Some(HASH), Some(CID2)).pod.as_deref(),
            Some("etcd-node-a")
        );
        // A uid with no directory (already cleaned up): the container's link still names it.
        assert_eq!(
            logs.lookup(Some("00000000-0000-4000-8000-000000000000"), Some(CID)),
            full
        );
        assert_eq!(
            logs.lookup(Some("00000000-0000-4000-8000-000000000000"), None),
            KubeletMatch::default()
        );
        assert_eq!(logs.lookup(None, None), KubeletMatch::default());

        let missing = KubeletLogs::new(tree.root.join("nope"), tree.root.join("nope"));
        assert_eq!(
            missing.lookup(Some(UID), Some(CID)),
            KubeletMatch::default()
        );
    }
}
