//! Fixed-width tables that fit an 80-column terminal.

use std::{collections::HashMap, fmt::Write as _};

use crate::collection::{ContainerStats, Rates, Snapshot};

/// One snapshot (`stats`), in the columns `docker stats` users know; totals since attach for
/// network, since the container started for block IO.
pub fn stats_table(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "{:<STATS_NAME$} {:>6} {:>14} {:>14} {:>14} {:>5}\n",
        "NAME", "CPU%", "MEM USE/LIMIT", "NET RX/TX", "BLOCK R/W", "PIDS"
    );
    for c in &snapshot.containers {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let pair = |a: u64, b: Option<u64>| {
            format!(
                "{}/{}",
                short(a as f64),
                b.map_or_else(|| "-".to_owned(), |b| short(b as f64))
            )
        };
        let _ = writeln!(
            out,
            "{:<STATS_NAME$} {:>6} {:>14} {:>14} {:>14} {:>5}",
            truncate_to(&c.name, STATS_NAME),
            c.cpu
                .percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}")),
            pair(c.memory.usage_bytes, c.memory.limit_bytes),
            pair(c.network.rx_bytes_total, Some(c.network.tx_bytes_total)),
            pair(c.blkio.read_bytes_total, Some(c.blkio.write_bytes_total)),
            c.pids.current,
        );
    }
    out
}

/// What the `watch` table is ordered by (largest first, names A–Z).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Cpu,
    Memory,
    Network,
    Block,
    Pids,
    Name,
}

impl SortKey {
    /// The key a user presses for each order.
    pub fn from_key(key: char) -> Option<Self> {
        Some(match key {
            'c' => Self::Cpu,
            'm' => Self::Memory,
            'n' => Self::Network,
            'b' => Self::Block,
            'p' => Self::Pids,
            'a' => Self::Name,
            _ => return None,
        })
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Network => "network",
            Self::Block => "block io",
            Self::Pids => "pids",
            Self::Name => "name",
        }
    }
}

const WATCH_NAME: usize = 12;
const STATS_NAME: usize = 20;

