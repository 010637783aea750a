//! coredump-agent: collects core dumps on Kubernetes nodes.
//!
//! Pipeline (one node): `probe` (kernel crash events) and `watch` (finished dump files) feed
//! `correlate`, which joins them; `identity` names the pod; `spool` persists the joined record;
//! `store` uploads and only then is the dump deleted. `lookup` finds dumps by pod tags.
#![deny(unsafe_code)]

pub mod cli;
pub mod crash;
pub mod identity;
pub mod pattern;
pub mod probe;
pub mod sys;
