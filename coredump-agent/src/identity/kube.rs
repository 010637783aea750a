//! identity::kube: pod uid / container id → namespace, pod, container and image, from a watch
//! of this node's pods in the Kubernetes API.
//!
//! A crash must be named without a request at crash time (the API may be slow or down, and
//! the pod may be deleted moments later), so the agent keeps a cache: a reflector [`Store`]
//! fed by a watch restricted to `spec.nodeName=<node>`, pruned to what naming needs. The
//! watch backs off and resumes on its own when the connection drops or the API restarts.
//! Pods deleted from the API are kept a while as tombstones: a crash event processed just
//! after its pod was deleted is still named.
//!
//! The cache may be stale (a container that started a moment ago may not be in its pod's
//! status yet): lookups then say "unknown", and the kubelet's files ([`super::kubelet`]) fill
//! in what they can.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    ffi::OsString,
    pin::pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, EphemeralContainer, Pod,
    PodSpec, PodStatus,
};
use kube::{
    Api, Client, Config,
    config::{InClusterError, KubeConfigOptions, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// [`super::Identity::source`] of names that came from the API.
pub const SOURCE: &str = "kubernetes-api";

/// Annotations the kubelet puts on a static pod's mirror pod. A static pod's cgroup carries
/// the pod's config hash as its uid, not the mirror pod's API uid; these tie the two.
const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// The only annotations kept in the cache.
const KEPT_ANNOTATIONS: [&str; 2] = [CONFIG_MIRROR_ANNOTATION, CONFIG_HASH_ANNOTATION];

/// How long a deleted pod stays resolvable. A crash event is named when it arrives, within
/// milliseconds; this only covers a backlog (a burst of crashes, a slow node).
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Most deleted pods remembered; beyond, the oldest are forgotten first.
const MAX_TOMBSTONES: usize = 1024;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// `KUBECONFIG` is set but could not be loaded.
    #[error("loading the kubeconfig from KUBECONFIG={path:?}")]
    Kubeconfig {
        /// The value of `KUBECONFIG`.
        path: OsString,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// `KUBERNETES_SERVICE_HOST` is set but the service account's files are not usable.
    #[error("loading the in-cluster config (service account token and CA)")]
    InCluster {
        /// What went wrong.
        #[source]
        source: InClusterError,
    },
    /// The configuration was loaded but no client could be built from it.
    #[error("creating a Kubernetes client for {server}")]
    Client {
        /// The API server URL.
        server: String,
        /// What went wrong.
        #[source]
        source: kube::Error,
    },
}

/// A Kubernetes client from `KUBECONFIG` (when set) or the in-cluster service account (when
/// `KUBERNETES_SERVICE_HOST` is set, as in every pod). `Ok(None)` when neither is there: the
/// agent is not running in or pointed at a cluster. `~/.kube/config` is deliberately not read:
/// on a node it belongs to whoever logged in, and may point at another cluster.
pub async fn client_from_env() -> Result<Option<Client>, KubeError> {
    let config = if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|source| KubeError::Kubeconfig { path, source })?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster().map_err(|source| KubeError::InCluster { source })?
    } else {
        return Ok(None);
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| KubeError::Client { server, source })?;
    Ok(Some(client))
}

/// A container of a pod, as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMatch {
    /// Container name.
    pub name: String,
    /// Image as the pod spec names it (what the user deployed), else as the runtime reported
    /// it in the status.
    pub image: Option<String>,
    /// The image's id as the runtime reported it, usually `<repo>@sha256:<digest>`.
    pub image_id: Option<String>,
}

/// A pod found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMatch {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// The crashed container, when its id is in the pod's status.
    pub container: Option<ContainerMatch>,
    /// Image of every container of the spec (regular, init and ephemeral), by name: names
    /// the image when the container's name is only known from elsewhere.
    pub images: BTreeMap<String, String>,
    /// The cgroup's container id is none of this pod's, though every container of the pod
    /// has reported its id: the cgroup path is not this pod's, whatever it says.
    pub foreign_container: bool,
}

/// The node's pods as last seen through the watch, plus recently deleted ones. Cheap to clone
/// (a shared handle); lookups never wait and never make requests.
#[derive(Clone)]
pub struct PodCache {
    store: Store<Pod>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Set once the first full list is in the store.
    ready: AtomicBool,
    /// Deleted pods, oldest first.
    tombstones: Mutex<VecDeque<Tombstone>>,
}

