//! notify: once the store has confirmed a dump, tell whoever should know. The last step of
//! delivery (`deliver` calls it after the dump and its record are stored), and an output of
//! the pipeline, not part of naming the crash.
//!
//! Best effort: the dump is already stored when this runs; a notice refused or lost costs a
//! log line, never the dump. Today there is one kind: a Kubernetes Event on the crashed pod
//! ([`events`]).

pub mod events;

use crate::record::Record;

/// Where notices go; the default sends none.
#[derive(Clone, Debug, Default)]
pub struct Notify {
    /// A `CoreDumpStored` Event on the crashed pod, when the Kubernetes API is available.
    pub events: Option<events::PodEvents>,
}

impl Notify {
    /// Tells every configured receiver that `record`'s dump is stored at `uri`.
    pub async fn dump_stored(&self, record: &Record, uri: &str) {
        if let Some(events) = &self.events {
            events.dump_stored(record, uri).await;
        }
    }
}
