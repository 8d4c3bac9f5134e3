//! What the host-wide hooks counted: latency histograms, context switches and socket
//! traffic, written straight from the snapshot when scraped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use dockops_common::{LATENCY_SLOTS, Latency};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::{Get, Labels, Shared, per_container};
use crate::collection::latency::slot_bound_us;

/// A container's labels and some of the family's own.
#[derive(Debug)]
struct With<'a> {
    base: &'a Labels,
    extra: &'a [(&'static str, &'a str)],
}

impl EncodeLabelSet for With<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.base.encode(encoder)?;
        self.extra.encode(encoder)
    }
}

/// The log2 microsecond buckets of `histogram`, in seconds, for the encoder.
fn buckets(histogram: &Latency) -> (f64, u64, Vec<(f64, u64)>) {
    #[expect(
        clippy::cast_precision_loss,
        reason = "bucket bounds and sums in seconds"
    )]
    let buckets = (0..LATENCY_SLOTS)
        .map(|i| {
            let bound = slot_bound_us(i).map_or(f64::INFINITY, |us| us as f64 / 1e6);
            (bound, histogram.slots[i])
        })
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "a sum in seconds")]
    let sum = histogram.sum_ns as f64 / 1e9;
    (sum, histogram.slots.iter().sum(), buckets)
}

/// The families that need labels of their own: switches by kind, the two histograms.
#[derive(Debug)]
struct EventFamilies(Arc<Shared>);

impl Collector for EventFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "dockops_cpu_context_switches",
            "Context switches of the container's threads: voluntary (they blocked) or \
             involuntary (preempted, or yielded while runnable)",
            None,
            MetricType::Counter,
        )?;
        for (c, labels) in self.0.containers() {
            let (Some(all), Some(involuntary)) = (
                c.cpu.context_switches_total,
                c.cpu.involuntary_context_switches_total,
            ) else {
                continue;
            };
            for (kind, n) in [
                ("voluntary", all.saturating_sub(involuntary)),
                ("involuntary", involuntary),
            ] {
                let extra = [("kind", kind)];
                family
                    .encode_family(&With {
                        base: labels,
                        extra: &extra,
                    })?
                    .encode_counter::<NoLabelSet, u64, f64>(&n, None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "dockops_cpu_runqueue_latency_seconds",
            "How long the container's threads waited runnable before they ran",
            None,
            MetricType::Histogram,
        )?;
        for (c, labels) in self.0.containers() {
            let Some(latency) = &c.cpu.runqueue_latency_us else {
                continue;
            };
            let (sum, count, buckets) = buckets(&latency.histogram);
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "dockops_blkio_latency_seconds",
            "Block requests of the container, from submission to completion",
            None,
            MetricType::Histogram,
        )?;
        for (c, labels) in self.0.containers() {
            let Some(latency) = &c.blkio.latency_us else {
                continue;
            };
            for d in &latency.devices {
                let device = device_name(d.major, d.minor);
                for (op, histogram) in [("read", &d.read), ("write", &d.write)] {
                    let extra = [("op", op), ("device", device.as_str())];
                    let (sum, count, buckets) = buckets(histogram);
                    family
                        .encode_family(&With {
                            base: labels,
                            extra: &extra,
                        })?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
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

/// Registers the socket counters, the context switch counters and the latency histograms
/// of every container.
pub(super) fn register(registry: &mut Registry, shared: &Arc<Shared>) {
    let sockets: [(&str, &str, super::Read<Option<u64>>); 4] = [
        (
            "dockops_network_socket_receive_bytes",
            "Bytes the container's sockets received (IP layer; host network included)",
            |c| c.network.socket_rx_bytes_total,
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
    ];
    for (name, help, get) in sockets {
        per_container(registry, shared, (name, help, true), Get::Maybe(get));
    }
    registry.register_collector(Box::new(EventFamilies(Arc::clone(shared))));
}
