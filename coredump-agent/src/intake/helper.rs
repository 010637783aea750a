//! intake::helper: `coredump-agent receive`, the pipe helper the kernel runs for every crash.
//!
//! It runs as root in the host's namespaces, with the dump on stdin and the kernel waiting for
//! it, so it does little and nothing risky: no shell, no network, no path from the crashing
//! process, no symlink followed, and a deadline on every wait. It hands the stream to the
//! running agent ([`super::pipe`]). When no agent answers within [`DECIDE`], it receives the
//! dump itself into the receive directory, exactly as the agent would ([`Reception`]), within
//! the size and disk limits, for the next agent to store.
//!
//! Its settings come from `helper.json` beside its own binary, written by the agent, which
//! must be root's and writable by no one else.

use std::{
    ffi::OsString,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use super::{
    Intake,
    pinned::Pinned,
    pipe::{self, HelperConfig},
    received::{Limits, ReceiveDir},
    reception::Reception,
};
use crate::{enrich::Enricher, pattern::NameFields, policy::Policy, store::Zstd};

/// How long the agent may take to decide (the kernel, and the crashed process, wait).
const DECIDE: Duration = Duration::from_secs(5);
/// How long the agent may stall while the dump streams, and take to make it durable.
const STREAM: Duration = Duration::from_secs(120);

/// `coredump-agent receive %P %I %s %t %u %g %c %d %e`. Exit codes are for the kernel's log.
pub fn main(args: &[OsString]) -> ExitCode {
    // A helper that crashes must not dump into itself (the kernel also gives it RLIMIT_CORE 1).
    let _ = crate::sys::set_not_dumpable();
    let kernel = match pipe::parse_args(args) {
        Ok(k) => k,
        Err(e) => return fail(&format!("bad arguments: {e}")),
    };
    let config = match load_config() {
        Ok(c) => c,
        Err(e) => return fail(&format!("settings: {e}")),
    };
    match to_agent(&config, &kernel) {
        Ok(()) | Err(Handover::Refused) => ExitCode::SUCCESS,
        Err(Handover::Broken(e)) => fail(&format!("handing the dump to the agent: {e}")),
        Err(Handover::NoAgent(no_agent)) => match by_itself(&config, kernel) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!(
                "no agent ({no_agent}), and writing the dump without it failed: {e}"
            )),
        },
    }
}

/// Says why in the kernel's log (the helper has no stderr anyone reads).
fn fail(why: &str) -> ExitCode {
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // One write: each write is one record of the kernel's log.
        let _ = kmsg.write_all(format!("<4>coredump-agent receive: {why}\n").as_bytes());
    }
    ExitCode::FAILURE
}

/// The settings beside this binary, if root owns them and only root can change them.
fn load_config() -> io::Result<HelperConfig> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .unwrap_or(Path::new("/"))
        .join(pipe::HELPER_CONFIG);
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    let meta = file.metadata()?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must be root's and writable by root only",
            path.display()
        )));
    }
    serde_json::from_reader(io::BufReader::new(file)).map_err(io::Error::other)
}

/// How handing over went.
enum Handover {
    /// No agent answered in time: nothing was read from stdin yet.
    NoAgent(io::Error),
    /// The agent does not want the dump (rate limit, disk); the crash is recorded.
    Refused,
    /// It broke off after the dump started to flow: stdin is partly consumed.
    Broken(io::Error),
}

fn to_agent(config: &HelperConfig, kernel: &NameFields) -> Result<(), Handover> {
    let mut stream = pipe::connect(&config.socket, DECIDE).map_err(Handover::NoAgent)?;
    pipe::send_hello(&mut stream, kernel).map_err(Handover::NoAgent)?;
    let decision = pipe::read_decision(&mut stream).map_err(Handover::NoAgent)?;
    if !decision.take {
        return Err(Handover::Refused);
    }
    stream
        .set_write_timeout(Some(STREAM))
        .and_then(|()| stream.set_read_timeout(Some(STREAM)))
        .map_err(Handover::Broken)?;
    io::copy(&mut io::stdin().lock(), &mut stream).map_err(Handover::Broken)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(Handover::Broken)?;
    // Exiting lets the kernel finish the process: only once the agent has the dump safe.
    let done = pipe::read_done(&mut stream).map_err(Handover::Broken)?;
    if done.stored {
        Ok(())
    } else {
        Err(Handover::Broken(io::Error::other(
            "the agent could not store the dump",
        )))
    }
}

/// No agent: receives the dump into the receive directory as the agent would.
fn by_itself(config: &HelperConfig, kernel: NameFields) -> io::Result<()> {
    let host_pid = kernel.host_pid.unwrap_or_default();
    let pinned = Pinned::pid(host_pid)?;
    let reception = Reception {
        dir: Arc::new(ReceiveDir::open(&config.receive_dir)?),
        // No cgroup resolver or pod names here: the agent names the pod when it stores it.
        enricher: Enricher::default(),
        policy: Policy::new(0, config.min_free_disk, config.max_dump_size, false),
        limits: Limits {
            max_size: config.max_dump_size,
            min_free_disk: config.min_free_disk,
            compress: config
                .compress_level
                .map(|level| Zstd { level, workers: 0 }),
        },
        scan: None,
    };
    let admission = reception
        .admit(Intake::Pipe, &pinned, kernel)
        .map_err(io::Error::other)?;
    if let Some(refusal) = &admission.refusal {
        // Recorded for the next agent: the crash, without its dump.
        let received = Reception::refused(admission.header, refusal);
        let why = received.missing.clone().unwrap_or_default();
        reception.dir.record_only(received.header, &why)?;
        return Err(io::Error::other(why));
    }
    let received = reception.receive(admission.header, &mut io::stdin().lock(), None);
    match received.missing {
        None => Ok(()),
        Some(why) => Err(io::Error::other(why)),
    }
}

/// The helper's settings for this agent.
pub fn config(socket: PathBuf, receive_dir: PathBuf, limits: &Limits) -> HelperConfig {
    HelperConfig {
        socket,
        receive_dir,
        max_dump_size: limits.max_size,
        min_free_disk: limits.min_free_disk,
        compress_level: limits.compress.map(|z| z.level),
    }
}
