//! intake::pipe: the agent's own pipe helper, for kernels without socket core patterns.
//!
//! At start the agent copies its own binary to `<state dir>/bin/coredump-agent` (checked by
//! hash, replaced atomically) and sets `kernel.core_pattern` to
//! `|<that path> receive %P %I %s %t %u %g %c %d %e`. For every crash the kernel runs it as
//! root in the host's namespaces, with the dump on its stdin ([`super::helper`]). The helper
//! connects to the agent's helper socket and hands over the stream; the agent reads the
//! process's `/proc` while the kernel waits for the helper (`core_pipe_limit` > 0), decides,
//! and receives the dump as it does from the kernel's socket. When no agent answers, the helper
//! writes the dump into the receive directory itself, for the next start.
//!
//! The protocol over the helper socket, one JSON line each way, then the stream:
//! ```text
//! helper → agent   {"v":1,"kernel":{…the % arguments…}}
//! agent  → helper  {"take":true}  or  {"take":false,"reason":"…"}
//! helper → agent   the dump, until shutdown(SHUT_WR)
//! agent  → helper  {"stored":true}  once the dump is durable (then the helper exits)
//! ```

use std::{
    io::{self, BufRead as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{net::UnixListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    DumpEvent, Intake,
    pinned::Pinned,
    reception::{Reception, Refusal, Slots, serve},
};
use crate::pattern::NameFields;

/// The helper socket's file name, in the run directory.
pub const HELPER_SOCKET: &str = "helper.sock";
/// The installed helper's file name, in `<state dir>/bin/`.
pub const HELPER: &str = "coredump-agent";
/// The helper's settings, beside it.
pub const HELPER_CONFIG: &str = "helper.json";
/// What the helper is told by the kernel, in this order (`receive` parses the same order).
pub const HELPER_ARGS: &str = "receive %P %I %s %t %u %g %c %d %e";
/// Longest header line accepted from a helper.
const MAX_LINE: usize = 64 << 10;

/// The first line a helper sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version, 1.
    pub v: u32,
    /// The kernel's `%` arguments.
    pub kernel: NameFields,
}

/// The agent's answer to [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Decision {
    /// Whether to send the dump.
    pub take: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The agent's last line: the dump is safe (or why not).
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    /// Whether the dump is durably in the receive directory.
    pub stored: bool,
}

/// What the installed helper reads at each crash (written by the agent beside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperConfig {
    /// The agent's helper socket.
    pub socket: PathBuf,
    /// Where to write a dump when no agent answers.
    pub receive_dir: PathBuf,
    /// Larger dumps are cut and not stored.
    pub max_dump_size: u64,
    /// Below this many free bytes, no dump is written.
    pub min_free_disk: u64,
    /// zstd level for dumps the helper writes itself (`None`: uncompressed).
    pub compress_level: Option<i32>,
}

/// The pattern that runs the helper at `helper`.
pub fn pattern(helper: &Path) -> String {
    format!("|{} {HELPER_ARGS}", helper.display())
}

/// Whether `pattern` runs an agent's helper (any state dir): a restart after `kill -9` must
/// not back it up as the node's own pattern.
pub fn is_helper_pattern(pattern: &str) -> bool {
    pattern
        .strip_prefix('|')
        .and_then(|p| p.strip_suffix(HELPER_ARGS))
        .is_some_and(|program| program.trim_end().ends_with(&format!("/bin/{HELPER}")))
}

/// Copies this very binary to `<state_dir>/bin/coredump-agent` (a directory only root can
/// enter), unless an identical copy is there, and writes its settings beside it. Returns the
/// helper's path. The copy is written under a temporary name, synced, checked and renamed
/// into place, so the kernel never runs half a binary.
pub fn install(state_dir: &Path, config: &HelperConfig) -> io::Result<PathBuf> {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::OpenOptionsExt as _;
    let bin = crate::state::private_dir(state_dir, "bin")?;
    let helper = bin.join(HELPER);
    let hash = |path: &Path| -> io::Result<Vec<u8>> {
        use io::Read as _;
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf)? {
                0 => return Ok(h.finalize().to_vec()),
                n => h.update(&buf[..n]),
            }
        }
    };
    let me = std::env::current_exe()?;
    let wanted = hash(&me)?;
    if hash(&helper).ok().as_deref() != Some(&wanted[..]) {
        let tmp = bin.join(format!(".{HELPER}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        io::copy(&mut std::fs::File::open(&me)?, &mut out)?;
        out.sync_all()?;
        drop(out);
        if hash(&tmp)? != wanted {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::other(format!(
                "the copy of {} at {} does not match it",
                me.display(),
                tmp.display()
            )));
        }
        std::fs::rename(&tmp, &helper)?;
        std::fs::File::open(&bin)?.sync_all()?;
        tracing::info!(helper = %helper.display(), "installed the pipe helper");
    }
    let json = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
    crate::state::write_atomic(&bin.join(HELPER_CONFIG), &json)?;
    Ok(helper)
}

