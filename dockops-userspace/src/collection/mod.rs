//! One snapshot of every container's counters, and rates between two snapshots.

pub mod cgroup;
pub mod latency;
pub mod netdev;

use std::{collections::HashMap, net::IpAddr, time::Instant};

use dockops_common::{BlockCounters, BlockKey, Caps, Latency, LatencyKey, TrafficCounters};
use serde::Serialize;
use time::OffsetDateTime;

pub use self::{
    cgroup::{
        BlkioStats, CpuStats, DeviceIo, MemoryStats, PidsStats, Pressure, ResourceLimits, Stall,
    },
    latency::LatencyStats,
};
use crate::{
    capabilities::CgroupMode,
    datapath::EventReadings,
    discovery::{Container, WritableLayer},
};

/// A container's block request latency, reads and writes on all its devices.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IoLatency {
    pub read: LatencyStats,
    pub write: LatencyStats,
    /// By device, for Prometheus.
    #[serde(skip)]
    pub devices: Vec<DeviceLatency>,
}

/// Request latency on one device, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceLatency {
    pub major: u32,
    pub minor: u32,
    pub read: Latency,
    pub write: Latency,
}

impl IoLatency {
    fn from_devices(per_device: &[(LatencyKey, Latency)]) -> Self {
        let mut devices: Vec<DeviceLatency> = Vec::new();
        for (key, histogram) in per_device {
            let (major, minor) = (key.dev >> 20, key.dev & ((1 << 20) - 1));
            let index = devices
                .iter()
                .position(|d| (d.major, d.minor) == (major, minor))
                .unwrap_or_else(|| {
                    devices.push(DeviceLatency {
                        major,
                        minor,
                        ..DeviceLatency::default()
                    });
                    devices.len() - 1
                });
            let slot = if key.write == 1 {
                &mut devices[index].write
            } else {
                &mut devices[index].read
            };
            *slot = slot.plus(histogram);
        }
        let sum = |f: fn(&DeviceLatency) -> Latency| {
            devices
                .iter()
                .fold(Latency::default(), |acc, d| acc.plus(&f(d)))
        };
        Self {
            read: sum(|d| d.read).into(),
            write: sum(|d| d.write).into(),
            devices,
        }
    }
}

/// Network counters since dockops attached to the container's interfaces. `rx` is traffic
/// delivered into the container, `tx` traffic it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NetworkStats {
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    pub rx_packets_total: u64,
    pub tx_packets_total: u64,
    /// Over the sampling interval; `null` without a previous reading.
    pub rx_bytes_per_second: Option<f64>,
    pub tx_bytes_per_second: Option<f64>,
    /// Packets dockops' hard cap dropped (0 without a cap).
    pub rx_dropped_total: u64,
    pub tx_dropped_total: u64,
    /// The same in bytes.
    pub rx_dropped_bytes_total: u64,
    pub tx_dropped_bytes_total: u64,
    /// Packets the hard cap passed with ECN Congestion Experienced set.
    pub rx_marked_total: u64,
    pub tx_marked_total: u64,
    /// What the container's sockets received and sent, counted at the sockets (IP layer,
    /// `cgroup_skb`): also for `--network host` and `--network container:X`, which have no
    /// veth of their own; `null` where the kernel refused the hooks.
    pub socket_rx_bytes_total: Option<u64>,
    pub socket_tx_bytes_total: Option<u64>,
    pub socket_rx_packets_total: Option<u64>,
    pub socket_tx_packets_total: Option<u64>,
    /// The kernel's receive and transmit errors and drops on the container's interfaces
    /// (its host veths seen from the container: what the veth failed to deliver into it
    /// is a receive drop).
    pub rx_errors_total: u64,
    pub tx_errors_total: u64,
    pub rx_interface_dropped_total: u64,
    pub tx_interface_dropped_total: u64,
}

