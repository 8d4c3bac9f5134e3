//! Turning snapshots into text: tables for people, JSON lines for log shippers.

mod json;
mod table;

pub use json::json_lines;
pub use table::{stats_table, watch_table};

/// Human-readable bytes, IEC units: `1.5 MiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Human-readable counts with SI suffixes: `12.3k`.
pub fn count(n: f64) -> String {
    if n < 1000.0 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}G", n / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizes() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(8.0 * 1024.0 * 1024.0), "8.0 MiB");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(count(2_500_000.0), "2.5M");
    }
}
