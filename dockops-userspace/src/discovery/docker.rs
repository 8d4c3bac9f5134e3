//! Containers and their lifecycle events from the Docker API.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use bollard::{
    models::{ContainerSummaryStateEnum, EventMessageTypeEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures::{Stream, StreamExt as _};

use super::{
    CgroupPaths, Container, DockerResources, HostInterface, Inventory, WritableLayer, netns,
};

/// What an inspect (and a visit to the network namespace) adds to a listed container.
struct Inspected {
    pid: u32,
    started_at: Option<std::time::Duration>,
    resources: DockerResources,
    storage: Option<WritableLayer>,
    interfaces: Option<Vec<HostInterface>>,
    notes: Vec<String>,
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
    /// The container's id.
    pub id: String,
    /// When it happened, seconds since the epoch (to resubscribe from).
    pub time: i64,
}

/// Client of the Docker engine named by `DOCKER_HOST` (default: the local socket).
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// Mount point of the cgroup v2 hierarchy, to resolve cgroup ids.
    unified: Option<PathBuf>,
    /// The engine's storage driver and root directory (`docker info`).
    storage: Option<(String, PathBuf)>,
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
        let storage = match client.info().await {
            Ok(info) => info.driver.zip(info.docker_root_dir.map(PathBuf::from)),
            Err(error) => {
                tracing::warn!("docker info failed ({error}): storage limits are unavailable");
                None
            }
        };
        Ok(Self {
            client,
            unified,
            storage,
        })
    }

    /// The API client, for the stages that act through Docker (limits).
    pub fn client(&self) -> bollard::Docker {
        self.client.clone()
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
                let cgroup = CgroupPaths::read(found.pid)
                    .unwrap_or_default()
                    .owned_by(&id);
                Container {
                    cgroup_id: self.unified.as_deref().and_then(|u| cgroup.id(u)),
                    cgroup,
                    pid: found.pid,
                    started_at: found.started_at,
                    interfaces: found.interfaces,
                    notes: found.notes,
                    ipv4: found.ipv4,
                    ipv6: found.ipv6,
                    storage: found.storage,
                    resources: found.resources,
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
        let state = inspect.state.unwrap_or_default();
        let pid = u32::try_from(state.pid.unwrap_or(0))
            .ok()
            .filter(|&p| p != 0)?;
        let started_at = state.started_at.as_deref().and_then(|t| {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .ok()?;
            u64::try_from(at.unix_timestamp_nanos())
                .ok()
                .map(std::time::Duration::from_nanos)
        });
        let storage = self.storage.as_ref().map(|(driver, root)| {
            let upper = inspect
                .graph_driver
                .as_ref()
                .and_then(|g| g.data.get("UpperDir"));
            writable_layer(driver, root, id, upper.map(String::as_str))
        });
        let host_config = inspect.host_config.unwrap_or_default();
        let mode = host_config.network_mode.clone().unwrap_or_default();
        let resources = DockerResources::from_host_config(host_config);
        let (interfaces, notes) = match network_note(&mode, pid) {
            Some(note) => (Some(Vec::new()), vec![note]),
            None => match netns::host_interfaces(pid) {
                Ok(found) => (Some(found.veths), found.notes),
                Err(error) => {
                    tracing::warn!(%id, pid, %error, "cannot read the container's interfaces");
                    (None, Vec::new())
                }
            },
        };
        Some(Inspected {
            pid,
            started_at,
            resources,
            storage,
            interfaces,
            notes,
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

    /// Container starts, stops and network changes, as they happen, from `since` (seconds
    /// since the epoch) on. The stream ends when the engine goes away.
    pub fn events(
        &self,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<Event, DiscoveryError>> + use<> {
        let filters = HashMap::from([
            (
                "type".to_owned(),
                vec!["container".to_owned(), "network".to_owned()],
            ),
            (
                "event".to_owned(),
                // `update`: `docker update` changed its limits.
                ["start", "die", "destroy", "update", "connect", "disconnect"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            // The engine replays what happened since then: nothing falls between a listing
            // and the subscription, nor between a lost stream and its replacement.
            since: since.map(|t| t.to_string()),
            ..Default::default()
        };
        self.client.events(Some(options)).map(|message| {
            let message = message.map_err(|source| DiscoveryError::Api {
                what: "events",
                source,
            })?;
            let actor = message.actor.unwrap_or_default();
            // A network event names the network; the container is an attribute.
            let network = message.typ == Some(EventMessageTypeEnum::NETWORK);
            let id = if network {
                actor.attributes.and_then(|mut a| a.remove("container"))
            } else {
                actor.id
            };
            Ok(Event {
                action: message.action.unwrap_or_default(),
                id: id.unwrap_or_default(),
                time: message.time.unwrap_or_default(),
            })
        })
    }
}

/// The writable layer of container `id` under the engine's `root`: btrfs keeps it in a
/// subvolume named by the layer store's mount id, overlay2 names its upper directory.
fn writable_layer(driver: &str, root: &Path, id: &str, upper: Option<&str>) -> WritableLayer {
    let path = match driver {
        "btrfs" => {
            let mount_id = root.join(format!("image/btrfs/layerdb/mounts/{id}/mount-id"));
            std::fs::read_to_string(mount_id)
                .ok()
                .map(|m| root.join("btrfs/subvolumes").join(m.trim()))
        }
        "overlay2" => upper.map(PathBuf::from),
        _ => None,
    };
    let qgroup = path
        .as_deref()
        .filter(|_| driver == "btrfs")
        .and_then(|p| crate::btrfs::qgroup_dir(p).ok());
    let project = path
        .as_deref()
        .filter(|_| driver == "overlay2")
        .and_then(|upper| {
            let id = crate::quota::project(upper).ok().filter(|&id| id != 0)?;
            let device = crate::quota::mount_source(upper).filter(|d| crate::quota::enabled(d))?;
            Some((device, id))
        });
    WritableLayer {
        driver: driver.to_owned(),
        path,
        qgroup,
        project,
    }
}

/// Why a container has no veth of its own, from its network mode (`HostConfig.NetworkMode`)
/// or its namespace; `None` when it may have some.
fn network_note(mode: &str, pid: u32) -> Option<String> {
    if let Some(other) = mode.strip_prefix("container:") {
        let short = &other[..other.len().min(12)];
        return Some(format!(
            "shares the network namespace of container {short} (--network container:): its \
             interface traffic is counted and capped with that container (its own sockets' in \
             network.socket_*)"
        ));
    }
    if mode == "none" {
        return Some("has no network (--network none)".to_owned());
    }
    if mode == "host" || netns::is_host_netns(pid).unwrap_or(false) {
        return Some(
            "uses the host's network namespace (--network host): it has no interface to \
             count or cap; its sockets' traffic is in network.socket_*"
                .to_owned(),
        );
    }
    None
}
