//! Ceph's radosgw on 127.0.0.1 for the tests: a real S3 implementation (moto is a model of
//! S3, and a client can work against it and fail against a real server). A one-node cluster
//! (mon, OSD, radosgw) started by `xtask/tools/radosgw.sh`, everything under a temporary
//! directory, stopped and removed on drop.
//!
//! Starting one takes a few seconds, so the tests of a binary share it: [`Radosgw::shared`]
//! hands out the running one, and the last test to drop it stops it. Each test makes its own
//! bucket ([`Radosgw::bucket`]).
//!
//! Without radosgw at the pinned major version (`cargo xtask setup` installs it from Debian)
//! a test prints `SKIPPED`, and under `CI=true` it fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, Weak},
};

use coredump_agent::store::{
    ConnectOptions, S3Store,
    s3::{MIN_PART_SIZE, Tuning, sdk},
};

use crate::{ci, moto::free_port};

/// The region the SDK signs with; radosgw accepts any.
pub const REGION: &str = "us-east-1";

/// A running radosgw and its S3 user's keys.
pub struct Radosgw {
    dir: PathBuf,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

/// The cluster the tests of this binary share while any holds it.
static SHARED: Mutex<Weak<Radosgw>> = Mutex::new(Weak::new());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .join("xtask/tools/radosgw.sh")
}

impl Radosgw {
    /// The running cluster, started if no test holds one. `None` (after saying why) when
    /// radosgw is not installed at the pinned version, except under CI, where that fails.
    pub fn shared(test: &str) -> Option<Arc<Self>> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = shared.upgrade() {
            return Some(running);
        }
        let check = Command::new("bash")
            .arg(script())
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .expect("run radosgw.sh");
        if !check.status.success() {
            let why = format!(
                "{} (run `cargo xtask setup` as root)",
                String::from_utf8_lossy(&check.stderr).trim()
            );
            assert!(!ci(), "{test}: {why}, and CI=true forbids skipping");
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        let running = Arc::new(Self::start());
        *shared = Arc::downgrade(&running);
        Some(running)
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "coredump-test-rgw-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(free_port().to_string())
            // Small objects only: the OSD keeps them in memory, and starts in half the time.
            .env("RGW_OSD_STORE", "memstore")
            .env("RGW_OSD_SIZE_GB", "4")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run radosgw.sh start");
        assert!(
            out.status.success(),
            "radosgw.sh start {} failed (its log is above)",
            dir.display()
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name}= in radosgw.sh's answer {line:?}"))
                .to_owned()
        };
        Self {
            endpoint: field("endpoint"),
            access_key: field("access_key"),
            secret_key: field("secret_key"),
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Environment for an agent process using this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// SDK settings with this server's credentials (no endpoint: [`S3Store`] sets it).
    fn sdk_config(&self) -> sdk::config::Builder {
        sdk::config::Builder::new()
            .behavior_version(sdk::config::BehaviorVersion::latest())
            .region(sdk::config::Region::from_static(REGION))
            .credentials_provider(sdk::config::Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "tests",
            ))
    }

    /// An SDK client for what the store does not do (create buckets, list uploads), with only
    /// the checksums an operation requires, as radosgw 16 needs.
    pub fn client(&self) -> sdk::Client {
        sdk::Client::from_conf(
            self.sdk_config()
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .request_checksum_calculation(sdk::config::RequestChecksumCalculation::WhenRequired)
                .build(),
        )
    }

    /// Creates a bucket named after `test` (made valid and unique in this cluster).
    pub async fn bucket(&self, test: &str) -> String {
        let name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("{}-{}", name.trim_matches('-'), free_port());
        self.client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        name
    }

    /// A store on `bucket` with test-sized parts (5 MiB) and the given options (endpoint and
    /// path style are set here).
    pub fn store(&self, bucket: &str, options: ConnectOptions) -> S3Store {
        let options = ConnectOptions {
            s3_endpoint: Some(self.endpoint.clone()),
            s3_path_style: true,
            ..options
        };
        S3Store::with_config(self.sdk_config(), bucket, "", &options)
            .expect("store")
            .with_tuning(Tuning {
                min_part_size: MIN_PART_SIZE,
                ..Tuning::default()
            })
    }
}

impl Drop for Radosgw {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("radosgw.sh stop {} failed: {status:?}", self.dir.display());
        }
    }
}