struct Tombstone {
    buried: Instant,
    pod: Arc<Pod>,
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache")
            .field("ready", &self.is_ready())
            .field("pods", &self.store.state().len())
            .finish_non_exhaustive()
    }
}

/// What a lookup looks for, in order of trust.
#[derive(Clone, Copy)]
enum Key<'a> {
    /// The pod's API uid, from its cgroup.
    Uid(&'a str),
    /// A static pod's config hash, from its cgroup; its mirror pod carries it as annotation.
    ConfigHash(&'a str),
    /// A container id, when the cgroup named no pod.
    Container(&'a str),
}

impl PodCache {
    fn new() -> (Self, Writer<Pod>) {
        let writer = Writer::default();
        let cache = Self {
            store: writer.as_reader(),
            shared: Arc::new(Shared {
                ready: AtomicBool::new(false),
                tombstones: Mutex::new(VecDeque::new()),
            }),
        };
        (cache, writer)
    }

    /// Whether the first full list of the node's pods has arrived. Before that, lookups of
    /// existing pods may miss.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// The pod a crash belongs to, from the cgroup-derived pod uid (a static pod's config
    /// hash is matched against its mirror pod) or, when the cgroup named no pod, the
    /// container id; with the container when `container_id` is in the pod's status.
    pub fn lookup(&self, pod_uid: Option<&str>, container_id: Option<&str>) -> Option<PodMatch> {
        let keys: Vec<Key<'_>> = match (pod_uid, container_id) {
            (Some(uid), _) if is_config_hash(uid) => vec![Key::Uid(uid), Key::ConfigHash(uid)],
            (Some(uid), _) => vec![Key::Uid(uid)],
            (None, Some(id)) => vec![Key::Container(id)],
            (None, None) => return None,
        };
        keys.into_iter()
            .find_map(|key| self.find(key))
            .and_then(|pod| describe(&pod, container_id))
    }

    /// The live pod matching `key`, else the most recently deleted one.
    fn find(&self, key: Key<'_>) -> Option<Arc<Pod>> {
        if let Some(pod) = self.store.find(|p| matches(p, key)) {
            return Some(pod);
        }
        let now = Instant::now();
        let tombstones = self
            .shared
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tombstones
            .iter()
            .rev()
            .filter(|t| now.duration_since(t.buried) < TOMBSTONE_TTL)
            .find(|t| matches(&t.pod, key))
            .map(|t| t.pod.clone())
    }

    /// Remembers a deleted pod.
    fn bury(&self, pod: Arc<Pod>) {
        let now = Instant::now();
        let mut tombstones = self
            .shared
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while tombstones
            .front()
            .is_some_and(|t| now.duration_since(t.buried) >= TOMBSTONE_TTL)
            || tombstones.len() >= MAX_TOMBSTONES
        {
            tombstones.pop_front();
        }
        tombstones.push_back(Tombstone { buried: now, pod });
    }
}

/// Starts watching this node's pods on `tracker` until `cancel`; returns the cache the watch
/// fills. Needs `get`, `list` and `watch` on `pods` cluster-wide (a field selector cannot be
/// expressed in RBAC). The watch retries with backoff on any error, so a missing permission
/// or an unreachable API is logged and retried, not fatal.
pub fn spawn_watch(
    client: Client,
    node: &str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> PodCache {
    let (cache, writer) = PodCache::new();
    let api: Api<Pod> = Api::all(client);
    // `any_semantic`: lists are served from the API server's watch cache instead of a quorum
    // read of etcd. Every node's agent lists at start; that must stay cheap for the cluster.
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    let events = watcher(api, config).default_backoff().modify(prune);
    tracker.spawn(drive(
        cache.clone(),
        writer,
        events,
        node.to_owned(),
        cancel,
    ));
    cache
}

/// Feeds watch events into the store until the stream ends or `cancel`, keeping tombstones of
/// deleted pods (a delete event, or a pod missing from a relist).
async fn drive<S>(
    cache: PodCache,
    writer: Writer<Pod>,
    events: S,
    node: String,
    cancel: CancellationToken,
) where
    S: Stream<Item = watcher::Result<watcher::Event<Pod>>> + Send,
{
    let mut events = pin!(reflector::reflector(writer, events));
    // The store's content when a (re)list began: the reflector only swaps in the new list at
    // `InitDone`, so pods missing from it then were deleted while we were not watching.
    let mut before_relist: Vec<Arc<Pod>> = Vec::new();
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            None => break,
            Some(Ok(watcher::Event::Init)) => before_relist = cache.store.state(),
            Some(Ok(watcher::Event::InitDone)) => {
                let listed: HashSet<String> = cache
                    .store
                    .state()
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                for pod in before_relist.drain(..) {
                    if pod
                        .metadata
                        .uid
                        .as_ref()
                        .is_some_and(|u| !listed.contains(u))
                    {
                        cache.bury(pod);
                    }
                }
                let pods = cache.store.state().len();
                if cache.shared.ready.swap(true, Ordering::AcqRel) {
                    tracing::debug!(node, pods, "pod watch relisted");
                } else {
                    tracing::info!(node, pods, "pod cache synced");
                }
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                tracing::debug!(
                    namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod = pod.metadata.name.as_deref().unwrap_or(""),
                    "pod deleted: kept as a tombstone"
                );
                cache.bury(Arc::new(pod));
            }
            Some(Ok(watcher::Event::Apply(pod))) => {
                // Logged once the store has it (the reflector applies before yielding).
                tracing::debug!(
                    namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod = pod.metadata.name.as_deref().unwrap_or(""),
                    resource_version = pod.metadata.resource_version.as_deref().unwrap_or(""),
                    "pod updated"
                );
            }
            Some(Ok(watcher::Event::InitApply(_))) => {}
            Some(Err(e)) => {
                let forbidden = is_forbidden(&e);
                tracing::warn!(
                    node,
                    error = %e,
                    forbidden,
                    hint = if forbidden {
                        "the agent's service account needs get, list and watch on pods"
                    } else {
                        "retrying with backoff"
                    },
                    "pod watch"
                );
            }
        }
    }
    tracing::debug!(node, "pod watch stopped");
}

