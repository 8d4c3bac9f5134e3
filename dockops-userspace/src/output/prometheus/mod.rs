//! The Prometheus exposition of a snapshot, with cAdvisor's metric names where one exists
//! (dashboards and alerts written for cAdvisor work unchanged); dockops-only metrics start
//! with `dockops_`.

mod cadvisor;
mod events;

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, LabelSetEncoder,
        NoLabelSet, text,
    },
    metrics::{MetricType, counter::Counter, family::Family},
    registry::Registry,
};

use crate::collection::{ContainerStats, Snapshot};

/// A container's labels as cAdvisor sets them: `id` (its cgroup path), `name`, `image`,
/// and each Docker label as `container_label_<key>` (characters Prometheus does not allow
/// in a name turned into `_`; of two keys that become the same name, the first in key
/// order is kept: a label name may appear once).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Labels(Vec<(String, String)>);

impl Labels {
    fn of(c: &ContainerStats) -> Self {
        let mut labels = vec![
            ("id".to_owned(), c.cgroup.clone()),
            ("name".to_owned(), c.name.clone()),
            ("image".to_owned(), c.image.clone()),
        ];
        for (key, value) in &c.labels {
            let key: String = key
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                .collect();
            let name = format!("container_label_{key}");
            if !labels.iter().any(|(n, _)| *n == name) {
                labels.push((name, value.clone()));
            }
        }
        Self(labels)
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Read<T> = fn(&ContainerStats) -> T;

/// Counters, named as exposed less the `_total` the encoder appends.
const COUNTERS: &[(&str, &str, Read<f64>)] = &[
    ("container_cpu_usage_seconds", "CPU time consumed", |c| {
        c.cpu.usage_seconds_total
    }),
    ("container_cpu_user_seconds", "CPU time in user mode", |c| {
        c.cpu.user_seconds_total
    }),
    (
        "container_cpu_system_seconds",
        "CPU time in kernel mode",
        |c| c.cpu.system_seconds_total,
    ),
    (
        "container_cpu_cfs_throttled_seconds",
        "Time the CFS quota throttled the container",
        |c| c.cpu.throttled_seconds_total,
    ),
];

const INT_COUNTERS: &[(&str, &str, Read<u64>)] = &[
    (
        "container_cpu_cfs_throttled_periods",
        "CFS periods in which the container was throttled",
        |c| c.cpu.throttled_periods_total,
    ),
    (
        "container_oom_events",
        "Processes killed by the OOM killer",
        |c| c.memory.oom_events_total,
    ),
    (
        "container_fs_reads_bytes",
        "Bytes read from block devices",
        |c| c.blkio.read_bytes_total,
    ),
    (
        "container_fs_writes_bytes",
        "Bytes written to block devices",
        |c| c.blkio.write_bytes_total,
    ),
    (
        "container_fs_reads",
        "Reads submitted to block devices",
        |c| c.blkio.reads_total,
    ),
    (
        "container_fs_writes",
        "Writes submitted to block devices",
        |c| c.blkio.writes_total,
    ),
    (
        "container_network_receive_bytes",
        "Bytes delivered into the container",
        |c| c.network.rx_bytes_total,
    ),
    (
        "container_network_transmit_bytes",
        "Bytes the container sent",
        |c| c.network.tx_bytes_total,
    ),
    (
        "container_network_receive_packets",
        "Packets delivered into the container",
        |c| c.network.rx_packets_total,
    ),
    (
        "container_network_transmit_packets",
        "Packets the container sent",
        |c| c.network.tx_packets_total,
    ),
    (
        "container_network_receive_errors",
        "Receive errors on the container's interfaces",
        |c| c.network.rx_errors_total,
    ),
    (
        "container_network_transmit_errors",
        "Transmit errors on the container's interfaces",
        |c| c.network.tx_errors_total,
    ),
    (
        "container_network_receive_packets_dropped",
        "Packets the kernel dropped on their way into the container",
        |c| c.network.rx_interface_dropped_total,
    ),
    (
        "container_network_transmit_packets_dropped",
        "Packets the kernel dropped on their way out of the container",
        |c| c.network.tx_interface_dropped_total,
    ),
    (
        "dockops_network_receive_dropped_packets",
        "Packets to the container the hard cap dropped",
        |c| c.network.rx_dropped_total,
    ),
    (
        "dockops_network_transmit_dropped_packets",
        "Packets from the container the hard cap dropped",
        |c| c.network.tx_dropped_total,
    ),
    (
        "dockops_network_receive_dropped_bytes",
        "Bytes to the container the hard cap dropped",
        |c| c.network.rx_dropped_bytes_total,
    ),
    (
        "dockops_network_transmit_dropped_bytes",
        "Bytes from the container the hard cap dropped",
        |c| c.network.tx_dropped_bytes_total,
    ),
    (
        "dockops_network_receive_ecn_marked_packets",
        "Packets to the container the hard cap marked ECN Congestion Experienced",
        |c| c.network.rx_marked_total,
    ),
    (
        "dockops_network_transmit_ecn_marked_packets",
        "Packets from the container the hard cap marked ECN Congestion Experienced",
        |c| c.network.tx_marked_total,
    ),
];

const GAUGES: &[(&str, &str, Read<u64>)] = &[
    (
        "container_memory_usage_bytes",
        "Memory in use, page cache included",
        |c| c.memory.usage_bytes,
    ),
    (
        "container_memory_working_set_bytes",
        "Memory in use less inactive file cache",
        |c| c.memory.working_set_bytes,
    ),
    ("container_memory_swap", "Swap in use", |c| {
        c.memory.swap_bytes
    }),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit; 0 when unlimited",
        |c| c.memory.limit_bytes.unwrap_or(0),
    ),
    (
        "container_spec_memory_swap_limit_bytes",
        "Memory plus swap limit; 0 when unlimited",
        |c| c.limits.resources.memory_swap_bytes.unwrap_or(0),
    ),
    (
        "container_spec_memory_reservation_limit_bytes",
        "Memory soft limit (reservation); 0 when none",
        |c| c.limits.resources.memory_reservation_bytes.unwrap_or(0),
    ),
    (
        "container_spec_cpu_period",
        "CFS period, microseconds",
        |c| c.limits.resources.cpu_period_us.unwrap_or(0),
    ),
    (
        "container_spec_cpu_quota",
        "CFS quota per period, microseconds; 0 when unlimited",
        |c| c.limits.resources.cpu_quota_us.unwrap_or(0),
    ),
    (
        "container_spec_cpu_shares",
        "CPU shares (cgroup v2: from cpu.weight as runc converts)",
        |c| c.limits.resources.cpu_shares.unwrap_or(0),
    ),
    (
        "container_processes",
        "Processes in the container's own cgroup",
        |c| c.pids.processes,
    ),
    (
        "container_threads",
        "Threads (tasks) in the container",
        |c| c.pids.current,
    ),
    (
        "container_threads_max",
        "Task limit of the container (pids.max); 0 when unlimited",
        |c| c.pids.limit.unwrap_or(0),
    ),
    (
        "container_memory_cache",
        "Page cache of the container",
        |c| c.memory.cache_bytes,
    ),
    (
        "container_memory_rss",
        "Anonymous memory of the container (RSS)",
        |c| c.memory.rss_bytes,
    ),
    (
        "container_memory_mapped_file",
        "Memory-mapped files of the container",
        |c| c.memory.mapped_file_bytes,
    ),
];

/// Gauges only some containers have.
const OPTIONAL_GAUGES: &[(&str, &str, Read<Option<u64>>)] = &[
    (
        "container_fs_usage_bytes",
        "Writable layer usage, bytes (btrfs qgroup or overlay2 project quota)",
        |c| c.storage.usage_bytes,
    ),
    (
        "container_fs_limit_bytes",
        "Size limit of the writable layer, bytes",
        |c| c.limits.resources.storage_bytes,
    ),
    (
        "dockops_network_egress_limit_bits",
        "Bandwidth cap on what the container sends, bit/s",
        |c| c.limits.egress_bps,
    ),
    (
        "dockops_network_ingress_limit_bits",
        "Bandwidth cap on what the container receives, bit/s",
        |c| c.limits.ingress_bps,
    ),
];

/// What every collector of one scrape reads: the snapshot, and each container's labels,
/// built once (not once per family).
#[derive(Debug)]
struct Shared {
    snapshot: Arc<Snapshot>,
    labels: Vec<Labels>,
}

impl Shared {
    /// The containers with their labels.
    fn containers(&self) -> impl Iterator<Item = (&ContainerStats, &Labels)> {
        self.snapshot.containers.iter().zip(&self.labels)
    }
}

/// How a family reads a container's value: always there, or only for some containers.
#[derive(Clone, Copy, Debug)]
enum Get<V> {
    Always(fn(&ContainerStats) -> V),
    Maybe(fn(&ContainerStats) -> Option<V>),
}

/// One family with a value per container, encoded straight from the snapshot when scraped.
#[derive(Debug)]
struct PerContainer<V: 'static> {
    name: &'static str,
    help: &'static str,
    counter: bool,
    get: Get<V>,
    shared: Arc<Shared>,
}

