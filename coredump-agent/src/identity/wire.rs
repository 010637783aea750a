//! identity::wire: [`super::Identity`] as JSON, one flat object.
//!
//! Records are a contract with users' tooling and with earlier agents (`info` of an older
//! agent reads newer records, and the other way round), so the JSON keeps the shape it had
//! when every identity was a pod's: a pod's fields sit at the top level, as before; a task's
//! have names of their own beside them; `container`, `image` and `image_id` mean the same for
//! both. `workload` says which one it is; a record written before it existed names a pod if
//! it has a pod's fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{EcsTask, HostUnit, KubePod, Qos, Runtime, Workload};

/// Which workload a flat identity describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A process outside pods and tasks.
    Host,
    /// A Kubernetes pod.
    Kubernetes,
    /// An Amazon ECS task.
    Ecs,
    /// A kind a later agent wrote: read as a host process (its cgroup fields still say where
    /// it ran).
    #[serde(other)]
    Other,
}

/// The flat JSON object. Fields only ever get added; unknown ones are ignored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<Runtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    qos: Option<Qos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    systemd_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_id: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ecs_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<String>,
}

impl From<Identity> for super::Identity {
    fn from(w: Identity) -> Self {
        // Before `workload`, only pods had names: a record naming one is a pod's.
        let kind = w.workload.unwrap_or(
            if w.pod_uid.is_some() || w.namespace.is_some() || w.pod.is_some() {
                Kind::Kubernetes
            } else {
                Kind::Host
            },
        );
        let workload = match kind {
            Kind::Host | Kind::Other => Workload::Host(HostUnit {
                systemd_unit: w.systemd_unit,
            }),
            Kind::Kubernetes => Workload::Kubernetes(KubePod {
                pod_uid: w.pod_uid,
                qos: w.qos,
                namespace: w.namespace,
                pod: w.pod,
                container: w.container,
                image: w.image,
                image_id: w.image_id,
                labels: w.labels,
            }),
            Kind::Ecs => Workload::Ecs(EcsTask {
                task_id: w.task_id.unwrap_or_default(),
                cluster: w.ecs_cluster,
                task_arn: w.task_arn,
                family: w.task_family,
                revision: w.task_revision,
                container: w.container,
                image: w.image,
                image_id: w.image_id,
            }),
        };
        Self {
            cgroup_path: w.cgroup_path,
            runtime: w.runtime,
            container_id: w.container_id,
            workload,
            source: w.source,
            missing: w.missing,
            unresolved: w.unresolved,
        }
    }
}

impl From<super::Identity> for Identity {
    fn from(id: super::Identity) -> Self {
        let super::Identity {
            cgroup_path,
            runtime,
            container_id,
            workload,
            source,
            missing,
            unresolved,
        } = id;
        let common = Self {
            cgroup_path,
            runtime,
            container_id,
            source,
            missing,
            unresolved,
            ..Self::default()
        };
        match workload {
            Workload::Host(HostUnit { systemd_unit }) => Self {
                systemd_unit,
                workload: Some(Kind::Host),
                ..common
            },
            Workload::Kubernetes(KubePod {
                pod_uid,
                qos,
                namespace,
                pod,
                container,
                image,
                image_id,
                labels,
            }) => Self {
                pod_uid,
                qos,
                namespace,
                pod,
                container,
                image,
                image_id,
                labels,
                workload: Some(Kind::Kubernetes),
                ..common
            },
            Workload::Ecs(EcsTask {
                task_id,
                cluster,
                task_arn,
                family,
                revision,
                container,
                image,
                image_id,
            }) => Self {
                task_id: Some(task_id),
                ecs_cluster: cluster,
                task_arn,
                task_family: family,
                task_revision: revision,
                container,
                image,
                image_id,
                workload: Some(Kind::Ecs),
                ..common
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Identity;
    use super::*;

    /// A pod's identity as records stored it before workloads had a kind.
    fn old_pod_record() -> serde_json::Value {
        json!({
            "cgroup_path": "/kubepods.slice/kubepods-pod2f6f5a3e_8a7b_4c1d_9e0f_1a2b3c4d5e6f.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
            "runtime": "containerd",
            "container_id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "pod_uid": "2f6f5a3e-8a7b-4c1d-9e0f-1a2b3c4d5e6f",
            "qos": "guaranteed",
            "namespace": "shop",
            "pod": "web-1",
            "container": "app",
            "image": "registry.example/web:1.2",
            "image_id": "registry.example/web@sha256:abcd",
            "labels": {"team": "shop"},
            "source": "kubernetes-api"
        })
    }

    #[test]
    fn records_without_a_workload_kind_are_read_as_before() {
        let id: Identity = serde_json::from_value(old_pod_record()).unwrap();
        let pod = id.pod().expect("a pod");
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.pod.as_deref(), Some("web-1"));
        assert_eq!(pod.qos, Some(Qos::Guaranteed));
        assert_eq!(pod.labels["team"], "shop");
        assert_eq!(id.source.as_deref(), Some("kubernetes-api"));
        // Written again: the same fields where they were, and the kind.
        let mut again = serde_json::to_value(&id).unwrap();
        assert_eq!(again["workload"], "kubernetes");
        again.as_object_mut().unwrap().remove("workload");
        assert_eq!(again, old_pod_record());

        let host: Identity = serde_json::from_value(json!({
            "cgroup_path": "/system.slice/sshd.service", "systemd_unit": "sshd.service"
        }))
        .unwrap();
        assert_eq!(
            host.workload,
            Workload::Host(HostUnit {
                systemd_unit: Some("sshd.service".into())
            })
        );
        let empty: Identity = serde_json::from_value(json!({})).unwrap();
        assert_eq!(empty, Identity::default());
        // Fields an agent of tomorrow adds are ignored.
        let future: Identity =
            serde_json::from_value(json!({"workload": "host", "new_field": 1})).unwrap();
        assert_eq!(future, Identity::default());
        let future: Identity = serde_json::from_value(json!({"workload": "nomad"})).unwrap();
        assert_eq!(future, Identity::default());
    }

    #[test]
    fn an_ecs_task_round_trips_flat_beside_the_pod_fields() {
        let id = Identity {
            cgroup_path: Some("/ecstasks.slice/ecstasks-488fc5b8b77f4fb7984bdc4aba948f9f.slice/docker-60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d.scope".into()),
            runtime: Some(Runtime::Docker),
            container_id: Some("60ef727c9751aac9084702bca274544f94f1bb070ace95e8a79911c22b01a91d".into()),
            workload: Workload::Ecs(EcsTask {
                task_id: "488fc5b8b77f4fb7984bdc4aba948f9f".into(),
                cluster: Some("prod".into()),
                task_arn: Some("arn:aws:ecs:us-west-2:012345678910:task/prod/488fc5b8b77f4fb7984bdc4aba948f9f".into()),
                family: Some("web".into()),
                revision: Some("8".into()),
                container: Some("app".into()),
                image: Some("nginx:1.27".into()),
                image_id: Some("sha256:2ae34abc".into()),
            }),
            source: Some("ecs-introspection".into()),
            missing: None,
            unresolved: None,
        };
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v["workload"], "ecs");
        assert_eq!(v["ecs_cluster"], "prod");
        assert_eq!(v["task_family"], "web");
        assert_eq!(v["task_revision"], "8");
        // What an older `info` shows of any container: its name and image.
        assert_eq!(v["container"], "app");
        assert_eq!(v["image"], "nginx:1.27");
        assert!(v.get("namespace").is_none() && v.get("pod").is_none());
        assert_eq!(serde_json::from_value::<Identity>(v).unwrap(), id);
    }
}