/// Whether the API refused for lack of permission (RBAC), which retrying will not fix.
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_forbidden(),
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

/// Drops what naming does not need before a pod enters the cache: managed fields, most
/// annotations, owner references, and everything in spec and status except container names,
/// images and ids. Keeps name, namespace, uid, labels and resourceVersion (the watch resumes
/// from it). Env and command lines in particular never stay in memory.
pub fn prune(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| KEPT_ANNOTATIONS.contains(&k.as_str()));
    }
    if let Some(spec) = pod.spec.take() {
        let named = |c: Container| Container {
            name: c.name,
            image: c.image,
            ..Container::default()
        };
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            containers: spec.containers.into_iter().map(named).collect(),
            init_containers: spec
                .init_containers
                .map(|cs| cs.into_iter().map(named).collect()),
            ephemeral_containers: spec.ephemeral_containers.map(|cs| {
                cs.into_iter()
                    .map(|c| EphemeralContainer {
                        name: c.name,
                        image: c.image,
                        ..EphemeralContainer::default()
                    })
                    .collect()
            }),
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        let pruned = |ss: Vec<ContainerStatus>| ss.into_iter().map(prune_status).collect();
        pod.status = Some(PodStatus {
            container_statuses: status.container_statuses.map(pruned),
            init_container_statuses: status.init_container_statuses.map(pruned),
            ephemeral_container_statuses: status.ephemeral_container_statuses.map(pruned),
            ..PodStatus::default()
        });
    }
}

fn prune_status(s: ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        name: s.name,
        container_id: s.container_id,
        image: s.image,
        image_id: s.image_id,
        state: terminated_id_only(s.state),
        last_state: terminated_id_only(s.last_state),
        ..ContainerStatus::default()
    }
}

/// A terminated state keeps the id of the container that ended: once a crashed container is
/// restarted, its id is only in `lastState.terminated`.
fn terminated_id_only(state: Option<ContainerState>) -> Option<ContainerState> {
    let container_id = state?.terminated?.container_id;
    Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id,
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    })
}

/// A static pod's uid as its cgroup shows it: the kubelet's config hash, 32 lowercase hex.
/// Regular pods have dashed UUIDs, so an annotation can never stand in for their uid.
fn is_config_hash(uid: &str) -> bool {
    uid.len() == 32 && uid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn matches(pod: &Pod, key: Key<'_>) -> bool {
    match key {
        Key::Uid(uid) => pod.metadata.uid.as_deref() == Some(uid),
        Key::ConfigHash(hash) => pod.metadata.annotations.as_ref().is_some_and(|a| {
            KEPT_ANNOTATIONS
                .iter()
                .any(|k| a.get(*k).map(String::as_str) == Some(hash))
        }),
        Key::Container(id) => statuses(pod).any(|s| has_id(s, id)),
    }
}

/// Every container status of a pod: regular, init and ephemeral containers.
fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|s| {
        [
            &s.container_statuses,
            &s.init_container_statuses,
            &s.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
    })
}

