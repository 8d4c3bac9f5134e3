//! Limits declared in a container's labels: `dockops.<flag>=<value>`, with the `limit`
//! command's flag names and values (`dockops.egress=50mbit`, `dockops.memory=512m`,
//! `dockops.device-write-bps=/dev/vda:10mb,/dev/vdb:5mb`). Pure: each label is parsed on its
//! own, so a bad value is reported without dropping the container's other limits. A label
//! speaks only for the container that carries it. `dockops.X.Y` labels belong to other
//! namespaces (the test image's `dockops.image.version`) and are left alone.

use std::collections::BTreeMap;

use dockops_common::Caps;

use super::{
    PolicyError, check_burst, check_burst_packet, default_burst, parse_burst, parse_rate,
    resources::{self, IoKind, ResourceError, Resources},
};

/// The prefix of dockops' labels.
pub const PREFIX: &str = "dockops.";

/// The label names (after [`PREFIX`]) dockops reads, as the `limit` flags are named.
pub const NAMES: &[&str] = &[
    "egress",
    "ingress",
    "burst",
    "cpus",
    "cpu-shares",
    "cpu-period",
    "cpu-quota",
    "cpuset-cpus",
    "cpuset-mems",
    "memory",
    "memory-swap",
    "memory-reservation",
    "pids-limit",
    "device-read-bps",
    "device-write-bps",
    "device-read-iops",
    "device-write-iops",
    "storage-size",
];

/// What a container's labels ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    pub egress_bits: Option<u64>,
    pub ingress_bits: Option<u64>,
    pub burst_bytes: Option<u64>,
    pub resources: Resources,
}

impl Declared {
    /// Whether the labels ask for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Takes every limit `other` sets (block IO device limits by kind: a kind `other`
    /// declares replaces this one's).
    pub fn overlay(&mut self, other: &Self) {
        fn take<T: Clone>(to: &mut Option<T>, from: Option<&T>) {
            if let Some(v) = from {
                *to = Some(v.clone());
            }
        }
        take(&mut self.egress_bits, other.egress_bits.as_ref());
        take(&mut self.ingress_bits, other.ingress_bits.as_ref());
        take(&mut self.burst_bytes, other.burst_bytes.as_ref());
        let (r, o) = (&mut self.resources, &other.resources);
        take(&mut r.nano_cpus, o.nano_cpus.as_ref());
        take(&mut r.cpu_shares, o.cpu_shares.as_ref());
        take(&mut r.cpu_period, o.cpu_period.as_ref());
        take(&mut r.cpu_quota, o.cpu_quota.as_ref());
        take(&mut r.cpuset_cpus, o.cpuset_cpus.as_ref());
        take(&mut r.cpuset_mems, o.cpuset_mems.as_ref());
        take(&mut r.memory, o.memory.as_ref());
        take(&mut r.memory_swap, o.memory_swap.as_ref());
        take(&mut r.memory_reservation, o.memory_reservation.as_ref());
        take(&mut r.pids_limit, o.pids_limit.as_ref());
        take(&mut r.storage, o.storage.as_ref());
        for kind in IoKind::ALL {
            if o.io.iter().any(|d| d.kind == kind) {
                r.io.retain(|d| d.kind != kind);
                r.io.extend(o.io.iter().filter(|d| d.kind == kind).cloned());
            }
        }
    }
}

impl Declared {
    /// The names (as labels spell them, without [`PREFIX`]) of the limits this sets.
    pub fn names(&self) -> Vec<&'static str> {
        let r = &self.resources;
        let mut names: Vec<&'static str> = [
            (self.egress_bits.is_some(), "egress"),
            (self.ingress_bits.is_some(), "ingress"),
            (self.burst_bytes.is_some(), "burst"),
            (r.nano_cpus.is_some(), "cpus"),
            (r.cpu_shares.is_some(), "cpu-shares"),
            (r.cpu_period.is_some(), "cpu-period"),
            (r.cpu_quota.is_some(), "cpu-quota"),
            (r.cpuset_cpus.is_some(), "cpuset-cpus"),
            (r.cpuset_mems.is_some(), "cpuset-mems"),
            (r.memory.is_some(), "memory"),
            (r.memory_swap.is_some(), "memory-swap"),
            (r.memory_reservation.is_some(), "memory-reservation"),
            (r.pids_limit.is_some(), "pids-limit"),
            (r.storage.is_some(), "storage-size"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        for kind in IoKind::ALL {
            if r.io.iter().any(|d| d.kind == kind) {
                names.push(kind.flag());
            }
        }
        names
    }