impl<V> Collector for PerContainer<V>
where
    V: EncodeCounterValue + EncodeGaugeValue + std::fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kind = if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (c, labels) in self.shared.containers() {
            let value = match self.get {
                Get::Always(get) => get(c),
                Get::Maybe(get) => match get(c) {
                    Some(value) => value,
                    None => continue,
                },
            };
            let mut metric = family.encode_family(labels)?;
            if self.counter {
                metric.encode_counter::<NoLabelSet, V, f64>(&value, None)?;
            } else {
                metric.encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

/// Registers a per-container family: `(name, help, counter)`; a counter's name without
/// the `_total` the encoder appends.
fn per_container<V>(
    registry: &mut Registry,
    shared: &Arc<Shared>,
    (name, help, counter): (&'static str, &'static str, bool),
    get: Get<V>,
) where
    V: EncodeCounterValue + EncodeGaugeValue + std::fmt::Debug + Send + Sync + 'static,
{
    registry.register_collector(Box::new(PerContainer {
        name,
        help,
        counter,
        get,
        shared: Arc::clone(shared),
    }));
}

/// The snapshot in the `OpenMetrics` text format. Each container's labels are built once,
/// and every family is written straight from the snapshot.
pub fn encode(snapshot: &Arc<Snapshot>) -> String {
    let shared = Arc::new(Shared {
        labels: snapshot.containers.iter().map(Labels::of).collect(),
        snapshot: Arc::clone(snapshot),
    });
    let mut registry = Registry::default();
    for &(name, help, get) in COUNTERS {
        per_container(&mut registry, &shared, (name, help, true), Get::Always(get));
    }
    for &(name, help, get) in INT_COUNTERS {
        per_container(&mut registry, &shared, (name, help, true), Get::Always(get));
    }
    for &(name, help, get) in GAUGES {
        per_container(
            &mut registry,
            &shared,
            (name, help, false),
            Get::Always(get),
        );
    }
    // Only capped containers have a limit series: an absent series means "no cap"; only
    // containers whose storage driver counts it have a filesystem series.
    for &(name, help, get) in OPTIONAL_GAUGES {
        per_container(&mut registry, &shared, (name, help, false), Get::Maybe(get));
    }
    events::register(&mut registry, &shared);
    cadvisor::register(&mut registry, &shared);
    let failures = Family::<MapLabel, Counter>::default();
    for &(map, count) in &snapshot.insert_failures {
        failures
            .get_or_create(&MapLabel {
                map: map.to_owned(),
            })
            .inc_by(count);
    }
    registry.register(
        "dockops_map_insert_failures",
        "Inserts dockops' eBPF programs could not make because the map was full",
        failures,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use dockops_common::Latency;
    use time::OffsetDateTime;

    use super::*;
    use crate::collection::{
        BlkioStats, CpuStats, DeviceLatency, IoLatency, Limits, MemoryStats, NetworkStats,
        PidsStats, ResourceLimits, ShapingMode, StorageStats,
    };

    /// One container with a known value in every family; its run-queue and block write
    /// histograms hold two waits of 3 µs and one of 5 ms.
    fn sample() -> Snapshot {
        let mut runqueue = Latency::default();
        for ns in [3_000, 3_500, 5_000_000] {
            runqueue.record(ns);
        }
        Snapshot {
            ts: OffsetDateTime::UNIX_EPOCH,
            at: Instant::now(),
            insert_failures: vec![("BLOCK_IO", 7), ("WINDOWS", 0)],
            unreadable: 0,
            machine: crate::collection::Machine {
                cpu_cores: 2,
                memory_bytes: 4096,
            },
            containers: vec![ContainerStats {
                id: "abc".into(),
                name: "web".into(),
                image: "nginx".into(),
                cgroup: "/docker/abc".into(),
                labels: [("com.docker.compose.project".to_owned(), "shop".to_owned())].into(),
                started_at: Some(std::time::Duration::from_millis(1_700_000_000_500)),
                pressure: Some(crate::collection::Pressure {
                    io: crate::collection::Stall {
                        waiting_seconds_total: 2.5,
                        stalled_seconds_total: 1.0,
                    },
                    ..Default::default()
                }),
                cpu: CpuStats {
                    usage_seconds_total: 1.5,
                    runqueue_latency_us: Some(runqueue.into()),
                    context_switches_total: Some(10),
                    involuntary_context_switches_total: Some(3),
                    ..CpuStats::default()
                },
                memory: MemoryStats {
                    usage_bytes: 4096,
                    limit_bytes: None,
                    ..MemoryStats::default()
                },
                blkio: BlkioStats {
                    write_bytes_total: 65536,
                    latency_us: Some(IoLatency {
                        devices: vec![DeviceLatency {
                            major: 4095,
                            minor: 7,
                            write: runqueue,
                            ..DeviceLatency::default()
                        }],
                        ..IoLatency::default()
                    }),
                    ..BlkioStats::default()
                },
                network: NetworkStats {
                    rx_bytes_total: 1234,
                    socket_rx_bytes_total: Some(4321),
                    ..NetworkStats::default()
                },
                pids: PidsStats {
                    current: 3,
                    processes: 1,
                    limit: None,
                },
                storage: StorageStats {
                    usage_bytes: Some(4096),
                },
                limits: Limits {
                    egress_bps: Some(50_000_000),
                    ingress_bps: None,
                    mode: Some(ShapingMode::Paced),
                    resources: ResourceLimits {
                        cpu_quota_us: Some(50_000),
                        cpu_period_us: Some(100_000),
                        cpu_shares: Some(512),
                        memory_swap_bytes: Some(64 << 20),
                        ..ResourceLimits::default()
                    },
                },
                ..ContainerStats::default()
            }],
        }
    }

    fn assert_has(text: &str, lines: &[String]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn exposes_cadvisor_names_with_labels() {
        let snapshot = sample();
        let text = encode(&Arc::new(snapshot));
        let labels = r#"{id="/docker/abc",name="web",image="nginx",container_label_com_docker_compose_project="shop"}"#;
        assert_has(
            &text,
            &[
                format!("container_cpu_usage_seconds_total{labels} 1.5"),
                format!("container_network_receive_bytes_total{labels} 1234"),
                format!("container_fs_writes_bytes_total{labels} 65536"),
                format!("container_memory_usage_bytes{labels} 4096"),
                format!("container_spec_memory_limit_bytes{labels} 0"),
                format!("container_spec_cpu_quota{labels} 50000"),
                format!("container_fs_usage_bytes{labels} 4096"),
                format!("container_spec_cpu_period{labels} 100000"),
                format!("container_spec_cpu_shares{labels} 512"),
                format!("container_spec_memory_swap_limit_bytes{labels} 67108864"),
                format!("container_spec_memory_reservation_limit_bytes{labels} 0"),
                format!("container_threads{labels} 3"),
                format!("container_processes{labels} 1"),
                format!("container_pressure_io_waiting_seconds_total{labels} 2.5"),
                format!("container_pressure_io_stalled_seconds_total{labels} 1.0"),
                format!("container_pressure_cpu_waiting_seconds_total{labels} 0.0"),
                format!("container_start_time_seconds{labels} 1700000000.5"),
                format!("container_last_seen{labels} 0.0"),
                "container_scrape_error 0".to_owned(),
                "machine_cpu_cores 2".to_owned(),
                "machine_memory_bytes 4096".to_owned(),
                "# TYPE container_oom_events counter".to_owned(),
                format!("dockops_network_egress_limit_bits{labels} 50000000"),
                r#"dockops_map_insert_failures_total{map="BLOCK_IO"} 7"#.to_owned(),
                r#"dockops_map_insert_failures_total{map="WINDOWS"} 0"#.to_owned(),
            ],
        );
        assert!(
            !text.contains("dockops_network_ingress_limit_bits{"),
            "no series without a cap"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn docker_labels_become_valid_unique_label_names() {
        let c = ContainerStats {
            name: "web".into(),
            labels: [
                ("com.example/tier".to_owned(), "front".to_owned()),
                ("com_example_tier".to_owned(), "shadowed".to_owned()),
                ("version".to_owned(), "a\"b".to_owned()),
            ]
            .into(),
            ..ContainerStats::default()
        };
        let names: Vec<String> = Labels::of(&c).0.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "id",
                "name",
                "image",
                "container_label_com_example_tier",
                "container_label_version"
            ]
        );
        let text = encode(&Arc::new(Snapshot {
            containers: vec![c],
            ..sample()
        }));
        assert!(
            text.contains(
                r#"container_label_com_example_tier="front",container_label_version="a\"b"}"#
            ),
            "{text}"
        );
    }

    #[test]
    fn exposes_latency_as_histograms_and_switches_by_kind() {
        let text = encode(&Arc::new(sample()));
        let bare = r#"id="/docker/abc",name="web",image="nginx",container_label_com_docker_compose_project="shop""#;
        let bucket = |le: &str, n: u32| {
            format!("dockops_cpu_runqueue_latency_seconds_bucket{{le=\"{le}\",{bare}}} {n}")
        };
        let io = |op: &str, n: u32| {
            format!(
                "dockops_blkio_latency_seconds_count{{{bare},op=\"{op}\",device=\"4095:7\"}} {n}"
            )
        };
        assert_has(
            &text,
            &[
                format!("dockops_cpu_context_switches_total{{{bare},kind=\"voluntary\"}} 7"),
                format!("dockops_cpu_context_switches_total{{{bare},kind=\"involuntary\"}} 3"),
                "# TYPE dockops_cpu_runqueue_latency_seconds histogram".to_owned(),
                bucket("0.000002", 0),
                bucket("0.000004", 2),
                bucket("0.004096", 2),
                bucket("0.008192", 3),
                bucket("+Inf", 3),
                format!("dockops_cpu_runqueue_latency_seconds_count{{{bare}}} 3"),
                format!("dockops_cpu_runqueue_latency_seconds_sum{{{bare}}} 0.0050065"),
                io("write", 3),
                io("read", 0),
                format!("dockops_network_socket_receive_bytes_total{{{bare}}} 4321"),
            ],
        );
    }
}
