//! cAdvisor's families that are not a plain per-container value: pressure stall
//! information, times, the scrape's health and the machine.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Labels;
use crate::collection::{ContainerStats, Snapshot, Stall};

/// Registers PSI counters (only where the kernel has PSI), the containers' start and
/// last-seen times, `container_scrape_error` and the `machine_*` gauges.
pub(super) fn register(
    registry: &mut Registry,
    snapshot: &Snapshot,
    labels: &impl Fn(&ContainerStats) -> Labels,
) {
    type Pick = fn(&crate::collection::Pressure) -> Stall;
    for (resource, pick) in [
        ("cpu", (|p| p.cpu) as Pick),
        ("memory", |p| p.memory),
        ("io", |p| p.io),
    ] {
        for (kind, help, get) in [
            (
                "waiting",
                "Time some of the container's tasks waited for",
                (|s: Stall| s.waiting_seconds_total) as fn(Stall) -> f64,
            ),
            (
                "stalled",
                "Time all of the container's non-idle tasks waited at once for",
                |s| s.stalled_seconds_total,
            ),
        ] {
            let family = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
            for c in &snapshot.containers {
                if let Some(pressure) = &c.pressure {
                    family.get_or_create(&labels(c)).inc_by(get(pick(pressure)));
                }
            }
            registry.register(
                format!("container_pressure_{resource}_{kind}_seconds"),
                format!("{help} {resource} (PSI)"),
                family,
            );
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "seconds since the epoch")]
    let last_seen = snapshot.ts.unix_timestamp_nanos() as f64 / 1e9;
    let seen = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let started = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for c in &snapshot.containers {
        seen.get_or_create(&labels(c)).set(last_seen);
        if let Some(at) = c.started_at {
            started.get_or_create(&labels(c)).set(at.as_secs_f64());
        }
    }
    registry.register(
        "container_last_seen",
        "When dockops last read the container, seconds since the epoch",
        seen,
    );
    registry.register(
        "container_start_time_seconds",
        "When the container last started, seconds since the epoch",
        started,
    );
    let error = Gauge::<i64>::default();
    error.set(i64::from(snapshot.unreadable > 0));
    registry.register(
        "container_scrape_error",
        "1 if some container's cgroup could not be read in the last reading",
        error,
    );
    for (name, help, value) in [
        (
            "machine_cpu_cores",
            "Online CPUs of the host",
            snapshot.machine.cpu_cores,
        ),
        (
            "machine_memory_bytes",
            "Memory of the host (MemTotal)",
            snapshot.machine.memory_bytes,
        ),
    ] {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    }
}
