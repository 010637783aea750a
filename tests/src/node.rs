//! A node for the end-to-end tests of the intakes (socket, pipe) and what builds on them:
//! state, receive and run directories, a local store, kubelet log directories, and pods laid
//! out as the kubelet does (cgroup and log files). Holds the machine-wide test lock through
//! [`CorePatternGuard`], which puts the core sysctls back even when a test fails.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Agent, CorePatternGuard, CrasherOpts, TempCgroup, TempDir, agent_path};

/// The node name the agents are given.
pub const NODE: &str = "test-node";

/// A node: state, receive and run directories, a local store, kubelet log directories.
pub struct Node {
    pub tmp: TempDir,
    pub state: PathBuf,
    pub received: PathBuf,
    pub run: PathBuf,
    pub store: PathBuf,
    pub dumps: PathBuf,
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
    _guard: CorePatternGuard,
}

/// A fresh node, holding the test lock with `core` as the pattern to restore.
pub fn node(tag: &str) -> Node {
    let tmp = TempDir::new(tag);
    let (pod_logs, container_logs) = (tmp.join("pods"), tmp.join("containers"));
    std::fs::create_dir_all(&pod_logs).unwrap();
    std::fs::create_dir_all(&container_logs).unwrap();
    // A known pattern to start from: the agent installs its own and puts this one back.
    let guard = CorePatternGuard::set("core");
    Node {
        state: tmp.join("state"),
        received: tmp.join("received"),
        run: tmp.join("run"),
        store: tmp.join("store"),
        dumps: tmp.join("dumps"),
        pod_logs,
        container_logs,
        tmp,
        _guard: guard,
    }
}

impl Node {
    /// The `run` arguments of an agent on this node.
    pub fn args(&self, intake: &str) -> Vec<String> {
        let p = |p: &Path| p.to_str().unwrap().to_owned();
        let mut args: Vec<String> = ["run", "--intake", intake, "--node-name", NODE]
            .map(String::from)
            .into();
        for (flag, value) in [
            ("--state-dir", &self.state),
            ("--receive-dir", &self.received),
            ("--run-dir", &self.run),
            ("--dest", &self.store),
            ("--dump-dir", &self.dumps),
            ("--pod-log-root", &self.pod_logs),
            ("--container-log-root", &self.container_logs),
        ] {
            args.push(flag.into());
            args.push(p(value));
        }
        args.extend(
            [
                "--kube",
                "off",
                "--event-wait",
                "3s",
                "--dump-wait",
                "5s",
                "--min-free-disk",
                "0",
            ]
            .map(String::from),
        );
        args
    }

    /// Starts the agent with this node's settings and `extra` arguments (a setting given in
    /// `extra`, such as `--dest` or `--kube`, replaces this node's).
    pub fn start(&self, intake: &str, extra: &[&str]) -> Agent {
        self.start_with_env(intake, extra, &[])
    }

    /// [`Node::start`] with extra environment variables (an S3 server's credentials).
    pub fn start_with_env(&self, intake: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut args = self.args(intake);
        // Every setting of `args` takes a value: one given again in `extra` replaces it.
        for flag in extra.iter().filter(|a| a.starts_with("--")) {
            if let Some(at) = args.iter().skip(1).position(|a| a == flag) {
                args.drain(at + 1..at + 3);
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.tmp.join(&format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        Agent::start_with_env(&args, log, env)
    }

    /// Files in the receive directory (not the agent's sub-folders).
    pub fn received_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.received)
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_type().unwrap().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `coredump-agent get` of `key` from the local store into a file; its bytes.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self.tmp.join("got.core");
        let _ = std::fs::remove_file(&out);
        let st = Command::new(agent_path())
            .args(["get", "--dest", self.store.to_str().unwrap(), key, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "get {key}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::read(&out).unwrap()
    }
}

/// A pod as the kubelet lays it out: its cgroup (containerd, systemd driver, burstable) and
/// the log directories that name it.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub cgroup: TempCgroup,
}

impl Pod {
    pub fn new(node: &Node, name: &str, n: u32) -> Self {
        let u = format!("{:08x}{n:08x}{}", std::process::id(), "a1b2c3d4e5f6a7b8");
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &u[..8],
            &u[8..12],
            &u[12..16],
            &u[16..20],
            &u[20..32]
        );
        let container_id = format!("{:08x}{n:08x}{}", std::process::id(), "c0ffee00".repeat(6));
        let slice = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
        let cgroup = TempCgroup::create(&format!(
            "kubepods.slice/kubepods-burstable.slice/{slice}/cri-containerd-{container_id}.scope"
        ));
        let (namespace, container) = ("shop".to_owned(), "app".to_owned());
        let dir = node
            .pod_logs
            .join(format!("{namespace}_{name}_{uid}"))
            .join(&container);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), "started\n").unwrap();
        symlink(
            dir.join("0.log"),
            node.container_logs
                .join(format!("{name}_{namespace}_{container}-{container_id}.log")),
        )
        .unwrap();
        Self {
            namespace,
            name: name.into(),
            container,
            cgroup,
        }
    }

    pub fn prefix(&self) -> String {
        format!("{}/{}/", self.namespace, self.name)
    }
}

pub fn dumping() -> CrasherOpts<'static> {
    CrasherOpts {
        core_limit: u64::MAX,
        ..Default::default()
    }
}