impl From<TrafficCounters> for NetworkStats {
    fn from(c: TrafficCounters) -> Self {
        Self {
            rx_bytes_total: c.rx_bytes,
            tx_bytes_total: c.tx_bytes,
            rx_packets_total: c.rx_packets,
            tx_packets_total: c.tx_packets,
            rx_dropped_total: c.rx_dropped_packets,
            tx_dropped_total: c.tx_dropped_packets,
            rx_dropped_bytes_total: c.rx_dropped_bytes,
            tx_dropped_bytes_total: c.tx_dropped_bytes,
            rx_marked_total: c.rx_marked_packets,
            tx_marked_total: c.tx_marked_packets,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ContainerStats {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Its Docker labels (Prometheus: `container_label_<key>`).
    #[serde(skip)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its cgroup path, cAdvisor's `id` label (`/docker/<id>`).
    #[serde(skip)]
    pub cgroup: String,
    /// When it last started, since the epoch.
    #[serde(skip)]
    pub started_at: Option<std::time::Duration>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub blkio: BlkioStats,
    pub network: NetworkStats,
    pub pids: PidsStats,
    /// Pressure stall information; `null` where the kernel has none.
    pub pressure: Option<Pressure>,
    pub storage: StorageStats,
    pub limits: Limits,
    /// What dockops cannot count or cap for this container, and what failed for it.
    pub notes: Vec<String>,
}

/// The container's writable layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// What it references (btrfs with quota on: the qgroup's `referenced`); `null` where
    /// the storage driver does not count it cheaply.
    pub usage_bytes: Option<u64>,
}

/// The limits in force: bandwidth caps dockops enforces (bits per second; `null` when not
/// capped) and the resource limits read back from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Limits {
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    /// How the caps are enforced; `null` without a cap.
    pub mode: Option<ShapingMode>,
    #[serde(flatten)]
    pub resources: ResourceLimits,
}

/// How a container's bandwidth caps are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapingMode {
    /// Same-host TCP senders are paced to the cap (`SO_MAX_PACING_RATE`); the tc token
    /// bucket (ECN marking, then drops) holds the rest.
    Paced,
    /// The tc token bucket alone, as for senders beyond the host (`limit --no-pacing`).
    Policed,
    /// The ingress cap is an HTB queue on the host veth (`limit --queue`); same-host
    /// senders are paced unless `--no-pacing`.
    Queued,
    /// The ingress cap is an EDT schedule held by fq on the host veth (`limit --edt`);
    /// same-host senders are paced unless `--no-pacing`.
    Edt,
}

impl From<Caps> for Limits {
    fn from(c: Caps) -> Self {
        let capped = c.egress_bits > 0 || c.ingress_bits > 0;
        Self {
            egress_bps: (c.egress_bits > 0).then_some(c.egress_bits),
            ingress_bps: (c.ingress_bits > 0).then_some(c.ingress_bits),
            mode: capped.then_some(if c.queued() {
                ShapingMode::Queued
            } else if c.edt() {
                ShapingMode::Edt
            } else if c.paced() {
                ShapingMode::Paced
            } else {
                ShapingMode::Policed
            }),
            resources: ResourceLimits::default(),
        }
    }
}

/// Everything a snapshot is made from, as the datapath and discovery hand it over.
pub struct Sources<'a> {
    pub cgroup: &'a CgroupMode,
    /// Cgroup directories kept open between snapshots.
    pub dirs: &'a mut cgroup::Dirs,
    pub traffic: &'a HashMap<u32, TrafficCounters>,
    /// Error and drop counts of the host's interfaces, by name ([`netdev::read`]).
    pub interfaces: &'a HashMap<String, netdev::InterfaceErrors>,
    /// What the host-wide tracepoints counted, by cgroup id; block IO counters are used
    /// where cgroup files have none.
    pub events: &'a EventReadings,
    /// Caps by container address.
    pub caps: &'a HashMap<IpAddr, Caps>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Wall-clock time of the reading, for output.
    pub ts: OffsetDateTime,
    /// Monotonic time of the reading, for rates.
    pub at: Instant,
    pub containers: Vec<ContainerStats>,
    /// Host-wide: inserts the eBPF programs could not make because a map was full, by map.
    pub insert_failures: Vec<(&'static str, u64)>,
    /// Containers whose cgroup directory could not be read (their figures are zeros).
    pub unreadable: usize,
    pub machine: Machine,
}

