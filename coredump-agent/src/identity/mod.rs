//! identity: from the crash's cgroup (as the kernel reported it) to container and workload.
//!
//! Resolved when the crash event arrives, while the container most likely still exists, and
//! stored in the spooled record. Never from `%h` or anything else the container controls.
//!
//! cgroup id → path ([`cgroup`]) → the workload's ids: pod uid, ECS task id, container id,
//! runtime ([`cgroup_path`]) → the workload's names, from the [`WorkloadSource`]s of
//! [`Sources`], in order: Kubernetes ([`PodResolver`]: the API cache of [`kube`], then the
//! kubelet's files of [`kubelet`]), then Amazon ECS ([`ecs`]: the ECS agent's introspection
//! API). A process in no pod or task is a host process, named by its systemd unit.

pub mod cgroup;
pub mod cgroup_path;
pub mod ecs;
pub mod kube;
pub mod kubelet;
mod resolver;
mod sources;
mod wire;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cgroup_path::{CgroupIdentity, Qos, Runtime};
pub use resolver::PodResolver;
pub use sources::{Sources, WorkloadSource};

/// Who a crashed process belonged to: what its cgroup said, and the workload it names.
///
/// In JSON (the record, the spool) this is one flat object, the shape records had before ECS
/// tasks: a pod's fields (`namespace`, `pod`, `pod_uid`, …) where they always were, the
/// task's beside them (`task_arn`, `task_family`, …), and `workload` saying which it is.
/// Records without `workload` are read as before (a pod if they name one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "wire::Identity", into = "wire::Identity")]
pub struct Identity {
    /// cgroup v2 path (relative to the cgroup2 mount), from the kernel's cgroup id or
    /// `/proc/<pid>/cgroup`.
    pub cgroup_path: Option<String>,
    /// Container runtime.
    pub runtime: Option<Runtime>,
    /// Container id (64 hex).
    pub container_id: Option<String>,
    /// The pod, ECS task or host unit.
    pub workload: Workload,
    /// Where the names came from (`kubernetes-api`, `kubelet-logs`, `ecs-introspection`),
    /// when resolved.
    pub source: Option<String>,
    /// What the sources could not tell, and why: a workload known from its cgroup whose names
    /// are missing (the ECS agent's API did not answer, say).
    pub missing: Option<String>,
    /// Why the crash's cgroup is not known, when it is not: the kernel's cgroup id was gone,
    /// and nothing else could be tied to it. Stored under `_unknown/<node>/`.
    pub unresolved: Option<String>,
}

/// What a crashed process ran as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Outside any pod or task: a host service, a session, a plain container.
    Host(HostUnit),
    /// A Kubernetes pod.
    Kubernetes(KubePod),
    /// An Amazon ECS task.
    Ecs(EcsTask),
}

impl Default for Workload {
    fn default() -> Self {
        Self::Host(HostUnit::default())
    }
}

/// A process outside pods and tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostUnit {
    /// The innermost systemd unit of its cgroup (`nginx.service`, `session-3.scope`).
    pub systemd_unit: Option<String>,
}

/// A Kubernetes pod and the container that crashed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubePod {
    /// Pod UID (from the cgroup).
    pub pod_uid: Option<String>,
    /// QoS class (from the cgroup).
    pub qos: Option<Qos>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Container name.
    pub container: Option<String>,
    /// Container image.
    pub image: Option<String>,
    /// Image digest / id.
    pub image_id: Option<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// An Amazon ECS task and the container that crashed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcsTask {
    /// Task id: the last part of the task ARN (from the cgroup, or the ARN).
    pub task_id: String,
    /// Cluster name.
    pub cluster: Option<String>,
    /// Task ARN.
    pub task_arn: Option<String>,
    /// Task definition family.
    pub family: Option<String>,
    /// Task definition revision.
    pub revision: Option<String>,
    /// Container name, as the task definition names it.
    pub container: Option<String>,
    /// Container image, as the task definition names it.
    pub image: Option<String>,
    /// Image id (`sha256:…`), the digest of what ran.
    pub image_id: Option<String>,
}

impl Identity {
    /// Fills the cgroup-derived fields from a cgroup path: a pod when it names a pod uid, an
    /// ECS task when it names a task id, else the host unit.
    pub fn from_cgroup_path(path: &str) -> Self {
        let CgroupIdentity {
            pod_uid,
            qos,
            runtime,
            container_id,
            systemd_unit,
            ecs_task_id,
        } = cgroup_path::parse(path);
        let workload = match (pod_uid, ecs_task_id) {
            (Some(pod_uid), _) => Workload::Kubernetes(KubePod {
                pod_uid: Some(pod_uid),
                qos,
                ..KubePod::default()
            }),
            (None, Some(task_id)) => Workload::Ecs(EcsTask {
                task_id,
                ..EcsTask::default()
            }),
            (None, None) => Workload::Host(HostUnit { systemd_unit }),
        };
        Self {
            cgroup_path: Some(path.to_owned()),
            runtime,
            container_id,
            workload,
            ..Self::default()
        }
    }

    /// The pod, when the process ran in one.
    pub fn pod(&self) -> Option<&KubePod> {
        match &self.workload {
            Workload::Kubernetes(pod) => Some(pod),
            _ => None,
        }
    }

    /// The ECS task, when the process ran in one.
    pub fn ecs(&self) -> Option<&EcsTask> {
        match &self.workload {
            Workload::Ecs(task) => Some(task),
            _ => None,
        }
    }

    /// The container's name (a pod's or a task's), when known.
    pub fn container_name(&self) -> Option<&str> {
        match &self.workload {
            Workload::Kubernetes(pod) => pod.container.as_deref(),
            Workload::Ecs(task) => task.container.as_deref(),
            Workload::Host(_) => None,
        }
    }

    /// The container's image, when known.
    pub fn image(&self) -> Option<&str> {
        match &self.workload {
            Workload::Kubernetes(pod) => pod.image.as_deref(),
            Workload::Ecs(task) => task.image.as_deref(),
            Workload::Host(_) => None,
        }
    }

    /// Whether the process ran in a pod.
    pub fn in_pod(&self) -> bool {
        self.pod().is_some_and(|p| p.pod_uid.is_some())
    }
}
