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

/// Shorter waits than the node's, for tests whose kernel writes dump files (the file intake):
/// a crash is recorded without its dump 2 s after its event, a dump waits 3 s for its event.
pub const FILE_WAITS: [&str; 4] = ["--event-wait", "2s", "--dump-wait", "3s"];

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

/// A fresh node, holding the test lock with `core` as the pattern to restore: the agent
/// installs its own (socket or pipe) and puts this one back.
pub fn node(tag: &str) -> Node {
    Node::new(tag, "dumps", "core")
}

impl Node {
    /// A fresh node whose dump directory is `dumps` (relative to its temporary directory) and
    /// whose core_pattern is `pattern`, in which `{dumps}` stands for the dump directory. Holds
    /// the test lock, and puts the previous pattern back when dropped.
    pub fn new(tag: &str, dumps: &str, pattern: &str) -> Self {
        let tmp = TempDir::new(tag);
        let (pod_logs, container_logs, dumps) =
            (tmp.join("pods"), tmp.join("containers"), tmp.join(dumps));
        for d in [&pod_logs, &container_logs, &dumps] {
            std::fs::create_dir_all(d).unwrap();
        }
        let guard = CorePatternGuard::set(&pattern.replace("{dumps}", dumps.to_str().unwrap()));
        Node {
            state: tmp.join("state"),
            received: tmp.join("received"),
            run: tmp.join("run"),
            store: tmp.join("store"),
            dumps,
            pod_logs,
            container_logs,
            tmp,
            _guard: guard,
        }
    }

    /// The `run` arguments of an agent on this node: its directories and short waits. Each
    /// flag takes a value.
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

    /// [`Node::args`] with `extra` after them: a flag of the node's given again in `extra`
    /// (`--dest`, `--kube`, a wait) replaces the node's value, the last one given winning.
    pub fn args_with(&self, intake: &str, extra: &[&str]) -> Vec<String> {
        let mut args = self.args(intake);
        let own: Vec<String> = args.iter().skip(1).step_by(2).cloned().collect();
        let mut extra = extra.iter();
        while let Some(&word) = extra.next() {
            match args.iter().position(|a| a == word) {
                Some(at) if own.iter().any(|f| f == word) => {
                    if let Some(value) = extra.next() {
                        args[at + 1] = (*value).to_owned();
                    }
                }
                _ => args.push(word.to_owned()),
            }
        }
        args
    }

    /// Starts the agent with this node's settings and `extra` arguments (a setting given in
    /// `extra`, such as `--dest` or `--kube`, replaces this node's).
    pub fn start(&self, intake: &str, extra: &[&str]) -> Agent {
        self.start_with_env(intake, extra, &[])
    }

    /// [`Node::start`] with extra environment variables (an S3 server's credentials).
    pub fn start_with_env(&self, intake: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let args = self.args_with(intake, extra);
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

    /// What the kubelet writes for a running container, which names its pod: the pod's log
    /// directory (`<namespace>_<name>_<uid>/<container>/0.log`, holding `line`) and the
    /// container's log link to it (`<name>_<namespace>_<container>-<container id>.log`).
    pub fn kubelet_logs(&self, pod: &PodNames<'_>, line: &str) {
        let PodNames {
            namespace,
            name,
            uid,
            container,
            container_id,
        } = pod;
        let dir = self
            .pod_logs
            .join(format!("{namespace}_{name}_{uid}"))
            .join(container);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), line).unwrap();
        symlink(
            dir.join("0.log"),
            self.container_logs
                .join(format!("{name}_{namespace}_{container}-{container_id}.log")),
        )
        .unwrap();
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

/// What names a container in the kubelet's log files.
pub struct PodNames<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub container: &'a str,
    pub container_id: &'a str,
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
        let names = PodNames {
            namespace: &namespace,
            name,
            uid: &uid,
            container: &container,
            container_id: &container_id,
        };
        node.kubelet_logs(&names, "started\n");
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
