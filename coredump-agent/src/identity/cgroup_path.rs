//! cgroup path → container and pod: table-driven parsing of the cgroup paths that container
//! runtimes and the kubelet create, so a crash's cgroup (from the kernel) names its pod without
//! trusting anything the container controls.
//!
//! A path is split into components and each one is matched on its own: against
//! `CONTAINER_RULES` (how each runtime names a container's cgroup) and the two pod forms in
//! `match_pod` (systemd `…-pod<uid>.slice`, cgroupfs `pod<uid>`). The innermost match wins,
//! so prefixes (kind's `/system.slice/docker-<node>.scope`, a custom kubelet cgroup root) and
//! trailing sub-cgroups (`…/init`, `…/container`) need no rules of their own.

use serde::{Deserialize, Serialize};

/// Container runtime, as told by the naming of the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// containerd's CRI plugin (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`, or `crio-<id>` with the cgroupfs driver).
    Crio,
    /// Docker, directly or through dockershim / cri-dockerd (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// A container id was found but its name does not tell the runtime: with the cgroupfs driver
    /// containerd and Docker both name the cgroup by the bare id.
    Unknown,
}

/// Kubernetes QoS class of the pod, as encoded by the kubelet in the pod cgroup's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// Pod cgroup directly under `kubepods` (no QoS level of its own).
    Guaranteed,
    /// Pod cgroup under `kubepods/burstable` or `kubepods-burstable.slice`.
    Burstable,
    /// Pod cgroup under `kubepods/besteffort` or `kubepods-besteffort.slice`.
    BestEffort,
}

/// What a cgroup path says about the process in it. Every field is `None` when the path does not
/// say it; a field is only set from a component that fully matches a known form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupIdentity {
    /// Pod UID in canonical form, 8-4-4-4-12 lowercase hex with dashes (the systemd driver
    /// escapes the dashes as underscores; they are converted back). Static pods are the
    /// exception: the kubelet gives them a 32-hex config hash as UID, returned as is; their
    /// mirror pod in the API carries it in the `kubernetes.io/config.hash` annotation.
    pub pod_uid: Option<String>,
    /// QoS class, set only with `pod_uid` and only when the pod cgroup sits where the kubelet
    /// puts it (under `kubepods` or one of its QoS levels).
    pub qos: Option<Qos>,
    /// Runtime that created the container cgroup; set whenever a container (or CRI-O's conmon
    /// monitor) cgroup was recognised.
    pub runtime: Option<Runtime>,
    /// Container id, 64 lowercase hex. `None` for CRI-O's conmon cgroup, which holds the
    /// monitor process rather than the container.
    pub container_id: Option<String>,
    /// For processes outside Kubernetes (no pod found): the innermost `*.service` or `*.scope`
    /// component, or the innermost `*.slice` if there is neither, e.g. `nginx.service`,
    /// `session-3.scope`, `user@1000.service`.
    pub systemd_unit: Option<String>,
}

/// How one runtime names a container's cgroup: `<prefix><64 hex><suffix>`, optionally only
/// directly under a given parent component.
struct ContainerRule {
    prefix: &'static str,
    suffix: &'static str,
    /// Required parent component, for forms that are only meaningful in one place.
    parent: Option<&'static str>,
    runtime: Runtime,
    /// The cgroup holds the runtime's monitor process, not the container: no container id.
    monitor: bool,
}

/// Known container cgroup names, tried in order; the first whose id part is valid wins.
const CONTAINER_RULES: &[ContainerRule] = &[
    // systemd driver (cgroup v1 name=systemd and v2).
    rule(
        "cri-containerd-",
        ".scope",
        None,
        Runtime::Containerd,
        false,
    ),
    rule("crio-conmon-", ".scope", None, Runtime::Crio, true),
    rule("crio-", ".scope", None, Runtime::Crio, false),
    rule("docker-", ".scope", None, Runtime::Docker, false),
    // cgroupfs driver: CRI-O keeps its prefix, without the systemd unit suffix.
    rule("crio-conmon-", "", None, Runtime::Crio, true),
    rule("crio-", "", None, Runtime::Crio, false),
    // Docker outside Kubernetes with cgroupfs: `/docker/<id>`.
    rule("", "", Some("docker"), Runtime::Docker, false),
    // cgroupfs driver with containerd or Docker: the bare id says nothing about the runtime.
    rule("", "", None, Runtime::Unknown, false),
];

