//! Fixed-width tables that fit an 80-column terminal.

use std::{collections::HashMap, fmt::Write as _};

use super::{bytes, count};
use crate::collection::{Rates, Snapshot};

const NAME_WIDTH: usize = 20;

/// Totals of one snapshot (`stats`).
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub fn stats_table(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "{:<NAME_WIDTH$} {:<12} {:>10} {:>10} {:>9} {:>9}\n",
        "NAME", "CONTAINER ID", "RX BYTES", "TX BYTES", "RX PKTS", "TX PKTS"
    );
    for c in &snapshot.containers {
        let n = &c.network;
        let _ = writeln!(
            out,
            "{:<NAME_WIDTH$} {:<12} {:>10} {:>10} {:>9} {:>9}",
            truncate(&c.name),
            &c.id[..c.id.len().min(12)],
            bytes(n.rx_bytes_total as f64),
            bytes(n.tx_bytes_total as f64),
            count(n.rx_packets_total as f64),
            count(n.tx_packets_total as f64),
        );
    }
    out
}

/// Rates and totals (`watch`); a container without a previous reading shows `-` rates.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub fn watch_table<S: std::hash::BuildHasher>(
    snapshot: &Snapshot,
    rates: &HashMap<String, Rates, S>,
) -> String {
    let mut out = format!(
        "{:<NAME_WIDTH$} {:>10} {:>10} {:>7} {:>7} {:>10} {:>10}\n",
        "NAME", "RX/s", "TX/s", "RXpk/s", "TXpk/s", "RX TOTAL", "TX TOTAL"
    );
    for c in &snapshot.containers {
        let (rx, tx, rxp, txp) = rates.get(&c.id).map_or_else(
            || {
                (
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                )
            },
            |r| {
                (
                    bytes(r.rx_bytes),
                    bytes(r.tx_bytes),
                    count(r.rx_packets),
                    count(r.tx_packets),
                )
            },
        );
        let _ = writeln!(
            out,
            "{:<NAME_WIDTH$} {rx:>10} {tx:>10} {rxp:>7} {txp:>7} {:>10} {:>10}",
            truncate(&c.name),
            bytes(c.network.rx_bytes_total as f64),
            bytes(c.network.tx_bytes_total as f64),
        );
    }
    out
}

fn truncate(name: &str) -> String {
    if name.chars().count() <= NAME_WIDTH {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(NAME_WIDTH - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use time::OffsetDateTime;

    use super::*;
    use crate::collection::{ContainerStats, NetworkStats};

    fn snapshot() -> Snapshot {
        Snapshot {
            ts: OffsetDateTime::UNIX_EPOCH,
            at: Instant::now(),
            containers: vec![ContainerStats {
                id: "0123456789abcdef".into(),
                name: "a-rather-long-container-name-indeed".into(),
                image: "busybox".into(),
                network: NetworkStats {
                    rx_bytes_total: 2048,
                    tx_bytes_total: 10,
                    rx_packets_total: 2,
                    tx_packets_total: 1,
                },
            }],
        }
    }

    #[test]
    fn tables_fit_80_columns() {
        let snap = snapshot();
        let rates = HashMap::from([(
            "0123456789abcdef".to_owned(),
            Rates {
                rx_bytes: 1e9,
                tx_bytes: 1e9,
                rx_packets: 9e5,
                tx_packets: 9e5,
            },
        )]);
        for table in [
            stats_table(&snap),
            watch_table(&snap, &rates),
            watch_table(&snap, &HashMap::new()),
        ] {
            for line in table.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "{line:?} is {} wide",
                    line.chars().count()
                );
            }
        }
    }

    #[test]
    fn stats_row_shows_short_id_and_totals() {
        let table = stats_table(&snapshot());
        let row = table.lines().nth(1).unwrap();
        assert!(
            row.starts_with("a-rather-long-conta… 0123456789ab"),
            "{row}"
        );
        assert!(row.contains("2.0 KiB"), "{row}");
    }
}
