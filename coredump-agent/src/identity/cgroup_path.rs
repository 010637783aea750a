//! cgroup path → container and pod: table-driven parsing of the cgroup paths that container
//! runtimes and the kubelet create, so a crash's cgroup (from the kernel) names its pod without
//! trusting anything the container controls.
//!
//! A path is split into components and each one is matched on its own: against
//! `CONTAINER_RULES` (how each runtime names a container's cgroup) and the two pod forms in
//! `match_pod` (systemd `…-pod<uid>.slice`, cgroupfs `pod<uid>`), and runc's literal
//! `<pod slice>:cri-containerd:<id>`. The outermost pod decides, and within it the first
//! container: a container may create cgroups below its own, shaped like another pod's, and
//! those are never trusted. A container above the pod (kind's `/system.slice/docker-<node>.scope`)
//! is an enclosing one and is forgotten at the pod; a custom kubelet cgroup root and trailing
//! sub-cgroups (`…/init`, `…/container`) need no rules of their own.
//!
//! Amazon ECS tasks are found the same way, from the cgroup the ECS agent makes for each task
//! (its task id) and the Docker container inside it: `ecstasks-<task-id>.slice/docker-<id>.scope`
//! (cgroup v2, systemd driver) or `/ecs/<task-id>/<id>` (cgroupfs driver). A pod and a task are
//! both the crash's *workload*: the outermost one decides, and nothing below its container is
//! trusted.

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
    /// Amazon ECS task id, from the cgroup the ECS agent made for the task: 32 lowercase hex
    /// (task ARNs since 2020), or a lowercase UUID (the older ARN format). Never set together
    /// with `pod_uid`.
    pub ecs_task_id: Option<String>,
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
    // containerd under a systemd pod slice without the unit suffix (a containerd configured
    // with a cgroup parent but no systemd driver names the directory this way).
    rule("cri-containerd-", "", None, Runtime::Containerd, false),
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

/// The ECS agent's task cgroups. cgroup v2 (`DefaultTaskCgroupV2Prefix`): a systemd slice per
/// task, `ecstasks-<task-id>.slice` inside `ecstasks.slice`. cgroup v1 and the cgroupfs driver
/// (`DefaultTaskCgroupV1Prefix`): `/ecs/<task-id>`.
const ECS_SLICE_PREFIX: &str = "ecstasks-";
const ECS_V1_ROOT: &str = "ecs";

