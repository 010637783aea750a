//! `coredump-agent restore`: puts back the kernel settings the agent changed, from the
//! backups in the state dir. The DaemonSet's preStop hook runs it (an exec hook needs no
//! shell), so the node's settings come back even if the agent is killed after its grace
//! period.

use std::process::ExitCode;

use super::args::RestoreArgs;
use crate::{core_pattern, intake::Intake};

/// Restores what the agent installed (recorded in the state dir), or what the flags say it
/// manages; then removes the pipe helper if it installed one.
pub fn execute(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let wanted = args.node.managed_sysctls(Intake::File, None)?;
    let state_dir = &args.state.state_dir;
    let restored = core_pattern::restore_backups(args.node.sysctl(), &wanted, state_dir)?;
    super::run::remove_helper(&args.node, state_dir);
    for stale in core_pattern::stale_backups(state_dir, &wanted) {
        tracing::warn!(sysctl = stale.setting.name(), previous = %stale.previous, backup = %stale.backup.display(), fix = %stale.fix(), "not managed with these flags: left as is");
    }
    tracing::info!(backups = restored, "kernel core dump settings restored");
    Ok(ExitCode::SUCCESS)
}
