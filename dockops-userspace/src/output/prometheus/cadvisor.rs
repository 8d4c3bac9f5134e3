//! cAdvisor's families that are not a plain per-container value: pressure stall
//! information, times, the scrape's health and the machine.

use std::sync::Arc;

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

use super::{Get, Shared, per_container};

/// Registers PSI counters (only where the kernel has PSI), the containers' start and
/// last-seen times, `container_scrape_error` and the `machine_*` gauges.
pub(super) fn register(registry: &mut Registry, shared: &Arc<Shared>) {
    let pressure: [(&str, &str, super::Read<Option<f64>>); 6] = [
        (
            "container_pressure_cpu_waiting_seconds",
            "Time some of the container's tasks waited for CPU (PSI)",
            |c| Some(c.pressure?.cpu.waiting_seconds_total),
        ),
        (
            "container_pressure_cpu_stalled_seconds",
            "Time all of the container's non-idle tasks waited for CPU at once (PSI)",
            |c| Some(c.pressure?.cpu.stalled_seconds_total),
        ),
        (
            "container_pressure_memory_waiting_seconds",
            "Time some of the container's tasks waited for memory (PSI)",
            |c| Some(c.pressure?.memory.waiting_seconds_total),
        ),
        (
            "container_pressure_memory_stalled_seconds",
            "Time all of the container's non-idle tasks waited for memory at once (PSI)",
            |c| Some(c.pressure?.memory.stalled_seconds_total),
        ),
        (
            "container_pressure_io_waiting_seconds",
            "Time some of the container's tasks waited for IO (PSI)",
            |c| Some(c.pressure?.io.waiting_seconds_total),
        ),
        (
            "container_pressure_io_stalled_seconds",
            "Time all of the container's non-idle tasks waited for IO at once (PSI)",
            |c| Some(c.pressure?.io.stalled_seconds_total),
        ),
    ];
    for (name, help, get) in pressure {
        per_container(registry, shared, (name, help, true), Get::Maybe(get));
    }
    per_container(
        registry,
        shared,
        (
            "container_start_time_seconds",
            "When the container last started, seconds since the epoch",
            false,
        ),
        Get::Maybe(|c| Some(c.started_at?.as_secs_f64())),
    );
    // Every container was read at the snapshot's time.
    #[expect(clippy::cast_precision_loss, reason = "seconds since the epoch")]
    let last_seen = shared.snapshot.ts.unix_timestamp_nanos() as f64 / 1e9;
    registry.register_collector(Box::new(LastSeen {
        at: last_seen,
        shared: Arc::clone(shared),
    }));
    let error = Gauge::<i64>::default();
    error.set(i64::from(shared.snapshot.unreadable > 0));
    registry.register(
        "container_scrape_error",
        "1 if some container's cgroup could not be read in the last reading",
        error,
    );
    let machine = shared.snapshot.machine;
    for (name, help, value) in [
        (
            "machine_cpu_cores",
            "Online CPUs of the host",
            machine.cpu_cores,
        ),
        (
            "machine_memory_bytes",
            "Memory of the host (MemTotal)",
            machine.memory_bytes,
        ),
    ] {
        let gauge = Gauge::<i64>::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, gauge);
    }
}

/// `container_last_seen`: the same time for every container of the snapshot.
#[derive(Debug)]
struct LastSeen {
    at: f64,
    shared: Arc<Shared>,
}

impl prometheus_client::collector::Collector for LastSeen {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "container_last_seen",
            "When dockops last read the container, seconds since the epoch",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (_, labels) in self.shared.containers() {
            family.encode_family(labels)?.encode_gauge(&self.at)?;
        }
        Ok(())
    }
}