/// Whether a status is about the container with this runtime id: the current one, or the one
/// that just terminated (or terminated before the last restart).
fn has_id(status: &ContainerStatus, id: &str) -> bool {
    fn terminated(state: Option<&ContainerState>) -> Option<&str> {
        state?.terminated.as_ref()?.container_id.as_deref()
    }
    [
        status.container_id.as_deref(),
        terminated(status.state.as_ref()),
        terminated(status.last_state.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|full| runtime_id(full) == id)
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn runtime_id(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// What the identity needs from a pod; `None` for an object without name or namespace.
fn describe(pod: &Pod, container_id: Option<&str>) -> Option<PodMatch> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let regular = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .map(|c| (&c.name, &c.image))
    });
    let ephemeral = spec
        .into_iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .map(|c| (&c.name, &c.image));
    let images: BTreeMap<String, String> = regular
        .chain(ephemeral)
        .filter_map(|(name, image)| Some((name.clone(), image.clone()?)))
        .collect();
    let container = container_id
        .and_then(|id| statuses(pod).find(|s| has_id(s, id)))
        .map(|s| ContainerMatch {
            name: s.name.clone(),
            image: images.get(&s.name).cloned().or_else(|| non_empty(&s.image)),
            image_id: non_empty(&s.image_id),
        });
    // Every container of the spec reported an id (a container crashing before its status is
    // posted gets the benefit of the doubt).
    let all_reported = images.keys().all(|name| {
        statuses(pod)
            .any(|s| &s.name == name && s.container_id.as_deref().is_some_and(|i| !i.is_empty()))
    });
    let foreign_container = container_id.is_some() && container.is_none() && all_reported;
    Some(PodMatch {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        labels: meta.labels.clone().unwrap_or_default(),
        container,
        images,
        foreign_container,
    })
}

