//! `cargo xtask bench intake`: one large crash through each intake, same core, same S3 server,
//! same run, against the seed project's path (a pigz pipe into a file, then boto3
//! `upload_file`).
//!
//! For each: the time from the crash to "stored", how long the crashed process stays in the
//! kernel (a pod's restart waits for it), and the bytes the node's disk took (from
//! `/proc/diskstats`, after a sync; the S3 server keeps its objects in /dev/shm so they do not
//! count). The crashing process is the tests' `crasher big MIB`, optimized builds throughout.
//! Changes kernel.core_pattern (and core_pipe_limit) and puts them back, even on failure.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::servers::{BUCKET, S3Server};
use crate::{setup, status};

const MIB: u64 = 1 << 20;
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const PIPE_LIMIT: &str = "/proc/sys/kernel/core_pipe_limit";

/// Puts core_pattern and core_pipe_limit back on drop, and holds the tests' machine-wide lock
/// meanwhile (a test run at the same time would fight over the pattern).
pub(super) struct KernelState {
    saved: Vec<(&'static str, String)>,
    _lock: File,
}

impl KernelState {
    pub(super) fn save() -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/coredump-agent-tests.lock")?;
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "could not take the test lock: {}",
                std::io::Error::last_os_error()
            );
        }
        let saved = [CORE_PATTERN, PIPE_LIMIT]
            .into_iter()
            .map(|p| Ok((p, std::fs::read_to_string(p)?.trim_end().to_owned())))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { saved, _lock: lock })
    }
}

impl Drop for KernelState {
    fn drop(&mut self) {
        for (path, value) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(path, value) {
                eprintln!("xtask bench: could not restore {path} to {value:?}: {e}");
            }
        }
    }
}

/// Sectors written to the device that holds `path`, from `/proc/diskstats`.
fn bytes_written(path: &Path) -> anyhow::Result<u64> {
    let dev = std::fs::metadata(path)?.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let stats = std::fs::read_to_string("/proc/diskstats")?;
    for line in stats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[0] == major.to_string() && f[1] == minor.to_string() {
            return Ok(f[9].parse::<u64>()? * 512);
        }
    }
    bail!(
        "device {major}:{minor} of {} is not in /proc/diskstats",
        path.display()
    )
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// One measured crash.
struct Row {
    what: &'static str,
    to_stored: f64,
    held: f64,
    disk: u64,
    stored: u64,
}

/// A crasher holding `mib` MiB, started and ready.
struct Crash {
    child: Child,
    pid: u32,
}

