//! What the host-wide tracepoints counted: latency histograms and context switches.

use std::{collections::HashMap, sync::Mutex};

use dockops_common::{LATENCY_SLOTS, Latency};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{MetricType, counter::Counter, family::Family},
    registry::Registry,
};

use super::Labels;
use crate::collection::{ContainerStats, Snapshot, latency::slot_bound_us};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    #[prometheus(flatten)]
    container: Labels,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IoLabels {
    #[prometheus(flatten)]
    container: Labels,
    op: &'static str,
    device: String,
}

/// A histogram family whose buckets the eBPF programs counted: log2 buckets of
/// microseconds, exposed in seconds.
#[derive(Debug)]
struct Histograms<L> {
    name: &'static str,
    help: &'static str,
    series: Vec<(L, Latency)>,
}

impl<L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> Collector for Histograms<L> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family =
            encoder.encode_descriptor(self.name, self.help, None, MetricType::Histogram)?;
        for (labels, histogram) in &self.series {
            #[expect(
                clippy::cast_precision_loss,
                reason = "bucket bounds and sums in seconds"
            )]
            let buckets: Vec<(f64, u64)> = (0..LATENCY_SLOTS)
                .map(|i| {
                    let bound = slot_bound_us(i).map_or(f64::INFINITY, |us| us as f64 / 1e6);
                    (bound, histogram.slots[i])
                })
                .collect();
            #[expect(clippy::cast_precision_loss, reason = "a sum in seconds")]
            let sum = histogram.sum_ns as f64 / 1e9;
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    sum,
                    histogram.slots.iter().sum(),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// `/dev/NAME` of a block device, from sysfs (cached: devices rarely come and go); the
/// numbers where sysfs does not say.
fn device_name(major: u32, minor: u32) -> String {
    static NAMES: Mutex<Option<HashMap<(u32, u32), String>>> = Mutex::new(None);
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    names
        .get_or_insert_with(HashMap::new)
        .entry((major, minor))
        .or_insert_with(|| {
            std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("DEVNAME="))
                        .map(|name| format!("/dev/{name}"))
                })
                .unwrap_or_else(|| format!("{major}:{minor}"))
        })
        .clone()
}

/// Registers the context switch counters and the latency histograms of every container.
pub(super) fn register(
    registry: &mut Registry,
    snapshot: &Snapshot,
    labels: &impl Fn(&ContainerStats) -> Labels,
) {
    for (name, help, get) in [
        (
            "dockops_network_socket_receive_bytes",
            "Bytes the container's sockets received (IP layer; host network included)",
            (|c| c.network.socket_rx_bytes_total) as fn(&ContainerStats) -> Option<u64>,
        ),
        (
            "dockops_network_socket_transmit_bytes",
            "Bytes the container's sockets sent (IP layer; host network included)",
            |c| c.network.socket_tx_bytes_total,
        ),
        (
            "dockops_network_socket_receive_packets",
            "Packets the container's sockets received",
            |c| c.network.socket_rx_packets_total,
        ),
        (
            "dockops_network_socket_transmit_packets",
            "Packets the container's sockets sent (segments of a GSO aggregate each count)",
            |c| c.network.socket_tx_packets_total,
        ),
    ] {
        let family = Family::<Labels, Counter>::default();
        for c in &snapshot.containers {
            if let Some(n) = get(c) {
                family.get_or_create(&labels(c)).inc_by(n);
            }
        }
        registry.register(name, help, family);
    }
    let switches = Family::<KindLabels, Counter>::default();
    for c in &snapshot.containers {
        if let (Some(all), Some(involuntary)) = (
            c.cpu.context_switches_total,
            c.cpu.involuntary_context_switches_total,
        ) {
            for (kind, n) in [
                ("voluntary", all.saturating_sub(involuntary)),
                ("involuntary", involuntary),
            ] {
                switches
                    .get_or_create(&KindLabels {
                        container: labels(c),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }
    registry.register(
        "dockops_cpu_context_switches",
        "Context switches of the container's threads: voluntary (they blocked) or \
         involuntary (preempted, or yielded while runnable)",
        switches,
    );
    registry.register_collector(Box::new(Histograms {
        name: "dockops_cpu_runqueue_latency_seconds",
        help: "How long the container's threads waited runnable before they ran",
        series: snapshot
            .containers
            .iter()
            .filter_map(|c| Some((labels(c), c.cpu.runqueue_latency_us.as_ref()?.histogram)))
            .collect(),
    }));
    registry.register_collector(Box::new(Histograms {
        name: "dockops_blkio_latency_seconds",
        help: "Block requests of the container, from submission to completion",
        series: snapshot
            .containers
            .iter()
            .filter_map(|c| Some((c, c.blkio.latency_us.as_ref()?)))
            .flat_map(|(c, l)| {
                l.devices.iter().flat_map(move |d| {
                    let device = device_name(d.major, d.minor);
                    [("read", d.read), ("write", d.write)].map(|(op, histogram)| {
                        let labels = IoLabels {
                            container: labels(c),
                            op,
                            device: device.clone(),
                        };
                        (labels, histogram)
                    })
                })
            })
            .collect(),
    }));
}