const fn rule(
    prefix: &'static str,
    suffix: &'static str,
    parent: Option<&'static str>,
    runtime: Runtime,
    monitor: bool,
) -> ContainerRule {
    ContainerRule {
        prefix,
        suffix,
        parent,
        runtime,
        monitor,
    }
}

/// QoS level names the kubelet puts between `kubepods` and the pod cgroup.
const QOS_LEVELS: &[(&str, Qos)] = &[
    ("burstable", Qos::Burstable),
    ("besteffort", Qos::BestEffort),
];

/// Name of the kubelet's top-level pods cgroup (possibly prefixed with a cgroup root, as kind's
/// `kubelet-kubepods.slice`).
const KUBEPODS: &str = "kubepods";

/// Suffixes systemd gives unit cgroups. Slices only name a unit when nothing finer does.
const LEAF_UNIT_SUFFIXES: &[&str] = &[".service", ".scope"];
const SLICE_SUFFIX: &str = ".slice";

/// systemd's limit on unit name length.
const MAX_UNIT_NAME: usize = 255;

/// Parses one cgroup path (as in `/proc/<pid>/cgroup`, after the second colon).
///
/// Never fails: parts of the path that match no known form leave their fields `None`.
pub fn parse(path: &str) -> CgroupIdentity {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut id = CgroupIdentity::default();
    let mut leaf_unit: Option<&str> = None;
    let mut slice: Option<&str> = None;

    for (i, &component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).map(|j| components[j]);
        let grandparent = i.checked_sub(2).map(|j| components[j]);

        if let Some((uid, qos)) = match_pod(component, parent, grandparent) {
            // A container seen above the pod is an enclosing one (kind's node container), not
            // this pod's: start over from here.
            id.pod_uid = Some(uid);
            id.qos = qos;
            id.runtime = None;
            id.container_id = None;
        } else if let Some((runtime, container_id)) = match_container(component, parent) {
            id.runtime = Some(runtime);
            id.container_id = container_id;
        }

        if is_unit_name(component) {
            if LEAF_UNIT_SUFFIXES.iter().any(|s| component.ends_with(s)) {
                leaf_unit = Some(component);
            } else if component.ends_with(SLICE_SUFFIX) {
                slice = Some(component);
            }
        }
    }

    // Inside a pod the unit is only the kubelet's bookkeeping; the pod is the identity.
    if id.pod_uid.is_none() {
        id.systemd_unit = leaf_unit.or(slice).map(str::to_owned);
    }
    id
}

/// Parses the content of `/proc/<pid>/cgroup` (v1 and v2 lines: "0::/path", "4:memory:/path",
/// "1:name=systemd:/path") and returns the best identity: prefer the v2 line ("0::"), else the
/// first v1 line that yields a container id (prefer name=systemd, memory, cpu,cpuacct); also
/// return which path was used.
///
/// A line that names a pod or container beats one that only names a systemd unit, which beats
/// one that names nothing (hybrid hosts often show `0::/` while the v1 lines hold the real
/// path). Ties go to the order above. The ` (deleted)` mark the kernel appends to a removed
/// v2 cgroup is dropped. Returns `None` if no line is well-formed.
pub fn parse_proc_cgroup(content: &str) -> Option<(String, CgroupIdentity)> {
    let mut best: Option<((u8, usize, usize), String, CgroupIdentity)> = None;

    for (line_no, line) in content.lines().enumerate() {
        let Some((hierarchy, controllers, path)) = split_proc_line(line) else {
            continue;
        };
        let identity = parse(path);
        let names_workload = identity.pod_uid.is_some() || identity.container_id.is_some();
        let names_anything =
            names_workload || identity.runtime.is_some() || identity.systemd_unit.is_some();
        let tier = match (names_workload, names_anything) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        };
        let rank = (tier, controller_rank(hierarchy, controllers), line_no);
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, path.to_owned(), identity));
        }
    }
    best.map(|(_, path, identity)| (path, identity))
}

