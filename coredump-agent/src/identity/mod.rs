//! identity: from the crash's cgroup (as the kernel reported it) to container and pod.
//!
//! Resolved when the crash event arrives, while the container most likely still exists, and
//! stored in the spooled record. Never from `%h` or anything else the container controls.
//!
//! cgroup id → path ([`cgroup`]) → pod uid, container id, runtime, QoS ([`cgroup_path`]) →
//! namespace, pod, container, image ([`PodResolver`]: the API cache of [`kube`], then the
//! kubelet's files of [`kubelet`]).

pub mod cgroup;
pub mod cgroup_path;
pub mod kube;
pub mod kubelet;
mod resolver;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cgroup_path::{CgroupIdentity, Qos, Runtime};
pub use resolver::PodResolver;

/// Who a crashed process belonged to. Every field is optional: a host process has no pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    /// cgroup v2 path (relative to the cgroup2 mount), from the kernel's cgroup id or
    /// `/proc/<pid>/cgroup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// Container runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Container id (64 hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Pod UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Pod QoS class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// systemd unit, for processes outside Kubernetes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// Pod namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image digest / id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Pod labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Where the names came from (`kubernetes-api`, `kubelet-logs`), when resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why the crash's cgroup is not known, when it is not: the kernel's cgroup id was gone,
    /// and nothing else could be tied to it. Stored under `_unknown/<node>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

impl Identity {
    /// Fills the cgroup-derived fields from a cgroup path.
    pub fn from_cgroup_path(path: &str) -> Self {
        let CgroupIdentity {
            pod_uid,
            qos,
            runtime,
            container_id,
            systemd_unit,
            ecs_task_id: _,
        } = cgroup_path::parse(path);
        Self {
            cgroup_path: Some(path.to_owned()),
            runtime,
            container_id,
            pod_uid,
            qos,
            systemd_unit,
            ..Self::default()
        }
    }

    /// Whether the process ran in a pod.
    pub fn in_pod(&self) -> bool {
        self.pod_uid.is_some()
    }
}
