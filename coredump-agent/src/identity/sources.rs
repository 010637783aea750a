//! identity::sources: the seam between what a crash's cgroup says (a pod uid, an ECS task id,
//! a container id) and the names of its workload.
//!
//! A [`WorkloadSource`] names the workloads of one platform. [`Sources`] asks each, in the
//! order it was given them; the agent gives them in this order:
//!
//! 1. **Kubernetes** ([`super::PodResolver`]): pods, from the API watch's cache, then the
//!    kubelet's files. Memory and directory listings only.
//! 2. **Amazon ECS** ([`super::ecs::EcsSource`]): tasks, from the ECS agent's introspection API,
//!    cached; at most one request, on a miss.
//!
//! Cheapest first. A source names only its own kind of workload (the one the cgroup path
//! already said, e.g. `…pod<uid>.slice` or `ecstasks-<id>.slice`), or a process the path
//! placed in a container but in no pod or task (a container runtime that lays out its cgroups
//! its own way), which the first source that knows the container claims. What no source
//! claims stays a host process, named by its systemd unit.

use std::sync::Arc;

use super::Identity;

/// One platform's names for workloads.
pub trait WorkloadSource: std::fmt::Debug + Send + Sync {
    /// What `source` says of names from here, and what logs and `check` call it.
    fn name(&self) -> &'static str;

    /// Fills in the names of `identity`'s workload, in place. Leaves alone an identity whose
    /// workload is another platform's, and one whose cgroup is unknown. Called on a blocking
    /// thread when the crash event arrives (the container most likely still exists): may wait
    /// briefly, never long.
    fn resolve(&self, identity: &mut Identity);
}

/// The sources of this agent, in the order they are asked.
#[derive(Clone, Debug, Default)]
pub struct Sources(Vec<Arc<dyn WorkloadSource>>);

impl Sources {
    /// These sources, asked in this order.
    pub fn new(sources: Vec<Arc<dyn WorkloadSource>>) -> Self {
        Self(sources)
    }

    /// Names `identity`'s workload: each source in turn.
    pub fn resolve(&self, identity: &mut Identity) {
        if identity.unresolved.is_some() {
            return;
        }
        for source in &self.0 {
            source.resolve(identity);
        }
    }

    /// The sources' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|s| s.name()).collect()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