    /// Drops the limit `name` (as [`Self::names`] spells it).
    pub fn clear(&mut self, name: &str) {
        let r = &mut self.resources;
        match name {
            "egress" => self.egress_bits = None,
            "ingress" => self.ingress_bits = None,
            "burst" => self.burst_bytes = None,
            "cpus" => r.nano_cpus = None,
            "cpu-shares" => r.cpu_shares = None,
            "cpu-period" => r.cpu_period = None,
            "cpu-quota" => r.cpu_quota = None,
            "cpuset-cpus" => r.cpuset_cpus = None,
            "cpuset-mems" => r.cpuset_mems = None,
            "memory" => r.memory = None,
            "memory-swap" => r.memory_swap = None,
            "memory-reservation" => r.memory_reservation = None,
            "pids-limit" => r.pids_limit = None,
            "storage-size" => r.storage = None,
            _ => r.io.retain(|d| d.kind.flag() != name),
        }
    }
}

/// The bandwidth caps labels declare, as the datapath holds them (paced, the bucket
/// behind), for the container whose id bytes are `owner`: None without `dockops.egress` or
/// `dockops.ingress`. The burst defaults as `limit`'s does, and is checked as `limit` checks
/// it against the largest packet the container's veths pass and a clock tick of `tick_ns`.
pub fn caps(
    declared: &Declared,
    owner: [u8; 32],
    largest_packet: u64,
    tick_ns: u64,
) -> Result<Option<Caps>, PolicyError> {
    let (egress_bits, ingress_bits) = (
        declared.egress_bits.unwrap_or(0),
        declared.ingress_bits.unwrap_or(0),
    );
    let fastest = egress_bits.max(ingress_bits);
    if fastest == 0 {
        return Ok(None);
    }
    let burst_bytes = declared
        .burst_bytes
        .unwrap_or_else(|| default_burst(fastest).max(largest_packet));
    check_burst(burst_bytes, fastest, tick_ns)?;
    check_burst_packet(burst_bytes, largest_packet)?;
    Ok(Some(Caps {
        egress_bits,
        ingress_bits,
        burst_bytes,
        owner,
        flags: 0,
    }))
}

/// One label dockops could not use, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label {label}={value:?}: {reason}")]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub reason: String,
}

/// Reads the `dockops.*` labels; returns what they declare and the ones that were refused.
pub fn declared(labels: &BTreeMap<String, String>) -> (Declared, Vec<LabelError>) {
    let mut out = Declared::default();
    let mut errors = Vec::new();
    for (label, value) in labels {
        // `dockops.image.version`, later `dockops.net.eth1`...: namespaces of their own, not
        // limits (and not typos of one).
        let Some(name) = label.strip_prefix(PREFIX).filter(|n| !n.contains('.')) else {
            continue;
        };
        if let Err(reason) = apply(&mut out, name, value.trim()) {
            errors.push(LabelError {
                label: label.clone(),
                value: value.clone(),
                reason,
            });
        }
    }
    (out, errors)
}

/// Sets one declared limit from a label's name (without [`PREFIX`]) and value; the policy
/// file's rules use the same names.
pub(super) fn apply(out: &mut Declared, name: &str, value: &str) -> Result<(), String> {
    let r = &mut out.resources;
    match name {
        "egress" => out.egress_bits = Some(policy(parse_rate(value))?),
        "ingress" => out.ingress_bits = Some(policy(parse_rate(value))?),
        "burst" => out.burst_bytes = Some(policy(parse_burst(value))?),
        "cpus" => r.nano_cpus = Some(why(resources::parse_cpus(value))?),
        "cpu-shares" => r.cpu_shares = Some(why(resources::parse_cpu_shares(value))?),
        "cpu-period" => r.cpu_period = Some(why(resources::parse_cpu_period(value))?),
        "cpu-quota" => r.cpu_quota = Some(why(resources::parse_cpu_quota(value))?),
        "cpuset-cpus" => {
            r.cpuset_cpus = Some(why(resources::parse_cpuset("cpuset-cpus", value))?);
        }
        "cpuset-mems" => {
            r.cpuset_mems = Some(why(resources::parse_cpuset("cpuset-mems", value))?);
        }
        "memory" => r.memory = Some(why(resources::parse_memory(value))?),
        "memory-swap" => r.memory_swap = Some(why(resources::parse_memory_swap(value))?),
        "memory-reservation" => {
            r.memory_reservation = Some(why(resources::parse_memory_reservation(value))?);
        }
        "pids-limit" => r.pids_limit = Some(why(resources::parse_pids_limit(value))?),
        "storage-size" => r.storage = Some(why(resources::parse_storage_size(value))?),
        _ => {
            let kind = IoKind::ALL
                .into_iter()
                .find(|k| k.flag() == name)
                .ok_or_else(|| {
                    format!(
                        "not a dockops label; dockops reads {PREFIX}{{{}}}",
                        NAMES.join(",")
                    )
                })?;
            // Parsed whole before any is kept: a bad device drops the label, not half of it.
            let devices = value
                .split(',')
                .map(|one| why(resources::parse_device(kind, one.trim())))
                .collect::<Result<Vec<_>, _>>()?;
            r.io.retain(|d| d.kind != kind);
            r.io.extend(devices);
        }
    }
    Ok(())
}

