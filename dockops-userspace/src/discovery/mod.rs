//! Which containers run, and where their traffic crosses into the host.

mod cgroup;
mod docker;
mod netns;

pub use cgroup::CgroupPaths;
pub use docker::{DiscoveryError, Docker, Event};
pub use netns::interface_name;
use netns::{GSO_MAX_SIZE, gso_max_size};

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

/// What one pass of discovery found.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Running (and paused) containers.
    pub running: Vec<Container>,
    /// The ids of every container Docker knows, stopped ones included.
    pub existing: HashSet<String>,
}

/// A container id as 32 bytes (its 64 hex digits decoded; zeros past anything not hex).
pub fn id_bytes(id: &str) -> [u8; 32] {
    let mut bytes = [0; 32];
    for (byte, pair) in bytes.iter_mut().zip(id.as_bytes().chunks(2)) {
        *byte = std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .unwrap_or(0);
    }
    bytes
}

/// A running container as the rest of the pipeline needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// Full 64-hex-digit id.
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Pid of the container's init process on the host.
    pub pid: u32,
    /// Host-side veths of the container's interfaces; `None` when they could not be read
    /// (the container is exiting, say), so later stages leave its state alone.
    pub interfaces: Option<Vec<HostInterface>>,
    /// What dockops cannot count or cap for its network (host or shared namespace, overlay,
    /// macvlan...), one sentence each.
    pub notes: Vec<String>,
    /// The container's cgroups (empty if they could not be read).
    pub cgroup: CgroupPaths,
    /// Its cgroup v2 id, as BPF programs see it; `None` without a v2 hierarchy.
    pub cgroup_id: Option<u64>,
    /// Its IPv4 addresses on Docker networks (none with `--network host` or `none`).
    pub ipv4: Vec<Ipv4Addr>,
    /// Its global IPv6 addresses, on networks with IPv6 enabled.
    pub ipv6: Vec<Ipv6Addr>,
    /// Its writable layer; `None` when the engine's storage driver is unknown.
    pub storage: Option<WritableLayer>,
    /// Its resource settings as Docker held them at the last inspect (discovery inspects a
    /// container again on each of its events, `docker update` included).
    pub resources: DockerResources,
    /// When it last started, since the epoch (`State.StartedAt`).
    pub started_at: Option<std::time::Duration>,
}

/// A container's `HostConfig` resource fields as `inspect` reports them (0 or "": never set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerResources {
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub memory: i64,
    pub memory_swap: i64,
    pub memory_reservation: i64,
    pub pids_limit: i64,
}

impl DockerResources {
    /// The fields of an inspect's `HostConfig`.
    pub fn from_host_config(h: bollard::models::HostConfig) -> Self {
        Self {
            nano_cpus: h.nano_cpus.unwrap_or(0),
            cpu_shares: h.cpu_shares.unwrap_or(0),
            cpu_period: h.cpu_period.unwrap_or(0),
            cpu_quota: h.cpu_quota.unwrap_or(0),
            cpuset_cpus: h.cpuset_cpus.unwrap_or_default(),
            cpuset_mems: h.cpuset_mems.unwrap_or_default(),
            memory: h.memory.unwrap_or(0),
            memory_swap: h.memory_swap.unwrap_or(0),
            memory_reservation: h.memory_reservation.unwrap_or(0),
            pids_limit: h.pids_limit.unwrap_or(0),
        }
    }
}

/// Where a container's writes go, for storage limits and usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WritableLayer {
    /// The engine's storage driver (`overlay2`, `btrfs`...).
    pub driver: String,
    /// The layer's directory (`btrfs`: its subvolume; `overlay2`: the upper directory);
    /// `None` where the driver does not say.
    pub path: Option<PathBuf>,
    /// `btrfs`: the sysfs directory of the subvolume's qgroup (usage and limit once quota is
    /// on).
    pub qgroup: Option<PathBuf>,
    /// `overlay2` with project quotas: the filesystem's block device and the upper
    /// directory's project id, once it has one.
    pub project: Option<(PathBuf, u32)>,
}

/// The host end of a veth pair whose other end is inside a container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostInterface {
    pub ifindex: u32,
    pub name: String,
    /// The largest aggregate (GSO) packet it passes, read once when it is found.
    pub gso_max_size: u64,
}

impl HostInterface {
    /// The interface `ifindex` named `name`, its GSO limit read from sysfs (the kernel's
    /// default when that fails: it is gone, or older kernels).
    pub fn new(ifindex: u32, name: String) -> Self {
        let gso_max_size = gso_max_size(&name).unwrap_or(GSO_MAX_SIZE);
        Self {
            ifindex,
            name,
            gso_max_size,
        }
    }
}

impl Container {
    /// The largest aggregate (GSO) packet its host veths pass: a cap's bucket must hold one.
    pub fn largest_packet(&self) -> u64 {
        self.interfaces
            .iter()
            .flatten()
            .map(|i| i.gso_max_size)
            .max()
            .unwrap_or(GSO_MAX_SIZE)
    }

    /// True when `query` names this container: its name, full id or an id prefix of at least
    /// 4 characters, as the docker CLI accepts them.
    pub fn matches(&self, query: &str) -> bool {
        let query = query.strip_prefix('/').unwrap_or(query);
        self.name == query || (query.len() >= 4 && self.id.starts_with(query))
    }

    /// Its IPv4 then its IPv6 addresses.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.ipv4.iter().map(|ip| IpAddr::V4(*ip));
        v4.chain(self.ipv6.iter().map(|ip| IpAddr::V6(*ip)))
    }

    /// The id as 32 bytes.
    pub fn id_bytes(&self) -> [u8; 32] {
        id_bytes(&self.id)
    }

    /// The short id the docker CLI prints.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            id: "3f2a9c0d1e4b5a6978c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2".into(),
            name: "web".into(),
            image: "nginx".into(),
            labels: BTreeMap::new(),
            pid: 1,
            interfaces: None,
            notes: Vec::new(),
            cgroup: CgroupPaths::default(),
            cgroup_id: None,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            storage: None,
            resources: DockerResources::default(),
            started_at: None,
        }
    }

    #[test]
    fn matches_name_id_and_prefix() {
        let c = container();
        assert!(c.matches("web"));
        assert!(c.matches("/web"));
        assert!(c.matches("3f2a9c"));
        assert!(c.matches(&c.id.clone()));
        assert!(!c.matches("we"));
        assert!(
            !c.matches("3f2"),
            "prefixes shorter than 4 are too ambiguous"
        );
        assert!(!c.matches("db"));
        assert_eq!(c.short_id(), "3f2a9c0d1e4b");
        let bytes = c.id_bytes();
        assert_eq!((bytes[0], bytes[1], bytes[31]), (0x3f, 0x2a, 0xa2));
    }
}