/// Splits `hierarchy-id:controllers:path`. The path may itself contain colons.
fn split_proc_line(line: &str) -> Option<(&str, &str, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut parts = line.splitn(3, ':');
    let hierarchy = parts.next()?;
    let controllers = parts.next()?;
    let path = parts.next()?;
    if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.starts_with('/')
        .then_some((hierarchy, controllers, path))
}

/// Lower is better: the v2 line, then the v1 hierarchies that systemd and the kubelet always
/// populate, then any other line in file order.
fn controller_rank(hierarchy: &str, controllers: &str) -> usize {
    if hierarchy == "0" && controllers.is_empty() {
        return 0;
    }
    let mut set: Vec<&str> = controllers.split(',').collect();
    set.sort_unstable();
    match set.as_slice() {
        ["name=systemd"] => 1,
        ["memory"] => 2,
        ["cpu", "cpuacct"] => 3,
        _ => 4,
    }
}

/// Matches a pod cgroup: systemd `<root>-kubepods[-<qos>]-pod<uid_with_underscores>.slice` or
/// cgroupfs `pod<uid>` under `kubepods[/<qos>]`. Returns the canonical UID and, when the pod
/// sits where the kubelet puts it, its QoS class.
fn match_pod(
    component: &str,
    parent: Option<&str>,
    grandparent: Option<&str>,
) -> Option<(String, Option<Qos>)> {
    if let Some(stem) = component.strip_suffix(SLICE_SUFFIX) {
        // systemd slice names spell their ancestry with dashes, so the QoS level is in the name.
        let (ancestry, uid) = stem.rsplit_once("-pod")?;
        let uid = canonical_pod_uid(uid, b'_')?;
        let mut levels = ancestry.rsplit('-');
        let last = levels.next();
        let before_last = levels.next();
        return Some((uid, qos_from_levels(last, before_last)));
    }
    let uid = canonical_pod_uid(component.strip_prefix("pod")?, b'-')?;
    Some((uid, qos_from_levels(parent, grandparent)))
}

/// QoS from the two levels above the pod: `kubepods` alone means Guaranteed,
/// `kubepods` then a QoS level means that level; anything else is not the kubelet's layout.
fn qos_from_levels(last: Option<&str>, before_last: Option<&str>) -> Option<Qos> {
    let last = last?;
    if is_kubepods(last) {
        return Some(Qos::Guaranteed);
    }
    if !before_last.is_some_and(is_kubepods) {
        return None;
    }
    QOS_LEVELS
        .iter()
        .find(|(name, _)| *name == last)
        .map(|&(_, qos)| qos)
}

/// `kubepods`, or `<cgroup root>-kubepods` as in kind's `kubelet-kubepods`.
fn is_kubepods(level: &str) -> bool {
    level == KUBEPODS
        || level
            .strip_suffix(KUBEPODS)
            .is_some_and(|root| root.ends_with('-'))
}

/// Validates a pod UID as written by the kubelet, with `sep` at the four dash positions
/// (`_` under the systemd driver), and returns it with dashes. A 32-hex string is a static
/// pod's config hash and is returned as is.
fn canonical_pod_uid(raw: &str, sep: u8) -> Option<String> {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    let bytes = raw.as_bytes();
    if bytes.len() == 32 && bytes.iter().all(|&b| is_lower_hex(b)) {
        return Some(raw.to_owned());
    }
    if bytes.len() != 36 {
        return None;
    }
    let mut out = String::with_capacity(36);
    for (i, &b) in bytes.iter().enumerate() {
        if DASHES.contains(&i) {
            if b != sep {
                return None;
            }
            out.push('-');
        } else if is_lower_hex(b) {
            out.push(char::from(b));
        } else {
            return None;
        }
    }
    Some(out)
}

