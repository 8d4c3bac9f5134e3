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
}

impl Container {
    /// The largest aggregate (GSO) packet its host veths pass: a cap's bucket must hold one.
    pub fn largest_packet(&self) -> u64 {
        self.interfaces
            .iter()
            .flatten()
            .filter_map(|i| gso_max_size(&i.name))
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
