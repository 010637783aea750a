//! The probe's own log: records the eBPF side writes with `aya-log-ebpf` (rare trouble only: a
//! full ring buffer, a failed read on a core-dumping delivery), forwarded to `tracing`.

use tokio_util::sync::CancellationToken;

/// Forwards aya-log records to `tracing`, as events of this module with the probe's source
/// location as fields.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let source = record.module_path().unwrap_or_default();
        let line = record.line().unwrap_or_default();
        match record.level() {
            log::Level::Error => tracing::error!(source, line, "probe: {message}"),
            log::Level::Warn => tracing::warn!(source, line, "probe: {message}"),
            log::Level::Info => tracing::info!(source, line, "probe: {message}"),
            log::Level::Debug => tracing::debug!(source, line, "probe: {message}"),
            log::Level::Trace => tracing::trace!(source, line, "probe: {message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the probe's log map.
pub type ProbeLogger = aya_log::EbpfLogger<ToTracing>;

/// Takes the probe's log map out of `ebpf`.
pub fn init(ebpf: &mut aya::Ebpf) -> Result<ProbeLogger, aya_log::Error> {
    aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing)
}

/// Forwards the probe's log records until `cancel` fires, then what is left.
pub async fn forward(logger: ProbeLogger, cancel: CancellationToken) {
    let mut logger = match crate::sys::async_ring(logger) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "reading the probe's log: its rare trouble will not be logged");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            ready = logger.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the probe's log");
                    return;
                }
            },
        }
    }
    logger.get_mut().flush();
}
