//! identity::ecs: the Amazon ECS [`WorkloadSource`]: names a crash's task (cluster, ARN,
//! family and revision) and container (name, image, digest) from the ECS agent's
//! introspection API on the host ([`introspection`]).
//!
//! Like the Kubernetes watch, it keeps a cache ([`cache`]) that a background task refreshes
//! (`GET /v1/tasks`), so that a crash in a known task costs no request, and a task that
//! stopped, and was cleaned up, right after its crash is still named. A crash in a task or
//! container the cache does not know yet (one that crashed on start) costs one request,
//! waited for briefly on the blocking thread naming it; its answer is cached for the next.
//! When the API does not answer, the task is named from its cgroup alone (the task id), and
//! the identity says what is missing.

pub mod cache;
pub mod introspection;

use std::{
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::{Duration, Instant},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{
    cache::{Cache, Found},
    introspection::{AgentMetadata, Introspection, IntrospectionError, cluster_name},
};
use super::{EcsTask, Identity, Runtime, Workload, WorkloadSource};

/// [`super::Identity::source`] of names that came from the ECS agent.
pub const SOURCE: &str = "ecs-introspection";

/// How often the task list is read by default: the API shares the ECS agent's rate limit with
/// the task metadata endpoint (40 requests per second), of which this takes little.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// After the API failed to answer, how long crashes are named without asking it (the refresh
/// keeps trying meanwhile): a crash storm while the ECS agent restarts waits on nothing.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// Longest a crash waits for the API on a cache miss: a request's own deadline, and a margin.
const MISS_WAIT: Duration = Duration::from_secs(3);

/// Names ECS tasks. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct EcsSource {
    shared: Arc<Shared>,
}

struct Shared {
    api: Introspection,
    /// Where requests run: naming happens on blocking threads.
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cache: Cache,
    metadata: Option<AgentMetadata>,
    /// The last failure, and when, while the API does not answer.
    failure: Option<(Instant, String)>,
    /// Whether the API ever answered: only then is its silence news worth a warning (the
    /// first attempt's outcome is the caller's to report).
    answered: bool,
}

impl std::fmt::Debug for EcsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcsSource")
            .field("api", &self.shared.api.uri())
            .field("tasks", &self.state().cache.len())
            .finish_non_exhaustive()
    }
}

impl EcsSource {
    /// A source asking `api`, its requests run on the current tokio runtime.
    pub fn new(api: Introspection) -> Self {
        Self {
            shared: Arc::new(Shared {
                api,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The API's address.
    pub fn uri(&self) -> String {
        self.shared.api.uri()
    }

    /// The cluster the ECS agent says this instance is in, once it said.
    pub fn cluster(&self) -> Option<String> {
        let state = self.state();
        let cluster = state.metadata.as_ref()?.cluster.as_deref()?;
        Some(cluster_name(cluster).to_owned())
    }

    /// Tasks known.
    pub fn tasks_known(&self) -> usize {
        self.state().cache.len()
    }

    /// Reads the cluster (once) and the task list into the cache; returns how many tasks the
    /// API listed.
    pub async fn refresh(&self) -> Result<usize, IntrospectionError> {
        let result = async {
            let metadata = if self.state().metadata.is_none() {
                Some(self.shared.api.metadata().await?)
            } else {
                None
            };
            let tasks = self.shared.api.tasks().await?;
            Ok::<_, IntrospectionError>((metadata, tasks))
        }
        .await;
        let mut state = self.state();
        match result {
            Ok((metadata, tasks)) => {
                let listed = tasks.len();
                if metadata.is_some() {
                    state.metadata = metadata;
                }
                state.cache.remember(tasks, Instant::now());
                state.answered = true;
                if state.failure.take().is_some() {
                    tracing::info!(api = %self.uri(), tasks = listed, "the ECS agent's introspection API answers again");
                }
                Ok(listed)
            }
            Err(e) => {
                let text = crate::error_chain(&e);
                if state.failure.is_none() && state.answered {
                    tracing::warn!(api = %self.uri(), error = %text, "the ECS agent's introspection API does not answer: crashes in tasks are named from their cgroup only until it does");
                }
                state.failure = Some((Instant::now(), text));
                Err(e)
            }
        }
    }

    /// Refreshes the cache every `interval` on `tracker`, until `cancel`.
    pub fn spawn_refresh(
        &self,
        interval: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) {
        let source = self.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(interval) => {}
                }
                match source.refresh().await {
                    Ok(tasks) => tracing::debug!(tasks, "ECS task list refreshed"),
                    Err(e) => tracing::debug!(error = %crate::error_chain(&e), "ECS task list not refreshed"),
                }
            }
        });
    }

