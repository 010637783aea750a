//! `cargo xtask bench upload`: the agent's S3 upload against boto3 and the AWS CLI, same files,
//! same local server, same run.
//!
//! Core-like files (zero holes, random pages, pointer-heavy "heap" pages) are made once under
//! <target dir>/bench-upload/. The server is s3s-fs on 127.0.0.1 (moto cannot hold GiBs; installed
//! here, not by `cargo xtask setup`). Each client runs under `/usr/bin/time`, which gives its
//! peak RSS and CPU time; pigz shows what gzip would make of the same file.

use std::{
    fs::File,
    io::{Seek as _, SeekFrom, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, render, status};

const MIB: u64 = 1 << 20;
pub(super) const BUCKET: &str = "bench";
pub(super) const ACCESS_KEY: &str = "bench";
pub(super) const SECRET_KEY: &str = "bench-secret-key";
const S3S_FS: &str = "s3s-fs@0.14.1";

/// One measured run.
struct Run {
    what: String,
    seconds: f64,
    rss_kib: u64,
    cpu_seconds: f64,
    /// Bytes stored (or written, for pigz).
    output: u64,
}

/// Runs the benchmark for files of `sizes_gib` GiB; the agent compresses at zstd `level`.
pub fn run(root: &Path, sizes_gib: &[u64], level: i32) -> anyhow::Result<()> {
    ensure_tools()?;
    status(cargo(root).args([
        "build",
        "--release",
        "--package",
        "coredump-agent",
        "--example",
        "upload",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let agent = target.join("release/examples/upload");
    let dir = target.join("bench-upload");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("aws-config");
    // boto3 and the AWS CLI read this: path-style addressing, as for any local S3 server.
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )?;
    let data = dir.join("s3s-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join(BUCKET))?;
    let server = Server::start(&data)?;
    let endpoint = server.endpoint();
    eprintln!(
        "xtask bench: s3s-fs on {endpoint}, data in {}",
        data.display()
    );

    let mut table = Vec::new();
    for &gib in sizes_gib {
        let file = dir.join(format!("core-{gib}g.bin"));
        make_core_like(&file, gib << 30)?;
        // Warm the page cache once, so no client pays for the first read.
        std::io::copy(&mut File::open(&file)?, &mut std::io::sink())?;
        let size = std::fs::metadata(&file)?.len();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let aws = |cmd: &mut Command| {
            cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_CONFIG_FILE", &config)
                .env("AWS_EC2_METADATA_DISABLED", "true");
        };
        let mut runs = Vec::new();

        let key = format!("boto3/{name}");
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1]).upload_file(sys.argv[2], sys.argv[3], sys.argv[4])",
            &endpoint,
        ])
        .arg(&file)
        .args([BUCKET, &key]);
        aws(&mut cmd);
        runs.push(measure("boto3 upload_file", &mut cmd, || {
            stored_size(&data, &key)
        })?);

        let key = format!("awscli/{name}");
        let mut cmd = Command::new("aws");
        cmd.args([
            "s3",
            "cp",
            "--only-show-errors",
            "--endpoint-url",
            &endpoint,
        ])
        .arg(&file)
        .arg(format!("s3://{BUCKET}/{key}"));
        aws(&mut cmd);
        runs.push(measure("aws s3 cp", &mut cmd, || stored_size(&data, &key))?);

        for (what, level) in [
            ("agent, no compression".to_owned(), 0),
            (format!("agent, zstd -{level}"), level),
        ] {
            let prefix = format!("agent-{level}");
            let mut cmd = Command::new(&agent);
            cmd.arg(&file)
                .args(["--dest", &format!("s3://{BUCKET}/{prefix}")])
                .args(["--s3-endpoint", &endpoint, "--s3-path-style"])
                .args(["--level", &level.to_string()]);
            aws(&mut cmd);
            let suffix = if level > 0 { ".zst" } else { "" };
            let key = format!("{prefix}/{name}{suffix}");
            runs.push(measure(&what, &mut cmd, || stored_size(&data, &key))?);
        }

        let mut cmd = Command::new("pigz");
        cmd.arg("-c").arg(&file);
        runs.push(measure_output("pigz -6 (compress only)", &mut cmd)?);

        // boto3, the AWS CLI and the agent without compression store the file as it is.
        for run in &runs[..3] {
            if run.output != size {
                bail!("{}: stored {} bytes of {size}", run.what, run.output);
            }
        }
        table.push((gib, size, runs));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    print_table(&table);
    Ok(())
}

fn print_table(table: &[(u64, u64, Vec<Run>)]) {
    println!(
        "\nupload to s3s-fs on 127.0.0.1 (2 CPUs); MiB/s of the original file; CPU = user + system"
    );
    println!("| file | client | seconds | MiB/s | vs boto3 | peak RSS MiB | CPU s | stored MiB |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (gib, size, runs) in table {
        let rate = |r: &Run| *size as f64 / MIB as f64 / r.seconds;
        let base = rate(&runs[0]);
        for r in runs {
            println!(
                "| {gib} GiB | {} | {:.1} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.0} |",
                r.what,
                r.seconds,
                rate(r),
                rate(r) / base,
                r.rss_kib as f64 / 1024.0,
                r.cpu_seconds,
                r.output as f64 / MIB as f64,
            );
        }
    }
}

/// Runs `cmd` under `/usr/bin/time`; `output` tells the bytes stored afterwards.
fn measure(
    what: &str,
    cmd: &mut Command,
    output: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<Run> {
    let (seconds, rss_kib, cpu_seconds) = timed(cmd, Stdio::null(), |_| Ok(()))?;
    let run = Run {
        what: what.to_owned(),
        seconds,
        rss_kib,
        cpu_seconds,
        output: output()?,
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
        output: written,
    })
}

/// Wall seconds, peak RSS (KiB) and CPU seconds of `cmd`, from `/usr/bin/time`.
pub(super) fn timed(
    cmd: &mut Command,
    stdout: Stdio,
    during: impl FnOnce(&mut Child) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, u64, f64)> {
    let stats = tempfile_path("time");
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
        .stdout(stdout);
    let started = Instant::now();
    let mut child = timed
        .spawn()
        .with_context(|| format!("running `{}`", render(cmd)))?;
    during(&mut child)?;
    let st = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    if !st.success() {
        bail!("`{}` failed: {st}", render(cmd));
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

/// Size of an object as s3s-fs stored it (a file under its root), then removes it: the next
/// run needs the disk space.
pub(super) fn stored_size(data: &Path, key: &str) -> anyhow::Result<u64> {
    let path = data.join(BUCKET).join(key);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("the uploaded object {}", path.display()))?
        .len();
    std::fs::remove_file(&path)?;
    Ok(size)
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

/// s3s-fs on a free port of 127.0.0.1, stopped on drop.
pub(super) struct Server(Child, u16);

impl Server {
    pub(super) fn start(data: &Path) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs")?;
        let server = Self(child, port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub(super) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs what the benchmark needs and the project does not: s3s-fs, boto3 and the AWS CLI,
/// pigz and GNU time. Each is checked first.
pub(super) fn ensure_tools() -> anyhow::Result<()> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = |what: &str, program: &str, args: &[&str]| -> anyhow::Result<()> {
        eprintln!(
            "xtask bench: installing {what}: {program} {}",
            args.join(" ")
        );
        status(Command::new(program).args(args))
    };
    if !works("s3s-fs", &["--version"]) {
        install(
            "s3s-fs (the benchmark's S3 server, ~1.5 min)",
            "cargo",
            &["install", S3S_FS, "--features", "binary", "--locked"],
        )?;
    }
    for (module, package) in [("boto3", "boto3"), ("awscli", "awscli")] {
        if !works("python3", &["-c", &format!("import {module}")]) {
            install(
                package,
                "python3",
                &["-m", "pip", "install", "--quiet", package],
            )?;
        }
    }
    let mut apt = Vec::new();
    if !works("pigz", &["--version"]) {
        apt.push("pigz");
    }
    if !Path::new("/usr/bin/time").exists() {
        apt.push("time");
    }
    if !apt.is_empty() {
        install("apt package index", "apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq"];
        args.extend(&apt);
        install(&apt.join(", "), "apt-get", &args)?;
    }
    // `aws` may be a shim without its package: check that it runs.
    if !works("aws", &["--version"]) {
        bail!("the AWS CLI does not run after installing awscli; check PATH");
    }
    Ok(())
}