impl Crash {
    fn start(crasher: &Path, mib: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(crasher)
            .args(["big", &mib.to_string()])
            .env("CRASHER_CORE_LIMIT", u64::MAX.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the crasher")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let pid = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("crasher said {line:?}"))?;
        Ok(Self { child, pid })
    }

    /// Lets it crash; returns when the kernel let it go, and how long that took.
    fn go(mut self) -> anyhow::Result<(Instant, f64)> {
        let started = Instant::now();
        self.child.stdin.take().expect("piped").write_all(b"go\n")?;
        let st = self.child.wait()?;
        if st.signal() != Some(11) {
            bail!("the crasher did not segfault: {st}");
        }
        Ok((started, started.elapsed().as_secs_f64()))
    }
}

/// The agent, running with JSON logs.
pub(super) struct Agent {
    pub(super) child: Child,
    log: PathBuf,
}

impl Agent {
    pub(super) fn start(
        agent: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let child = Command::new(agent)
            .args(["--log-format", "json"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting the agent")?;
        let agent = Self { child, log };
        agent.wait_for(|l| l.contains("\"agent running\""), Duration::from_secs(60))?;
        Ok(agent)
    }

    pub(super) fn wait_for(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log)?;
            if let Some(line) = text.lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!("the agent did not get there in {timeout:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Agent {
    /// Its log so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark for a core of about `mib` MiB.
pub fn run(root: &Path, mib: u64) -> anyhow::Result<()> {
    super::upload::ensure_apt_tools()?;
    let (agent, crasher) = super::release_agent_and_crasher(root)?;
    let target = root.join("target");
    let python = setup::tools_dir(root).join("bin/python");
    let dir = target.join("bench-intake");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The server's objects in memory: only what the node itself writes counts as disk.
    let data = Path::new("/dev/shm").join(format!("coredump-bench-{}", std::process::id()));
    std::fs::create_dir_all(data.join(BUCKET))?;
    let server = S3Server::s3s_fs_in(&data)?;
    let endpoint = server.endpoint();
    let aws_env = server.aws_env();
    let kernel = KernelState::save()?;
    let mut rows = Vec::new();
    for mode in ["file", "pipe", "socket"] {
        let node = dir.join(mode);
        std::fs::create_dir_all(&node)?;
        let p = |s: &str| node.join(s).display().to_string();
        let mut args: Vec<String> = [
            "run",
            "--intake",
            mode,
            "--node-name",
            "bench",
            "--kube",
            "off",
            "--min-free-disk",
            "0",
            "--s3-path-style",
        ]
        .map(String::from)
        .into();
        for (flag, value) in [
            ("--state-dir", p("state")),
            ("--receive-dir", p("received")),
            ("--run-dir", p("run")),
            ("--dump-dir", p("dumps")),
            ("--dest", format!("s3://{BUCKET}/{mode}")),
            ("--s3-endpoint", endpoint.clone()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        if mode == "file" {
            args.push("--install-core-pattern".into());
        }
        let agent = Agent::start(&agent, &args, &aws_env, node.join("agent.log"))?;
        let crash = Crash::start(&crasher, mib)?;
        let pid = crash.pid;
        sync();
        let disk_before = bytes_written(&node)?;
        let (started, held) = crash.go()?;
        let stored = agent.wait_for(
            |l| l.contains("\"stored\"") && l.contains(&format!("_{pid}_SIGSEGV.core")),
            Duration::from_secs(600),
        )?;
        let to_stored = started.elapsed().as_secs_f64();
        sync();
        let disk = bytes_written(&node)? - disk_before;
        let bytes = serde_bytes(&stored);
        eprintln!("xtask bench: {mode}: stored in {to_stored:.2} s, process held {held:.3} s");
        rows.push(Row {
            what: match mode {
                "file" => "agent, file intake",
                "pipe" => "agent, pipe intake",
                _ => "agent, socket intake",
            },
            to_stored,
            held,
            disk,
            stored: bytes,
        });
        drop(agent);
    }

    // The seed project: `|helper` = pigz into a file, then boto3 upload_file once it is whole.
    let node = dir.join("seed");
    let dumps = node.join("dumps");
    std::fs::create_dir_all(&dumps)?;
    let helper = node.join("pigz-helper.sh");
    std::fs::write(
        &helper,
        "#!/bin/sh\npigz -c > \"$1.partial\" && mv \"$1.partial\" \"$1\"\n",
    )?;
    status(Command::new("chmod").arg("755").arg(&helper))?;
    std::fs::write(PIPE_LIMIT, "0")?;
    std::fs::write(
        CORE_PATTERN,
        format!("|{} {}/core.%P.gz", helper.display(), dumps.display()),
    )?;
    let crash = Crash::start(&crasher, mib)?;
    let pid = crash.pid;
    sync();
    let disk_before = bytes_written(&node)?;
    let (started, held) = crash.go()?;
    let gz = dumps.join(format!("core.{pid}.gz"));
    while !gz.exists() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the seed's helper wrote no {}", gz.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut upload = Command::new(&python);
    upload
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1]).upload_file(sys.argv[2], sys.argv[3], sys.argv[4])",
            &endpoint,
        ])
        .arg(&gz)
        .args([BUCKET, &format!("seed/core.{pid}.gz")])
        .envs(aws_env.iter().map(|(k, v)| (*k, v)))
        .env("AWS_CONFIG_FILE", node.join("aws-config"));
    std::fs::write(
        node.join("aws-config"),
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )?;
    status(&mut upload)?;
    let to_stored = started.elapsed().as_secs_f64();
    sync();
    let disk = bytes_written(&node)? - disk_before;
    rows.push(Row {
        what: "seed: pigz pipe to a file, boto3 upload_file",
        to_stored,
        held,
        disk,
        stored: std::fs::metadata(&gz)?.len(),
    });
    drop(kernel);
    drop(server);
    let _ = std::fs::remove_dir_all(&data);

    println!(
        "\none crash of a process holding {mib} MiB (core ~{mib} MiB), stored to s3s-fs on 127.0.0.1 (2 CPUs), optimized builds"
    );
    println!(
        "| path | crash → stored (s) | vs seed | process held in the kernel (s) | node disk written (MiB) | stored (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let seed = rows.last().map_or(1.0, |r| r.to_stored);
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2}x | {:.3} | {:.0} | {:.0} |",
            r.what,
            r.to_stored,
            seed / r.to_stored,
            r.held,
            r.disk as f64 / MIB as f64,
            r.stored as f64 / MIB as f64,
        );
    }
    Ok(())
}

/// The `bytes` field of a JSON log line.
fn serde_bytes(line: &str) -> u64 {
    line.split("\"bytes\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
