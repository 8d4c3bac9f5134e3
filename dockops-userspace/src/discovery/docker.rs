//! Containers and their lifecycle events from the Docker API.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use bollard::{
    models::ContainerSummaryStateEnum,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures::{Stream, StreamExt as _};

use super::{CgroupPaths, Container, HostInterface, Inventory, netns};

/// What an inspect (and a visit to the network namespace) adds to a listed container.
struct Inspected {
    pid: u32,
    interfaces: Option<Vec<HostInterface>>,
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot reach the Docker engine at {host} (is dockerd running? DOCKER_HOST selects \
         another engine)"
    )]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker API request {what} failed")]
    Api {
        what: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

/// A container lifecycle change that may add or remove host interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub action: String,
    pub id: String,
}

/// Client of the Docker engine named by `DOCKER_HOST` (default: the local socket).
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// Mount point of the cgroup v2 hierarchy, to resolve cgroup ids.
    unified: Option<PathBuf>,
}

impl Docker {
    pub async fn connect(unified: Option<PathBuf>) -> Result<Self, DiscoveryError> {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let connect_err = |source| DiscoveryError::Connect {
            host: host.clone(),
            source,
        };
        // Negotiation lets a current client talk to older engines (Debian 12 ships API 1.41).
        let client = bollard::Docker::connect_with_defaults()
            .map_err(connect_err)?
            .negotiate_version()
            .await
            .map_err(connect_err)?;
        Ok(Self { client, unified })
    }

    /// Every running container with its pid and host-side interfaces, and the ids of all
    /// containers (stopped ones keep their caps until they are removed).
    ///
    /// Pid and interfaces of a container in `previous` are reused unless its id is in
    /// `changed` (it started or stopped since): a list call then costs one API request
    /// instead of an inspect and a namespace visit per container.
    pub async fn running(
        &self,
        previous: &[Container],
        changed: &HashSet<String>,
    ) -> Result<Inventory, DiscoveryError> {
        let known: HashMap<&str, &Container> = previous
            .iter()
            .filter(|c| c.interfaces.is_some() && !changed.contains(&c.id))
            .map(|c| (c.id.as_str(), c))
            .collect();
        let summaries = self
            .client
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..ListContainersOptions::default()
            }))
            .await
            .map_err(|source| DiscoveryError::Api {
                what: "list containers",
                source,
            })?;
        let mut containers = Vec::with_capacity(summaries.len());
        let mut existing = HashSet::with_capacity(summaries.len());
        for summary in summaries {
            let Some(id) = summary.id else { continue };
            existing.insert(id.clone());
            if !matches!(
                summary.state,
                Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED)
            ) {
                continue;
            }
            let name = summary
                .names
                .and_then(|names| names.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default();
            let mut container = if let Some(c) = known.get(id.as_str()) {
                (*c).clone()
            } else if let Some(found) = self.inspect(&id).await {
                let cgroup = CgroupPaths::read(found.pid).unwrap_or_default();
                Container {
                    cgroup_id: self.unified.as_deref().and_then(|u| cgroup.id(u)),
                    cgroup,
                    pid: found.pid,
                    interfaces: found.interfaces,
                    ipv4: found.ipv4,
                    ipv6: found.ipv6,
                    ..Container::default()
                }
            } else {
                continue;
            };
            container.id = id;
            container.name = name;
            container.image = summary.image.unwrap_or_default();
            container.labels = summary
                .labels
                .unwrap_or_default()
                .into_iter()
                .collect::<BTreeMap<_, _>>();
            containers.push(container);
        }
        Ok(Inventory {
            running: containers,
            existing,
        })
    }

    /// Pid, host interfaces and addresses of a running container; `None` if it is gone or
    /// not running.
    async fn inspect(&self, id: &str) -> Option<Inspected> {
        // A container can stop between the list and the inspect: it is then simply gone.
        let inspect = match self.client.inspect_container(id, None).await {
            Ok(inspect) => inspect,
            Err(error) => {
                tracing::debug!(%id, %error, "container vanished during discovery");
                return None;
            }
        };
        let endpoints: Vec<_> = inspect
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flat_map(HashMap::into_values)
            .collect();
        let pid = inspect.state.and_then(|s| s.pid).unwrap_or(0);
        let pid = u32::try_from(pid).ok().filter(|&p| p != 0)?;
        let interfaces = netns::host_interfaces(pid)
            .inspect_err(|error| {
                tracing::warn!(%id, pid, %error, "cannot read the container's interfaces");
            })
            .ok();
        Some(Inspected {
            pid,
            interfaces,
            ipv4: endpoints
                .iter()
                .filter_map(|e| e.ip_address.as_deref()?.parse().ok())
                .collect(),
            ipv6: endpoints
                .iter()
                .filter_map(|e| e.global_ipv6_address.as_deref()?.parse().ok())
                .collect(),
        })
    }

    /// Container starts and stops, as they happen. The stream ends when the engine goes away.
    pub fn events(&self) -> impl Stream<Item = Result<Event, DiscoveryError>> + use<> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()],
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        self.client.events(Some(options)).map(|message| {
            let message = message.map_err(|source| DiscoveryError::Api {
                what: "events",
                source,
            })?;
            Ok(Event {
                action: message.action.unwrap_or_default(),
                id: message.actor.and_then(|a| a.id).unwrap_or_default(),
            })
        })
    }
}
