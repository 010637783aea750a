//! identity::resolver: the Kubernetes [`WorkloadSource`]: fills a pod's names (namespace,
//! pod, container, image, labels) from what its cgroup said (pod uid, container id): the API
//! cache first, then the kubelet's files for whatever is still unknown.
//!
//! Runs when the crash event arrives, in the correlate stage, so it never waits: both sources
//! answer from memory or a directory listing. Unknown stays `None`.

use super::{
    Identity, KubePod, Workload, WorkloadSource,
    kube::{self, PodCache},
    kubelet::{self, KubeletLogs},
};

/// Names pods from the sources this agent has. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PodResolver {
    api: Option<PodCache>,
    kubelet: Option<KubeletLogs>,
}

impl PodResolver {
    /// A resolver using the API cache and/or the kubelet's files, when given.
    pub fn new(api: Option<PodCache>, kubelet: Option<KubeletLogs>) -> Self {
        Self { api, kubelet }
    }
}

impl WorkloadSource for PodResolver {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// Fills the pod's `namespace`, `pod`, `container`, `image`, `image_id`, `labels`, and
    /// `source`, from the identity's cgroup-derived pod uid and container id. `source` names
    /// where the pod was found; a container name the API did not know yet may still come from
    /// the kubelet's files. A container in no pod (by its cgroup) becomes a pod's when a
    /// source knows it. Identities that name neither pod nor container are left alone.
    fn resolve(&self, identity: &mut Identity) {
        let mut pod = match &identity.workload {
            Workload::Kubernetes(pod) => pod.clone(),
            Workload::Host(_) if identity.container_id.is_some() => KubePod::default(),
            _ => return,
        };
        let pod_uid = pod.pod_uid.clone();
        let container_id = identity.container_id.clone();
        let (pod_uid, container_id) = (pod_uid.as_deref(), container_id.as_deref());
        if pod_uid.is_none() && container_id.is_none() {
            return;
        }

        let mut images = Default::default();
        if let Some(found) = self
            .api
            .as_ref()
            .and_then(|c| c.lookup(pod_uid, container_id))
        {
            if found.foreign_container {
                tracing::warn!(pod = %found.name, namespace = %found.namespace, container_id = container_id.unwrap_or(""), "the crash's cgroup names a container this pod does not have: not attributed to the pod");
                identity.unresolved = Some(format!(
                    "the cgroup names container {} in pod {}/{}, which that pod's status does not list",
                    container_id.unwrap_or(""),
                    found.namespace,
                    found.name
                ));
                return;
            }
            pod.namespace = Some(found.namespace);
            pod.pod = Some(found.name);
            pod.labels = found.labels;
            identity.source = Some(kube::SOURCE.to_owned());
            if let Some(c) = found.container {
                pod.container = Some(c.name);
                pod.image = c.image;
                pod.image_id = c.image_id;
            }
            images = found.images;
        }

        let container_missing = container_id.is_some() && pod.container.is_none();
        if let Some(kubelet) = &self.kubelet
            && (pod.pod.is_none() || container_missing)
        {
            let found = kubelet.lookup(pod_uid, container_id);
            if pod.pod.is_none()
                && let (Some(namespace), Some(name)) = (found.namespace.clone(), found.pod.clone())
            {
                pod.namespace = Some(namespace);
                pod.pod = Some(name);
                identity.source = Some(kubelet::SOURCE.to_owned());
            }
            // Only a container of the pod already named: the two sources must agree.
            let same_pod = found.namespace == pod.namespace && found.pod == pod.pod;
            if pod.container.is_none()
                && same_pod
                && let Some(container) = found.container
            {
                pod.image = images.get(&container).cloned();
                pod.container = Some(container);
            }
        }
        if pod.pod_uid.is_some() || pod.pod.is_some() {
            identity.workload = Workload::Kubernetes(pod);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::*;

    const UID: &str = "4a1c8f2e-9b3d-4e6f-8a7b-1c2d3e4f5a6b";
    const GONE_UID: &str = "0e9d8c7b-6a5f-4e3d-8c1b-0a9f8e7d6c5b";
    const CID: &str = "3c1f9e0a7b2d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const NEW_CID: &str = "5555555555555555555555555555555555555555555555555555555555555555";
    const GONE_CID: &str = "6666666666666666666666666666666666666666666666666666666666666666";

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "api-7f9c6d5b4-qw8zt", "namespace": "payments",
                "uid": UID, "resourceVersion": "912",
                "labels": {"app": "api", "team": "payments"}},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "api", "image": "ghcr.io/example/api:2.3.1"},
                {"name": "envoy-proxy", "image": "envoyproxy/envoy:v1.31.2"}]},
            "status": {"containerStatuses": [{"name": "api", "ready": true, "restartCount": 0,
                "image": "ghcr.io/example/api:2.3.1",
                "imageID": "ghcr.io/example/api@sha256:0123abcd",
                "containerID": format!("containerd://{CID}")}]}
        }))
        .unwrap()
    }

    /// A kubelet tree: the API's pod (whose sidecar started after the last status update)
    /// and a pod the API never showed us.
    fn kubelet_tree(root: &PathBuf) -> KubeletLogs {
        let _ = std::fs::remove_dir_all(root);
        let add = |ns: &str, pod: &str, uid: &str, container: &str, id: &str| {
            let dir = root.join(format!("pods/{ns}_{pod}_{uid}/{container}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::create_dir_all(root.join("containers")).unwrap();
            std::os::unix::fs::symlink(
                dir.join("0.log"),
                root.join(format!("containers/{pod}_{ns}_{container}-{id}.log")),
            )
            .unwrap();
        };
        add(
            "payments",
            "api-7f9c6d5b4-qw8zt",
            UID,
            "envoy-proxy",
            NEW_CID,
        );
        add(
            "batch",
            "report-29123456-k8x2v",
            GONE_UID,
            "report",
            GONE_CID,
        );
        KubeletLogs::new(root.join("pods"), root.join("containers"))
    }

    fn k8s(uid: Option<&str>, cid: Option<&str>) -> Identity {
        Identity {
            container_id: cid.map(str::to_owned),
            workload: match uid {
                Some(uid) => Workload::Kubernetes(KubePod {
                    pod_uid: Some(uid.to_owned()),
                    ..KubePod::default()
                }),
                None => Workload::default(),
            },
            ..Identity::default()
        }
    }

    /// The pod the identity names (empty if none).
    fn named(id: &Identity) -> KubePod {
        id.pod().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn api_first_then_kubelet_files() {
        let root = std::env::temp_dir().join(format!("resolver-{}", std::process::id()));
        let resolver = PodResolver::new(
            Some(kube::cache_of(vec![pod()]).await),
            Some(kubelet_tree(&root)),
        );

        // In the API cache: everything, from the API.
        let mut id = k8s(Some(UID), Some(CID));
        resolver.resolve(&mut id);
        assert_eq!(named(&id).namespace.as_deref(), Some("payments"));
        assert_eq!(named(&id).pod.as_deref(), Some("api-7f9c6d5b4-qw8zt"));
        assert_eq!(named(&id).container.as_deref(), Some("api"));
        assert_eq!(
            named(&id).image.as_deref(),
            Some("ghcr.io/example/api:2.3.1")
        );
        assert_eq!(
            named(&id).image_id.as_deref(),
            Some("ghcr.io/example/api@sha256:0123abcd")
        );
        assert_eq!(named(&id).labels["team"], "payments");
        assert_eq!(id.source.as_deref(), Some("kubernetes-api"));

        // The pod is in the cache but this container's status is not yet: the kubelet's link
        // names the container, the API's spec its image.
        let mut id = k8s(Some(UID), Some(NEW_CID));
        resolver.resolve(&mut id);
        assert_eq!(named(&id).container.as_deref(), Some("envoy-proxy"));
        assert_eq!(
            named(&id).image.as_deref(),
            Some("envoyproxy/envoy:v1.31.2")
        );
        assert_eq!(named(&id).image_id, None);
        assert_eq!(id.source.as_deref(), Some("kubernetes-api"));

        // A pod the API never showed (deleted before the watch saw it): the kubelet's files.
        let mut id = k8s(Some(GONE_UID), Some(GONE_CID));
        resolver.resolve(&mut id);
        assert_eq!(named(&id).namespace.as_deref(), Some("batch"));
        assert_eq!(named(&id).pod.as_deref(), Some("report-29123456-k8x2v"));
        assert_eq!(named(&id).container.as_deref(), Some("report"));
        assert_eq!((named(&id).image, named(&id).image_id), (None, None));
        assert!(named(&id).labels.is_empty());
        assert_eq!(id.source.as_deref(), Some("kubelet-logs"));

        // Unknown everywhere: unknown.
        let unknown = k8s(
            Some("11111111-2222-4333-8444-555555555555"),
            Some(&"a".repeat(64)),
        );
        let mut id = unknown.clone();
        resolver.resolve(&mut id);
        assert_eq!(id, unknown);

        // Outside Kubernetes: untouched.
        let mut host = Identity::from_cgroup_path("/system.slice/nginx.service");
        let before = host.clone();
        resolver.resolve(&mut host);
        assert_eq!(host, before);

        // No sources at all.
        let mut id = k8s(Some(UID), Some(CID));
        PodResolver::default().resolve(&mut id);
        assert_eq!(id, k8s(Some(UID), Some(CID)));

        // Kubelet files only (no API access).
        let mut id = k8s(Some(UID), Some(NEW_CID));
        PodResolver::new(None, Some(kubelet_tree(&root))).resolve(&mut id);
        assert_eq!(named(&id).pod.as_deref(), Some("api-7f9c6d5b4-qw8zt"));
        assert_eq!(named(&id).container.as_deref(), Some("envoy-proxy"));
        assert_eq!(named(&id).image, None);
        assert_eq!(id.source.as_deref(), Some("kubelet-logs"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Every container of the pod reported its id, and the cgroup names another: the path was
    /// made by someone, not the kubelet. The crash is not attributed to that pod.
    #[tokio::test]
    async fn a_container_the_pod_does_not_have_is_not_attributed_to_it() {
        let mut all_reported = pod();
        all_reported.spec.as_mut().unwrap().containers.truncate(1);
        let resolver = PodResolver::new(Some(kube::cache_of(vec![all_reported]).await), None);
        let mut id = k8s(Some(UID), Some(&"f".repeat(64)));
        resolver.resolve(&mut id);
        assert_eq!(named(&id).pod, None);
        assert!(id.unresolved.unwrap().contains("does not list"));
        // Its own container: named.
        let mut id = k8s(Some(UID), Some(CID));
        resolver.resolve(&mut id);
        assert_eq!(named(&id).container.as_deref(), Some("api"));
    }
}
