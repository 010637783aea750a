//! `coredump-agent probe`: print kernel crash events as JSON lines.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::args::ProbeArgs;
use crate::probe::{self, Probe};

/// Runs the probe until a signal (or `--count` crashes).
pub async fn execute(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let probe = Probe::load(args.hook).context("loading the crash probe")?;
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(probe::run(probe, tx, cancel.clone()));
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    loop {
        tokio::select! {
            () = super::shutdown_signal() => break,
            crash = rx.recv() => {
                let Some(crash) = crash else { break };
                serde_json::to_writer(&mut stdout, &crash)?;
                stdout.write_all(b"\n")?;
                stdout.flush()?;
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
        }
    }
    cancel.cancel();
    let stats = reader.await.context("probe task")??;
    if stats.dropped > 0 {
        eprintln!(
            "warning: {} crash events were lost (ring buffer full)",
            stats.dropped
        );
    }
    Ok(ExitCode::SUCCESS)
}
