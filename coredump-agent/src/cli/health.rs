//! `coredump-agent health`: asks a running agent whether it is healthy (GET its `/healthz`),
//! for container health checks where the image has no shell or curl: an ECS task
//! definition's `healthCheck` runs a command inside the container.
//!
//! Exit codes as Docker's health checks read them: 0 healthy, 1 unhealthy (an error answer,
//! or none). Never 2, which Docker reserves.

use std::process::ExitCode;

use super::{EXIT_NOT_FOUND, args::HealthArgs};
use crate::http;

/// Largest answer read: `/healthz` says a word or two.
const MAX_BODY: usize = 4096;

/// GETs the agent's health URL once.
pub async fn execute(args: HealthArgs) -> anyhow::Result<ExitCode> {
    let url = match args.url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    Ok(match http::get(&url, args.timeout, MAX_BODY).await {
        Ok(r) if r.status.is_success() => {
            println!("healthy: {url} answered {}", r.status);
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let body = String::from_utf8_lossy(&r.body);
            eprintln!(
                "unhealthy: {url} answered {}: {}",
                r.status,
                super::printable(body.trim())
            );
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(e) => {
            eprintln!("unhealthy: {}", crate::error_chain(&e));
            ExitCode::from(EXIT_NOT_FOUND)
        }
    })
}
