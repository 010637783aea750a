//! The `coredump-agent` command line: argument structs in `args`, one module per subcommand.
//!
//! Exit codes: 0 success (or found), 1 nothing matched / a check failed, 2 usage or runtime error.

pub mod args;
mod check;
mod debug;
mod find;
mod get;
mod health;
mod info;
mod probe;
mod restore;
mod run;

use std::process::ExitCode;

use clap::Parser as _;

use args::{Args, Command, LogFormat};

/// Exit code for "nothing matched" or "a check failed".
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code for an error.
pub const EXIT_ERROR: u8 = 2;

/// Parses the command line, runs the subcommand, and maps the outcome to an exit code.
///
/// Two internal subcommands are dispatched before anything else (no runtime, no threads, no
/// argument parser that could take a crashed process's name for a flag): `receive`, the pipe
/// helper the kernel runs for each crash, and `write-sysctl`, which writes a socket
/// core_pattern from the host's mount namespace.
pub fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match raw.get(1).and_then(|a| a.to_str()) {
        Some("receive") => return crate::intake::helper::main(&raw[2..]),
        Some("write-sysctl") => return crate::core_pattern::write_sysctl_main(&raw[2..]),
        _ => {}
    }
    let args = Args::parse();
    init_tracing(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Command::Probe(a) => probe::execute(a).await,
            Command::Run(a) => run::execute(*a).await,
            Command::Find(a) => find::execute(*a).await,
            Command::Get(a) => get::execute(*a).await,
            Command::Info(a) => info::execute(*a).await,
            Command::Debug(a) => debug::execute(*a).await,
            Command::Check(a) => check::execute(*a).await,
            Command::Health(a) => health::execute(a).await,
            Command::Restore(a) => restore::execute(*a),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("COREDUMP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Largest record `get` and `info` read: records are a few KiB; a bucket is anyone's.
pub const MAX_RECORD: u64 = crate::lookup::MAX_RECORD;

/// The record stored at `key`, at most [`MAX_RECORD`] bytes; `None` if there is none.
async fn read_record(store: &crate::store::AnyStore, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    use anyhow::Context as _;
    use tokio::io::AsyncReadExt as _;
    let reader = match crate::store::Store::open(store, key).await {
        Ok(r) => r,
        Err(crate::store::StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {key}")),
    };
    let mut buf = Vec::new();
    reader
        .take(MAX_RECORD + 1)
        .read_to_end(&mut buf)
        .await
        .with_context(|| format!("reading {key}"))?;
    if buf.len() as u64 > MAX_RECORD {
        anyhow::bail!("{key} is larger than a record can be ({MAX_RECORD} bytes): not read");
    }
    Ok(Some(buf))
}

/// Text from a bucket, made safe for a terminal: control characters (escape sequences that
/// could rewrite the screen, carriage returns that hide what came before) are shown escaped.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
        assert_eq!(printable("a\x1b[2Jb\rc\n"), "a\\u{1b}[2Jb\\rc\\n");
    }
}
