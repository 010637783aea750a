//! identity::ecs::cache: what the ECS agent said about this host's tasks, kept in memory, so
//! that naming a crash makes no request when its task is known, and a task that stopped and
//! was cleaned up right after its crash is still named.
//!
//! Pure bookkeeping, no I/O: the source ([`super::EcsSource`]) feeds it what the API answers.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::introspection::{Container, Task};

/// How long a task the API no longer lists stays named. The API itself lists stopped tasks
/// until the ECS agent's cleanup (3 h by default, `ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`); a
/// host configured to clean up at once still gets its crash backlog named.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most tasks remembered; beyond, those seen longest ago are forgotten first.
pub const MAX_TASKS: usize = 4096;
/// How long a container the API did not know is not asked about again: a crash loop of a
/// container outside ECS must not cost one request per crash.
pub const MISS_TTL: Duration = Duration::from_secs(30);
/// Most misses remembered.
const MAX_MISSES: usize = 4096;

/// Tasks by id, and the index of their containers.
#[derive(Debug, Default)]
pub struct Cache {
    tasks: HashMap<String, Entry>,
    by_container: HashMap<String, String>,
    misses: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Entry {
    task: Task,
    /// When the API last listed it.
    seen: Instant,
}

/// A task found for a crash, and its container when the crash's container is one of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The task.
    pub task: Task,
    /// The crashed container, as the task lists it.
    pub container: Option<Container>,
}

impl Cache {
    /// Remembers what the API listed at `now`. Tasks it no longer lists are kept until
    /// [`FORGET_AFTER`].
    pub fn remember(&mut self, tasks: impl IntoIterator<Item = Task>, now: Instant) {
        for task in tasks {
            let Some(id) = task.id().map(str::to_owned) else {
                continue;
            };
            for c in &task.containers {
                if !c.docker_id.is_empty() {
                    self.by_container.insert(c.docker_id.clone(), id.clone());
                    self.misses.remove(&c.docker_id);
                }
            }
            self.tasks.insert(id, Entry { task, seen: now });
        }
        self.prune(now);
    }

    /// The task of a crash: by its container id, else by the task id its cgroup named. A
    /// container the API places in another task than the cgroup's is not taken: the cgroup
    /// (the kernel's) decides, and the container stays unnamed.
    pub fn find(&self, task_id: Option<&str>, container_id: Option<&str>) -> Option<Found> {
        let by_container = container_id
            .and_then(|c| self.by_container.get(c))
            .filter(|t| task_id.is_none_or(|id| id == t.as_str()));
        let task = &self
            .tasks
            .get(by_container.map(String::as_str).or(task_id)?)?
            .task;
        let container =
            container_id.and_then(|id| task.containers.iter().find(|c| c.docker_id == id).cloned());
        Some(Found {
            task: task.clone(),
            container,
        })
    }

    /// Notes that the API did not know `key` (a container id) at `now`.
    pub fn missed(&mut self, key: &str, now: Instant) {
        if self.misses.len() >= MAX_MISSES {
            self.misses
                .retain(|_, at| now.duration_since(*at) < MISS_TTL);
        }
        if self.misses.len() < MAX_MISSES {
            self.misses.insert(key.to_owned(), now);
        }
    }