/// Parses one cgroup path (as in `/proc/<pid>/cgroup`, after the second colon).
///
/// Never fails: parts of the path that match no known form leave their fields `None`.
pub fn parse(path: &str) -> CgroupIdentity {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // Read inside another cgroup namespace, a path starts with `..`: the first real
    // component is where `/ecs/<task-id>` may begin.
    let first_real = components.iter().position(|&c| c != "..");
    let mut id = CgroupIdentity::default();
    let mut leaf_unit: Option<&str> = None;
    let mut slice: Option<&str> = None;
    // Index of the ECS task's component, once found.
    let mut task_at: Option<usize> = None;

    for (i, &component) in components.iter().enumerate() {
        let parent = i.checked_sub(1).map(|j| components[j]);
        let grandparent = i.checked_sub(2).map(|j| components[j]);
        let in_workload = id.pod_uid.is_some() || id.ecs_task_id.is_some();

        // Inside a pod or task, the first container cgroup is the container; anything below
        // it is what the container made itself (a process with write access to its cgroupfs
        // can nest `…pod<another>.slice/cri-containerd-<another>.scope` there): never trusted.
        let settled = in_workload && id.container_id.is_some();
        if settled {
            // Sub-cgroups of the container (`/init`, CRI-O's `/container`): nothing to learn.
        } else if let Some((pod, runtime, container_id)) = match_colon_form(component) {
            // runc's `<pod slice>:<runtime>:<id>` as one directory: pod and container at once.
            if id.pod_uid.is_none() {
                (id.pod_uid, id.qos) = pod.map_or((None, None), |(uid, qos)| (Some(uid), qos));
            }
            id.runtime = Some(runtime);
            id.container_id = Some(container_id);
        } else if let Some((uid, qos)) = match_pod(component, parent, grandparent) {
            // The outermost pod decides: one found inside a pod is a fake. A container seen
            // above the pod is an enclosing one (kind's node container), not this pod's.
            if !in_workload {
                id.pod_uid = Some(uid);
                id.qos = qos;
                id.runtime = None;
                id.container_id = None;
            }
        } else if let Some(task_id) = match_ecs_task(component, parent, i, first_real) {
            // As for pods: the outermost workload decides, and it encloses its container.
            if !in_workload {
                id.ecs_task_id = Some(task_id);
                task_at = Some(i);
                id.runtime = None;
                id.container_id = None;
            }
        } else if let Some((runtime, container_id)) = match_container(component, parent)
            && !(in_workload && id.runtime.is_some())
        {
            // The ECS agent only drives Docker: a bare id right under the task (cgroupfs
            // driver) is Docker's.
            let under_task = task_at.is_some_and(|t| t + 1 == i);
            id.runtime = Some(if under_task && runtime == Runtime::Unknown {
                Runtime::Docker
            } else {
                runtime
            });
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

    // Inside a pod or task the unit is only the kubelet's or the ECS agent's bookkeeping; the
    // workload is the identity.
    if id.pod_uid.is_none() && id.ecs_task_id.is_none() {
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
        // A pod or task beats a bare container (kind's node container on a mixed v1/v2
        // host), which beats a unit, which beats nothing.
        let tier = if identity.pod_uid.is_some() || identity.ecs_task_id.is_some() {
            0
        } else if identity.container_id.is_some() {
            1
        } else if identity.runtime.is_some() || identity.systemd_unit.is_some() {
            2
        } else {
            3
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
fn match_pod(component: &str, parent: Option<&str>, grandparent: Option<&str>) -> Option<PodMatch> {
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

/// A pod's canonical UID and, where the kubelet's layout says it, its QoS class.
type PodMatch = (String, Option<Qos>);

/// runc's systemd cgroupsPath `<slice>:<prefix>:<id>` taken literally as one directory name,
/// as runc does when it is not in systemd mode (containerd's `SystemdCgroup = false` under a
/// kubelet with the systemd driver). The prefix names the runtime; the slice may name the pod.
fn match_colon_form(component: &str) -> Option<(Option<PodMatch>, Runtime, String)> {
    let mut parts = component.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    let runtime = match prefix {
        "cri-containerd" => Runtime::Containerd,
        "crio" => Runtime::Crio,
        "docker" => Runtime::Docker,
        _ => return None,
    };
    if !is_container_id(name) {
        return None;
    }
    let pod = slice
        .ends_with(SLICE_SUFFIX)
        .then(|| match_pod(slice, None, None))
        .flatten();
    Some((pod, runtime, name.to_owned()))
}

/// Matches an ECS task's cgroup: `ecstasks-<task-id>.slice` anywhere (read from inside the
/// agent's own cgroup namespace, `ecstasks.slice` may be cut off), or `<task-id>` right under
/// `ecs` when that is the path's first component. systemd makes one slice per dash of an
/// older UUID task id (`ecstasks-10838bed.slice/ecstasks-10838bed-421f.slice/…`): only the
/// innermost carries a whole id, so the others match nothing.
fn match_ecs_task(
    component: &str,
    parent: Option<&str>,
    i: usize,
    first_real: Option<usize>,
) -> Option<String> {
    let id = match component.strip_prefix(ECS_SLICE_PREFIX) {
        Some(rest) => rest.strip_suffix(SLICE_SUFFIX)?,
        None if parent == Some(ECS_V1_ROOT) && first_real.is_some_and(|f| f + 1 == i) => component,
        None => return None,
    };
    is_ecs_task_id(id).then(|| id.to_owned())
}

/// An ECS task id, as the last part of a task ARN: 32 lowercase hex, or a lowercase UUID.
pub fn is_ecs_task_id(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(|&c| is_lower_hex(c)),
        36 => b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                is_lower_hex(c)
            }
        }),
        _ => false,
    }
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
            ecs_task_id: None,
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
    // ---- real-world layouts from other projects' test data (see the repositories each case names) ----

    /// One expected parse result. `pod_uid` is canonical (dashes) or a static pod's 32-hex hash.
    struct Case {
        name: &'static str,
        path: &'static str,
        pod_uid: Option<&'static str>,
        qos: Option<Qos>,
        runtime: Option<Runtime>,
        container_id: Option<&'static str>,
        systemd_unit: Option<&'static str>,
    }

    fn expected(c: &Case) -> CgroupIdentity {
        CgroupIdentity {
            pod_uid: c.pod_uid.map(str::to_owned),
            qos: c.qos,
            runtime: c.runtime,
            container_id: c.container_id.map(str::to_owned),
            systemd_unit: c.systemd_unit.map(str::to_owned),
            ecs_task_id: None,
        }
    }

    /// Names of the cases whose parse result differs from the expectation.
    fn failing(cases: &[Case]) -> Vec<String> {
        cases
            .iter()
            .filter_map(|c| {
                let got = parse(c.path);
                (got != expected(c)).then(|| format!("{}: got {got:?}", c.name))
            })
            .collect()
    }

    use Qos::{BestEffort, Burstable, Guaranteed};
    use Runtime::{Containerd, Crio, Docker, Unknown};

    /// containerd CRI with a `.slice` cgroup parent always emits runc's systemd form
    /// `<pod slice>:cri-containerd:<id>`; when runc is not in systemd mode (containerd
    /// `SystemdCgroup = false`, the containerd 1.x default, with kubelet `cgroupDriver: systemd`,
    /// the kubeadm default since 1.22) that string becomes one literal cgroup directory name,
    /// at the root or under containerd's own cgroup. FAILS TODAY: none of these yields a pod or
    /// container, and those under containerd.service are reported as `containerd.service`.
    const CRI_CONTAINERD_COLON_FORM: &[Case] = &[
        Case {
            name: "falco libs#63 (v1 pids, k8s>=1.20, Debian 10)",
            path: "/system.slice/containerd.service/kubepods-burstable-podb4f3dfaf_f987_499d_a04c_2c60eb01958c.slice:cri-containerd:f659de946112140fd722cddfd24015a8c9fce51b7ab7f007ac30612b6f9acfc9",
            pod_uid: Some("b4f3dfaf-f987-499d-a04c-2c60eb01958c"),
            qos: Some(Burstable),
            runtime: Some(Containerd),
            container_id: Some("f659de946112140fd722cddfd24015a8c9fce51b7ab7f007ac30612b6f9acfc9"),
            systemd_unit: None,
        },
        Case {
            name: "otel-java ContainerResourceTest cgroup6 (k8s 1.24, guaranteed)",
            path: "/system.slice/containerd.service/kubepods-pod87a18a64_b74a_454a_b10b_a4a36059d0a3.slice:cri-containerd:05c48c82caff3be3d7f1e896981dd410e81487538936914f32b624d168de9db0",
            pod_uid: Some("87a18a64-b74a-454a-b10b-a4a36059d0a3"),
            qos: Some(Guaranteed),
            runtime: Some(Containerd),
            container_id: Some("05c48c82caff3be3d7f1e896981dd410e81487538936914f32b624d168de9db0"),
            systemd_unit: None,
        },
        Case {
            name: "pixie BareMetalK8s_1_21",
            path: "/system.slice/containerd.service/kubepods-besteffort-pod1544eb37_e4f7_49eb_8cc4_3d01c41be77b.slice:cri-containerd:8618d3540ce713dd59ed0549719643a71dd482c40c21685773e7ac1291b004f5",
            pod_uid: Some("1544eb37-e4f7-49eb-8cc4-3d01c41be77b"),
            qos: Some(BestEffort),
            runtime: Some(Containerd),
            container_id: Some("8618d3540ce713dd59ed0549719643a71dd482c40c21685773e7ac1291b004f5"),
            systemd_unit: None,
        },
        Case {
            name: "elastic apm-agent-nodejs#3550 (name=systemd line)",
            path: "/system.slice/containerd.service/kubepods-burstable-podff49d0be_16b7_4a49_bb9e_8ec1f1f4e27f.slice:cri-containerd:0f99ad5f45163ed14ab8eaf92ed34bb4a631d007f8755a7d79be614bcb0df0ef",
            pod_uid: Some("ff49d0be-16b7-4a49-bb9e-8ec1f1f4e27f"),
            qos: Some(Burstable),
            runtime: Some(Containerd),
            container_id: Some("0f99ad5f45163ed14ab8eaf92ed34bb4a631d007f8755a7d79be614bcb0df0ef"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon proc_test: GKE-style podruntime.slice (v1 pids)",
            path: "/podruntime.slice/containerd.service/kubepods-burstable-pod29349498_197c_4919_b13f_9a928e7d001b.slice:cri-containerd:0ca2b3cd20e5f55a2bbe8d4aa3f811cf7963b40f0542ad147054b0fcb60fc400",
            pod_uid: Some("29349498-197c-4919-b13f-9a928e7d001b"),
            qos: Some(Burstable),
            runtime: Some(Containerd),
            container_id: Some("0ca2b3cd20e5f55a2bbe8d4aa3f811cf7963b40f0542ad147054b0fcb60fc400"),
            systemd_unit: None,
        },
        Case {
            name: "neuvector TestK8sContainerd_v1_4_4 (root-level controllers)",
            path: "/kubepods-besteffort-pod2105e389_7471_476e_a50f_6074cef29bbd.slice:cri-containerd:d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e",
            pod_uid: Some("2105e389-7471-476e-a50f-6074cef29bbd"),
            qos: Some(BestEffort),
            runtime: Some(Containerd),
            container_id: Some("d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e"),
            systemd_unit: None,
        },
        Case {
            name: "spire k8s_posix_test cri-containerd",
            path: "/kubepods-besteffort-pod72f7f152_440c_66ac_9084_e0fc1d8a910c.slice:cri-containerd:b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2",
            pod_uid: Some("72f7f152-440c-66ac-9084-e0fc1d8a910c"),
            qos: Some(BestEffort),
            runtime: Some(Containerd),
            container_id: Some("b2a102854b4969b2ce98dc329c86b4fb2b06e4ad2cc8da9d8a7578c9cd2004a2"),
            systemd_unit: None,
        },
        Case {
            name: "falco container_cgroup containerd_unknown (static pod hash)",
            path: "/kubepods-burstable-podbd12dd3393227d950605a2444b13c27a.slice:cri-containerd:d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366",
            pod_uid: Some("bd12dd3393227d950605a2444b13c27a"),
            qos: Some(Burstable),
            runtime: Some(Containerd),
            container_id: Some("d52db56a9c80d536a91354c0951c061187ca46249e64865a12703003d8f42366"),
            systemd_unit: None,
        },
        Case {
            name: "argo-workflows pns executor comment (v1 cpuset)",
            path: "/kubepods-besteffort-pod30556cce_0f92_11eb_b36d_02623cf324c8.slice:cri-containerd:c688c856b21cfb29c1dbf6c14793435e44a1299dfc12add33283239bffed2620",
            pod_uid: Some("30556cce-0f92-11eb-b36d-02623cf324c8"),
            qos: Some(BestEffort),
            runtime: Some(Containerd),
            container_id: Some("c688c856b21cfb29c1dbf6c14793435e44a1299dfc12add33283239bffed2620"),
            systemd_unit: None,
        },
        Case {
            name: "ddosify alaz cri parseCgroupV2 comment (v2, under system.slice)",
            path: "/system.slice/kubepods-burstable-pod22fd933a_ee61_46bd_93ae_ebace73c1160.slice:cri-containerd:3a31a360e5aea903274416e0c4cf8ca8c050fd523cc5d91a82ec5707d5ee9fa1",
            pod_uid: Some("22fd933a-ee61-46bd-93ae-ebace73c1160"),
            qos: Some(Burstable),
            runtime: Some(Containerd),
            container_id: Some("3a31a360e5aea903274416e0c4cf8ca8c050fd523cc5d91a82ec5707d5ee9fa1"),
            systemd_unit: None,
        },
    ];

    /// Layouts the current rules already get right: pin them.
    const ALREADY_RIGHT: &[Case] = &[
        Case {
            name: "containerd<=1.2 cgroupfs runc under kubelet systemd pod slice (no prefix, no .scope)",
            path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod57009a28_e677_4550_8e14_7724a18cc70c.slice/62b0b04c0d518199a25d7cd859c376caf71a850374ce1d76fc7410e54dd63a10",
            pod_uid: Some("57009a28-e677-4550-8e14-7724a18cc70c"),
            qos: Some(Burstable),
            runtime: Some(Unknown),
            container_id: Some("62b0b04c0d518199a25d7cd859c376caf71a850374ce1d76fc7410e54dd63a10"),
            systemd_unit: None,
        },
        Case {
            name: "spire: Docker for Desktop doubled kubepods",
            path: "/kubepods/kubepods/besteffort/pod6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904/a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38",
            pod_uid: Some("6bd2a4d3-a55a-4450-b6fd-2a7ecc72c904"),
            qos: Some(BestEffort),
            runtime: Some(Unknown),
            container_id: Some("a55d9ac3b312d8a2627824b6d6dd8af66fbec439bf4e0ec22d6d9945ad337a38"),
            systemd_unit: None,
        },
        Case {
            name: "spire: kind v1 nested under /docker/<node>",
            path: "/docker/93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26/kubepods/besteffort/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80/09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6",
            pod_uid: Some("a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80"),
            qos: Some(BestEffort),
            runtime: Some(Unknown),
            container_id: Some("09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"),
            systemd_unit: None,
        },
        Case {
            name: "spire: reader in another cgroup namespace, cgroupfs (QoS not recoverable)",
            path: "/../../../burstable/pod095e82d2-713c-467a-a18a-cbb50a075296/6d1234da0f5aa7fa0ccae4c7d2d109929eb9a81694e6357bcd4547ab3985911b",
            pod_uid: Some("095e82d2-713c-467a-a18a-cbb50a075296"),
            qos: None,
            runtime: Some(Unknown),
            container_id: Some("6d1234da0f5aa7fa0ccae4c7d2d109929eb9a81694e6357bcd4547ab3985911b"),
            systemd_unit: None,
        },
        Case {
            name: "spire: kubeedge CRI-O seen from another cgroup namespace",
            path: "/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope",
            pod_uid: None,
            qos: None,
            runtime: Some(Crio),
            container_id: Some("45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814"),
            systemd_unit: Some(
                "crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope",
            ),
        },
        Case {
            name: "neuvector: docker k8s v2 seen from another cgroup namespace",
            path: "/../../kubepods-besteffort-podfd698699_eabf_4c23_92ef_cf0bbdb78261.slice/docker-2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f.scope",
            pod_uid: Some("fd698699-eabf-4c23-92ef-cf0bbdb78261"),
            qos: Some(BestEffort),
            runtime: Some(Docker),
            container_id: Some("2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f"),
            systemd_unit: None,
        },
        Case {
            name: "neuvector: host init from another cgroup namespace",
            path: "/../../init.scope",
            pod_uid: None,
            qos: None,
            runtime: None,
            container_id: None,
            systemd_unit: Some("init.scope"),
        },
        Case {
            name: "neuvector: kube-proxy sub-cgroup below the container",
            path: "/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy",
            pod_uid: Some("f8a694f2-7c08-11e9-98da-000c29077430"),
            qos: Some(BestEffort),
            runtime: Some(Unknown),
            container_id: Some("c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903"),
            systemd_unit: None,
        },
        Case {
            name: "neuvector: RancherOS docker-in-docker (innermost wins)",
            path: "/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
            pod_uid: None,
            qos: None,
            runtime: Some(Docker),
            container_id: Some("ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a"),
            systemd_unit: None,
        },
        Case {
            name: "neuvector: OpenShift 4.4 CRI-O static pod",
            path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod487a0dc6dccaeefbcfedba7a7ce1ca18.slice/crio-7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e.scope",
            pod_uid: Some("487a0dc6dccaeefbcfedba7a7ce1ca18"),
            qos: Some(Burstable),
            runtime: Some(Crio),
            container_id: Some("7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon: minikube node systemd (init.scope in node container)",
            path: "/system.slice/docker-1b3319ed9c1d4cca681f9c102da9b015555785b6240c4e4619f11b535cabdc07.scope/init.scope",
            pod_uid: None,
            qos: None,
            runtime: Some(Docker),
            container_id: Some("1b3319ed9c1d4cca681f9c102da9b015555785b6240c4e4619f11b535cabdc07"),
            systemd_unit: Some("init.scope"),
        },
        Case {
            name: "tetragon: minikube docker+systemd pod inside node container",
            path: "/system.slice/docker-1b3319ed9c1d4cca681f9c102da9b015555785b6240c4e4619f11b535cabdc07.scope/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podeb653d22_2525_47ca_9fc4_3762497ae1d2.slice/docker-84e9ffffe97fea4c5a0f01d401611cbafbf7e559fc6190ed74abfc2b25e889d4.scope",
            pod_uid: Some("eb653d22-2525-47ca-9fc4-3762497ae1d2"),
            qos: Some(BestEffort),
            runtime: Some(Docker),
            container_id: Some("84e9ffffe97fea4c5a0f01d401611cbafbf7e559fc6190ed74abfc2b25e889d4"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon: minikube containerd cgroupfs inside node container",
            path: "/system.slice/docker-94acc75af8cf9c56e10676b0760ed424bec95dadc91f68f6564014686930200e.scope/kubepods/besteffort/pod13cb8437-00ed-40e4-99d8-e17193a58086/a5a6a3af5d51ad95b915ca948710b90a94abc279e84963b9d22a39f342ce67d9",
            pod_uid: Some("13cb8437-00ed-40e4-99d8-e17193a58086"),
            qos: Some(BestEffort),
            runtime: Some(Unknown),
            container_id: Some("a5a6a3af5d51ad95b915ca948710b90a94abc279e84963b9d22a39f342ce67d9"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon: kind cgroupfs /kubelet root, static pod",
            path: "/system.slice/docker-c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57.scope/kubelet/kubepods/burstable/pod09a70ae9ccc491e651e5c773579b3490/b0e6aa50e847c3d3b1880e307ec7996040275c8063832cffc9274defce2cb655",
            pod_uid: Some("09a70ae9ccc491e651e5c773579b3490"),
            qos: Some(Burstable),
            runtime: Some(Unknown),
            container_id: Some("b0e6aa50e847c3d3b1880e307ec7996040275c8063832cffc9274defce2cb655"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon: kind cgroupfs /kubelet root, guaranteed",
            path: "/system.slice/docker-c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57.scope/kubelet/kubepods/pod55db13a1-c151-4cdd-a48b-e002a2b1fb58/21e677e6fe95215ea48bcb5609c10e67ba8e76a7a3ea749af704e72260eb93fe",
            pod_uid: Some("55db13a1-c151-4cdd-a48b-e002a2b1fb58"),
            qos: Some(Guaranteed),
            runtime: Some(Unknown),
            container_id: Some("21e677e6fe95215ea48bcb5609c10e67ba8e76a7a3ea749af704e72260eb93fe"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon: kind node kubelet.service",
            path: "/system.slice/docker-c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57.scope/system.slice/kubelet.service",
            pod_uid: None,
            qos: None,
            runtime: Some(Docker),
            container_id: Some("c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57"),
            systemd_unit: Some("kubelet.service"),
        },
        Case {
            name: "datadog readerv2_test: kind-like cluster inside a podman cgroupfs container",
            path: "/libpod_parent/libpod-6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda2acd1bccd50fd7790183537181f658e.slice/docker-1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503.scope",
            pod_uid: Some("a2acd1bccd50fd7790183537181f658e"),
            qos: Some(Burstable),
            runtime: Some(Docker),
            container_id: Some("1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503"),
            systemd_unit: None,
        },
        Case {
            name: "datadog readerv2_test: containerd rootfs .mount unit is not a container",
            path: "/system.slice/run-containerd-io.containerd.runtime.v2.task-k8s.io-2327a2aec169e25cf05f2a901486b7463fdb513ae097fc0ae6a3ca94381ddc42-rootfs.mount",
            pod_uid: None,
            qos: None,
            runtime: None,
            container_id: None,
            systemd_unit: Some("system.slice"),
        },
        Case {
            name: "cadvisor crio factory_test: crio .scope directly under cgroupfs pod",
            path: "/kubepods/pod068e8fa0-9213-11e7-a01f-507b9d4141fa/crio-81e5c2990803c383229c9680ce964738d5e566d97f5bd436ac34808d2ec75d5f.scope",
            pod_uid: Some("068e8fa0-9213-11e7-a01f-507b9d4141fa"),
            qos: Some(Guaranteed),
            runtime: Some(Crio),
            container_id: Some("81e5c2990803c383229c9680ce964738d5e566d97f5bd436ac34808d2ec75d5f"),
            systemd_unit: None,
        },
        Case {
            name: "cadvisor crio factory_test: crio-<id>.mount is not a container",
            path: "/kubepods/pod068e8fa0-9213-11e7-a01f-507b9d4141fa/crio-81e5c2990803c383229c9680ce964738d5e566d97f5bd436ac34808d2ec75d5f.mount",
            pod_uid: Some("068e8fa0-9213-11e7-a01f-507b9d4141fa"),
            qos: Some(Guaranteed),
            runtime: None,
            container_id: None,
            systemd_unit: None,
        },
        Case {
            name: "minikube#11280: crio systemd pods inside /docker/<node> (v1)",
            path: "/docker/d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2ca4a155_3599_498d_bb9d_4446693fa3ea.slice/crio-0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0.scope",
            pod_uid: Some("2ca4a155-3599-498d-bb9d-4446693fa3ea"),
            qos: Some(BestEffort),
            runtime: Some(Crio),
            container_id: Some("0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"),
            systemd_unit: None,
        },
        Case {
            name: "CRI-O conmon moved to system.slice (conmon_cgroup = system.slice)",
            path: "/system.slice/crio-conmon-0644511bc2734f5ff9f9532fdecddb9f1b92597fe269168b137ada040c3a3118.scope",
            pod_uid: None,
            qos: None,
            runtime: Some(Crio),
            container_id: None,
            systemd_unit: Some(
                "crio-conmon-0644511bc2734f5ff9f9532fdecddb9f1b92597fe269168b137ada040c3a3118.scope",
            ),
        },
        Case {
            name: "dd-trace ContainerInfoTest: ECS classic /ecs/<cluster>/<task>/<id>",
            path: "/ecs/haissam-ecs-classic/5a0d5ceddf6c44c1928d367a815d890f/38fac3e99302b3622be089dd41e7ccf38aff368a86cc339972075136ee2710ce",
            pod_uid: None,
            qos: None,
            runtime: Some(Unknown),
            container_id: Some("38fac3e99302b3622be089dd41e7ccf38aff368a86cc339972075136ee2710ce"),
            systemd_unit: None,
        },
        Case {
            name: "tetragon proc_test: GitHub Actions /actions_job/<id>",
            path: "/actions_job/ec5fd62ba68d0b75a3cbdb7f7f78b526440b7969e22b2b362fb6f429ded42fdc",
            pod_uid: None,
            qos: None,
            runtime: Some(Unknown),
            container_id: Some("ec5fd62ba68d0b75a3cbdb7f7f78b526440b7969e22b2b362fb6f429ded42fdc"),
            systemd_unit: None,
        },
    ];

    /// One expected ECS parse: task id, container id and runtime.
    struct EcsCase {
        name: &'static str,
        path: &'static str,
        task_id: Option<&'static str>,
        container_id: Option<&'static str>,
        runtime: Option<Runtime>,
        /// A pod that wins over a task (forged or not ECS at all).
        pod_uid: Option<&'static str>,
    }

    /// ECS task cgroups as the ECS agent, Docker and runc lay them out on cgroup v1 and v2,
    /// with the systemd and cgroupfs drivers, and as read from inside a private cgroup
    /// namespace (leading `..`). Sources: the ECS agent's `task_linux.go` (`BuildCgroupRoot`)
    /// and its tests, moby's `WithCgroups`, runc's `ExpandSlice`, and real paths from an ECS
    /// maintainer's cgroup v2 notes (the kernel's OOM log, `systemctl status ecstasks.slice`).
    const ECS_CASES: &[EcsCase] = &[
        EcsCase {
            name: "v2 systemd, task cgroup (AL2023, Bottlerocket aws-ecs-2+) - real, from kernel OOM log",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2 systemd, task cgroup - real, from systemctl status ecstasks.slice",
            path: "/ecstasks.slice/ecstasks-e95a40efbde84cbc8600660a109ec194.slice/docker-c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1.scope",
            task_id: Some("e95a40efbde84cbc8600660a109ec194"),
            container_id: Some("c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, same crash read from /proc/<pid>/cgroup inside the agent's private cgroup namespace (agent is itself in an ECS task slice)",
            path: "/../../ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, read inside a private cgroupns when the agent sits in system.slice/docker-<id>.scope",
            path: "/../../ecstasks.slice/ecstasks-e95a40efbde84cbc8600660a109ec194.slice/docker-c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1.scope",
            task_id: Some("e95a40efbde84cbc8600660a109ec194"),
            container_id: Some("c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, ECS_ENABLE_TASK_CPU_MEM_LIMIT=false (or cgroup init failed): no task in the path, ask /v1/tasks?dockerid=",
            path: "/system.slice/docker-e883b4e9fbc445677c65ce9325a2ec5548c30b2709c02141da64b7992c430afe.scope",
            task_id: None,
            container_id: Some("e883b4e9fbc445677c65ce9325a2ec5548c30b2709c02141da64b7992c430afe"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v1 cgroupfs, task cgroup (AL2 ECS AMI, Bottlerocket aws-ecs-1); the same path in every v1 controller and in name=systemd",
            path: "/ecs/e39cda25f9824fe9b035e2f57e81c793/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: Some("e39cda25f9824fe9b035e2f57e81c793"),
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v1 cgroupfs, task cgroups disabled: plain Docker layout",
            path: "/docker/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: None,
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v1, old (short) ARN format task id: a UUID with dashes",
            path: "/ecs/10838bed-421f-43ef-870a-f43feacbbb5b/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: Some("10838bed-421f-43ef-870a-f43feacbbb5b"),
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, old ARN format: systemd turns every '-' into a slice level (runc ExpandSlice); the innermost ecstasks-*.slice carries the whole id",
            path: "/ecstasks.slice/ecstasks-10838bed.slice/ecstasks-10838bed-421f.slice/ecstasks-10838bed-421f-43ef.slice/ecstasks-10838bed-421f-43ef-870a.slice/ecstasks-10838bed-421f-43ef-870a-f43feacbbb5b.slice/docker-e883b4e9fbc445677c65ce9325a2ec5548c30b2709c02141da64b7992c430afe.scope",
            task_id: Some("10838bed-421f-43ef-870a-f43feacbbb5b"),
            container_id: Some("e883b4e9fbc445677c65ce9325a2ec5548c30b2709c02141da64b7992c430afe"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, trailing sub-cgroup created inside the container: ignored",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope/init",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, a container forging another task's shape below its own cgroup: the outermost task and the first container below it win",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope/ecstasks.slice/ecstasks-e95a40efbde84cbc8600660a109ec194.slice/docker-c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1.scope",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v2, task slice itself (no container): task only",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: None,
            runtime: None,
            pod_uid: None,
        },
        EcsCase {
            name: "Bottlerocket: the ECS agent is a host systemd service, not a task",
            path: "/system.slice/ecs.service",
            task_id: None,
            container_id: None,
            runtime: None,
            pod_uid: None,
        },
        EcsCase {
            name: "parent slice only",
            path: "/ecstasks.slice",
            task_id: None,
            container_id: None,
            runtime: None,
            pod_uid: None,
        },
        EcsCase {
            name: "not a task id: /ecs/<something that is neither 32 hex nor a UUID>",
            path: "/ecs/not-a-task/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: None,
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Unknown),
            pod_uid: None,
        },
        EcsCase {
            name: "bad container id (63 hex) under a valid task slice: task only",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91.scope",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: None,
            runtime: None,
            pod_uid: None,
        },
        EcsCase {
            name: "Kubernetes path must not be taken for ECS",
            path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3c3e2c8a_7b1a_4d8e_9f6b_2a1c0d9e8f7a.slice/cri-containerd-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope",
            task_id: None,
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Containerd),
            pod_uid: Some("3c3e2c8a-7b1a-4d8e-9f6b-2a1c0d9e8f7a"),
        },
        EcsCase {
            name: "dd-trace ContainerInfoTest: /ecs/<task uuid>/<id> (Fargate shows the same layout)",
            path: "/ecs/55091c13-b8cf-4801-b527-f4601742204d/432624d2150b349fe35ba397284dea788c2bf66b885d14dfc1569b01890ca7da",
            task_id: Some("55091c13-b8cf-4801-b527-f4601742204d"),
            container_id: Some("432624d2150b349fe35ba397284dea788c2bf66b885d14dfc1569b01890ca7da"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "v1 read inside another cgroup namespace: `/ecs` is still the first real component",
            path: "/../ecs/e39cda25f9824fe9b035e2f57e81c793/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: Some("e39cda25f9824fe9b035e2f57e81c793"),
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "`ecs/<task-id>` deeper than the root is not the ECS agent's",
            path: "/system.slice/ecs/e39cda25f9824fe9b035e2f57e81c793/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3",
            task_id: None,
            container_id: Some("7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3"),
            runtime: Some(Unknown),
            pod_uid: None,
        },
        EcsCase {
            name: "uppercase hex is not a task id (ARNs are lowercase)",
            path: "/ecstasks.slice/ecstasks-488FC5B8B77F4FB7984BDC4ABA948F9F.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope",
            task_id: None,
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "a pod slice below a task's container is forged: the task decides",
            path: "/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1.scope",
            task_id: Some("488fc5b8b77f4fb7984bdc4aba948f9f"),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d"),
            runtime: Some(Docker),
            pod_uid: None,
        },
        EcsCase {
            name: "a task slice below a pod's container is forged: the pod decides",
            path: "/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1.scope/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope",
            task_id: None,
            container_id: Some("c7d42d8ffd0142ea1f7858cb04f05f19b913572a3dadb49ca9d27eb1705090a1"),
            runtime: Some(Containerd),
            pod_uid: Some("11111111-2222-3333-4444-555555555555"),
        },
    ];

    #[test]
    fn ecs_task_layouts() {
        let failing: Vec<String> = ECS_CASES
            .iter()
            .filter_map(|c| {
                let got = parse(c.path);
                let ok = got.ecs_task_id.as_deref() == c.task_id
                    && got.container_id.as_deref() == c.container_id
                    && got.runtime == c.runtime
                    && got.pod_uid.as_deref() == c.pod_uid
                    // Inside a task, as inside a pod, no unit is reported.
                    && (c.task_id.is_none() || got.systemd_unit.is_none());
                (!ok).then(|| format!("{}: got {got:?}", c.name))
            })
            .collect();
        assert!(failing.is_empty(), "{}", failing.join("\n"));
    }

    #[test]
    fn ecs_task_ids() {
        assert!(is_ecs_task_id("488fc5b8b77f4fb7984bdc4aba948f9f"));
        assert!(is_ecs_task_id("10838bed-421f-43ef-870a-f43feacbbb5b"));
        for bad in [
            "",
            "task-id",
            "488fc5b8b77f4fb7984bdc4aba948f9",
            "488fc5b8b77f4fb7984bdc4aba948f9g",
            "10838bed_421f_43ef_870a_f43feacbbb5b",
            "10838bed-421f-43ef-870af43feacbbb5b-",
            "../../../../../../../../../../../..",
        ] {
            assert!(!is_ecs_task_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn proc_cgroup_ecs_v1_task_beats_the_unified_docker_scope() {
        // AL2-like hybrid: the v1 hierarchies hold the task, the unified line only Docker's.
        let p = "/ecs/e39cda25f9824fe9b035e2f57e81c793/7ff2ace8e15097939aa2ca98f2179fc216aa9faca0eafdcf92dd9c755bd7c4f3";
        let content =
            format!("12:memory:{p}\n1:name=systemd:{p}\n0::/system.slice/docker.service\n");
        let (used, id) = parse_proc_cgroup(&content).expect("lines");
        assert_eq!(used, p);
        assert_eq!(
            id.ecs_task_id.as_deref(),
            Some("e39cda25f9824fe9b035e2f57e81c793")
        );
        assert_eq!(id.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn cri_containerd_colon_form() {
        let f = failing(CRI_CONTAINERD_COLON_FORM);
        assert!(f.is_empty(), "{}", f.join("\n"));
    }

    #[test]
    fn real_world_layouts_already_right() {
        let f = failing(ALREADY_RIGHT);
        assert!(f.is_empty(), "{}", f.join("\n"));
    }

    /// spire testdata/cgroups_pid_in_kind_pod.txt: kind on a hybrid (v1 + unified) host. The kubelet
    /// uses the v1 hierarchies; the unified line only shows where systemd put the shim, inside the
    /// kind node container. FAILS TODAY: the `0::` line wins (it names a container, the node), so
    /// the crash is reported as the node's docker container in `containerd.service`.
    #[test]
    fn proc_cgroup_kind_hybrid_prefers_v1_pod_over_v2_node_container() {
        let node = "93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26";
        let p = format!(
            "/docker/{node}/kubepods/besteffort/poda2830d0d-b0f0-4ff0-81b5-0ee4e299cf80/09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"
        );
        let content = format!(
            "13:name=systemd:{p}\n12:pids:{p}\n11:hugetlb:{p}\n10:net_prio:{p}\n9:perf_event:{p}\n8:net_cls:{p}\n\
         7:freezer:{p}\n6:devices:{p}\n5:memory:{p}\n4:blkio:{p}\n3:cpuacct:{p}\n2:cpu:{p}\n1:cpuset:{p}\n\
         0::/docker/{node}/system.slice/containerd.service\n"
        );
        let (used, id) = parse_proc_cgroup(&content).expect("lines");
        assert_eq!(used, p);
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80")
        );
        assert_eq!(id.qos, Some(Qos::BestEffort));
        assert_eq!(
            id.container_id.as_deref(),
            Some("09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6")
        );
    }

    /// neuvector share/system/cgroup_test.go TestK8sContainerd_v1_4_4: a real containerd 1.4.4 v1
    /// file where runc put the literal `slice:prefix:name` directory under containerd.service for
    /// some controllers and at the root for others. FAILS TODAY: reported as `containerd.service`.
    #[test]
    fn proc_cgroup_containerd_1_4_colon_form_mixed_controllers() {
        let leaf = "kubepods-besteffort-pod2105e389_7471_476e_a50f_6074cef29bbd.slice:cri-containerd:d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e";
        let under = format!("/system.slice/containerd.service/{leaf}");
        let root = format!("/{leaf}");
        let content = format!(
            "11:pids:{under}\n10:freezer:{root}\n9:perf_event:{root}\n8:cpu,cpuacct:{under}\n7:cpuset:{root}\n\
         6:devices:{under}\n5:net_cls,net_prio:{root}\n4:memory:{under}\n3:hugetlb:{root}\n2:blkio:{under}\n\
         1:name=systemd:{under}\n"
        );
        let (used, id) = parse_proc_cgroup(&content).expect("v1");
        assert_eq!(used, under);
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("2105e389-7471-476e-a50f-6074cef29bbd")
        );
        assert_eq!(id.qos, Some(Qos::BestEffort));
        assert_eq!(id.runtime, Some(Runtime::Containerd));
        assert_eq!(
            id.container_id.as_deref(),
            Some("d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e")
        );
        assert_eq!(id.systemd_unit, None);
    }

    /// spire testdata/systemd_crio_cgroups_pid_in_pod.txt: v1 CRI-O with a `1:systemd:` line (no
    /// `name=`) and a unified line naming only crio.service. Passes today; pin it.
    #[test]
    fn proc_cgroup_crio_hybrid_unified_line_is_only_crio_service() {
        let p = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda2830d0d_b0f0_4ff0_81b5_0ee4e299cf80.slice/crio-09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6.scope";
        let content = format!(
            "12:hugetlb:{p}\n11:netcls,net_prio:{p}\n10:pids:{p}\n9:cpuset:{p}\n8:devices:{p}\n7:memory:{p}\n\
         6:perf_event:{p}\n5:blkio:{p}\n4:cpu,cpuacct:{p}\n3:rdma:/\n2:freezer:{p}\n1:systemd:{p}\n\
         0::/system.slice/crio.service\n"
        );
        let (used, id) = parse_proc_cgroup(&content).expect("lines");
        assert_eq!(used, p);
        assert_eq!(id.runtime, Some(Runtime::Crio));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("a2830d0d-b0f0-4ff0-81b5-0ee4e299cf80")
        );
    }

    #[test]
    fn containerd_without_the_scope_suffix_is_named() {
        let id = parse(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2105e389_7471_476e_a50f_6074cef29bbd.slice/cri-containerd-{}",
            "d".repeat(64)
        ));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("2105e389-7471-476e-a50f-6074cef29bbd")
        );
        assert_eq!(id.runtime, Some(Runtime::Containerd));
        assert_eq!(id.container_id, Some("d".repeat(64)));
    }

    /// A container that can write its own cgroupfs nests another pod's cgroups inside its own: the
    /// outermost pod, and its first container, still decide.
    #[test]
    fn cgroups_nested_inside_a_container_are_never_trusted() {
        let own = "kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice";
        let own_ctr = format!("cri-containerd-{}.scope", "a".repeat(64));
        let victim = "kubepods-burstable-pod99999999_8888_7777_6666_555555555555.slice";
        let victim_ctr = format!("cri-containerd-{}.scope", "b".repeat(64));
        for path in [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/{own}/{own_ctr}/{victim}/{victim_ctr}"
            ),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/{own}/{own_ctr}/x/kubepods/burstable/pod99999999-8888-7777-6666-555555555555/{}",
                "b".repeat(64)
            ),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/{own}/{own_ctr}/{}",
                "b".repeat(64)
            ),
        ] {
            let id = parse(&path);
            assert_eq!(
                id.pod_uid.as_deref(),
                Some("11111111-2222-3333-4444-555555555555"),
                "{path}"
            );
            assert_eq!(id.container_id, Some("a".repeat(64)), "{path}");
        }
        // A pod slice nested in another pod's slice, above any container: the outer pod.
        let id = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/{own}/{victim}/{victim_ctr}"
        ));
        assert_eq!(
            id.pod_uid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
    }
}