fn policy<T>(result: Result<T, PolicyError>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

fn why<T>(result: Result<T, ResourceError>) -> Result<T, String> {
    result.map_err(|e| match e {
        ResourceError::Value { why, .. } => why,
        ResourceError::Conflict(text) => text,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Labels from pairs (the policy file's tests use it too).
    pub(in crate::policy) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_every_limit_with_the_flags_values() {
        let (d, errors) = declared(&labels(&[
            ("dockops.egress", "50mbit"),
            ("dockops.ingress", "1gbit"),
            ("dockops.burst", "256kb"),
            ("dockops.cpus", "0.5"),
            ("dockops.memory", "512m"),
            ("dockops.memory-swap", "-1"),
            ("dockops.pids-limit", "100"),
            ("dockops.cpuset-cpus", "0-1"),
            ("dockops.device-write-bps", "/dev/vda:10mb, /dev/vdb:5mb"),
            ("dockops.device-read-iops", "/dev/vda:100"),
            ("com.docker.compose.project", "shop"),
        ]));
        assert_eq!(errors, []);
        assert_eq!(d.egress_bits, Some(50_000_000));
        assert_eq!(d.ingress_bits, Some(1_000_000_000));
        assert_eq!(d.burst_bytes, Some(256 * 1024));
        assert_eq!(d.resources.nano_cpus, Some(500_000_000));
        assert_eq!(d.resources.memory, Some(512 << 20));
        assert_eq!(d.resources.pids_limit, Some(100));
        assert_eq!(d.resources.io.len(), 3);
        assert_eq!(
            d.resources
                .io
                .iter()
                .filter(|l| l.kind == IoKind::WriteBps)
                .count(),
            2
        );
    }

    #[test]
    fn a_bad_label_is_reported_and_the_others_still_count() {
        let (d, errors) = declared(&labels(&[
            ("dockops.egress", "fast"),
            ("dockops.memory", "256m"),
            ("dockops.device-write-bps", "/dev/vda:10mb,/dev/vdb"),
            ("dockops.colour", "blue"),
        ]));
        assert_eq!(d.egress_bits, None);
        assert_eq!(d.resources.memory, Some(256 << 20));
        assert!(
            d.resources.io.is_empty(),
            "a bad device drops its whole label"
        );
        let named: Vec<&str> = errors.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(
            named,
            [
                "dockops.colour",
                "dockops.device-write-bps",
                "dockops.egress"
            ]
        );
        assert!(errors[0].to_string().contains("not a dockops label"));
    }

    #[test]
    fn caps_from_labels_get_limits_burst() {
        let (d, _) = declared(&labels(&[("dockops.egress", "20mbit")]));
        let caps = caps(&d, [1; 32], 65_536, 4_000_000).unwrap().unwrap();
        assert_eq!((caps.egress_bits, caps.ingress_bits), (20_000_000, 0));
        assert_eq!(caps.burst_bytes, 500_000, "200 ms at 20 Mbit/s");
        assert!(caps.paced());
        let (tiny, _) = declared(&labels(&[
            ("dockops.ingress", "1gbit"),
            ("dockops.burst", "2kb"),
        ]));
        assert!(super::caps(&tiny, [1; 32], 65_536, 4_000_000).is_err());
        let (none, _) = declared(&labels(&[("dockops.memory", "1g")]));
        assert_eq!(
            super::caps(&none, [1; 32], 65_536, 4_000_000).unwrap(),
            None
        );
    }

    #[test]
    fn no_dockops_labels_declare_nothing() {
        let (d, errors) = declared(&labels(&[
            ("maintainer", "someone"),
            ("dockops.image.version", "2"),
            ("dockops.net.eth1", "br0"),
        ]));
        assert!(d.is_empty());
        assert!(errors.is_empty());
    }
}