/// The host, as cAdvisor's `machine_*` metrics describe it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// Online CPUs.
    pub cpu_cores: u64,
    /// `MemTotal` of `/proc/meminfo`.
    pub memory_bytes: u64,
}

impl Machine {
    /// Read once: neither changes while dockops runs (CPU hotplug aside).
    pub fn get() -> Self {
        static MACHINE: std::sync::OnceLock<Machine> = std::sync::OnceLock::new();
        *MACHINE.get_or_init(|| Self {
            cpu_cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| {
                    let kib = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
                    kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
                })
                .map_or(0, |kib| kib * 1024),
        })
    }
}

impl Snapshot {
    /// Reads every container's cgroup files and sums its interfaces. Sorted by name.
    pub fn take<'c>(
        containers: impl IntoIterator<Item = &'c Container>,
        sources: &mut Sources<'_>,
    ) -> Self {
        let mut unreadable = 0;
        let mut stats: Vec<ContainerStats> = containers
            .into_iter()
            .map(|c| {
                let (stats, readable) = container(c, sources);
                unreadable += usize::from(!readable);
                stats
            })
            .collect();
        sources.dirs.sweep();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            ts: OffsetDateTime::now_utc(),
            at: Instant::now(),
            containers: stats,
            insert_failures: Vec::new(),
            unreadable,
            machine: Machine::get(),
        }
    }

    /// Fills the per-interval fields (CPU percent, network bytes per second, latency
    /// percentiles) from `rates`.
    pub fn apply(&mut self, rates: &HashMap<String, Rates>) {
        for c in &mut self.containers {
            if let Some(r) = rates.get(&c.id) {
                c.cpu.percent = Some(r.cpu_percent);
                c.network.rx_bytes_per_second = Some(r.rx_bytes);
                c.network.tx_bytes_per_second = Some(r.tx_bytes);
                if let Some(l) = &mut c.cpu.runqueue_latency_us {
                    l.set_interval(&r.runqueue);
                }
                if let Some(l) = &mut c.blkio.latency_us {
                    l.read.set_interval(&r.io_read);
                    l.write.set_interval(&r.io_write);
                }
            }
        }
    }
}