    /// Whether the API said it did not know `key` less than [`MISS_TTL`] ago.
    pub fn recently_missed(&self, key: &str, now: Instant) -> bool {
        self.misses
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < MISS_TTL)
    }

    /// Tasks remembered.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no task is remembered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Forgets tasks not listed for [`FORGET_AFTER`], then the oldest beyond [`MAX_TASKS`].
    fn prune(&mut self, now: Instant) {
        self.tasks
            .retain(|_, e| now.duration_since(e.seen) < FORGET_AFTER);
        if self.tasks.len() > MAX_TASKS {
            let mut seen: Vec<(Instant, String)> = self
                .tasks
                .iter()
                .map(|(id, e)| (e.seen, id.clone()))
                .collect();
            seen.sort();
            for (_, id) in seen.into_iter().take(self.tasks.len() - MAX_TASKS) {
                self.tasks.remove(&id);
            }
        }
        let tasks = &self.tasks;
        self.by_container.retain(|_, task| tasks.contains_key(task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "488fc5b8b77f4fb7984bdc4aba948f9f";
    const B: &str = "e95a40efbde84cbc8600660a109ec194";

    fn task(id: &str, containers: &[(&str, &str)]) -> Task {
        Task {
            arn: format!("arn:aws:ecs:us-west-2:012345678910:task/prod/{id}"),
            known_status: Some("RUNNING".into()),
            family: Some("web".into()),
            version: Some("3".into()),
            containers: containers
                .iter()
                .map(|(name, docker_id)| Container {
                    docker_id: (*docker_id).to_owned(),
                    name: Some((*name).to_owned()),
                    ..Container::default()
                })
                .collect(),
        }
    }

    #[test]
    fn finds_by_container_then_by_task_id() {
        let (c1, c2, other) = ("1".repeat(64), "2".repeat(64), "9".repeat(64));
        let mut cache = Cache::default();
        let now = Instant::now();
        cache.remember(
            [
                task(A, &[("app", &c1), ("sidecar", &c2)]),
                task(B, &[("db", &other)]),
            ],
            now,
        );
        let found = cache.find(None, Some(&c2)).unwrap();
        assert_eq!(found.task.id(), Some(A));
        assert_eq!(found.container.unwrap().name.as_deref(), Some("sidecar"));
        let found = cache.find(Some(A), Some(&c1)).unwrap();
        assert_eq!(found.container.unwrap().name.as_deref(), Some("app"));
        // Known task, unknown container (started since the last listing).
        let found = cache.find(Some(A), Some(&"3".repeat(64))).unwrap();
        assert_eq!((found.task.id(), found.container), (Some(A), None));
        // The API puts the container in another task than its cgroup does: the cgroup's task,
        // without that container.
        let found = cache.find(Some(A), Some(&other)).unwrap();
        assert_eq!((found.task.id(), found.container), (Some(A), None));
        assert_eq!(cache.find(None, Some(&"3".repeat(64))), None);
        assert_eq!(cache.find(None, None), None);
        assert_eq!(cache.find(Some("f".repeat(32).as_str()), None), None);
    }

    #[test]
    fn tasks_the_api_forgot_stay_named_for_a_while() {
        let c1 = "1".repeat(64);
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.remember([task(A, &[("app", &c1)])], t0);
        // Cleaned up by the ECS agent: later listings no longer have it.
        cache.remember([task(B, &[])], t0 + Duration::from_secs(60));
        assert_eq!(cache.find(None, Some(&c1)).unwrap().task.id(), Some(A));
        cache.remember([], t0 + FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(cache.find(None, Some(&c1)), None);
        assert_eq!(cache.len(), 1, "B was listed later");
    }

    #[test]
    fn bounded() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        for i in 0..MAX_TASKS + 10 {
            let id = format!("{i:032x}");
            let cid = format!("{i:064x}");
            cache.remember(
                [task(&id, &[("c", &cid)])],
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(cache.len(), MAX_TASKS);
        assert_eq!(cache.by_container.len(), MAX_TASKS);
        // The oldest went first.
        assert_eq!(cache.find(None, Some(&format!("{:064x}", 0))), None);
        assert!(
            cache
                .find(None, Some(&format!("{:064x}", MAX_TASKS + 9)))
                .is_some()
        );

        let now = t0;
        for i in 0..MAX_MISSES + 10 {
            cache.missed(&i.to_string(), now);
        }
        assert!(cache.misses.len() <= MAX_MISSES);
        assert!(cache.recently_missed("1", now));
        assert!(!cache.recently_missed("1", now + MISS_TTL));
    }
}
