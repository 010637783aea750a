//! identity: from the crash's cgroup (as the kernel reported it) to container and pod.

pub mod cgroup_path;
