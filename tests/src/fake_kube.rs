//! A fake Kubernetes API server for the pod identity tests: plain HTTP on 127.0.0.1, speaking
//! just enough of the real API for a pod watch (`GET /api/v1/pods`, list and `watch=true`),
//! with realistic objects and resource versions.
//!
//! What it models, because the agent must cope with each:
//! - lists answer with a `resourceVersion`; watches replay every change after the version asked
//!   for, then stream new ones (`Transfer-Encoding: chunked`, one JSON event per line);
//! - `spec.nodeName=<node>` field selectors filter both;
//! - [`FakeKube::drop_watches`] cuts every open watch mid-stream, as an API server restart
//!   does; [`FakeKube::set_available`] answers `503` meanwhile; [`FakeKube::compact`] forgets
//!   history, so resuming from an old version gets `410 Gone` and the client must list again;
//! - [`FakeKube::deny`] takes a permission away, as RBAC would: the request gets `403
//!   Forbidden`, and a `SelfSubjectAccessReview` for it answers `allowed: false`;
//! - every request is recorded, to check what the client asked for.
//!
//! Blocking std threads, no async runtime: the tests drive it from plain `#[test]`s.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The watch timeout when the client gives none (the API server's default is similar).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch looks for new events when nothing wakes it.
const POLL: Duration = Duration::from_millis(200);
/// The first resource version handed out (real clusters are far past 1).
const FIRST_RESOURCE_VERSION: u64 = 48_000;

/// One request the fake served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Path without the query.
    pub path: String,
    /// `watch=true` was asked for.
    pub watch: bool,
    /// The `resourceVersion` parameter.
    pub resource_version: Option<String>,
    /// The `fieldSelector` parameter, decoded.
    pub field_selector: Option<String>,
}

/// A change, as a watch streams it.
struct Change {
    resource_version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// Live pods by (namespace, name), with `kind` and `apiVersion`.
    pods: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// Events posted, in order.
    events: Vec<Value>,
    /// Watches from a version older than this get `410 Gone`.
    oldest_watchable: u64,
    /// (verb, resource) pairs RBAC does not allow.
    denied: Vec<(String, String)>,
    /// SelfSubjectAccessReviews asked, as (verb, resource).
    reviews: Vec<(String, String)>,
    /// Bumped by `drop_watches`: watches started under an older generation hang up.
    generation: u64,
    /// While false, every request gets `503 Service Unavailable`.
    unavailable: bool,
    requests: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running fake API server. It stops with the test process.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeKube {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                resource_version: FIRST_RESOURCE_VERSION,
                oldest_watchable: FIRST_RESOURCE_VERSION,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let server = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = server.clone();
                std::thread::spawn(move || serve(&shared, conn));
            }
        });
        Self { addr, shared }
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    /// Takes `verb` on `resource` (e.g. "watch", "pods") away from the client.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.shared
            .lock()
            .denied
            .push((verb.to_owned(), resource.to_owned()));
    }

    /// The access reviews asked so far, as (verb, resource).
    pub fn reviews(&self) -> Vec<(String, String)> {
        self.shared.lock().reviews.clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server, without credentials.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        );
        std::fs::write(path, config).expect("write kubeconfig");
    }

    /// Creates or updates a pod (as the kubelet or a controller would); returns its new
    /// resource version.
    pub fn apply(&self, mut pod: Value) -> u64 {
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let rv = state.resource_version;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = pod_key(&pod);
        let kind = if state.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.pods.insert(key, pod.clone());
        state.history.push(Change {
            resource_version: rv,
            kind,
            object: pod,
        });
        drop(state);
        self.shared.changed.notify_all();
        rv
    }

    /// Deletes a pod; returns the deletion's resource version, or `None` if there was no such
    /// pod.
    pub fn delete(&self, namespace: &str, name: &str) -> Option<u64> {
        let mut state = self.shared.lock();
        let mut pod = state
            .pods
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        state.resource_version += 1;
        let rv = state.resource_version;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        pod["metadata"]["deletionTimestamp"] = json!("2026-11-26T09:00:00Z");
        state.history.push(Change {
            resource_version: rv,
            kind: "DELETED",
            object: pod,
        });
        drop(state);
        self.shared.changed.notify_all();
        Some(rv)
    }

    /// Cuts every open watch connection mid-stream, without a final chunk, as an API server
    /// restart does. Clients resume from the last version they saw.
    pub fn drop_watches(&self) {
        self.shared.lock().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Starts (`false`) or ends (`true`) an outage: meanwhile every request gets `503`. Open
    /// watches are not touched; see [`FakeKube::drop_watches`].
    pub fn set_available(&self, available: bool) {
        self.shared.lock().unavailable = !available;
    }

    /// Forgets the history up to now: a watch resuming from an older version gets `410 Gone`
    /// and must list again (what etcd compaction does to a client that was away too long).
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.oldest_watchable = state.resource_version;
        state.history.clear();
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Waits until `pred(requests)` holds; panics after `timeout`.
    pub fn wait_for_requests(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        crate::wait_for_requests("the fake API", timeout, || self.requests(), pred)
    }
}