/// Removes the installed helper and its settings (after the pattern no longer names it).
pub fn uninstall(state_dir: &Path) -> io::Result<bool> {
    let bin = state_dir.join("bin");
    let mut removed = false;
    for name in [HELPER, HELPER_CONFIG] {
        match std::fs::remove_file(bin.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Serves helpers until cancelled: each connection is one crash.
pub async fn run(
    listener: UnixListener,
    concurrent: usize,
    reception: Arc<Reception>,
    out: mpsc::Sender<DumpEvent>,
    cancel: CancellationToken,
) {
    let handle = move |stream, slots: &Slots| {
        if let Err(e) = handle(&reception, stream, slots, &out) {
            tracing::warn!(error = %e, "pipe helper connection");
        }
    };
    serve(listener, concurrent, handle, cancel).await;
}

fn send_line<T: Serialize>(stream: &mut UnixStream, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Reads one line (without buffering past it: the dump follows).
pub fn read_line(stream: &mut impl io::Read) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        if line.len() >= MAX_LINE {
            return Err(io::Error::other("line too long"));
        }
        line.push(byte[0]);
    }
}

/// One helper connection, on a blocking thread.
fn handle(
    reception: &Reception,
    mut stream: UnixStream,
    slots: &Slots,
    out: &mpsc::Sender<DumpEvent>,
) -> io::Result<()> {
    use std::os::fd::AsFd as _;
    // Only root runs helpers (the kernel does); the socket's directory already keeps others
    // out, this keeps out whatever else runs as another user.
    let cred = rustix::net::sockopt::socket_peercred(stream.as_fd())?;
    if !cred.uid.is_root() {
        return Err(io::Error::other(format!(
            "a helper connection from uid {}",
            cred.uid.as_raw()
        )));
    }
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let hello: Hello =
        serde_json::from_slice(&read_line(&mut stream)?).map_err(io::Error::other)?;
    let Some(host_pid) = hello.kernel.host_pid else {
        return Err(io::Error::other("a helper without %P"));
    };
    let span = tracing::info_span!("crash", host_pid, intake = "pipe");
    let _enter = span.enter();
    // The kernel named the pid (%P), and the pidfd holds it while the helper runs.
    let pinned = Pinned::pid(host_pid).map_err(|e| e.to_string());
    let admission = pinned.as_ref().map_err(Clone::clone).and_then(|pinned| {
        reception
            .admit(Intake::Pipe, pinned, hello.kernel)
            .map_err(|e| e.to_string())
    });
    let admission = match admission {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(
                reason,
                "a helper for a process that is not dumping: refused"
            );
            let decision = Decision {
                take: false,
                reason: Some(reason),
            };
            return send_line(&mut stream, &decision);
        }
    };
    let ticket = admission
        .refusal
        .is_none()
        .then(|| slots.enqueue())
        .flatten();
    let refusal = admission
        .refusal
        .clone()
        .or(ticket.is_none().then_some(Refusal::Busy));
    let decision = Decision {
        take: refusal.is_none(),
        reason: refusal.as_ref().map(|r| format!("{r:?}")),
    };
    send_line(&mut stream, &decision)?;
    let received = match (&refusal, ticket) {
        (None, Some(ticket)) => {
            if out
                .blocking_send(DumpEvent::Receiving { host_pid })
                .is_err()
            {
                return Ok(());
            }
            // The helper's writes wait meanwhile (and the kernel, and the process).
            let Some(_slot) = ticket.wait() else {
                return Ok(());
            };
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            reception.receive(admission.header, &mut stream, pinned.as_ref().ok())
        }
        (Some(refusal), _) => Reception::refused(admission.header, refusal),
        (None, None) => Reception::refused(admission.header, &Refusal::Busy),
    };
    if refusal.is_none() {
        let done = Done {
            stored: received.dump.is_some(),
        };
        let _ = send_line(&mut stream, &done);
    }
    let _ = out.blocking_send(DumpEvent::Received(Box::new(received)));
    Ok(())
}

/// Connects to the agent's helper socket without blocking on a full backlog (a stopped agent
/// must never hang the kernel), then with the given timeouts.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => {}
        // A unix socket's connect completes at once or fails: EAGAIN is a full backlog.
        Err(e) => return Err(e.into()),
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// What the helper hears back: the decision line.
pub fn read_decision(stream: &mut UnixStream) -> io::Result<Decision> {
    serde_json::from_slice(&read_line(stream)?).map_err(io::Error::other)
}

/// What the helper hears last.
pub fn read_done(stream: &mut UnixStream) -> io::Result<Done> {
    let mut reader = io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    serde_json::from_str(&line).map_err(io::Error::other)
}

/// Sends the first line (the helper's).
pub fn send_hello(stream: &mut UnixStream, kernel: &NameFields) -> io::Result<()> {
    send_line(
        stream,
        &Hello {
            v: 1,
            kernel: kernel.clone(),
        },
    )
}

/// Parses what the kernel passes the helper (the `%` arguments of [`HELPER_ARGS`], in order).
pub fn parse_args(args: &[std::ffi::OsString]) -> Result<NameFields, String> {
    let arg = |i: usize| -> Result<String, String> {
        args.get(i)
            .map(|a| a.to_string_lossy().into_owned())
            .ok_or_else(|| format!("missing argument {i}: expected {HELPER_ARGS}"))
    };
    let num = |i: usize| -> Result<u64, String> {
        let a = arg(i)?;
        a.parse()
            .map_err(|_| format!("argument {i} ({a:?}) is not a number"))
    };
    let small = |i: usize| -> Result<u32, String> {
        u32::try_from(num(i)?).map_err(|_| format!("argument {i} is out of range"))
    };
    Ok(NameFields {
        host_pid: Some(small(0)?),
        host_tid: Some(small(1)?),
        signal: Some(small(2)?),
        time: Some(num(3)?),
        uid: Some(small(4)?),
        gid: Some(small(5)?),
        core_limit: Some(num(6)?),
        dumpable: Some(small(7)?),
        // The comm the process chose; kept as the kernel wrote it (`/` as `!`). May be empty.
        comm: args.get(8).map(|a| a.to_string_lossy().into_owned()),
        ..NameFields::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_patterns_are_recognized_whatever_the_state_dir() {
        let p = pattern(Path::new("/var/lib/coredump-agent/bin/coredump-agent"));
        assert_eq!(
            p,
            "|/var/lib/coredump-agent/bin/coredump-agent receive %P %I %s %t %u %g %c %d %e"
        );
        assert!(p.len() <= crate::core_pattern::MAX_LEN);
        assert!(is_helper_pattern(&p));
        assert!(is_helper_pattern(&pattern(Path::new(
            "/x/bin/coredump-agent"
        ))));
        assert!(!is_helper_pattern(
            "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"
        ));
        assert!(!is_helper_pattern("core"));
    }

    #[test]
    fn the_kernels_arguments_parse_in_order() {
        let args: Vec<std::ffi::OsString> = [
            "1234",
            "1235",
            "11",
            "1700000000",
            "1000",
            "1000",
            "18446744073709551615",
            "1",
            "my app",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let f = parse_args(&args).unwrap();
        assert_eq!(f.host_pid, Some(1234));
        assert_eq!(f.host_tid, Some(1235));
        assert_eq!(f.signal, Some(11));
        assert_eq!(f.time, Some(1_700_000_000));
        assert_eq!(f.core_limit, Some(u64::MAX));
        assert_eq!(f.comm.as_deref(), Some("my app"));
        assert!(parse_args(&args[..3]).is_err());
        let mut bad = args.clone();
        bad[0] = "12x".into();
        assert!(parse_args(&bad).unwrap_err().contains("not a number"));
    }
}