/// The top-like `watch` view: one row per container, sorted by `sort`. A container without
/// a previous reading shows `-` for its rates. Fits 80 columns.
pub fn watch_table<S: std::hash::BuildHasher>(
    snapshot: &Snapshot,
    rates: &HashMap<String, Rates, S>,
    sort: SortKey,
) -> String {
    let mut rows: Vec<_> = snapshot
        .containers
        .iter()
        .map(|c| (c, rates.get(&c.id)))
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "ordering only")]
    let metric = |(c, r): &(&ContainerStats, Option<&Rates>)| -> f64 {
        match sort {
            SortKey::Cpu => r.map_or(0.0, |r| r.cpu_percent),
            SortKey::Memory => c.memory.usage_bytes as f64,
            SortKey::Network => r.map_or(0.0, |r| r.rx_bytes + r.tx_bytes),
            SortKey::Block => r.map_or(0.0, |r| r.read_bytes + r.write_bytes),
            SortKey::Pids => c.pids.current as f64,
            SortKey::Name => 0.0,
        }
    };
    rows.sort_by(|a, b| {
        metric(b)
            .total_cmp(&metric(a))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let mut out = format!(
        "{} containers by {:<8}  keys: c cpu m mem n net b blk p pids a name q quit\n",
        rows.len(),
        sort.label()
    );
    let _ = writeln!(
        out,
        "{:<WATCH_NAME$} {:>6} {:>13} {:>13} {:>13} {:>5} {:>5} {:>5}",
        "NAME", "CPU%", "MEM USE/LIMIT", "NET RX/TX/s", "BLK R/W/s", "RQ99", "IO99", "PIDS"
    );
    let dash = || "-".to_owned();
    for (c, r) in rows {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let memory = format!(
            "{}/{}",
            short(c.memory.usage_bytes as f64),
            c.memory
                .limit_bytes
                .map_or_else(|| "-".to_owned(), |l| short(l as f64))
        );
        let pair = |f: fn(&Rates) -> (f64, f64)| {
            r.map_or_else(dash, |r| {
                let (a, b) = f(r);
                format!("{}/{}", short(a), short(b))
            })
        };
        let io99 = c
            .blkio
            .latency_us
            .as_ref()
            .and_then(|l| [l.read.p99, l.write.p99].into_iter().flatten().max());
        let _ = writeln!(
            out,
            "{:<WATCH_NAME$} {:>6} {memory:>13} {:>13} {:>13} {:>5} {:>5} {:>5}",
            truncate_to(&c.name, WATCH_NAME),
            r.map_or_else(dash, |r| format!("{:.1}", r.cpu_percent)),
            pair(|r| (r.rx_bytes, r.tx_bytes)),
            pair(|r| (r.read_bytes, r.write_bytes)),
            c.cpu
                .runqueue_latency_us
                .as_ref()
                .and_then(|l| l.p99)
                .map_or_else(dash, micros),
            io99.map_or_else(dash, micros),
            c.pids.current,
        );
    }
    out
}

/// Header lines of [`watch_table`] above its rows.
pub const WATCH_HEADER_LINES: usize = 2;

/// The part of a [`watch_table`] that fits `height` lines: its header, the rows from
/// `offset` (clamped so the last page is full), and a line saying which rows show when
/// not all do. Returns the text and the offset used.
pub fn window(table: &str, height: usize, offset: usize) -> (String, usize) {
    let lines: Vec<&str> = table.lines().collect();
    let (header, rows) = lines.split_at(WATCH_HEADER_LINES.min(lines.len()));
    let room = height.saturating_sub(WATCH_HEADER_LINES + 1).max(1);
    if rows.len() <= room + 1 {
        return (table.to_owned(), 0);
    }
    let offset = offset.min(rows.len() - room);
    let shown = &rows[offset..offset + room];
    let mut out = header.join("\n");
    for row in shown {
        out.push('\n');
        out.push_str(row);
    }
    let _ = write!(
        out,
        "\nrows {}-{} of {}  (j/k, arrows, PgUp/PgDn)",
        offset + 1,
        offset + room,
        rows.len()
    );
    (out, offset)
}

/// Microseconds in at most 5 characters: `512u`, `8.2m`, `131m`, `34s`.
fn micros(us: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let us = us as f64;
    if us < 1000.0 {
        format!("{us:.0}u")
    } else if us < 10_000.0 {
        format!("{:.1}m", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.0}m", us / 1000.0)
    } else if us < 10_000_000.0 {
        format!("{:.1}s", us / 1e6)
    } else {
        format!("{:.0}s", us / 1e6)
    }
}

/// Bytes in at most 6 characters: `512B`, `1.5K`, `10.2M`, `999G`.
pub fn short(n: f64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024.0 {
        return format!("{n:.0}B");
    }
    let mut value = n / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 100.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

fn truncate_to(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use time::OffsetDateTime;

    use super::*;
    use crate::collection::{BlkioStats, CpuStats, MemoryStats, NetworkStats, PidsStats};

    fn stats(id: &str, name: &str, memory: u64, pids: u64) -> ContainerStats {
        ContainerStats {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            cpu: CpuStats::default(),
            memory: MemoryStats {
                usage_bytes: memory,
                limit_bytes: Some(1 << 30),
                ..MemoryStats::default()
            },
            blkio: BlkioStats::default(),
            network: NetworkStats {
                rx_bytes_total: 2048,
                tx_bytes_total: 10,
                rx_packets_total: 2,
                tx_packets_total: 1,
                ..NetworkStats::default()
            },
            pids: PidsStats {
                current: pids,
                processes: 1,
                limit: None,
            },
            storage: crate::collection::StorageStats::default(),
            limits: crate::collection::Limits::default(),
            ..ContainerStats::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            ts: OffsetDateTime::UNIX_EPOCH,
            at: Instant::now(),
            insert_failures: Vec::new(),
            unreadable: 0,
            machine: crate::collection::Machine::default(),
            containers: vec![
                stats(
                    "0123456789abcdef",
                    "a-rather-long-container-name-indeed",
                    5 << 20,
                    3,
                ),
                stats("fedcba9876543210", "busy", 700 << 20, 40),
            ],
        }
    }

    fn rates() -> HashMap<String, Rates> {
        let r = |cpu, net| Rates {
            rx_bytes: net,
            tx_bytes: net,
            rx_packets: 9e5,
            tx_packets: 9e5,
            read_bytes: 1e9,
            write_bytes: 1e12,
            cpu_percent: cpu,
            ..Rates::default()
        };
        HashMap::from([
            ("0123456789abcdef".to_owned(), r(150.0, 1e3)),
            ("fedcba9876543210".to_owned(), r(12.5, 1e9)),
        ])
    }

    #[test]
    fn tables_fit_80_columns() {
        let snap = snapshot();
        for table in [
            stats_table(&snap),
            watch_table(&snap, &rates(), SortKey::Cpu),
            watch_table(&snap, &HashMap::new(), SortKey::Name),
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
    fn watch_sorts_by_the_chosen_key() {
        let snap = snapshot();
        let first_row = |sort| {
            watch_table(&snap, &rates(), sort)
                .lines()
                .nth(2)
                .unwrap()
                .to_owned()
        };
        assert!(
            first_row(SortKey::Cpu).starts_with("a-rather-lo…"),
            "150% CPU first"
        );
        assert!(first_row(SortKey::Memory).starts_with("busy"));
        assert!(first_row(SortKey::Network).starts_with("busy"));
        assert!(first_row(SortKey::Pids).starts_with("busy"));
        assert!(first_row(SortKey::Name).starts_with("a-rather"));
        let row = first_row(SortKey::Cpu);
        assert!(row.contains(" 150.0 "), "{row}");
        assert!(row.contains("5.0M/1.0G"), "{row}");
        assert!(
            row.contains(" 954M/931G "),
            "1e9 B/s read, 1e12 written: {row}"
        );
        assert_eq!(SortKey::from_key('m'), Some(SortKey::Memory));
        assert_eq!(SortKey::from_key('x'), None);
    }

    #[test]
    fn no_rates_yet_shows_dashes() {
        let table = watch_table(&snapshot(), &HashMap::new(), SortKey::Cpu);
        let row = table.lines().nth(2).unwrap();
        assert!(row.contains(" - "), "{row}");
    }

    #[test]
    fn latency_columns_show_the_interval_p99() {
        let mut snap = snapshot();
        snap.containers[1].cpu.runqueue_latency_us = Some(crate::collection::LatencyStats {
            p99: Some(8192),
            ..Default::default()
        });
        let mut io = crate::collection::IoLatency::default();
        io.read.p99 = Some(256);
        io.write.p99 = Some(1 << 20);
        snap.containers[1].blkio.latency_us = Some(io);
        let table = watch_table(&snap, &rates(), SortKey::Name);
        let busy = table.lines().find(|l| l.starts_with("busy")).unwrap();
        assert!(busy.contains(" 8.2m  1.0s "), "{busy}");
        let other = table.lines().nth(2).unwrap();
        assert!(other.contains("     -     - "), "no hooks: dashes: {other}");
        assert_eq!(micros(512), "512u");
        assert_eq!(micros(131_072), "131m");
        assert_eq!(micros(1 << 25), "34s");
    }

    #[test]
    fn long_lists_scroll_within_the_height() {
        let rows: String = (0..50)
            .map(|i| format!("row{i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let table = format!("title\nNAME\n{rows}\n");
        let (shown, offset) = window(&table, 10, 0);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 10, "{shown}");
        assert_eq!(&lines[..3], ["title", "NAME", "row0"]);
        assert_eq!(lines[9], "rows 1-7 of 50  (j/k, arrows, PgUp/PgDn)");
        assert_eq!(offset, 0);
        let (shown, offset) = window(&table, 10, 1000);
        assert_eq!(offset, 43, "the last page is full");
        assert!(shown.lines().nth(2) == Some("row43") && shown.contains("row49"));
        let (all, _) = window(&table, 100, 5);
        assert_eq!(all, table, "what fits is shown whole");
    }

    #[test]
    fn short_units() {
        assert_eq!(short(512.0), "512B");
        assert_eq!(short(1536.0), "1.5K");
        assert_eq!(short(150.0 * 1024.0 * 1024.0), "150M");
    }

    #[test]
    fn stats_row_shows_totals() {
        let table = stats_table(&snapshot());
        let row = table.lines().nth(1).unwrap();
        assert!(row.starts_with("a-rather-long-conta… "), "{row}");
        assert!(row.contains(" 2.0K/10B "), "{row}");
        assert!(row.contains(" 5.0M/1.0G "), "{row}");
    }
}