/// Matches a container cgroup against [`CONTAINER_RULES`].
fn match_container(component: &str, parent: Option<&str>) -> Option<(Runtime, Option<String>)> {
    CONTAINER_RULES.iter().find_map(|rule| {
        if rule.parent.is_some_and(|p| parent != Some(p)) {
            return None;
        }
        let id = component
            .strip_prefix(rule.prefix)?
            .strip_suffix(rule.suffix)?;
        if !is_container_id(id) {
            return None;
        }
        Some((rule.runtime, (!rule.monitor).then(|| id.to_owned())))
    })
}

/// Runtimes name containers by 64 lowercase hex (a SHA-256).
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// Whether a component could be a systemd unit name: systemd's character set and length, and
/// something before the suffix. Keeps arbitrary directory names out of `systemd_unit`.
fn is_unit_name(component: &str) -> bool {
    let Some((stem, _suffix)) = component.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && component.len() <= MAX_UNIT_NAME
        && component.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'@' | b'\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f";
    const UID_SYSTEMD: &str = "2f6f5a3e_8a7b_4c1d_9e0f_1a2b3c4d5e6f";
    const CID: &str = "8d3f0b7c2a1e4f5d6c7b8a9e0f1d2c3b4a5e6f7d8c9b0a1e2f3d4c5b6a7e8f90";
    /// kind's node container, enclosing the whole node.
    const NODE: &str = "5c4e1d7f0a9b8c3e2d1f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c";

    fn k8s(runtime: Option<Runtime>, qos: Qos, container_id: Option<&str>) -> CgroupIdentity {
        CgroupIdentity {
            pod_uid: Some(UID.to_owned()),
            qos: Some(qos),
            runtime,
            container_id: container_id.map(str::to_owned),
            systemd_unit: None,
        }
    }

    fn unit(name: &str) -> CgroupIdentity {
        CgroupIdentity {
            systemd_unit: Some(name.to_owned()),
            ..CgroupIdentity::default()
        }
    }

    // --- systemd driver -------------------------------------------------------------------

    #[test]
    fn eks_al2023_containerd_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn eks_al2023_containerd_systemd_besteffort() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn eks_al2023_containerd_systemd_guaranteed() {
        let p =
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn eks_al2_containerd_systemd_besteffort_v1() {
        // cgroup v1: same layout in the name=systemd and controller hierarchies.
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn eks_al2_docker_systemd_guaranteed() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{CID}.scope");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Docker), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn gke_cos_containerd_systemd_guaranteed() {
        let p =
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn aks_containerd_systemd_besteffort() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn aks_containerd_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn bottlerocket_containerd_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn k3s_containerd_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn openshift_crio_systemd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Crio), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn openshift_crio_systemd_guaranteed_container_subcgroup() {
        // crun on cgroup v2 moves the payload into a `container` child of the scope.
        let p =
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-{CID}.scope/container");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Crio), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn openshift_crio_systemd_besteffort_conmon_is_not_a_container() {
        let p = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-conmon-{CID}.scope"
        );
        assert_eq!(parse(&p), k8s(Some(Runtime::Crio), Qos::BestEffort, None));
    }

    #[test]
    fn containerd_systemd_scope_with_init_subcgroup() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope/init"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn kind_containerd_systemd_burstable_nested_in_node_container() {
        let p = format!(
            "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn kind_containerd_systemd_guaranteed_nested_in_node_container() {
        let p = format!(
            "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Containerd), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn kind_pod_slice_does_not_inherit_node_container() {
        // The node container encloses the pod; reporting it as the pod's container would lie.
        let p = format!(
            "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice"
        );
        assert_eq!(parse(&p), k8s(None, Qos::BestEffort, None));
    }

    #[test]
    fn kind_node_process_outside_pods() {
        let p = format!("/system.slice/docker-{NODE}.scope/system.slice/containerd.service");
        let id = parse(&p);
        assert_eq!(id.container_id.as_deref(), Some(NODE));
        assert_eq!(id.runtime, Some(Runtime::Docker));
        assert_eq!(id.systemd_unit.as_deref(), Some("containerd.service"));
        assert_eq!(id.pod_uid, None);
    }

    // --- cgroupfs driver ------------------------------------------------------------------

    #[test]
    fn eks_al2_docker_cgroupfs_burstable() {
        let p = format!("/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn eks_al2_containerd_cgroupfs_guaranteed() {
        let p = format!("/kubepods/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn gke_cos_containerd_cgroupfs_burstable() {
        let p = format!("/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn bottlerocket_containerd_cgroupfs_besteffort() {
        let p = format!("/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn k3s_containerd_cgroupfs_guaranteed() {
        let p = format!("/kubepods/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::Guaranteed, Some(CID))
        );
    }

    #[test]
    fn crio_cgroupfs_besteffort() {
        let p = format!("/kubepods/besteffort/pod{UID}/crio-{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Crio), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn crio_cgroupfs_conmon_is_not_a_container() {
        let p = format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}");
        assert_eq!(parse(&p), k8s(Some(Runtime::Crio), Qos::Burstable, None));
    }

    #[test]
    fn kind_cgroup_v1_cgroupfs_nested_under_docker() {
        let p = format!("/docker/{NODE}/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::BestEffort, Some(CID))
        );
    }

    #[test]
    fn custom_cgroup_root_cgroupfs_burstable() {
        let p = format!("/kubelet/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(
            parse(&p),
            k8s(Some(Runtime::Unknown), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn static_pod_uses_config_hash_as_uid() {
        let hash = "6a2d0b8e8f4c3b1d2e9f0a1b2c3d4e5f";
        let p = format!("/kubepods/burstable/pod{hash}/{CID}");
        assert_eq!(parse(&p).pod_uid.as_deref(), Some(hash));
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(parse(&p).pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn pod_outside_kubelet_layout_has_no_qos() {
        let p = format!("/elsewhere/pod{UID}/{CID}");
        let id = parse(&p);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.qos, None);
        let p = format!("/kubepods/guaranteed/pod{UID}/{CID}");
        assert_eq!(parse(&p).qos, None);
    }

    // --- outside Kubernetes ---------------------------------------------------------------

    #[test]
    fn containerd_service_outside_kubernetes() {
        assert_eq!(
            parse("/system.slice/containerd.service"),
            unit("containerd.service")
        );
    }

    #[test]
    fn plain_docker_systemd_outside_kubernetes() {
        let id = parse(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(id.runtime, Some(Runtime::Docker));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid, None);
        assert_eq!(id.qos, None);
    }

    #[test]
    fn plain_docker_cgroupfs_outside_kubernetes() {
        let id = parse(&format!("/docker/{CID}"));
        assert_eq!(id.runtime, Some(Runtime::Docker));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.pod_uid, None);
        assert_eq!(id.systemd_unit, None);
    }

    #[test]
    fn user_session_scope() {
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope"),
            unit("session-3.scope")
        );
    }

    #[test]
    fn user_manager_and_app_scope() {
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            unit("init.scope")
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service"),
            unit("user@1000.service")
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice"),
            unit("user@1000.service")
        );
    }

    #[test]
    fn system_service() {
        assert_eq!(parse("/system.slice/nginx.service"), unit("nginx.service"));
        assert_eq!(
            parse("/system.slice/nginx.service/worker"),
            unit("nginx.service")
        );
    }

    #[test]
    fn slice_only_when_nothing_finer() {
        assert_eq!(parse("/system.slice"), unit("system.slice"));
        assert_eq!(
            parse("/user.slice/user-1000.slice"),
            unit("user-1000.slice")
        );
    }

    #[test]
    fn root_and_empty_are_empty() {
        assert_eq!(parse("/"), CgroupIdentity::default());
        assert_eq!(parse(""), CgroupIdentity::default());
        assert_eq!(parse("//"), CgroupIdentity::default());
        assert_eq!(parse("/init.scope"), unit("init.scope"));
    }

    // --- junk -----------------------------------------------------------------------------

    #[test]
    fn invalid_container_ids_are_rejected() {
        let short = &CID[..63];
        let upper = CID.to_uppercase();
        let non_hex = format!("{}g", &CID[..63]);
        for bad in [short, upper.as_str(), non_hex.as_str(), ""] {
            let p = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{bad}.scope"
            );
            let id = parse(&p);
            assert_eq!(id.container_id, None, "{p}");
            assert_eq!(id.runtime, None, "{p}");
            assert_eq!(id.pod_uid.as_deref(), Some(UID), "{p}");
            let p = format!("/kubepods/burstable/pod{UID}/{bad}");
            assert_eq!(parse(&p).container_id, None, "{p}");
        }
        let long = format!("{CID}0");
        assert_eq!(
            parse(&format!("/system.slice/docker-{long}.scope")).container_id,
            None
        );
        // A bare id only means Docker directly under `docker`.
        assert_eq!(
            parse(&format!("/notdocker/{CID}")).runtime,
            Some(Runtime::Unknown)
        );
    }

    #[test]
    fn invalid_pod_uids_are_rejected() {
        let bad_uids = [
            "not-a-uid",
            "2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6",   // short
            "2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f0", // long
            "2F6F5A3E-8A7B-4C1D-9E0F-1A2B3C4D5E6F",  // uppercase: the kubelet never writes it
            "2f6f5a3e-8a7b-4c1d-9e0f_1a2b3c4d5e6f",  // mixed separators
            "2f6f5a3e8a7b-4c1d-9e0f-1a2b3c4d5e6f0",  // misplaced dash
            "2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6z",  // non-hex
            "",
        ];
        for bad in bad_uids {
            let p = format!("/kubepods/burstable/pod{bad}/{CID}");
            let id = parse(&p);
            assert_eq!(id.pod_uid, None, "{p}");
            assert_eq!(id.qos, None, "{p}");
            assert_eq!(id.container_id.as_deref(), Some(CID), "{p}");
            let p = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
                bad.replace('-', "_")
            );
            let escaped_is_valid = bad.contains('_');
            if !escaped_is_valid {
                assert_eq!(parse(&p).pod_uid, None, "{p}");
            }
        }
        // Mixed separators in a systemd slice name.
        let p = format!(
            "/kubepods.slice/kubepods-pod2f6f5a3e_8a7b_4c1d_9e0f-1a2b3c4d5e6f.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(parse(&p).pod_uid, None);
        // The systemd driver escapes dashes; a dashed uid in a slice name is not the kubelet's.
        let p = format!("/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope");
        assert_eq!(parse(&p).pod_uid, None);
        // …and the cgroupfs driver does not escape them.
        let p = format!("/kubepods/pod{UID_SYSTEMD}/{CID}");
        assert_eq!(parse(&p).pod_uid, None);
    }

    #[test]
    fn hostile_unit_names_are_not_reported() {
        assert_eq!(
            parse("/system.slice/evil name.service")
                .systemd_unit
                .as_deref(),
            Some("system.slice")
        );
        assert_eq!(
            parse("/system.slice/.service").systemd_unit.as_deref(),
            Some("system.slice")
        );
        let long = format!("/{}.service", "a".repeat(300));
        assert_eq!(parse(&long).systemd_unit, None);
        assert_eq!(
            parse("/system.slice/ünïcode.service")
                .systemd_unit
                .as_deref(),
            Some("system.slice")
        );
    }

    /// Checks the invariants every result must keep, whatever the input.
    fn assert_well_formed(input: &str, id: &CgroupIdentity) {
        if let Some(uid) = &id.pod_uid {
            let ok_uuid = canonical_pod_uid(uid, b'-').as_deref() == Some(uid.as_str());
            assert!(ok_uuid, "bad pod uid {uid:?} from {input:?}");
        } else {
            assert_eq!(id.qos, None, "qos without pod from {input:?}");
        }
        if let Some(cid) = &id.container_id {
            assert!(
                is_container_id(cid),
                "bad container id {cid:?} from {input:?}"
            );
            assert!(
                id.runtime.is_some(),
                "container id without runtime from {input:?}"
            );
        }
        if id.pod_uid.is_some() {
            assert_eq!(id.systemd_unit, None, "unit inside pod from {input:?}");
        }
        if let Some(u) = &id.systemd_unit {
            assert!(input.contains(u.as_str()), "unit {u:?} not in {input:?}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        // Deterministic xorshift so a failure reproduces.
        let mut rng = crate::testdata::Xorshift::new(crate::testdata::Xorshift::SEED);
        let pieces = [
            "/",
            "//",
            ".slice",
            ".scope",
            ".service",
            "-",
            "_",
            "pod",
            "-pod",
            "kubepods",
            "kubepods-",
            "burstable",
            "besteffort",
            "kubelet-",
            "cri-containerd-",
            "crio-",
            "crio-conmon-",
            "docker-",
            "docker",
            UID,
            UID_SYSTEMD,
            CID,
            &CID[..31],
            "2f6f5a3e",
            "é",
            "😀",
            "\0",
            "\n",
            ":",
            " (deleted)",
            "0::",
            "\u{feff}",
            "ß",
            "a",
            "f",
            "g",
        ];
        let seeds = [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope/init"
            ),
            format!(
                "/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_SYSTEMD}.slice/crio-conmon-{CID}.scope"
            ),
            format!("/kubepods/besteffort/pod{UID}/crio-{CID}"),
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-x.scope".to_owned(),
        ];

        let mut inputs: Vec<String> = Vec::new();
        // Every truncation of the realistic paths, at every char boundary.
        for seed in &seeds {
            for (i, _) in seed.char_indices() {
                inputs.push(seed[..i].to_owned());
                inputs.push(seed[i..].to_owned());
            }
        }
        // Random concatenations of meaningful and awkward pieces.
        for _ in 0..5000 {
            let n = rng.below(12);
            let s: String = (0..n).map(|_| pieces[rng.below(pieces.len())]).collect();
            inputs.push(s);
        }
        // Random single-char mutations of the realistic paths, including multi-byte chars.
        let replacements = ['x', '-', '_', '/', '.', 'é', '😀', 'A', '0'];
        for _ in 0..3000 {
            let seed = &seeds[rng.below(seeds.len())];
            let chars: Vec<char> = seed.chars().collect();
            let at = rng.below(chars.len());
            let with = replacements[rng.below(replacements.len())];
            let mutated: String = chars
                .iter()
                .enumerate()
                .map(|(i, &c)| if i == at { with } else { c })
                .collect();
            inputs.push(mutated);
        }

        for input in &inputs {
            let id = parse(input);
            assert_well_formed(input, &id);
            let proc_content = format!("0::{input}\n1:name=systemd:{input}\n{input}");
            if let Some((path, id)) = parse_proc_cgroup(&proc_content) {
                assert_well_formed(&path, &id);
            }
            let _ = parse_proc_cgroup(input);
        }
    }

    // --- /proc/<pid>/cgroup ---------------------------------------------------------------

    #[test]
    fn proc_cgroup_v2_only() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        let content = format!("0::{path}\n");
        let (used, id) = parse_proc_cgroup(&content).expect("v2 line");
        assert_eq!(used, path);
        assert_eq!(
            id,
            k8s(Some(Runtime::Containerd), Qos::Burstable, Some(CID))
        );
    }

    #[test]
    fn proc_cgroup_v1_eks_al2_docker_cgroupfs() {
        let p = format!("/kubepods/burstable/pod{UID}/{CID}");
        let content = format!(
            "12:hugetlb:{p}\n11:pids:{p}\n10:devices:{p}\n9:perf_event:{p}\n8:net_cls,net_prio:{p}\n\
             7:blkio:{p}\n6:freezer:{p}\n5:memory:{p}\n4:cpu,cpuacct:{p}\n3:cpuset:{p}\n\
             2:rdma:/\n1:name=systemd:{p}\n"
        );
        let (used, id) = parse_proc_cgroup(&content).expect("v1 lines");
        assert_eq!(used, p);
        assert_eq!(id, k8s(Some(Runtime::Unknown), Qos::Burstable, Some(CID)));
    }

    #[test]
    fn proc_cgroup_v1_prefers_systemd_then_memory_then_cpu() {
        let sd = format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{CID}.scope");
        let mem = format!("/kubepods/pod{UID}/{CID}");
        let content = format!("5:memory:{mem}\n4:cpu,cpuacct:{mem}\n1:name=systemd:{sd}\n");
        assert_eq!(parse_proc_cgroup(&content).expect("v1").0, sd);

        // name=systemd holds only a unit here: the memory line names the container.
        let content = format!(
            "7:pids:/other/{NODE}\n4:cpuacct,cpu:/kubepods/besteffort/pod{UID}/{NODE}\n5:memory:{mem}\n1:name=systemd:/system.slice/docker.service\n"
        );
        let (used, id) = parse_proc_cgroup(&content).expect("v1");
        assert_eq!(used, mem);
        assert_eq!(id.qos, Some(Qos::Guaranteed));

        // Controllers listed the other way round still count as cpu,cpuacct.
        let content = format!("7:pids:/other/{NODE}\n4:cpuacct,cpu:{mem}\n");
        assert_eq!(parse_proc_cgroup(&content).expect("v1").0, mem);
    }

    #[test]
    fn proc_cgroup_hybrid_prefers_v2_line() {
        let v2 = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
        );
        let v1 = format!("/kubepods/besteffort/pod{UID}/{NODE}");
        let content = format!("5:memory:{v1}\n1:name=systemd:{v1}\n0::{v2}\n");
        let (used, id) = parse_proc_cgroup(&content).expect("hybrid");
        assert_eq!(used, v2);
        assert_eq!(id.runtime, Some(Runtime::Containerd));
    }

    #[test]
    fn proc_cgroup_hybrid_with_empty_unified_uses_v1() {
        let v1 = format!("/kubepods/besteffort/pod{UID}/{CID}");
        let content = format!("0::/\n5:memory:{v1}\n1:name=systemd:{v1}\n");
        let (used, id) = parse_proc_cgroup(&content).expect("hybrid");
        assert_eq!(used, v1);
        assert_eq!(id, k8s(Some(Runtime::Unknown), Qos::BestEffort, Some(CID)));
    }

    #[test]
    fn proc_cgroup_outside_kubernetes() {
        let (used, id) = parse_proc_cgroup("0::/system.slice/nginx.service\n").expect("v2");
        assert_eq!(used, "/system.slice/nginx.service");
        assert_eq!(id, unit("nginx.service"));

        // v1 with a unit only in name=systemd: that still beats lines that say nothing.
        let content =
            "5:memory:/\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/\n";
        let (used, id) = parse_proc_cgroup(content).expect("hybrid");
        assert_eq!(used, "/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(id, unit("session-3.scope"));

        let (used, id) = parse_proc_cgroup("0::/\n").expect("root");
        assert_eq!(used, "/");
        assert_eq!(id, CgroupIdentity::default());
    }

    #[test]
    fn proc_cgroup_strips_deleted_mark() {
        let path =
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope");
        let (used, id) = parse_proc_cgroup(&format!("0::{path} (deleted)\n")).expect("v2");
        assert_eq!(used, path);
        assert_eq!(id.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn proc_cgroup_junk() {
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("\n\n"), None);
        assert_eq!(parse_proc_cgroup("garbage"), None);
        assert_eq!(parse_proc_cgroup("x::/system.slice/a.service"), None);
        assert_eq!(parse_proc_cgroup("0::relative/path"), None);
        // A well-formed line among junk is still found; colons inside the path survive.
        let (used, _) = parse_proc_cgroup("junk\r\n0::/a:b/c.service\r\n").expect("v2");
        assert_eq!(used, "/a:b/c.service");
    }
}
