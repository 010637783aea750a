//! coredump-agent: collects core dumps on Kubernetes nodes.
//!
//! Pipeline (one node): `probe` (kernel crash events) and `watch` (finished dump files) feed
//! `correlate`, which joins them; `identity` names the pod; `spool` persists the joined record;
//! `store` uploads and only then is the dump deleted. `lookup` finds dumps by pod tags.
#![deny(unsafe_code)]

pub mod cli;
pub mod core_pattern;
pub mod correlate;
pub mod crash;
pub mod deliver;
pub mod enrich;
pub mod health;
pub mod identity;
pub mod intake;
pub mod lookup;
pub mod metrics;
pub mod pattern;
pub mod probe;
pub mod record;
pub mod spool;
pub mod store;
pub mod sys;
#[cfg(any(test, feature = "test-support"))]
pub mod testdata;
pub mod watch;
