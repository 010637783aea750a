//! `cargo xtask bench upload`: the agent's S3 upload against its peers (boto3's transfer
//! manager, boto3 through the CRT, the AWS CLI, s5cmd), same file, same server, same run.
//!
//! Core-like files (zero holes, random pages, pointer-heavy "heap" pages) are made once under
//! <target dir>/bench-upload/. The server is radosgw by default (see [`servers`]); each size
//! runs on the bare server, then through a proxy that adds latency ([`DelayProxy`]), since
//! real S3 is not on loopback. Each client runs under `/usr/bin/time`, which gives its peak RSS
//! and CPU time; each object's stored size is read back, then it is deleted. pigz shows what
//! gzip would make of the same file. The peers come from a virtualenv of the benchmark's own,
//! at the versions `xtask/tools/bench.txt` pins.

use std::{
    fs::File,
    io::{Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use super::servers::ServerKind;
use super::{
    delay::DelayProxy,
    servers::{BUCKET, S3Server},
};
use crate::{cargo, render, setup, status};

const MIB: u64 = 1 << 20;
/// The peers, pinned.
const BENCH_PINS: &str = include_str!("../../tools/bench.txt");

/// One measured run.
struct Run {
    what: String,
    seconds: f64,
    rss_kib: u64,
    cpu_seconds: f64,
    /// CPU seconds of the server meanwhile.
    server_cpu: f64,
    /// Bytes stored (or written, for pigz).
    output: u64,
    /// The agent's own account of the upload (its JSON line), if it is the agent.
    breakdown: Option<String>,
    /// Why a peer could not upload at all (the row says so instead of figures).
    failed: Option<String>,
}

/// A peer's run, or a row saying why it failed: a peer that cannot talk to this server is a
/// finding, not the end of the benchmark.
fn peer(run: anyhow::Result<Run>, what: &str) -> Run {
    run.unwrap_or_else(|e| {
        eprintln!("xtask bench: {what} failed: {e:#}");
        Run {
            what: what.to_owned(),
            seconds: f64::NAN,
            rss_kib: 0,
            cpu_seconds: f64::NAN,
            server_cpu: f64::NAN,
            output: 0,
            breakdown: None,
            failed: Some(e.root_cause().to_string()),
        }
    })
}

/// Runs the benchmark for files of `sizes_gib` GiB on a `kind` server, with each added
/// round-trip latency of `latencies_ms`; the agent compresses at zstd `level`.
pub fn run(
    root: &Path,
    sizes_gib: &[u64],
    level: i32,
    kind: ServerKind,
    latencies_ms: &[u64],
) -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let venv = target.join("bench-tools");
    setup::python_venv(&venv, BENCH_PINS, "the benchmark's peers")?;
    ensure_apt_tools()?;
    // The optimized build (what the image ships), and the dev build `cargo xtask run` makes.
    for profile in [&["--release"][..], &[]] {
        status(
            cargo(root)
                .args([
                    "build",
                    "--package",
                    "coredump-agent",
                    "--example",
                    "upload",
                ])
                .args(profile),
        )?;
    }
    let agent = target.join("release/examples/upload");
    let dev_agent = target.join("debug/examples/upload");
    let dir = target.join("bench-upload");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("aws-config");
    // The AWS CLI reads this: path-style addressing, as for any local S3 server.
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )?;
    let largest = sizes_gib.iter().max().copied().unwrap_or(1) << 30;
    let server = S3Server::start(kind, root, &dir, largest)?;
    let python = venv.join("bin/python");
    let s3py = root.join("xtask/tools/bench_s3.py");
    let aws_env = server.aws_env();
    let with_env = |cmd: &mut Command| {
        cmd.envs(aws_env.iter().map(|(k, v)| (*k, v)))
            .env("AWS_CONFIG_FILE", &config);
    };
    let mut create = Command::new(&python);
    create
        .arg(&s3py)
        .args(["create-bucket", &server.endpoint(), BUCKET]);
    with_env(&mut create);
    status(&mut create)?;
    eprintln!("xtask bench: {kind:?} on {}", server.endpoint());

    let mut table = Vec::new();
    for &gib in sizes_gib {
        let file = dir.join(format!("core-{gib}g.bin"));
        make_core_like(&file, gib << 30)?;
        // Warm the page cache once, so no client pays for the first read.
        std::io::copy(&mut File::open(&file)?, &mut std::io::sink())?;
        let size = std::fs::metadata(&file)?.len();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for &latency in latencies_ms {
            let proxy = (latency > 0)
                .then(|| DelayProxy::start(server.port(), Duration::from_micros(latency * 500)))
                .transpose()?;
            let endpoint = proxy
                .as_ref()
                .map_or_else(|| server.endpoint(), DelayProxy::endpoint);
            // Stored size by the peers' own library, then the object goes: the next run needs
            // the space.
            let stored = |key: &str| -> anyhow::Result<u64> {
                let mut cmd = Command::new(&python);
                cmd.arg(&s3py)
                    .args(["size-and-delete", &server.endpoint(), BUCKET, key]);
                with_env(&mut cmd);
                let out = cmd.stderr(Stdio::inherit()).output()?;
                if !out.status.success() {
                    bail!("reading back {key}: {}", out.status);
                }
                server.reclaim(root)?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
            };
            let mut runs = Vec::new();
            for (what, script) in [
                ("boto3 upload_file", "upload"),
                ("boto3 + CRT", "upload-crt"),
            ] {
                let key = format!("{script}/{name}");
                let mut cmd = Command::new(&python);
                cmd.arg(&s3py)
                    .args([script, &endpoint])
                    .arg(&file)
                    .args([BUCKET, &key]);
                with_env(&mut cmd);
                runs.push(peer(
                    measure(what, &mut cmd, &server, || stored(&key)),
                    what,
                ));
            }
            let key = format!("awscli/{name}");
            let mut cmd = Command::new(venv.join("bin/aws"));
            cmd.args([
                "s3",
                "cp",
                "--only-show-errors",
                "--endpoint-url",
                &endpoint,
            ])
            .arg(&file)
            .arg(format!("s3://{BUCKET}/{key}"));
            with_env(&mut cmd);
            runs.push(peer(
                measure("aws s3 cp", &mut cmd, &server, || stored(&key)),
                "aws s3 cp",
            ));
            let key = format!("s5cmd/{name}");
            let mut cmd = Command::new(venv.join("bin/s5cmd"));
            cmd.args(["--endpoint-url", &endpoint, "cp"])
                .arg(&file)
                .arg(format!("s3://{BUCKET}/{key}"));
            with_env(&mut cmd);
            runs.push(peer(
                measure("s5cmd cp", &mut cmd, &server, || stored(&key)),
                "s5cmd cp",
            ));
            let peers = runs.len();

            for (what, level, sign) in [
                ("agent, no compression".to_owned(), 0, "auto"),
                (
                    "agent, no compression, unsigned payload".to_owned(),
                    0,
                    "never",
                ),
                (format!("agent, zstd -{level}"), level, "auto"),
            ] {
                let prefix = format!("agent-{level}-{sign}");
                let mut cmd = Command::new(&agent);
                cmd.arg(&file)
                    .args(["--dest", &format!("s3://{BUCKET}/{prefix}")])
                    .args(["--s3-endpoint", &endpoint, "--s3-path-style"])
                    .args(["--s3-sign-payload", sign])
                    .args(["--level", &level.to_string()]);
                with_env(&mut cmd);
                let suffix = if level > 0 { ".zst" } else { "" };
                let key = format!("{prefix}/{name}{suffix}");
                runs.push(measure(&what, &mut cmd, &server, || stored(&key))?);
            }
            if latency == 0 {
                let key = format!("agent-dev/{name}");
                let mut cmd = Command::new(&dev_agent);
                cmd.arg(&file)
                    .args(["--dest", &format!("s3://{BUCKET}/agent-dev")])
                    .args(["--s3-endpoint", &endpoint, "--s3-path-style"])
                    .args(["--level", "0"]);
                with_env(&mut cmd);
                let what = "agent (dev build), no compression";
                runs.push(measure(what, &mut cmd, &server, || stored(&key))?);
                let mut cmd = Command::new("pigz");
                cmd.arg("-c").arg(&file);
                runs.push(measure_output("pigz -6 (compress only)", &mut cmd)?);
            }

            // The peers and the agent without compression store the file as it is.
            let plain = |(i, r): &(usize, &Run)| *i < peers || r.what.contains("no compression");
            for (_, run) in runs.iter().enumerate().filter(plain) {
                if run.failed.is_some() {
                    continue;
                }
                if run.output != size {
                    bail!("{}: stored {} bytes of {size}", run.what, run.output);
                }
            }
            table.push((gib, latency, size, runs));
        }
    }
    drop(server);
    print_table(kind, &table);
    println!(
        "\nload average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

fn print_table(kind: ServerKind, table: &[(u64, u64, u64, Vec<Run>)]) {
    println!(
        "\nupload to {kind:?} on 127.0.0.1 (2 CPUs, shared with the server); MiB/s of the original file; CPU = user + system"
    );
    println!(
        "| file | added RTT | client | seconds | MiB/s | vs boto3 | peak RSS MiB | CPU s | server CPU s | stored MiB |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (gib, latency, size, runs) in table {
        let rate = |r: &Run| *size as f64 / MIB as f64 / r.seconds;
        let base = rate(&runs[0]);
        for r in runs {
            if let Some(why) = &r.failed {
                println!(
                    "| {gib} GiB | {latency} ms | {} | fails: {why} | | | | | |",
                    r.what
                );
                continue;
            }
            println!(
                "| {gib} GiB | {latency} ms | {} | {:.1} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.1} | {:.0} |",
                r.what,
                r.seconds,
                rate(r),
                rate(r) / base,
                r.rss_kib as f64 / 1024.0,
                r.cpu_seconds,
                r.server_cpu,
                r.output as f64 / MIB as f64,
            );
        }
    }
    println!("\nthe agent's own account of each upload:");
    for (gib, latency, _, runs) in table {
        for r in runs {
            if let Some(breakdown) = &r.breakdown {
                println!("{gib} GiB, +{latency} ms, {}: {breakdown}", r.what);
            }
        }
    }
}

/// Runs `cmd` under `/usr/bin/time`; `output` tells the bytes stored afterwards. The last line
/// `cmd` prints, if any, is its own account of the run.
fn measure(
    what: &str,
    cmd: &mut Command,
    server: &S3Server,
    output: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<Run> {
    let mut printed = String::new();
    let server_cpu = server.cpu_seconds();
    let (seconds, rss_kib, cpu_seconds) = timed(cmd, Stdio::piped(), |child| {
        let mut out = child.stdout.take().expect("piped");
        std::io::Read::read_to_string(&mut out, &mut printed)?;
        Ok(())
    })?;
    let server_cpu = server.cpu_seconds() - server_cpu;
    let run = Run {
        what: what.to_owned(),
        server_cpu,
        seconds,
        rss_kib,
        cpu_seconds,
        output: output()?,
        breakdown: printed
            .lines()
            .last()
            .filter(|l| l.starts_with('{'))
            .map(str::to_owned),
        failed: None,
    };
    eprintln!(
        "xtask bench: {what}: {:.1} s, {:.1} MiB RSS",
        run.seconds,
        run.rss_kib as f64 / 1024.0
    );
    Ok(run)
}

/// Like [`measure`], counting what `cmd` writes to stdout instead.
fn measure_output(what: &str, cmd: &mut Command) -> anyhow::Result<Run> {
    let mut written = 0;
    let (seconds, rss_kib, cpu_seconds) = timed(cmd, Stdio::piped(), |child| {
        let mut out = child.stdout.take().expect("piped");
        written = std::io::copy(&mut out, &mut std::io::sink())?;
        Ok(())
    })?;
    Ok(Run {
        what: what.to_owned(),
        seconds,
        rss_kib,
        cpu_seconds,
        server_cpu: 0.0,
        output: written,
        breakdown: None,
        failed: None,
    })
}

/// Wall seconds, peak RSS (KiB) and CPU seconds of `cmd`, from `/usr/bin/time`.
pub(super) fn timed(
    cmd: &mut Command,
    stdout: Stdio,
    during: impl FnOnce(&mut Child) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, u64, f64)> {
    let stats = tempfile_path("time");
    let errors = tempfile_path("stderr");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M %U %S", "-o"])
        .arg(&stats)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdout(stdout)
        .stderr(File::create(&errors)?);
    let started = Instant::now();
    let mut child = timed
        .spawn()
        .with_context(|| format!("running `{}`", render(cmd)))?;
    during(&mut child)?;
    let st = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
    let _ = std::fs::remove_file(&errors);
    if !st.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(anyhow::anyhow!(last.to_owned()))
            .with_context(|| format!("`{}` failed ({st})", render(cmd)));
    }
    let text = std::fs::read_to_string(&stats)?;
    let _ = std::fs::remove_file(&stats);
    let fields: Vec<&str> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let [rss, user, system] = fields[..] else {
        bail!("unexpected /usr/bin/time output {text:?}");
    };
    Ok((
        seconds,
        rss.parse()?,
        user.parse::<f64>()? + system.parse::<f64>()?,
    ))
}

fn tempfile_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xtask-bench-{tag}-{}", std::process::id()))
}

/// A file like a core of `size` bytes, made once: per 8 MiB, 4 MiB of zeros (a hole), 2 MiB
/// of random bytes, 2 MiB of "heap" (64-bit words: small integers and pointers).
fn make_core_like(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    eprintln!("xtask bench: making {} ({size} bytes)", path.display());
    let mut file = File::create(path)?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut block = vec![0u8; MIB as usize];
    for i in 0..size / MIB {
        match i % 8 {
            0..4 => {
                file.seek(SeekFrom::Current(MIB as i64))?;
                continue;
            }
            4 | 5 => block
                .chunks_exact_mut(8)
                .for_each(|w| w.copy_from_slice(&next().to_le_bytes())),
            _ => block.chunks_exact_mut(8).for_each(|w| {
                let r = next();
                let word = match r % 4 {
                    0 => 0x0000_7f00_0000_0000 | (r >> 20) & 0xff_ffff_fff8,
                    1 => (r >> 40) & 0xffff,
                    _ => 0,
                };
                w.copy_from_slice(&word.to_le_bytes());
            }),
        }
        file.write_all(&block)?;
    }
    file.set_len(size)?;
    file.sync_all()?;
    Ok(())
}

/// What the benchmarks need from Debian and the project does not: pigz and GNU time.
pub(super) fn ensure_apt_tools() -> anyhow::Result<()> {
    let mut apt = Vec::new();
    if !Path::new("/usr/bin/pigz").exists() {
        apt.push("pigz");
    }
    if !Path::new("/usr/bin/time").exists() {
        apt.push("time");
    }
    if !apt.is_empty() {
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&apt),
        )?;
    }
    Ok(())
}