fn pod_key(pod: &Value) -> (String, String) {
    let meta = &pod["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Handles one connection: one request (every response closes the connection).
fn serve(shared: &Shared, mut conn: TcpStream) {
    let Some((method, target, body)) = read_request(&conn) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = parse_query(query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let request = Request {
        path: path.to_owned(),
        watch: param("watch").is_some_and(|v| v == "true" || v == "1"),
        resource_version: param("resourceVersion"),
        field_selector: param("fieldSelector"),
    };
    let denied = |verb: &str, resource: &str| {
        shared
            .lock()
            .denied
            .iter()
            .any(|(v, r)| v == verb && r == resource)
    };
    let forbid = |conn: &mut TcpStream, verb: &str, resource: &str| {
        let msg = format!(
            "{resource} is forbidden: User \"system:serviceaccount:coredump-agent:coredump-agent\" cannot {verb} resource \"{resource}\" in API group \"\" at the cluster scope"
        );
        respond(conn, "403 Forbidden", &status_json(403, "Forbidden", &msg));
    };
    // "Can I?" questions (`kubectl auth can-i`), answered from the denials.
    if method == "POST" && path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" {
        let mut review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let attributes = &review["spec"]["resourceAttributes"];
        let asked = (
            attributes["verb"].as_str().unwrap_or_default().to_owned(),
            attributes["resource"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let allowed = !denied(&asked.0, &asked.1);
        shared.lock().reviews.push(asked);
        review["status"] = json!({"allowed": allowed});
        respond(&mut conn, "201 Created", &review);
        return;
    }
    // Events the agent posts about stored dumps (`POST /api/v1/namespaces/<ns>/events`),
    // kept apart from the pod requests the tests count.
    if method == "POST" && path.starts_with("/api/v1/namespaces/") && path.ends_with("/events") {
        if denied("create", "events") {
            forbid(&mut conn, "create", "events");
            return;
        }
        let mut event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let name = format!(
            "{}{}",
            event["metadata"]["generateName"]
                .as_str()
                .unwrap_or("event-"),
            shared.lock().events.len()
        );
        event["metadata"]["name"] = json!(name);
        shared.lock().events.push(event.clone());
        shared.changed.notify_all();
        respond(&mut conn, "201 Created", &event);
        return;
    }
    // The generation a watch belongs to is the one current when its request arrived, so a
    // `drop_watches` right after a request was seen always cuts that watch.
    let (generation, unavailable) = {
        let mut state = shared.lock();
        state.requests.push(request.clone());
        (state.generation, state.unavailable)
    };
    if unavailable {
        let status = status_json(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
        respond(&mut conn, "503 Service Unavailable", &status);
        return;
    }
    if method != "GET" || path != "/api/v1/pods" {
        let status = status_json(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
        respond(&mut conn, "404 Not Found", &status);
        return;
    }
    let node = match node_selector(request.field_selector.as_deref()) {
        Ok(node) => node,
        Err(selector) => {
            let msg = format!("field label not supported: {selector}");
            respond(
                &mut conn,
                "400 Bad Request",
                &status_json(400, "BadRequest", &msg),
            );
            return;
        }
    };
    let verb = if request.watch { "watch" } else { "list" };
    if denied(verb, "pods") {
        forbid(&mut conn, verb, "pods");
        return;
    }
    if request.watch {
        let timeout = param("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        watch(shared, conn, &request, node.as_deref(), timeout, generation);
    } else {
        let state = shared.lock();
        let items: Vec<Value> = state
            .pods
            .values()
            .filter(|p| on_node(p, node.as_deref()))
            .take(
                param("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(usize::MAX),
            )
            .map(|p| {
                // List items carry no kind or apiVersion, as in the real API.
                let mut item = p.clone();
                if let Some(o) = item.as_object_mut() {
                    o.remove("kind");
                    o.remove("apiVersion");
                }
                item
            })
            .collect();
        let list = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": state.resource_version.to_string()},
            "items": items,
        });
        drop(state);
        respond(&mut conn, "200 OK", &list);
    }
}

/// Streams changes after the requested version until the timeout, a `drop_watches`, or the
/// client going away.
fn watch(
    shared: &Shared,
    mut conn: TcpStream,
    request: &Request,
    node: Option<&str>,
    timeout: Duration,
    generation: u64,
) {
    let from: u64 = request
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut sent = from;
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    if from < state.oldest_watchable {
        let gone = json!({"type": "ERROR", "object": status_json(
            410, "Expired",
            &format!("too old resource version: {from} ({})", state.oldest_watchable),
        )});
        drop(state);
        let _ = write_chunk(&mut conn, &gone).and_then(|()| conn.write_all(b"0\r\n\r\n"));
        return;
    }
    loop {
        if state.generation != generation {
            // An API server restart: the connection ends mid-stream.
            drop(state);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        let events: Vec<Value> = state
            .history
            .iter()
            .filter(|c| c.resource_version > sent && on_node(&c.object, node))
            .map(|c| json!({"type": c.kind, "object": c.object}))
            .collect();
        sent = state.resource_version;
        drop(state);
        for event in &events {
            if write_chunk(&mut conn, event).is_err() {
                return;
            }
        }
        if Instant::now() >= deadline {
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        state = shared.lock();
        if state.resource_version == sent && state.generation == generation {
            state = shared
                .changed
                .wait_timeout(state, POLL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Reads a request: its method, target and body (`Content-Length` bytes).
pub(crate) fn read_request(conn: &TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    std::io::Read::read_exact(&mut reader, &mut body).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_owned();
    Some((method, parts.next()?.to_owned(), body))
}

fn respond(conn: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
}

fn write_chunk(conn: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(conn, "{:x}\r\n{line}\r\n", line.len())?;
    conn.flush()
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// The node of a `spec.nodeName=<node>` selector; `Err` for any other selector.
fn node_selector(selector: Option<&str>) -> Result<Option<String>, String> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    selector
        .strip_prefix("spec.nodeName==")
        .or_else(|| selector.strip_prefix("spec.nodeName="))
        .filter(|n| !n.contains(','))
        .map(|n| Some(n.to_owned()))
        .ok_or_else(|| selector.to_owned())
}

fn on_node(pod: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod["spec"]["nodeName"].as_str() == Some(n))
}

pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container of a [`pod`].
pub struct Container<'a> {
    /// Container name.
    pub name: &'a str,
    /// Image as the pod spec names it.
    pub image: &'a str,
    /// Image as the runtime reports it (usually the fully qualified name).
    pub status_image: &'a str,
    /// Image id with its digest.
    pub image_id: &'a str,
    /// Container id with the runtime's scheme: `containerd://…`, `cri-o://…`, `docker://…`.
    pub container_id: &'a str,
}

/// A pod as the API server returns it for a running Deployment replica on `node`: metadata
/// with owner, managed fields and annotations; a spec with env, mounts and tolerations; a
/// status with conditions and one running status per container. `labels` are the pod's own;
/// `pod-template-hash` is added.
pub fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: &str,
    qos: &str,
    labels: &[(&str, &str)],
    containers: &[Container<'_>],
) -> Value {
    let hash = name
        .rsplit('-')
        .nth(1)
        .filter(|h| h.len() >= 8)
        .unwrap_or("5d9c7b8f6d");
    let replica_set = name.rsplit_once('-').map_or(name, |(rs, _)| rs);
    let mut pod_labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    pod_labels.insert("pod-template-hash".into(), json!(hash));
    let specs: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
                ],
                "resources": if qos == "BestEffort" { json!({}) } else {
                    json!({"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}})
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "name": "kube-api-access-8xq2p", "readOnly": true}]
            })
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "containerID": c.container_id,
                "image": c.status_image,
                "imageID": c.image_id,
                "lastState": {},
                "name": c.name,
                "ready": true,
                "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": "2026-11-26T08:01:02Z"}},
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "name": "kube-api-access-8xq2p", "readOnly": true, "recursiveReadOnly": "Disabled"}]
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-26T07:57:59Z"},
            "creationTimestamp": "2026-11-26T08:00:41Z",
            "generateName": format!("{replica_set}-"),
            "labels": pod_labels,
            "managedFields": [
                {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {}}, "f:spec": {}},
                 "manager": "kube-controller-manager", "operation": "Update", "time": "2026-11-26T08:00:41Z"},
                {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}}},
                 "manager": "kubelet", "operation": "Update", "subresource": "status", "time": "2026-11-26T08:01:03Z"}
            ],
            "name": name,
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                "kind": "ReplicaSet", "name": replica_set, "uid": "0b6e6a2c-7a41-4b8e-9d3f-2c1b0a9f8e7d"}],
            "resourceVersion": "0",
            "uid": uid
        },
        "spec": {
            "containers": specs,
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "nodeName": node,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": "default",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
            ],
            "volumes": [{"name": "kube-api-access-8xq2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}}
            ]}}]
        },
        "status": {
            "conditions": [
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:01:03Z", "status": "True", "type": "PodReadyToStartContainers"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:00:41Z", "status": "True", "type": "Initialized"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:01:03Z", "status": "True", "type": "Ready"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:01:03Z", "status": "True", "type": "ContainersReady"},
                {"lastProbeTime": null, "lastTransitionTime": "2026-11-26T08:00:41Z", "status": "True", "type": "PodScheduled"}
            ],
            "containerStatuses": statuses,
            "hostIP": "10.0.1.23",
            "hostIPs": [{"ip": "10.0.1.23"}],
            "phase": "Running",
            "podIP": "10.244.1.17",
            "podIPs": [{"ip": "10.244.1.17"}],
            "qosClass": qos,
            "startTime": "2026-11-26T08:00:41Z"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        assert_eq!(
            parse_query("&fieldSelector=spec.nodeName%3Dnode-1&watch=true&x"),
            [
                (
                    "fieldSelector".to_owned(),
                    "spec.nodeName=node-1".to_owned()
                ),
                ("watch".to_owned(), "true".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(node_selector(Some("spec.nodeName=n")), Ok(Some("n".into())));
        assert_eq!(node_selector(None), Ok(None));
        assert!(node_selector(Some("metadata.name=x")).is_err());
    }
}
