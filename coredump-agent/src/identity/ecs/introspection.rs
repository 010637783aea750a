//! identity::ecs::introspection: the ECS agent's introspection API, the read-only HTTP API
//! every ECS container instance serves on `127.0.0.1:51678` (reachable from a container in
//! the host's network).
//!
//! `GET /v1/metadata` names the cluster; `GET /v1/tasks` lists the tasks the agent knows,
//! stopped ones included until its task cleanup (`ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION`,
//! 3 h by default); `GET /v1/tasks?dockerid=<id>` is the task of one Docker container, or
//! `404` with an empty task as body. Which fields there are depends on the agent's version:
//! `Image`, `ImageID` (2023) and everything else optional here is read as missing, never as an
//! error.

use std::time::Duration;

use hyper::{StatusCode, Uri};
use serde::Deserialize;

use crate::http::{self, HttpError};

/// Where the ECS agent serves it by default.
pub const DEFAULT_URI: &str = "http://127.0.0.1:51678";

/// A request, connection to answer: the agent is on this host.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read: a task is a few hundred bytes, and a host runs at most a few hundred
/// tasks.
const MAX_BODY: usize = 16 << 20;

/// Why the introspection API gave no answer to use.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    /// No answer.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// An answer, but not a success.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// What it answered.
        status: StatusCode,
    },
    /// A success, but not the JSON it should be.
    #[error("GET {url}: not the ECS agent's JSON")]
    Decode {
        /// The URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
}

/// `GET /v1/metadata`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AgentMetadata {
    /// The cluster the instance is registered in: a name, or an ARN if the agent was configured
    /// with one (see [`cluster_name`]).
    #[serde(rename = "Cluster", default)]
    pub cluster: Option<String>,
    /// The container instance's ARN; `null` until the agent has registered.
    #[serde(rename = "ContainerInstanceArn", default)]
    pub container_instance_arn: Option<String>,
    /// `Amazon ECS Agent - v1.91.0 (ea97869d)`.
    #[serde(rename = "Version", default)]
    pub version: Option<String>,
}

/// One task of `GET /v1/tasks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Task {
    /// Task ARN; its last part is the task id.
    #[serde(rename = "Arn", default)]
    pub arn: String,
    /// `PENDING`, `RUNNING`, `STOPPED`.
    #[serde(rename = "KnownStatus", default)]
    pub known_status: Option<String>,
    /// Task definition family.
    #[serde(rename = "Family", default)]
    pub family: Option<String>,
    /// Task definition revision (a string in this API).
    #[serde(rename = "Version", default)]
    pub version: Option<String>,
    /// The task's containers (the agent's own internal ones, like awsvpc's pause container,
    /// are left out by the API).
    #[serde(rename = "Containers", default, deserialize_with = "null_as_empty")]
    pub containers: Vec<Container>,
}

/// One container of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Container {
    /// Docker's id, 64 hex: what the container's cgroup is named after.
    #[serde(rename = "DockerId", default)]
    pub docker_id: String,
    /// The name the task definition gives it.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    /// The image as the task definition names it (agents since 2023).
    #[serde(rename = "Image", default)]
    pub image: Option<String>,
    /// The image's id, `sha256:…` (agents since 2023; empty for some).
    #[serde(rename = "ImageID", default)]
    pub image_id: Option<String>,
}

#[derive(Deserialize)]
struct Tasks {
    #[serde(rename = "Tasks", default, deserialize_with = "null_as_empty")]
    tasks: Vec<Task>,
}

/// Go encodes a nil slice as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl Task {
    /// The task id: the last `/` part of the ARN (`task/<cluster>/<id>`, or the older
    /// `task/<id>`), as the ECS agent takes it.
    pub fn id(&self) -> Option<&str> {
        task_id(&self.arn)
    }

    /// The cluster, when the ARN has one (the long ARN format: `task/<cluster>/<id>`).
    pub fn cluster(&self) -> Option<&str> {
        let resource = self.arn.split_once(":task/")?.1;
        let (cluster, id) = resource.rsplit_once('/')?;
        (!cluster.is_empty() && !id.is_empty()).then_some(cluster)
    }
}

