//! One snapshot of every container's counters, and rates between two snapshots.

use std::{collections::HashMap, time::Instant};

use dockops_common::TrafficCounters;
use serde::Serialize;
use time::OffsetDateTime;

use crate::discovery::Container;

/// Network totals since dockops attached to the container's interfaces. `rx` is traffic
/// delivered into the container, `tx` traffic it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkStats {
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    pub rx_packets_total: u64,
    pub tx_packets_total: u64,
}

impl From<TrafficCounters> for NetworkStats {
    fn from(c: TrafficCounters) -> Self {
        Self {
            rx_bytes_total: c.rx_bytes,
            tx_bytes_total: c.tx_bytes,
            rx_packets_total: c.rx_packets,
            tx_packets_total: c.tx_packets,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerStats {
    pub id: String,
    pub name: String,
    pub image: String,
    pub network: NetworkStats,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Wall-clock time of the reading, for output.
    pub ts: OffsetDateTime,
    /// Monotonic time of the reading, for rates.
    pub at: Instant,
    pub containers: Vec<ContainerStats>,
}

impl Snapshot {
    /// Adds up each container's interfaces. Sorted by name for stable output.
    pub fn take(containers: &[Container], counters: &HashMap<u32, TrafficCounters>) -> Self {
        let mut stats: Vec<ContainerStats> = containers
            .iter()
            .map(|c| {
                let total = c
                    .interfaces
                    .iter()
                    .flatten()
                    .filter_map(|i| counters.get(&i.ifindex))
                    .fold(TrafficCounters::default(), |acc, x| acc.plus(*x));
                ContainerStats {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                    network: total.into(),
                }
            })
            .collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            ts: OffsetDateTime::now_utc(),
            at: Instant::now(),
            containers: stats,
        }
    }
}

/// Per-second rates of one container between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub rx_bytes: f64,
    pub tx_bytes: f64,
    pub rx_packets: f64,
    pub tx_packets: f64,
}

/// Rates by container id. A container missing from `prev` (just started) has none yet;
/// counters that went backwards (interface re-attached) count as zero, not as a huge rate.
pub fn rates(prev: &Snapshot, cur: &Snapshot) -> HashMap<String, Rates> {
    let secs = cur.at.duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 {
        return HashMap::new();
    }
    let before: HashMap<&str, &NetworkStats> = prev
        .containers
        .iter()
        .map(|c| (c.id.as_str(), &c.network))
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "rates are for display")]
    let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    cur.containers
        .iter()
        .filter_map(|c| {
            let old = before.get(c.id.as_str())?;
            let new = &c.network;
            Some((
                c.id.clone(),
                Rates {
                    rx_bytes: per_sec(new.rx_bytes_total, old.rx_bytes_total),
                    tx_bytes: per_sec(new.tx_bytes_total, old.tx_bytes_total),
                    rx_packets: per_sec(new.rx_packets_total, old.rx_packets_total),
                    tx_packets: per_sec(new.tx_packets_total, old.tx_packets_total),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::discovery::HostInterface;

    fn container(id: &str, ifindexes: &[u32]) -> Container {
        Container {
            id: id.into(),
            name: format!("c-{id}"),
            image: "busybox".into(),
            labels: BTreeMap::new(),
            pid: 1,
            interfaces: Some(
                ifindexes
                    .iter()
                    .map(|&ifindex| HostInterface {
                        ifindex,
                        name: format!("veth{ifindex}"),
                    })
                    .collect(),
            ),
        }
    }

    fn counters(rx: u64, tx: u64) -> TrafficCounters {
        TrafficCounters {
            rx_packets: rx / 100,
            rx_bytes: rx,
            tx_packets: tx / 100,
            tx_bytes: tx,
        }
    }

    #[test]
    fn snapshot_sums_interfaces_and_skips_unknown() {
        let map = HashMap::from([(10, counters(1000, 200)), (11, counters(500, 300))]);
        let snap = Snapshot::take(&[container("b", &[10, 11]), container("a", &[99])], &map);
        assert_eq!(snap.containers[0].name, "c-a", "sorted by name");
        assert_eq!(snap.containers[0].network, NetworkStats::default());
        assert_eq!(
            snap.containers[1].network,
            NetworkStats {
                rx_bytes_total: 1500,
                tx_bytes_total: 500,
                rx_packets_total: 15,
                tx_packets_total: 5
            }
        );
    }

    #[test]
    fn rates_over_elapsed_time() {
        let c = [container("a", &[1]), container("b", &[2])];
        let prev = Snapshot::take(&c[..1], &HashMap::from([(1, counters(1000, 5000))]));
        let mut cur = Snapshot::take(
            &c,
            &HashMap::from([(1, counters(3000, 4000)), (2, counters(1, 1))]),
        );
        cur.at = prev.at + Duration::from_secs(2);
        let rates = rates(&prev, &cur);
        let a = rates["a"];
        assert!((a.rx_bytes - 1000.0).abs() < 1e-9);
        assert!((a.rx_packets - 10.0).abs() < 1e-9);
        assert!(
            a.tx_bytes.abs() < 1e-9,
            "counter going backwards is not a rate"
        );
        assert!(!rates.contains_key("b"), "no rate before a second reading");
    }
}
