//! A fake Amazon ECS agent introspection API for the ECS tests: plain HTTP on 127.0.0.1,
//! answering as the ECS agent's handlers do (`ecs-agent/introspection/v1`, AWS's
//! "Amazon ECS container introspection" documentation):
//!
//! - `GET /v1/metadata`: `{"Cluster", "ContainerInstanceArn", "Version"}`;
//! - `GET /v1/tasks`: `{"Tasks": [...]}`, sent chunked as Go's `net/http` sends bodies that
//!   outgrow its buffer; stopped tasks stay listed (`KnownStatus: STOPPED`) until removed, as
//!   until the ECS agent's task cleanup;
//! - `GET /v1/tasks?dockerid=<id>`: the task of one container, an exact match for ids longer
//!   than 12 characters and a prefix match otherwise (`400` when several match); `404` with an
//!   empty task as body when none does; `?taskarn=` likewise, both at once `400`;
//! - every request is recorded (path and query).
//!
//! Blocking std threads, as [`crate::fake_kube`], whose request reading it shares.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{Value, json};

use crate::fake_kube::{parse_query, read_request};

/// The region and account of the tasks' ARNs.
const ARN_PREFIX: &str = "arn:aws:ecs:eu-west-1:012345678910";

/// A running fake introspection API. It stops with the test process.
pub struct FakeEcs {
    addr: SocketAddr,
    shared: Arc<Mutex<State>>,
}

struct State {
    cluster: String,
    tasks: Vec<Value>,
    requests: Vec<String>,
}

/// A container of a task.
pub struct Container<'a> {
    /// Its name in the task definition.
    pub name: &'a str,
    /// Docker's id (64 hex).
    pub docker_id: &'a str,
    /// The image as the task definition names it; `None` as agents before 2023 answer.
    pub image: Option<&'a str>,
    /// `sha256:…`.
    pub image_id: Option<&'a str>,
}

impl FakeEcs {
    /// Starts serving, for a container instance of `cluster`, on an ephemeral port.
    pub fn start(cluster: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake ECS agent");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(State {
            cluster: cluster.to_owned(),
            tasks: Vec::new(),
            requests: Vec::new(),
        }));
        let server = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = server.clone();
                std::thread::spawn(move || serve(&shared, conn));
            }
        });
        Self { addr, shared }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a task (as the ECS agent would list it once it runs).
    pub fn add(&self, task: Value) {
        self.lock().tasks.push(task);
    }

    /// Marks a task stopped, as the ECS agent lists it until its cleanup.
    pub fn stop(&self, task_id: &str) {
        for t in self.lock().tasks.iter_mut().filter(|t| is(t, task_id)) {
            t["KnownStatus"] = json!("STOPPED");
            t["DesiredStatus"] = json!("STOPPED");
        }
    }

    /// Forgets a task, as the ECS agent's task cleanup does; whether it was there.
    pub fn remove(&self, task_id: &str) -> bool {
        let mut state = self.lock();
        let before = state.tasks.len();
        state.tasks.retain(|t| !is(t, task_id));
        state.tasks.len() < before
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Waits until `pred(requests)` holds; panics after `timeout`.
    pub fn wait_for_requests(
        &self,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        crate::wait_for_requests("the fake ECS agent", timeout, || self.requests(), pred)
    }
}

/// A task's ARN, in the long format (`task/<cluster>/<id>`).
pub fn task_arn(cluster: &str, task_id: &str) -> String {
    format!("{ARN_PREFIX}:task/{cluster}/{task_id}")
}

/// A running task as the ECS agent lists it.
pub fn task(
    cluster: &str,
    family: &str,
    revision: u32,
    task_id: &str,
    containers: &[Container<'_>],
) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| {
            let mut v = json!({
                "DockerId": c.docker_id,
                // `ecs-<family>-<revision>-<container>-<random hex>`.
                "DockerName": format!("ecs-{family}-{revision}-{}-{}", c.name, &c.docker_id[..20]),
                "Name": c.name,
                "CreatedAt": "2026-11-26T08:01:02.44527186Z",
                "StartedAt": "2026-11-26T08:01:03.12345678Z",
                "Networks": [{"NetworkMode": "bridge", "IPv4Addresses": ["172.17.0.2"]}],
            });
            if let Some(image) = c.image {
                v["Image"] = json!(image);
            }
            if let Some(image_id) = c.image_id {
                v["ImageID"] = json!(image_id);
            }
            v
        })
        .collect();
    json!({
        "Arn": task_arn(cluster, task_id),
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Family": family,
        "Version": revision.to_string(),
        "Containers": containers,
    })
}

fn is(task: &Value, task_id: &str) -> bool {
    task["Arn"]
        .as_str()
        .is_some_and(|a| a.ends_with(&format!("/{task_id}")))
}

/// The ECS agent's answer to a task it does not know: 404, and an empty task.
fn empty_task() -> Value {
    json!({"Arn": "", "KnownStatus": "", "Family": "", "Version": "", "Containers": null})
}

/// Handles one connection: one request.
fn serve(shared: &Mutex<State>, mut conn: TcpStream) {
    let Some((method, target, _)) = read_request(&conn) else {
        return;
    };
    let mut state = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    state.requests.push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params = parse_query(query);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if method != "GET" {
        return respond(&mut conn, "405 Method Not Allowed", &json!({}), false);
    }
    match path {
        "/v1/metadata" => {
            let metadata = json!({
                "Cluster": state.cluster,
                "ContainerInstanceArn": format!("{ARN_PREFIX}:container-instance/{}/43130c95daad49cf8bd38dcc25007fa5", state.cluster),
                "Version": "Amazon ECS Agent - v1.105.1 (*4a2b9e1d)",
            });
            respond(&mut conn, "200 OK", &metadata, false);
        }
        "/v1/tasks" => match (param("dockerid"), param("taskarn")) {
            (None, None) => {
                let tasks = json!({"Tasks": state.tasks});
                respond(&mut conn, "200 OK", &tasks, true);
            }
            (Some(_), Some(_)) => respond(&mut conn, "400 Bad Request", &empty_task(), false),
            (docker_id, arn) => {
                let matches: Vec<&Value> = state
                    .tasks
                    .iter()
                    .filter(|t| match (&docker_id, &arn) {
                        (Some(id), _) => t["Containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| c["DockerId"].as_str())
                            .any(|d| {
                                if id.len() > 12 {
                                    d == id
                                } else {
                                    d.starts_with(id.as_str())
                                }
                            }),
                        (_, Some(arn)) => t["Arn"] == arn.as_str(),
                        _ => false,
                    })
                    .collect();
                match matches.as_slice() {
                    [task] => respond(&mut conn, "200 OK", task, false),
                    [] => respond(&mut conn, "404 Not Found", &empty_task(), false),
                    _ => respond(&mut conn, "400 Bad Request", &empty_task(), false),
                }
            }
        },
        _ => respond(&mut conn, "404 Not Found", &json!({}), false),
    }
}

fn respond(conn: &mut TcpStream, status: &str, body: &Value, chunked: bool) {
    let body = body.to_string();
    let _ = if chunked {
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .and_then(|()| {
            // Several chunks, as a large body arrives.
            for chunk in body.as_bytes().chunks(1024) {
                write!(conn, "{:x}\r\n", chunk.len())?;
                conn.write_all(chunk)?;
                conn.write_all(b"\r\n")?;
            }
            conn.write_all(b"0\r\n\r\n")
        })
    } else {
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = conn.flush();
}