    /// The cached task of a crash.
    fn cached(&self, task_id: Option<&str>, container_id: Option<&str>) -> Option<Found> {
        self.state().cache.find(task_id, container_id)
    }

    /// Asks the API about a crash the cache does not know: the container's task (when the
    /// cgroup named a container), else the whole task list. Waits at most [`MISS_WAIT`]; the
    /// answer is cached even if it comes later. `Err` says why nothing could be asked.
    fn ask(&self, task_id: Option<&str>, container_id: Option<&str>) -> Result<(), String> {
        let now = Instant::now();
        {
            let state = self.state();
            if let Some((at, why)) = &state.failure
                && now.duration_since(*at) < QUIET_AFTER_FAILURE
            {
                return Err(self.unanswered(why));
            }
            if container_id.is_some_and(|c| state.cache.recently_missed(c, now))
                && task_id.is_none()
            {
                return Err("the ECS agent did not know this container moments ago".into());
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let source = self.clone();
        let container_id = container_id.map(str::to_owned);
        self.shared.runtime.spawn(async move {
            let answer = match container_id {
                Some(id) => source.ask_container(&id).await,
                None => source.refresh().await.map(drop),
            };
            let _ = tx.send(answer.map_err(|e| source.unanswered(&crate::error_chain(&e))));
        });
        match rx.recv_timeout(MISS_WAIT) {
            Ok(answer) => answer,
            Err(_) => Err(self.unanswered(&format!("no answer within {MISS_WAIT:?}"))),
        }
    }

    /// Why a crash could not be named from the API, for the record.
    fn unanswered(&self, why: &str) -> String {
        format!(
            "the ECS agent's introspection API at {} did not answer ({why})",
            self.uri()
        )
    }

    /// `?dockerid=` for one container; caches the task, or that there is none.
    async fn ask_container(&self, docker_id: &str) -> Result<(), IntrospectionError> {
        let answer = self.shared.api.task_of_container(docker_id).await;
        let mut state = self.state();
        match answer {
            Ok(Some(task)) => {
                state.cache.remember([task], Instant::now());
                state.failure = None;
                Ok(())
            }
            Ok(None) => {
                state.cache.missed(docker_id, Instant::now());
                state.failure = None;
                Ok(())
            }
            Err(e) => {
                state.failure = Some((Instant::now(), crate::error_chain(&e)));
                Err(e)
            }
        }
    }
}

impl WorkloadSource for EcsSource {
    fn name(&self) -> &'static str {
        "ecs"
    }

    /// Names the ECS task a crash's cgroup named (`ecstasks-<id>.slice`, `/ecs/<id>`), or that
    /// a Docker container outside any task cgroup belongs to (an instance with task resource
    /// limits off), from the cache, else from one request. A task the API does not name keeps
    /// the id its cgroup gave, and `missing` says why.
    fn resolve(&self, identity: &mut Identity) {
        let task_id = match &identity.workload {
            Workload::Ecs(task) => Some(task.task_id.clone()),
            // The ECS agent only runs Docker containers; only Docker names a container's
            // cgroup this way (or the cgroupfs driver, which does not tell).
            Workload::Host(_)
                if identity.container_id.is_some()
                    && matches!(identity.runtime, Some(Runtime::Docker | Runtime::Unknown)) =>
            {
                None
            }
            _ => return,
        };
        let container_id = identity.container_id.clone();
        let (task_id, container_id) = (task_id.as_deref(), container_id.as_deref());
        let mut found = self.cached(task_id, container_id);
        let mut why = None;
        let container_unknown = |f: &Option<Found>| {
            f.as_ref()
                .is_some_and(|f| container_id.is_some() && f.container.is_none())
        };
        if found.is_none() || container_unknown(&found) {
            match self.ask(task_id, container_id) {
                Ok(()) => found = self.cached(task_id, container_id).or(found),
                Err(e) => why = Some(e),
            }
        }
        let cluster = self.cluster();
        match found {
            Some(Found { task, container }) => {
                if let (Some(id), None) = (container_id, &container) {
                    identity.missing = Some(format!(
                        "the ECS agent does not list container {id} in task {}",
                        task.arn
                    ));
                }
                identity.workload = Workload::Ecs(describe(&task, container, task_id, cluster));
                identity.source = Some(SOURCE.to_owned());
            }
            None => {
                let Workload::Ecs(task) = &mut identity.workload else {
                    // A container the ECS agent does not know: not an ECS task's.
                    return;
                };
                task.cluster = cluster;
                let why = why.unwrap_or_else(|| {
                    format!(
                        "the ECS agent's introspection API does not list task {}",
                        task.task_id
                    )
                });
                tracing::warn!(task_id = %task.task_id, reason = %why, "ECS task not named");
                identity.missing = Some(format!(
                    "{why}: the task's family, ARN and container are unknown"
                ));
            }
        }
    }
}

/// The identity of a task the API listed, and its crashed container.
fn describe(
    task: &introspection::Task,
    container: Option<introspection::Container>,
    cgroup_task_id: Option<&str>,
    cluster: Option<String>,
) -> EcsTask {
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let container = container.unwrap_or_default();
    EcsTask {
        task_id: task.id().or(cgroup_task_id).unwrap_or_default().to_owned(),
        // The task ARN names the cluster (long ARN format); the agent's setting otherwise.
        cluster: task.cluster().map(str::to_owned).or(cluster),
        task_arn: nonempty(Some(task.arn.clone())),
        family: nonempty(task.family.clone()),
        revision: nonempty(task.version.clone()),
        container: nonempty(container.name),
        image: nonempty(container.image),
        image_id: nonempty(container.image_id),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        net::TcpListener,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::identity::{KubePod, Workload};

    const A: &str = "488fc5b8b77f4fb7984bdc4aba948f9f";
    const B: &str = "e95a40efbde84cbc8600660a109ec194";

    fn cid(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn task(id: &str, container: &str, docker_id: &str) -> String {
        format!(
            r#"{{"Arn":"arn:aws:ecs:eu-west-1:012345678910:task/prod/{id}","KnownStatus":"RUNNING","Family":"web","Version":"7","Containers":[{{"DockerId":"{docker_id}","Name":"{container}","Image":"nginx:1.27","ImageID":"sha256:abc"}}]}}"#
        )
    }

    /// An introspection API answering `routes` (path and query → body; anything else 404 with
    /// an empty task), one connection per request; counts requests.
    fn serve(routes: Vec<(String, String)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut first = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                reader.read_line(&mut first).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let target = first.split_whitespace().nth(1).unwrap_or_default();
                let (status, body) = match routes.iter().find(|(r, _)| r == target) {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => (
                        "404 Not Found",
                        r#"{"Arn":"","Containers":null}"#.to_owned(),
                    ),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    fn from_path(path: &str) -> Identity {
        Identity::from_cgroup_path(path)
    }

    async fn resolve(source: &EcsSource, mut id: Identity) -> Identity {
        let source = source.clone();
        tokio::task::spawn_blocking(move || {
            source.resolve(&mut id);
            id
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_from_the_cache_and_asks_once_on_a_miss() {
        let (a, b, stranger) = (cid('a'), cid('b'), cid('c'));
        let (url, requests) = serve(vec![
            (
                "/v1/metadata".into(),
                r#"{"Cluster":"arn:aws:ecs:eu-west-1:012345678910:cluster/prod","ContainerInstanceArn":null,"Version":"Amazon ECS Agent - v1.105.1"}"#.into(),
            ),
            ("/v1/tasks".into(), format!(r#"{{"Tasks":[{}]}}"#, task(A, "app", &a))),
            (format!("/v1/tasks?dockerid={b}"), task(B, "worker", &b)),
        ]);
        let source = EcsSource::new(Introspection::new(&url).unwrap());
        assert_eq!(source.refresh().await.unwrap(), 1);
        assert_eq!(source.cluster().as_deref(), Some("prod"));
        let asked = requests.load(Ordering::SeqCst);

        // Listed: named without a request.
        let id = resolve(
            &source,
            from_path(&format!(
                "/ecstasks.slice/ecstasks-{A}.slice/docker-{a}.scope"
            )),
        )
        .await;
        let task = id.ecs().expect("a task");
        assert_eq!(
            (task.family.as_deref(), task.revision.as_deref()),
            (Some("web"), Some("7"))
        );
        assert_eq!(task.cluster.as_deref(), Some("prod"));
        assert_eq!(task.container.as_deref(), Some("app"));
        assert_eq!(task.image_id.as_deref(), Some("sha256:abc"));
        assert_eq!(id.source.as_deref(), Some(SOURCE));
        assert_eq!(id.missing, None);
        assert_eq!(requests.load(Ordering::SeqCst), asked);

        // Task resource limits off: a plain Docker scope, claimed once the API places it.
        let id = resolve(
            &source,
            from_path(&format!("/system.slice/docker-{b}.scope")),
        )
        .await;
        assert_eq!(id.ecs().map(|t| t.task_id.as_str()), Some(B));
        assert_eq!(
            id.ecs().and_then(|t| t.container.as_deref()),
            Some("worker")
        );
        assert_eq!(requests.load(Ordering::SeqCst), asked + 1);
        // Cached since.
        resolve(
            &source,
            from_path(&format!("/system.slice/docker-{b}.scope")),
        )
        .await;
        assert_eq!(requests.load(Ordering::SeqCst), asked + 1);

        // A container the ECS agent does not know stays a host process, and is not asked
        // about again at once.
        let plain = from_path(&format!("/system.slice/docker-{stranger}.scope"));
        assert_eq!(resolve(&source, plain.clone()).await, plain);
        assert_eq!(resolve(&source, plain.clone()).await, plain);
        assert_eq!(requests.load(Ordering::SeqCst), asked + 2);

        // Another platform's workload, and a host unit: left alone.
        let pod = Identity {
            container_id: Some(a.clone()),
            workload: Workload::Kubernetes(KubePod::default()),
            ..Identity::default()
        };
        assert_eq!(resolve(&source, pod.clone()).await, pod);
        let unit = from_path("/system.slice/sshd.service");
        assert_eq!(resolve(&source, unit.clone()).await, unit);
        assert_eq!(requests.load(Ordering::SeqCst), asked + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_an_answer_the_task_keeps_its_cgroup_id_and_says_why() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let source = EcsSource::new(Introspection::new(&url).unwrap());
        assert!(source.refresh().await.is_err());
        let id = resolve(&source, from_path(&format!("/ecs/{A}/{}", cid('a')))).await;
        let task = id.ecs().expect("still a task");
        assert_eq!(task.task_id, A);
        assert_eq!(
            (task.family.as_ref(), task.container.as_ref()),
            (None, None)
        );
        assert_eq!(id.source, None);
        let missing = id.missing.expect("says what is missing");
        assert!(
            missing.contains(&url) && missing.contains("family"),
            "{missing}"
        );
    }
}
