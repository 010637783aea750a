//! `cargo xtask`: developer tasks. The eBPF object itself is built by aya-build from the
//! agent's build.rs; xtask makes sure the toolchain for that exists, then builds, runs, tests.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Developer tasks for coredump-agent.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building needs (nightly rust-src, LLVM 22, bpf-linker) and what the tests
    /// need, at pinned versions (xtask/tools/python.txt: moto, kubectl, kubernetes-validate, in
    /// a virtualenv under target/tools that the tests use by path). Idempotent: a second run
    /// checks versions and does nothing. Ends with the version of every tool.
    Setup,
    /// Build everything and run the agent on this machine (as root), with a local store.
    ///
    /// Without arguments: `coredump-agent run` with its state, receive directory and store
    /// under target/coredump-dev, and the best intake of this machine (socket or pipe). Anything
    /// after `--` replaces those arguments.
    Run {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
        /// Arguments for `coredump-agent`.
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Set up, then run every test (unit, kernel probe, end-to-end, S3). Root tests skip when
    /// not root, except under CI=true where they must run.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy --all-targets -- -D warnings`.
    Lint,
    /// Benchmarks, each reported against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    match args.task {
        Task::Setup => setup::ensure(&root),
        Task::Run {
            release,
            agent_args,
        } => {
            setup::ensure(&root)?;
            let mut build = cargo(&root);
            build.args(["build", "--package", "coredump-agent"]);
            if release {
                build.arg("--release");
            }
            status(&mut build)?;
            let profile = if release { "release" } else { "debug" };
            let bin = root.join("target").join(profile).join("coredump-agent");
            let dev = root.join("target").join("coredump-dev");
            let agent_args = if agent_args.is_empty() {
                default_run_args(&dev)
            } else {
                agent_args
            };
            let mut cmd = if setup::is_root() {
                Command::new(&bin)
            } else {
                eprintln!("xtask: not root: running the agent with sudo -E");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.args(&agent_args);
            eprintln!("xtask: {}", render(&cmd));
            status(&mut cmd)
        }
        Task::Test { cargo_args } => {
            setup::ensure(&root)?;
            let mut cmd = cargo(&root);
            cmd.args(["test", "--workspace", "--exclude", "coredump-ebpf"])
                .env("COREDUMP_TOOLS_DIR", setup::tools_dir(&root));
            cmd.args(&cargo_args);
            // The tests that need root, the kernel or the test tools are #[ignore]d, so that a
            // plain `cargo test` reports them ignored rather than passed; here they run.
            if !cargo_args.iter().any(|a| a == "--") {
                cmd.arg("--");
            }
            if setup::is_root() {
                cmd.arg("--include-ignored");
            } else {
                eprintln!(
                    "xtask: not root: the tests that need root (BPF, cgroups, core_pattern) and the test tools stay ignored; run as root to include them"
                );
            }
            status(&mut cmd)
        }
        Task::Lint => {
            status(cargo(&root).args(["fmt", "--all", "--check"]))?;
            status(cargo(&root).args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        }
        Task::Bench { which } => {
            setup::ensure(&root)?;
            bench::run(&root, which)
        }
    }
}

/// The agent's arguments for `cargo xtask run` without arguments: everything local, under
/// target/, and the best intake this machine has (the kernel's coredump socket where it has
/// one, else the agent's pipe helper), whose core_pattern is restored on exit.
fn default_run_args(dev: &Path) -> Vec<String> {
    let dev = dev.display();
    vec![
        "run".into(),
        // The default store: a local folder in the state dir (`find --state-dir` finds it).
        format!("--state-dir={dev}/state"),
        format!("--receive-dir={dev}/received"),
        format!("--run-dir={dev}/run"),
        format!("--dump-dir={dev}/dumps"),
        "--node-name=dev-node".into(),
    ]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion; a non-zero exit is an error naming the command.
fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("running `{}`", render(cmd)))?;
    if !st.success() {
        bail!("`{}` failed: {st}", render(cmd));
    }
    Ok(())
}
