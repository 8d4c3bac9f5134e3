//! CPU, memory and pids through Docker's update API: Docker writes the cgroup files (runc
//! converts shares to a v2 weight), keeps `docker inspect` true, and applies the limits
//! again when the container restarts.

use bollard::{errors::Error, models::ContainerUpdateBody};

use super::LimitError;
use crate::policy::update::{DockerResources, Update};

/// The container's resource settings as Docker holds them.
pub async fn inspect(
    client: &bollard::Docker,
    id: &str,
    name: &str,
) -> Result<DockerResources, LimitError> {
    let inspect = client
        .inspect_container(id, None)
        .await
        .map_err(|source| api(name, source))?;
    Ok(DockerResources::from_host_config(
        inspect.host_config.unwrap_or_default(),
    ))
}

/// Sends `update` (nothing when it is empty), in [`Update::steps`].
pub async fn update(
    client: &bollard::Docker,
    id: &str,
    name: &str,
    update: &Update,
    cgroup_v1: bool,
) -> Result<(), LimitError> {
    for step in update.steps(cgroup_v1) {
        send(client, id, name, &step).await?;
    }
    Ok(())
}

async fn send(
    client: &bollard::Docker,
    id: &str,
    name: &str,
    update: &Update,
) -> Result<(), LimitError> {
    tracing::info!(container = name, ?update, "docker update");
    let body = ContainerUpdateBody {
        nano_cpus: update.nano_cpus,
        cpu_shares: update.cpu_shares,
        cpu_period: update.cpu_period,
        cpu_quota: update.cpu_quota,
        cpuset_cpus: update.cpuset_cpus.clone(),
        cpuset_mems: update.cpuset_mems.clone(),
        memory: update.memory,
        memory_swap: update.memory_swap,
        memory_reservation: update.memory_reservation,
        pids_limit: update.pids_limit,
        ..ContainerUpdateBody::default()
    };
    client
        .update_container(id, body)
        .await
        .map_err(|source| api(name, source))
}

/// Docker's 4xx answers are about the request (its own checks of the values): input errors.
fn api(name: &str, source: Error) -> LimitError {
    match source {
        Error::DockerResponseServerError {
            status_code: 400..=499,
            message,
        } => LimitError::Refused {
            container: name.to_owned(),
            message,
        },
        source => LimitError::Docker {
            container: name.to_owned(),
            source,
        },
    }
}
