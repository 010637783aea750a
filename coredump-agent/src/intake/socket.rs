//! intake::socket: the kernel's coredump socket (Linux 6.16+).
//!
//! With `kernel.core_pattern = @@/run/coredump-agent/kernel.sock` the kernel connects to this
//! socket for every crash, from its own context: the path is looked up in the host's mount
//! namespace whatever namespace the process ran in, so no pod mounts anything. The peer of the
//! connection is the crashed process itself (its pid, credentials and a pidfd).
//!
//! The request protocol (`@@`, `linux/coredump.h`, Linux 6.17+): the kernel sends a
//! `coredump_req` (its size first, then what it supports), the agent answers a `coredump_ack`
//! with exactly one of `COREDUMP_KERNEL` (write the dump here) or `COREDUMP_REJECT` (write
//! nothing: the crash is recorded without a dump), plus `COREDUMP_WAIT` (keep the process until
//! the agent closes the connection, so its `/proc` stays readable), and the kernel confirms
//! with a 4-byte mark, 0 for accepted. Then the core follows, up to the kernel's
//! `shutdown(SHUT_WR)`. Plain `@` (Linux 6.16) sends the core straight away; there the agent
//! can only refuse by closing.
//!
//! The kernel's connect does not block: a full listen backlog is a lost dump. So the accept
//! loop never waits for anything ([`serve`]); each connection is handled on a blocking thread,
//! at most [`Config::concurrent`] receiving at once (the kernel waits for the others, the
//! crashed processes with it), and at most [`MAX_WAITING`] waiting, beyond which the kernel is
//! told to write nothing.
//!
//! [`MAX_WAITING`]: super::reception::MAX_WAITING

use std::{
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::UnixListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    DumpEvent, Intake, Received,
    pinned::Pinned,
    reception::{Reception, Refusal, Slots, serve},
};
use crate::pattern::NameFields;

/// `COREDUMP_KERNEL`: the kernel writes the dump to the socket.
const COREDUMP_KERNEL: u64 = 1 << 0;
/// `COREDUMP_REJECT`: the kernel writes nothing.
const COREDUMP_REJECT: u64 = 1 << 2;
/// `COREDUMP_WAIT`: the kernel keeps the process until the socket is closed.
const COREDUMP_WAIT: u64 = 1 << 3;
/// `COREDUMP_ACK_SIZE_VER0`, the ack this agent sends.
const ACK_SIZE: u32 = 16;
/// `COREDUMP_REQ_SIZE_VER0`, the smallest request.
const REQ_MIN: u32 = 16;
/// A larger request than this is not a kernel's.
const REQ_MAX: u32 = 4096;
/// How long the kernel may take to send its request, or to send more of the dump.
const STALL: Duration = Duration::from_secs(60);

/// Which pattern the kernel was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `@@path`: request, ack and mark before the dump.
    Request,
    /// `@path`: the dump straight away.
    Plain,
}

impl Protocol {
    /// The core_pattern for a socket at `path`.
    pub fn pattern(self, path: &Path) -> String {
        match self {
            Self::Request => format!("@@{}", path.display()),
            Self::Plain => format!("@{}", path.display()),
        }
    }
}

/// Settings of the socket intake.
#[derive(Clone, Debug)]
pub struct Config {
    /// The socket's path (in the host's mount namespace; no symlink on the way).
    pub path: PathBuf,
    /// The protocol of the installed pattern.
    pub protocol: Protocol,
    /// Dumps received at once.
    pub concurrent: usize,
}

/// Binds the socket: a fresh one (a stale file from a killed run is replaced), mode 0600 in a
/// directory only root can enter, so nothing but the kernel (and root) can connect.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no socket file name"))?;
    let dir = crate::state::private_dir(
        dir.parent().unwrap_or(Path::new("/")),
        &dir.file_name().unwrap_or_default().to_string_lossy(),
    )?;
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a directory", path.display()),
            ));
        }
        Ok(_) => std::fs::remove_file(&path)?,
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Accepts the kernel's connections until cancelled, and hands each dump to correlate.
pub async fn run(
    cfg: Config,
    listener: UnixListener,
    reception: Arc<Reception>,
    out: mpsc::Sender<DumpEvent>,
    cancel: CancellationToken,
) {
    tracing::info!(socket = %cfg.path.display(), protocol = ?cfg.protocol, "receiving dumps from the kernel's coredump socket");
    let protocol = cfg.protocol;
    let handle = move |stream, slots: &Slots| handle(&reception, stream, protocol, slots, &out);
    // After cancel, new connections find the socket closed: their crashes are recorded from
    // the probe, without a dump.
    serve(listener, cfg.concurrent, handle, cancel).await;
}