/// The task id in a task ARN.
pub fn task_id(arn: &str) -> Option<&str> {
    let resource = arn.split_once(":task/")?.1;
    let id = resource.rsplit('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// A cluster's name, whether the agent was configured with it or with the cluster's ARN
/// (`arn:aws:ecs:<region>:<account>:cluster/<name>`).
pub fn cluster_name(cluster: &str) -> &str {
    cluster
        .split_once(":cluster/")
        .map_or(cluster, |(_, name)| name)
}

/// A client of one ECS agent's introspection API.
#[derive(Clone, Debug)]
pub struct Introspection {
    base: Uri,
}

impl Introspection {
    /// A client of the API at `uri` (`http://127.0.0.1:51678`).
    pub fn new(uri: &str) -> Result<Self, HttpError> {
        Ok(Self {
            base: http::parse_url(uri)?,
        })
    }

    /// The API's address, for messages.
    pub fn uri(&self) -> String {
        self.base.to_string()
    }

    /// `GET /v1/metadata`.
    pub async fn metadata(&self) -> Result<AgentMetadata, IntrospectionError> {
        let (_, body) = self.get("/v1/metadata", false).await?;
        decode(&self.base, &body)
    }

    /// `GET /v1/tasks`: every task the ECS agent knows, stopped ones until its cleanup.
    pub async fn tasks(&self) -> Result<Vec<Task>, IntrospectionError> {
        let (url, body) = self.get("/v1/tasks", false).await?;
        let tasks: Tasks = decode_at(&url, &body)?;
        Ok(tasks.tasks)
    }

    /// `GET /v1/tasks?dockerid=<id>`: the task of one container; `None` if the ECS agent does
    /// not know it (not an ECS container, or cleaned up).
    pub async fn task_of_container(
        &self,
        docker_id: &str,
    ) -> Result<Option<Task>, IntrospectionError> {
        // Only ids the cgroup path gave reach here (64 lowercase hex): nothing to escape. A
        // full id, never a short one: up to 12 characters the API matches prefixes.
        debug_assert!(docker_id.len() > 12);
        let (url, body) = self
            .get(&format!("/v1/tasks?dockerid={docker_id}"), true)
            .await?;
        if body.is_empty() {
            return Ok(None);
        }
        decode_at(&url, &body).map(Some)
    }

    /// GETs a path; `not_found_is_none`: a 404 is an empty body rather than an error.
    async fn get(
        &self,
        path: &str,
        not_found_is_none: bool,
    ) -> Result<(String, bytes::Bytes), IntrospectionError> {
        let uri = http::join(&self.base, path)?;
        let url = uri.to_string();
        let response = http::get(&uri, TIMEOUT, MAX_BODY).await?;
        match response.status {
            StatusCode::OK => Ok((url, response.body)),
            // The API answers a task it does not know with 404 and an empty task as body.
            StatusCode::NOT_FOUND if not_found_is_none => Ok((url, bytes::Bytes::new())),
            status => Err(IntrospectionError::Status { url, status }),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    base: &Uri,
    body: &[u8],
) -> Result<T, IntrospectionError> {
    decode_at(&base.to_string(), body)
}

fn decode_at<T: serde::de::DeserializeOwned>(
    url: &str,
    body: &[u8],
) -> Result<T, IntrospectionError> {
    serde_json::from_slice(body).map_err(|source| IntrospectionError::Decode {
        url: url.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ECS agent's own handler test task (`handlers_test.go` `testTask()`), serialized.
    const HANDLER_TEST_TASK: &str = r#"{"Arn":"t1","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Family":"sleep","Version":"1","Containers":[{"DockerId":"c0123456789ABC","DockerName":"cname","Name":"sleepy","Image":"busybox","ImageID":"busyb0xID","Ports":[{"ContainerPort":80,"Protocol":"tcp"}],"Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["10.0.0.2"]}],"Volumes":[{"DockerName":"volume1","Source":"/var/lib/volume1","Destination":"/volume"}]}]}"#;

    /// What AWS's documentation shows for a current agent.
    const DOCUMENTED_TASKS: &str = r#"{"Tasks":[{"Arn":"arn:aws:ecs:us-west-2:012345678910:task/default/example5-58ff-46c9-ae05-543f8example","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Family":"hello_world","Version":"8","Containers":[{"DockerId":"9581a69a761a557fbfce1d0f6745e4af5b9dbfb86b6b2c5c4df156f1a5932ff1","DockerName":"ecs-hello_world-8-mysql-fcae8ac8f9f1d89d8301","Name":"mysql","CreatedAt":"2023-10-08T20:09:11.44527186Z","StartedAt":"2023-10-08T20:09:11.44527186Z","ImageID":"sha256:2ae34abc2ed0a22e280d17e13f9c01aaf725688b09b7a1525d1a2750e2c0d1de"}]}]}"#;

    /// A 2018 agent (old ARN format, no image fields), from a public pull request's output.
    const OLD_AGENT_TASK: &str = r#"{"Arn":"arn:aws:ecs:us-west-2:410584942969:task/c1bc8e40-35d9-4e1e-ba36-3e366fd8c97c","DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Family":"sleep300","Version":"6","Containers":[{"DockerId":"fc43f49749cfa09fba02ccf7cdf88c453604b05686b07b278de849466c32ec1f","DockerName":"ecs-sleep300-6-sleep-aef3d2fbb494a5e08201","Name":"sleep","Ports":[],"Networks":[{"NetworkMode":"awsvpc","IPv4Addresses":["172.31.23.89"]}]}]}"#;

    /// What `?dockerid=` answers, with 404, for a container the agent does not know.
    const NOT_FOUND_BODY: &str =
        r#"{"Arn":"","KnownStatus":"","Family":"","Version":"","Containers":null}"#;

    #[test]
    fn reads_every_agent_versions_shape() {
        let t: Task = serde_json::from_str(HANDLER_TEST_TASK).unwrap();
        assert_eq!(t.family.as_deref(), Some("sleep"));
        assert_eq!(t.containers[0].image.as_deref(), Some("busybox"));
        assert_eq!(t.containers[0].image_id.as_deref(), Some("busyb0xID"));

        let Tasks { tasks } = serde_json::from_str(DOCUMENTED_TASKS).unwrap();
        let t = &tasks[0];
        assert_eq!(t.id(), Some("example5-58ff-46c9-ae05-543f8example"));
        assert_eq!(t.cluster(), Some("default"));
        assert_eq!(t.version.as_deref(), Some("8"));
        let c = &t.containers[0];
        assert_eq!(c.name.as_deref(), Some("mysql"));
        assert_eq!(c.image, None);
        assert!(c.image_id.as_deref().unwrap().starts_with("sha256:"));

        let t: Task = serde_json::from_str(OLD_AGENT_TASK).unwrap();
        assert_eq!(t.id(), Some("c1bc8e40-35d9-4e1e-ba36-3e366fd8c97c"));
        assert_eq!(t.cluster(), None, "the old ARN format names no cluster");
        assert_eq!(
            (
                t.containers[0].image.as_ref(),
                t.containers[0].image_id.as_ref()
            ),
            (None, None)
        );

        let t: Task = serde_json::from_str(NOT_FOUND_BODY).unwrap();
        assert!(t.containers.is_empty() && t.id().is_none());
        let Tasks { tasks } = serde_json::from_str(r#"{"Tasks":null}"#).unwrap();
        assert!(tasks.is_empty());

        let m: AgentMetadata = serde_json::from_str(r#"{"Cluster":"ecs-test","ContainerInstanceArn":null,"Version":"Amazon ECS Agent - v1.91.0 (*ea97869d)"}"#).unwrap();
        assert_eq!(m.cluster.as_deref(), Some("ecs-test"));
        assert_eq!(m.container_instance_arn, None);
    }

    #[test]
    fn ids_and_clusters_from_arns() {
        assert_eq!(
            task_id(
                "arn:aws:ecs:eu-central-1:123331553797:task/ecs-eu-central-demoec2/8c5ccf71f0b748bfa2b4a7381adfe256"
            ),
            Some("8c5ccf71f0b748bfa2b4a7381adfe256")
        );
        assert_eq!(
            task_id(
                "arn:aws-cn:ecs:cn-north-1:123456789012:task/10838bed-421f-43ef-870a-f43feacbbb5b"
            ),
            Some("10838bed-421f-43ef-870a-f43feacbbb5b")
        );
        assert_eq!(task_id("t1"), None);
        assert_eq!(task_id("arn:aws:ecs:r:a:task/"), None);
        assert_eq!(cluster_name("prod"), "prod");
        assert_eq!(
            cluster_name("arn:aws:ecs:us-west-2:012345678910:cluster/prod"),
            "prod"
        );
    }
}
