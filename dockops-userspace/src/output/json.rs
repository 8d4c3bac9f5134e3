//! One JSON object per container per line. Field names are a contract: never rename them.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::collection::{ContainerStats, Snapshot};

#[derive(Serialize)]
struct Line<'a> {
    ts: &'a str,
    #[serde(flatten)]
    stats: &'a ContainerStats,
}

/// The snapshot as JSON lines, each ending in `\n`.
pub fn json_lines(snapshot: &Snapshot) -> String {
    let ts = snapshot.ts.format(&Rfc3339).unwrap_or_default();
    let mut out = String::new();
    for stats in &snapshot.containers {
        // Serializing plain strings and integers cannot fail.
        if let Ok(line) = serde_json::to_string(&Line { ts: &ts, stats }) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use time::macros::datetime;

    use super::*;
    use crate::collection::NetworkStats;

    #[test]
    fn line_has_the_documented_fields() {
        let snapshot = Snapshot {
            ts: datetime!(2026-11-27 10:00:00 UTC),
            at: Instant::now(),
            insert_failures: Vec::new(),
            unreadable: 0,
            machine: crate::collection::Machine::default(),
            containers: vec![ContainerStats {
                id: "abc".into(),
                name: "web".into(),
                image: "nginx".into(),
                network: NetworkStats {
                    rx_bytes_total: 1,
                    tx_bytes_total: 2,
                    rx_packets_total: 3,
                    tx_packets_total: 4,
                    ..NetworkStats::default()
                },
                ..ContainerStats::default()
            }],
        };
        let text = json_lines(&snapshot);
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["ts"], "2026-11-27T10:00:00Z");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["name"], "web");
        assert_eq!(v["image"], "nginx");
        assert_eq!(v["network"]["rx_bytes_total"], 1);
        assert_eq!(v["network"]["tx_bytes_total"], 2);
        assert_eq!(v["network"]["rx_packets_total"], 3);
        assert_eq!(v["network"]["tx_packets_total"], 4);
        assert_eq!(v["network"]["rx_bytes_per_second"], serde_json::Value::Null);
        assert_eq!(v["network"]["rx_dropped_total"], 0);
        for field in [
            "usage_seconds_total",
            "user_seconds_total",
            "system_seconds_total",
            "percent",
            "throttled_periods_total",
            "throttled_seconds_total",
        ] {
            assert!(v["cpu"].get(field).is_some(), "cpu.{field}");
        }
        for field in [
            "usage_bytes",
            "working_set_bytes",
            "limit_bytes",
            "swap_bytes",
            "oom_events_total",
        ] {
            assert!(v["memory"].get(field).is_some(), "memory.{field}");
        }
        for field in [
            "read_bytes_total",
            "write_bytes_total",
            "reads_total",
            "writes_total",
            "devices",
        ] {
            assert!(v["blkio"].get(field).is_some(), "blkio.{field}");
        }
        assert!(v["pids"].get("current").is_some() && v["pids"].get("limit").is_some());
    }
}