/// A cache holding `pods`, filled the way a first list fills it (for tests of its users).
#[cfg(test)]
pub(crate) async fn cache_of(pods: Vec<Pod>) -> PodCache {
    let (cache, writer) = PodCache::new();
    let events: Vec<_> = std::iter::once(watcher::Event::Init)
        .chain(pods.into_iter().map(watcher::Event::InitApply))
        .chain(std::iter::once(watcher::Event::InitDone))
        .map(Ok)
        .collect();
    drive(
        cache.clone(),
        writer,
        futures::stream::iter(events),
        "node-a".into(),
        CancellationToken::new(),
    )
    .await;
    cache
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use serde_json::json;

    use super::*;

    const UID: &str = "7d8e2c3a-5b1f-4e2d-9a6c-0f1e2d3c4b5a";
    const APP: &str = "3c1f9e0a7b2d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";
    const OLD: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
    const INIT: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const DEBUG: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const HASH: &str = "5f2b3a8c9d0e1f2a3b4c5d6e7f8a9b0c";
    const ETCD: &str = "4444444444444444444444444444444444444444444444444444444444444444";

    /// A pod as `kubectl get pod -o json` shows it on a containerd node: a Deployment's pod
    /// with an init container, a debug container, a restarted app container, and everything
    /// the cache should not keep.
    fn web_pod() -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-5d9c7b8f6d-x2x7q",
                "generateName": "web-5d9c7b8f6d-",
                "namespace": "shop.prod",
                "uid": UID,
                "resourceVersion": "48213",
                "creationTimestamp": "2026-11-26T07:58:01Z",
                "labels": {"app.kubernetes.io/name": "web", "pod-template-hash": "5d9c7b8f6d"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-26T07:57:59Z"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d9c7b8f6d", "uid": "0b6e6a2c-7a41-4b8e-9d3f-2c1b0a9f8e7d",
                    "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-11-26T07:58:05Z",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}, "subresource": "status"}]
            },
            "spec": {
                "nodeName": "node-a",
                "initContainers": [{"name": "migrate", "image": "registry.example.com/shop/migrate:1.4"}],
                "containers": [{"name": "app-server", "image": "registry.example.com/shop/web:1.4.2",
                    "env": [{"name": "DB_PASSWORD", "value": "hunter2"}],
                    "command": ["/app/server", "--port=8080"]}],
                "ephemeralContainers": [{"name": "debugger-x7k", "image": "busybox:1.36",
                    "targetContainerName": "app-server"}],
                "volumes": [{"name": "kube-api-access-8xq2p", "projected": {"sources": []}}],
                "serviceAccountName": "web"
            },
            "status": {
                "phase": "Running",
                "qosClass": "Burstable",
                "podIP": "10.244.1.17",
                "initContainerStatuses": [{"name": "migrate", "ready": true, "restartCount": 0,
                    "image": "registry.example.com/shop/migrate:1.4",
                    "imageID": "registry.example.com/shop/migrate@sha256:aaaa",
                    "containerID": format!("containerd://{INIT}"),
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                        "containerID": format!("containerd://{INIT}")}}}],
                "containerStatuses": [{"name": "app-server", "ready": true, "restartCount": 1,
                    "image": "registry.example.com/shop/web:1.4.2",
                    "imageID": "registry.example.com/shop/web@sha256:bbbb",
                    "containerID": format!("containerd://{APP}"),
                    "started": true,
                    "state": {"running": {"startedAt": "2026-11-26T08:01:00Z"}},
                    "lastState": {"terminated": {"exitCode": 139, "reason": "Error",
                        "containerID": format!("containerd://{OLD}")}}}],
                "ephemeralContainerStatuses": [{"name": "debugger-x7k", "ready": false,
                    "restartCount": 0, "image": "docker.io/library/busybox:1.36",
                    "imageID": "docker.io/library/busybox@sha256:cccc",
                    "containerID": format!("containerd://{DEBUG}"),
                    "state": {"running": {"startedAt": "2026-11-26T08:02:00Z"}}}]
            }
        }))
        .unwrap()
    }

    /// A static pod's mirror as the API shows it (its cgroup has the config hash as uid).
    fn static_pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "etcd-node-a", "namespace": "kube-system",
                "uid": "c0ffee00-1111-4222-8333-444455556666", "resourceVersion": "311",
                "annotations": {
                    "kubernetes.io/config.hash": HASH,
                    "kubernetes.io/config.mirror": HASH,
                    "kubernetes.io/config.source": "file"
                },
                "labels": {"component": "etcd", "tier": "control-plane"}
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "etcd", "image": "registry.k8s.io/etcd:3.5.21-0"}]},
            "status": {"containerStatuses": [{"name": "etcd", "ready": true, "restartCount": 0,
                "image": "registry.k8s.io/etcd:3.5.21-0", "imageID": "",
                "containerID": format!("cri-o://{ETCD}")}]}
        }))
        .unwrap()
    }

    fn pruned(mut pod: Pod) -> Pod {
        prune(&mut pod);
        pod
    }

    #[test]
    fn prune_keeps_names_images_and_ids_only() {
        let pod = pruned(web_pod());
        let meta = &pod.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.owner_references, None);
        assert_eq!(meta.annotations.as_ref().map(BTreeMap::len), Some(0));
        assert_eq!(meta.resource_version.as_deref(), Some("48213"));
        assert_eq!(meta.uid.as_deref(), Some(UID));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/name"],
            "web"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].env, None, "secrets in env are not kept");
        assert_eq!(spec.containers[0].command, None);
        assert_eq!(spec.volumes, None);
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip, None);
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.image_id, "registry.example.com/shop/web@sha256:bbbb");
        assert!(has_id(app, APP) && has_id(app, OLD));
        // The pruned pod still names everything.
        let m = describe(&pod, Some(APP)).unwrap();
        assert_eq!(m, describe(&web_pod(), Some(APP)).unwrap());

        let st = pruned(static_pod());
        assert_eq!(
            st.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["kubernetes.io/config.hash", "kubernetes.io/config.mirror"]
        );
    }

    #[tokio::test]
    async fn lookup_by_pod_uid_and_container_id() {
        let cache = cache_of(vec![pruned(web_pod()), pruned(static_pod())]).await;
        assert!(cache.is_ready());

        let m = cache.lookup(Some(UID), Some(APP)).unwrap();
        assert_eq!(
            (m.namespace.as_str(), m.name.as_str()),
            ("shop.prod", "web-5d9c7b8f6d-x2x7q")
        );
        assert_eq!(m.labels["pod-template-hash"], "5d9c7b8f6d");
        assert_eq!(
            m.container,
            Some(ContainerMatch {
                name: "app-server".into(),
                image: Some("registry.example.com/shop/web:1.4.2".into()),
                image_id: Some("registry.example.com/shop/web@sha256:bbbb".into()),
            })
        );
        // The container before the restart, an init container, a debug container.
        let name = |cid| {
            cache
                .lookup(Some(UID), Some(cid))
                .unwrap()
                .container
                .unwrap()
        };
        assert_eq!(name(OLD).name, "app-server");
        assert_eq!(name(INIT).name, "migrate");
        let debug = name(DEBUG);
        assert_eq!(debug.name, "debugger-x7k");
        assert_eq!(
            debug.image.as_deref(),
            Some("busybox:1.36"),
            "the spec's image"
        );

        // A container not (yet) in the status: the pod, without a container.
        let m = cache.lookup(Some(UID), Some(&"e".repeat(64))).unwrap();
        assert_eq!(m.container, None);
        assert_eq!(
            m.images["app-server"],
            "registry.example.com/shop/web:1.4.2"
        );

        // No pod uid in the cgroup: by container id alone.
        assert_eq!(
            cache.lookup(None, Some(APP)).unwrap().name,
            "web-5d9c7b8f6d-x2x7q"
        );

        // A static pod: its cgroup has the config hash; the mirror pod carries it.
        let m = cache.lookup(Some(HASH), Some(ETCD)).unwrap();
        assert_eq!(
            (m.namespace.as_str(), m.name.as_str()),
            ("kube-system", "etcd-node-a")
        );
        let etcd = m.container.unwrap();
        assert_eq!(etcd.image_id, None, "an empty imageID is unknown");

        // Unknown stays unknown.
        assert_eq!(
            cache.lookup(Some("00000000-0000-4000-8000-000000000000"), Some(APP)),
            None
        );
        assert_eq!(cache.lookup(None, Some(&"f".repeat(64))), None);
        assert_eq!(cache.lookup(None, None), None);
    }

    #[test]
    fn annotation_never_stands_in_for_a_uuid() {
        let mut impostor = static_pod();
        impostor
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CONFIG_MIRROR_ANNOTATION.into(), UID.into());
        assert!(!matches(&impostor, Key::Uid(UID)));
        assert!(!is_config_hash(UID));
        assert!(is_config_hash(HASH));
    }

    #[tokio::test]
    async fn deleted_pods_are_kept_as_tombstones() {
        let (cache, writer) = PodCache::new();
        let web = pruned(web_pod());
        let etcd = pruned(static_pod());
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(web.clone())),
            Ok(watcher::Event::InitApply(etcd.clone())),
            Ok(watcher::Event::InitDone),
            // Deleted through the watch.
            Ok(watcher::Event::Delete(web.clone())),
            // The watch broke; the relist no longer has the static pod.
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitDone),
        ];
        drive(
            cache.clone(),
            writer,
            stream::iter(events),
            "node-a".into(),
            CancellationToken::new(),
        )
        .await;
        assert!(cache.store.state().is_empty());
        assert_eq!(
            cache.lookup(Some(UID), Some(APP)).unwrap().name,
            "web-5d9c7b8f6d-x2x7q"
        );
        assert_eq!(cache.lookup(Some(HASH), None).unwrap().name, "etcd-node-a");

        // Tombstones are bounded.
        for _ in 0..MAX_TOMBSTONES + 10 {
            cache.bury(Arc::new(static_pod()));
        }
        assert_eq!(
            cache.shared.tombstones.lock().unwrap().len(),
            MAX_TOMBSTONES
        );
    }

    #[tokio::test]
    async fn cancel_stops_the_watch() {
        let (cache, writer) = PodCache::new();
        let cancel = CancellationToken::new();
        let watch = tokio::spawn(drive(
            cache.clone(),
            writer,
            stream::pending(),
            "node-a".into(),
            cancel.clone(),
        ));
        // A stream that never yields: only the cancel can end the watch, and it must, soon.
        tokio::task::yield_now().await;
        assert!(!watch.is_finished(), "the watch runs until cancelled");
        cancel.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch)
            .await
            .expect("the watch stops within 5 s of the cancel")
            .expect("the watch task");
        assert!(!cache.is_ready());
    }

    #[test]
    fn runtime_ids() {
        assert_eq!(runtime_id(&format!("containerd://{APP}")), APP);
        assert_eq!(runtime_id(&format!("cri-o://{APP}")), APP);
        assert_eq!(runtime_id(&format!("docker://{APP}")), APP);
        assert_eq!(runtime_id(APP), APP);
    }
}