/// One container's readings, and whether its cgroup directory could be read.
fn container(c: &Container, sources: &mut Sources<'_>) -> (ContainerStats, bool) {
    let traffic = c
        .interfaces
        .iter()
        .flatten()
        .filter_map(|i| sources.traffic.get(&i.ifindex))
        .fold(TrafficCounters::default(), |acc, x| acc.plus(*x));
    let errors = c
        .interfaces
        .iter()
        .flatten()
        .filter_map(|i| sources.interfaces.get(&i.name))
        .fold(netdev::InterfaceErrors::default(), |acc, x| acc.plus(*x));
    let cg = cgroup::read(sources.dirs, sources.cgroup, &c.cgroup);
    let events = sources.events;
    let mut blkio = cg.blkio.unwrap_or_else(|| {
        let devices = c
            .cgroup_id
            .and_then(|id| events.block.as_ref().and_then(|b| b.get(&id)))
            .map(|devices| devices.iter().map(|(k, v)| device(k, v)).collect())
            .unwrap_or_default();
        BlkioStats::from_devices(devices)
    });
    blkio.latency_us = events.block_latency.as_ref().map(|by_cgroup| {
        IoLatency::from_devices(
            c.cgroup_id
                .and_then(|id| by_cgroup.get(&id))
                .map_or(&[], Vec::as_slice),
        )
    });
    let mut network = NetworkStats::from(traffic);
    // The host side's transmit is the container's receive.
    network.rx_errors_total = errors.tx_errors;
    network.rx_interface_dropped_total = errors.tx_dropped;
    network.tx_errors_total = errors.rx_errors;
    network.tx_interface_dropped_total = errors.rx_dropped;
    if let Some(by_cgroup) = &events.sockets {
        let s = c
            .cgroup_id
            .and_then(|id| by_cgroup.get(&id))
            .copied()
            .unwrap_or_default();
        network.socket_rx_bytes_total = Some(s.rx_bytes);
        network.socket_tx_bytes_total = Some(s.tx_bytes);
        network.socket_rx_packets_total = Some(s.rx_packets);
        network.socket_tx_packets_total = Some(s.tx_packets);
    }
    let mut cpu = cg.cpu;
    if let Some(by_cgroup) = &events.sched {
        let s = c
            .cgroup_id
            .and_then(|id| by_cgroup.get(&id))
            .copied()
            .unwrap_or_default();
        cpu.runqueue_latency_us = Some(s.runqueue.into());
        cpu.context_switches_total = Some(s.voluntary + s.involuntary);
        cpu.involuntary_context_switches_total = Some(s.involuntary);
    }
    let (usage_bytes, storage_limit) = c.storage.as_ref().map_or((None, None), storage);
    let mut resources = cg.limits;
    resources.storage_bytes = storage_limit;
    let readable = cg.readable;
    let stats = ContainerStats {
        id: c.id.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        labels: c.labels.clone(),
        cgroup: c
            .cgroup
            .v2
            .clone()
            .or_else(|| c.cgroup.v1.get("cpu").cloned())
            .unwrap_or_default(),
        started_at: c.started_at,
        storage: StorageStats { usage_bytes },
        cpu,
        memory: cg.memory,
        blkio,
        network,
        pids: cg.pids,
        pressure: cg.pressure,
        limits: Limits {
            resources,
            ..c.addresses()
                .next()
                .and_then(|ip| sources.caps.get(&ip))
                .copied()
                .map(Limits::from)
                .unwrap_or_default()
        },
        notes: c.notes.clone(),
    };
    (stats, readable)
}

/// What the writable layer uses, and its limit: a btrfs qgroup's sysfs files, or an
/// overlay2 layer's project quota; `None` where neither is set up.
fn storage(layer: &WritableLayer) -> (Option<u64>, Option<u64>) {
    if let Some(dir) = &layer.qgroup {
        let bytes = |file: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        return (
            bytes("referenced"),
            bytes("max_referenced").filter(|&b| b > 0),
        );
    }
    layer
        .project
        .as_ref()
        .and_then(|(device, id)| crate::quota::usage(device, *id).ok())
        .map_or((None, None), |(used, limit)| (Some(used), limit))
}

fn device(key: &BlockKey, c: &BlockCounters) -> DeviceIo {
    DeviceIo {
        major: key.major(),
        minor: key.minor(),
        read_bytes_total: c.read_bytes,
        write_bytes_total: c.write_bytes,
        reads_total: c.reads,
        writes_total: c.writes,
    }
}

/// Per-second rates of one container between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub rx_bytes: f64,
    pub tx_bytes: f64,
    pub rx_packets: f64,
    pub tx_packets: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
    /// 100 = one full core.
    pub cpu_percent: f64,
    /// Waits of the interval: run queue, block reads, block writes.
    pub runqueue: Latency,
    pub io_read: Latency,
    pub io_write: Latency,
}