/// One connection, on a blocking thread.
fn handle(
    reception: &Reception,
    mut stream: UnixStream,
    protocol: Protocol,
    slots: &Slots,
    out: &mpsc::Sender<DumpEvent>,
) {
    use std::os::fd::AsFd as _;
    let _ = stream.set_read_timeout(Some(STALL));
    let pinned = match Pinned::peer(stream.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "coredump connection without peer credentials: closed");
            return;
        }
    };
    let span = tracing::info_span!("crash", host_pid = pinned.host_pid, intake = "socket");
    let _enter = span.enter();
    let admission = match reception.admit(Intake::Socket, &pinned, NameFields::default()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "a connection to the coredump socket that is not the kernel's: closed");
            return;
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
    if protocol == Protocol::Request {
        let mask = if refusal.is_none() {
            COREDUMP_KERNEL | COREDUMP_WAIT
        } else {
            COREDUMP_REJECT
        };
        if let Err(e) = negotiate(&mut stream, mask) {
            tracing::warn!(error = %e, "the coredump request protocol failed: no dump");
            let why = format!("the kernel's coredump request protocol failed: {e}");
            let received = Received::without_dump(admission.header, why);
            let _ = out.blocking_send(DumpEvent::Received(Box::new(received)));
            return;
        }
    }
    let received = match (&refusal, ticket) {
        (None, Some(ticket)) => {
            let receiving = DumpEvent::Receiving {
                host_pid: pinned.host_pid,
            };
            if out.blocking_send(receiving).is_err() {
                return;
            }
            // The kernel writes into the socket meanwhile, and waits when it is full.
            let Some(_slot) = ticket.wait() else { return };
            reception.receive(admission.header, &mut stream, Some(&pinned))
        }
        (Some(refusal), _) => Reception::refused(admission.header, refusal),
        (None, None) => Reception::refused(admission.header, &Refusal::Busy),
    };
    let _ = out.blocking_send(DumpEvent::Received(Box::new(received)));
    // Closing the connection (drop) lets the kernel finish the process.
}

/// `coredump_req` in, `coredump_ack` out, mark in.
fn negotiate(stream: &mut UnixStream, want: u64) -> io::Result<()> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    let size = u32::from_le_bytes(head);
    if !(REQ_MIN..=REQ_MAX).contains(&size) {
        return Err(io::Error::other(format!(
            "a coredump request of {size} bytes"
        )));
    }
    let mut rest = vec![0u8; size as usize - 4];
    stream.read_exact(&mut rest)?;
    let size_ack = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let offered = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
    if size_ack < ACK_SIZE {
        return Err(io::Error::other(format!(
            "the kernel takes acks of {size_ack} bytes, fewer than {ACK_SIZE}"
        )));
    }
    let mask = want & offered;
    if mask & (COREDUMP_KERNEL | COREDUMP_REJECT) == 0 {
        return Err(io::Error::other(format!(
            "the kernel offers {offered:#x}, without what is needed ({want:#x})"
        )));
    }
    let mut ack = [0u8; ACK_SIZE as usize];
    ack[0..4].copy_from_slice(&ACK_SIZE.to_le_bytes());
    ack[8..16].copy_from_slice(&mask.to_le_bytes());
    stream.write_all(&ack)?;
    let mut mark = [0u8; 4];
    stream.read_exact(&mut mark)?;
    match u32::from_le_bytes(mark) {
        0 => Ok(()),
        m => Err(io::Error::other(format!(
            "the kernel refused the ack (mark {m}: 1 too small, 2 too large, 3 unsupported, 4 conflicting)"
        ))),
    }
}
