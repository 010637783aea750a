//! coredump-agent: collects core dumps on Kubernetes nodes.
//!
//! Pipeline (one node): `probe` (kernel crash events, read and journaled by `enrich`) and
//! `intake` (dumps the kernel hands over through its socket or the pipe helper, or files in a
//! dump directory) feed `correlate`, which joins them and applies the `policy`; `identity`
//! names the pod; `spool` persists the joined record (a [`job::Job`]); `deliver` stores it,
//! only then deletes the dump, and has `notify` tell who should know. `lookup` finds dumps by
//! pod tags.
#![deny(unsafe_code)]

/// An error and its causes on one line, `a: b: c` (what `{:#}` of anyhow prints).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

pub mod cli;
pub mod core_pattern;
pub mod correlate;
pub mod crash;
pub mod deliver;
pub mod enrich;
pub mod health;
pub mod http;
pub mod identity;
pub mod intake;
pub mod job;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod pattern;
pub mod policy;
pub mod probe;
pub mod record;
pub mod report;
pub mod spool;
pub mod state;
pub mod store;
pub mod sys;
#[cfg(any(test, feature = "test-support"))]
pub mod testdata;