/// Rates by container id. A container missing from `prev` (just started) has none yet;
/// counters that went backwards (interface re-attached) count as zero, not as a huge rate.
pub fn rates(prev: &Snapshot, cur: &Snapshot) -> HashMap<String, Rates> {
    let secs = cur.at.duration_since(prev.at).as_secs_f64();
    if secs <= 0.0 {
        return HashMap::new();
    }
    let before: HashMap<&str, &ContainerStats> =
        prev.containers.iter().map(|c| (c.id.as_str(), c)).collect();
    #[expect(clippy::cast_precision_loss, reason = "rates are for display")]
    let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    cur.containers
        .iter()
        .filter_map(|c| {
            let old = before.get(c.id.as_str())?;
            let (n, o) = (&c.network, &old.network);
            let cpu = (c.cpu.usage_seconds_total - old.cpu.usage_seconds_total).max(0.0);
            let histogram = |l: Option<&LatencyStats>| l.map(|l| l.histogram).unwrap_or_default();
            let interval = |now: Option<&LatencyStats>, then: Option<&LatencyStats>| {
                latency::since(&histogram(now), &histogram(then))
            };
            let (io, old_io) = (c.blkio.latency_us.as_ref(), old.blkio.latency_us.as_ref());
            Some((
                c.id.clone(),
                Rates {
                    rx_bytes: per_sec(n.rx_bytes_total, o.rx_bytes_total),
                    tx_bytes: per_sec(n.tx_bytes_total, o.tx_bytes_total),
                    rx_packets: per_sec(n.rx_packets_total, o.rx_packets_total),
                    tx_packets: per_sec(n.tx_packets_total, o.tx_packets_total),
                    read_bytes: per_sec(c.blkio.read_bytes_total, old.blkio.read_bytes_total),
                    write_bytes: per_sec(c.blkio.write_bytes_total, old.blkio.write_bytes_total),
                    cpu_percent: cpu / secs * 100.0,
                    runqueue: interval(
                        c.cpu.runqueue_latency_us.as_ref(),
                        old.cpu.runqueue_latency_us.as_ref(),
                    ),
                    io_read: interval(io.map(|l| &l.read), old_io.map(|l| &l.read)),
                    io_write: interval(io.map(|l| &l.write), old_io.map(|l| &l.write)),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;
    use crate::discovery::{CgroupPaths, HostInterface};

    fn container(id: &str, ifindexes: &[u32]) -> Container {
        Container {
            id: id.into(),
            name: format!("c-{id}"),
            image: "busybox".into(),
            labels: BTreeMap::new(),
            pid: 1,
            notes: Vec::new(),
            interfaces: Some(
                ifindexes
                    .iter()
                    .map(|&ifindex| HostInterface {
                        ifindex,
                        name: format!("veth{ifindex}"),
                        gso_max_size: 65_536,
                    })
                    .collect(),
            ),
            cgroup: CgroupPaths::default(),
            cgroup_id: Some(u64::from(ifindexes.first().copied().unwrap_or(0))),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            storage: None,
            resources: crate::discovery::DockerResources::default(),
            started_at: None,
        }
    }

    fn counters(rx: u64, tx: u64) -> TrafficCounters {
        TrafficCounters {
            rx_packets: rx / 100,
            rx_bytes: rx,
            tx_packets: tx / 100,
            tx_bytes: tx,
            tx_dropped_packets: 1,
            ..TrafficCounters::default()
        }
    }

    fn take(containers: &[Container], traffic: &HashMap<u32, TrafficCounters>) -> Snapshot {
        let mode = CgroupMode::V1 { unified: None };
        Snapshot::take(
            containers,
            &mut Sources {
                cgroup: &mode,
                dirs: &mut cgroup::Dirs::default(),
                traffic,
                interfaces: &HashMap::new(),
                events: &EventReadings::default(),
                caps: &HashMap::new(),
            },
        )
    }

    #[test]
    fn snapshot_sums_interfaces_and_skips_unknown() {
        let map = HashMap::from([(10, counters(1000, 200)), (11, counters(500, 300))]);
        let snap = take(&[container("b", &[10, 11]), container("a", &[99])], &map);
        assert_eq!(snap.containers[0].name, "c-a", "sorted by name");
        assert_eq!(snap.containers[0].network, NetworkStats::default());
        assert_eq!(
            snap.containers[1].network,
            NetworkStats {
                rx_bytes_total: 1500,
                tx_bytes_total: 500,
                rx_packets_total: 15,
                tx_packets_total: 5,
                tx_dropped_total: 2,
                ..NetworkStats::default()
            }
        );
    }

    #[test]
    fn block_counters_come_from_the_container_cgroup() {
        let mode = CgroupMode::V1 { unified: None };
        let key = |cg, dev| BlockKey {
            cgroup_id: cg,
            dev,
            pad: 0,
        };
        let io = |w| BlockCounters {
            read_bytes: 1,
            write_bytes: w,
            reads: 1,
            writes: 2,
        };
        let block = HashMap::from([
            (
                7,
                vec![(key(7, 254 << 20), io(4096)), (key(7, 8 << 20), io(512))],
            ),
            (9, vec![(key(9, 1), io(1))]),
        ]);
        let mut c = container("a", &[1]);
        c.cgroup_id = Some(7);
        let snap = Snapshot::take(
            &[c],
            &mut Sources {
                cgroup: &mode,
                dirs: &mut cgroup::Dirs::default(),
                traffic: &HashMap::new(),
                interfaces: &HashMap::new(),
                events: &EventReadings {
                    block: Some(block),
                    ..EventReadings::default()
                },
                caps: &HashMap::new(),
            },
        );
        let blkio = &snap.containers[0].blkio;
        assert_eq!(blkio.write_bytes_total, 4608);
        assert_eq!(blkio.writes_total, 4);
        assert_eq!((blkio.devices[0].major, blkio.devices[0].minor), (254, 0));
    }

    #[test]
    fn limits_show_the_caps_and_how_they_are_held() {
        let caps = |egress_bits, ingress_bits, flags| Caps {
            egress_bits,
            ingress_bits,
            flags,
            ..Caps::default()
        };
        let mode = |c| Limits::from(c).mode;
        assert_eq!(Limits::from(Caps::default()), Limits::default());
        assert_eq!(mode(caps(10, 0, 0)), Some(ShapingMode::Paced));
        assert_eq!(
            mode(caps(10, 0, Caps::NO_PACING)),
            Some(ShapingMode::Policed)
        );
        assert_eq!(mode(caps(0, 10, Caps::QUEUE)), Some(ShapingMode::Queued));
        assert_eq!(mode(caps(0, 10, Caps::EDT)), Some(ShapingMode::Edt));
        assert_eq!(mode(caps(10, 0, Caps::EDT)), Some(ShapingMode::Paced));
        // A queue needs an ingress cap: egress alone is held by pacing and the bucket.
        assert_eq!(mode(caps(10, 0, Caps::QUEUE)), Some(ShapingMode::Paced));
        assert_eq!(
            Limits::from(caps(10, 0, 0)),
            Limits {
                egress_bps: Some(10),
                ingress_bps: None,
                mode: Some(ShapingMode::Paced),
                resources: ResourceLimits::default(),
            }
        );
    }

    #[test]
    fn rates_over_elapsed_time() {
        let c = [container("a", &[1]), container("b", &[2])];
        let mut prev = take(&c[..1], &HashMap::from([(1, counters(1000, 5000))]));
        prev.containers[0].cpu.usage_seconds_total = 10.0;
        let mut cur = take(
            &c,
            &HashMap::from([(1, counters(3000, 4000)), (2, counters(1, 1))]),
        );
        cur.containers[0].cpu.usage_seconds_total = 11.0;
        cur.at = prev.at + Duration::from_secs(2);
        let rates = rates(&prev, &cur);
        let a = rates["a"];
        assert!((a.rx_bytes - 1000.0).abs() < 1e-9);
        assert!((a.rx_packets - 10.0).abs() < 1e-9);
        assert!(
            a.tx_bytes.abs() < 1e-9,
            "counter going backwards is not a rate"
        );
        assert!(
            (a.cpu_percent - 50.0).abs() < 1e-9,
            "1 s of CPU in 2 s is half a core"
        );
        assert!(!rates.contains_key("b"), "no rate before a second reading");
        cur.apply(&rates);
        assert_eq!(cur.containers[0].cpu.percent, Some(50.0));
        assert_eq!(cur.containers[0].network.rx_bytes_per_second, Some(1000.0));
        assert_eq!(cur.containers[1].cpu.percent, None);
    }
}
