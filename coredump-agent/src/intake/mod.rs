//! intake: how dumps reach the agent.
//!
//! ```text
//! socket  kernel.core_pattern = @@<run dir>/kernel.sock   the kernel connects to the agent
//! pipe    kernel.core_pattern = |<state>/bin/coredump-agent receive %P …   a helper relays it
//! file    the kernel writes into a dump directory the crashing container must mount
//! ```
//! Socket and pipe reach every process on the node with nothing mounted into any pod, and
//! the dump lands in the agent's private receive directory ([`received`]), compressed on the
//! way. The kernel names the crashed process itself (the socket's peer, the helper's `%P`), and
//! the process stays in the kernel until the agent has read its `/proc` ([`pinned`]). File mode
//! is kept for hosts whose core_pattern is managed outside the agent; its dump directory is
//! shared with containers and treated as hostile ([`dir`], [`watch`]).
//!
//! Every intake feeds correlate with [`DumpEvent`]s.

pub mod dir;
pub mod helper;
pub mod pinned;
pub mod pipe;
pub mod received;
pub mod reception;
pub mod socket;
pub mod watch;

use serde::{Deserialize, Serialize};

pub use received::Received;
pub use watch::FileEvent;

/// `--intake` choices, tried in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IntakeMode {
    /// socket where the kernel has it (Linux 6.16+), else pipe.
    Auto,
    /// The kernel connects to the agent's socket (`@@` core_pattern, Linux 6.16+).
    Socket,
    /// The kernel runs the agent's own helper, which hands the dump to the agent.
    Pipe,
    /// The kernel writes files into `--dump-dir`, which crashing containers must mount.
    File,
}

/// What brought a dump (recorded with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    /// A file the kernel wrote into the dump directory.
    #[default]
    File,
    /// The kernel's coredump socket.
    Socket,
    /// The agent's pipe helper.
    Pipe,
}

impl Intake {
    /// Its name, as `--intake` and records spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Socket => "socket",
            Self::Pipe => "pipe",
        }
    }

    /// Whether dumps arrive in the receive directory (socket, pipe) rather than the dump
    /// directory.
    pub fn received(self) -> bool {
        !matches!(self, Self::File)
    }
}

/// One intake to try, and why it is a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The intake.
    pub intake: Intake,
    /// Why it is offered (for `check` and the start-up log).
    pub why: String,
}

/// The intakes to try, in order, for the `--intake` list on a kernel whose
/// `/proc/sys/kernel/core_modes` says `core_modes` (empty when the file does not exist: a
/// kernel older than 6.16, which has file and pipe patterns only).
pub fn candidates(preferences: &[IntakeMode], core_modes: &str) -> Vec<Candidate> {
    let socket = core_modes.split_whitespace().any(|m| m == "socket");
    let mut out: Vec<Candidate> = Vec::new();
    let mut offer = |intake: Intake, why: String| {
        if !out.iter().any(|c| c.intake == intake) {
            out.push(Candidate { intake, why });
        }
    };
    for pref in preferences {
        match pref {
            IntakeMode::Auto | IntakeMode::Socket if socket => offer(
                Intake::Socket,
                "the kernel has socket core patterns (kernel.core_modes lists socket)".into(),
            ),
            IntakeMode::Auto | IntakeMode::Socket => {}
            IntakeMode::File => offer(
                Intake::File,
                "--intake file: the kernel writes into --dump-dir".into(),
            ),
            IntakeMode::Pipe => offer(Intake::Pipe, "--intake pipe".into()),
        }
        if *pref == IntakeMode::Auto {
            let why = if socket {
                "fallback if the socket pattern cannot be installed".to_owned()
            } else {
                format!(
                    "this kernel has no socket core patterns (Linux 6.16+; core_modes: {:?})",
                    core_modes.trim()
                )
            };
            offer(Intake::Pipe, why);
        }
    }
    out
}

/// What an intake tells correlate.
#[derive(Debug)]
pub enum DumpEvent {
    /// A name in the dump directory changed (file mode).
    File(FileEvent),
    /// The kernel began handing over the dump of this host pid (socket, pipe): its crash
    /// stays pending however long the dump takes.
    Receiving {
        /// The crashed process.
        host_pid: u32,
    },
    /// A dump handed over by the kernel was received, refused or cut short.
    Received(Box<Received>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intakes(prefs: &[IntakeMode], modes: &str) -> Vec<Intake> {
        candidates(prefs, modes)
            .into_iter()
            .map(|c| c.intake)
            .collect()
    }

    #[test]
    fn auto_is_socket_then_pipe_where_the_kernel_has_sockets() {
        use IntakeMode::*;
        assert_eq!(
            intakes(&[Auto], "file\npipe\nsocket\n"),
            [Intake::Socket, Intake::Pipe]
        );
        assert_eq!(intakes(&[Auto], ""), [Intake::Pipe]);
        assert!(
            candidates(&[Auto], "file pipe")[0]
                .why
                .contains("no socket")
        );
        assert_eq!(intakes(&[Socket], "file pipe"), []);
        assert_eq!(
            intakes(&[Socket, File], "file pipe socket"),
            [Intake::Socket, Intake::File]
        );
        assert_eq!(intakes(&[Socket, File], "file pipe"), [Intake::File]);
        assert_eq!(
            intakes(&[File, Auto, Pipe], ""),
            [Intake::File, Intake::Pipe]
        );
    }
}
