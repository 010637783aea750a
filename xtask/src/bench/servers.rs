//! The S3 servers the benchmarks upload to, on 127.0.0.1, stopped on drop: Ceph's radosgw (a
//! real S3 implementation, through `xtask/tools/radosgw.sh`), s3s-fs (objects as files) and
//! moto (objects in memory).

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup;

pub const BUCKET: &str = "bench";
/// s3s-fs's and moto's keys (radosgw.sh makes its own user).
const ACCESS_KEY: &str = "bench";
const SECRET_KEY: &str = "bench-secret-key";
/// s3s-fs at this version, installed by `cargo install` when another (or none) is found.
const S3S_FS: (&str, &str) = ("s3s-fs", "0.14.1");

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    Radosgw,
    S3sFs,
    Moto,
}

/// A running server.
pub struct S3Server {
    pub kind: ServerKind,
    port: u16,
    access_key: String,
    secret_key: String,
    running: Running,
}

enum Running {
    Child(Child),
    /// radosgw.sh's cluster directory.
    Radosgw(PathBuf),
}

impl S3Server {
    /// Starts a `kind` server whose state lives under `dir`, able to hold objects of
    /// `max_object` bytes (radosgw's OSD is sized for it).
    pub fn start(
        kind: ServerKind,
        root: &Path,
        dir: &Path,
        max_object: u64,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let (access_key, secret_key, running) = match kind {
            ServerKind::Radosgw => {
                let cluster = dir.join("radosgw");
                let _ = radosgw(root, &["stop", &cluster.to_string_lossy()]);
                // A sparse file: room for the object twice over (a replaced object's space is
                // freed by gc), plus the cluster's own.
                let gib = ((2 * max_object) >> 30) + 8;
                let out = Command::new("bash")
                    .arg(root.join("xtask/tools/radosgw.sh"))
                    .arg("start")
                    .arg(&cluster)
                    .arg(port.to_string())
                    .env("RGW_OSD_SIZE_GB", gib.to_string())
                    .stderr(Stdio::inherit())
                    .output()
                    .context("radosgw.sh start")?;
                if !out.status.success() {
                    bail!("radosgw.sh start failed (its log is above)");
                }
                let line = String::from_utf8_lossy(&out.stdout);
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_owned)
                        .with_context(|| format!("no {name}= in {line:?}"))
                };
                (
                    field("access_key")?,
                    field("secret_key")?,
                    Running::Radosgw(cluster),
                )
            }
            ServerKind::S3sFs => {
                let data = dir.join("s3s-data");
                let _ = std::fs::remove_dir_all(&data);
                std::fs::create_dir_all(&data)?;
                (
                    ACCESS_KEY.into(),
                    SECRET_KEY.into(),
                    Running::Child(s3s_fs(&data, port)?),
                )
            }
            ServerKind::Moto => {
                let child = Command::new(setup::tools_dir(root).join("bin/moto_server"))
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting moto_server (cargo xtask setup installs it)")?;
                (ACCESS_KEY.into(), SECRET_KEY.into(), Running::Child(child))
            }
        };
        let server = Self {
            kind,
            port,
            access_key,
            secret_key,
            running,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// s3s-fs serving `data` (a folder per bucket), for benchmarks that want the server's
    /// objects in a place of their choosing (memory, to count only the node's disk writes).
    pub fn s3s_fs_in(data: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let server = Self {
            kind: ServerKind::S3sFs,
            port,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            running: Running::Child(s3s_fs(data, port)?),
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{:?} did not listen on port {} within 60 s",
                    self.kind,
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Credentials and region for a client of this server.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// CPU seconds (user + system) the server's processes have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mine = |pid: &str| match &self.running {
            Running::Child(child) => pid == child.id().to_string(),
            // Every daemon of the cluster names its ceph.conf on its command line.
            Running::Radosgw(cluster) => {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let conf = cluster.join("ceph.conf");
                    c.split(|&b| b == 0)
                        .any(|arg| arg == conf.as_os_str().as_encoded_bytes())
                })
            }
        };
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || !mine(&pid) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // utime and stime: fields 14 and 15 of the line, the 12th and 13th after the comm.
            total += (field(11) + field(12)) / ticks;
        }
        total
    }

    /// Frees the space of deleted objects now (radosgw keeps it for its garbage collector).
    pub fn reclaim(&self, root: &Path) -> anyhow::Result<()> {
        match &self.running {
            Running::Radosgw(cluster) => radosgw(root, &["gc", &cluster.to_string_lossy()]),
            Running::Child(_) => Ok(()),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Radosgw(cluster) => {
                let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .unwrap_or(Path::new("."));
                let _ = radosgw(root, &["stop", &cluster.to_string_lossy()]);
            }
        }
    }
}

fn radosgw(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("bash")
        .arg(root.join("xtask/tools/radosgw.sh"))
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("radosgw.sh {} failed: {st}", args.join(" "));
    }
    Ok(())
}

fn s3s_fs(data: &Path, port: u16) -> anyhow::Result<Child> {
    let (name, version) = S3S_FS;
    let installed = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
    if !installed {
        eprintln!("xtask bench: installing {name} {version} (~1.5 min)");
        crate::status(Command::new("cargo").args([
            "install",
            &format!("{name}@{version}"),
            "--features",
            "binary",
            "--locked",
        ]))?;
    }
    Command::new(name)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting s3s-fs")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
