//! Latency histograms as the outputs show them: log2 buckets in microseconds, with
//! percentiles over the last interval.

use std::collections::BTreeMap;

use dockops_common::{LATENCY_SLOTS, Latency};
use serde::Serialize;

/// One latency histogram: percentiles over the sampling interval, counts since dockops
/// started counting for the container.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Upper bounds (µs) of the log2 buckets holding the median, the 99th percentile and
    /// the longest wait of the interval (since counting began, without a previous
    /// reading); `null` when nothing was counted in it.
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// Waits counted, and their sum in microseconds.
    pub count: u64,
    pub sum_us: u64,
    /// Waits per bucket, by the bucket's upper bound in µs (the last bucket has none:
    /// `"inf"`); empty buckets left out.
    pub buckets: BTreeMap<String, u64>,
    /// The histogram itself, for interval percentiles and Prometheus.
    #[serde(skip)]
    pub histogram: Latency,
}

/// The upper bound of slot `i` in µs; `None` for the last, open-ended one.
pub fn slot_bound_us(i: usize) -> Option<u64> {
    (i + 1 < LATENCY_SLOTS).then(|| 1 << i)
}

impl From<Latency> for LatencyStats {
    fn from(histogram: Latency) -> Self {
        let mut stats = Self {
            count: histogram.slots.iter().sum(),
            sum_us: histogram.sum_ns / 1000,
            buckets: histogram
                .slots
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| {
                    let bound =
                        slot_bound_us(i).map_or_else(|| "inf".to_owned(), |b| b.to_string());
                    (bound, *n)
                })
                .collect(),
            histogram,
            ..Self::default()
        };
        stats.set_interval(&histogram);
        stats
    }
}

impl LatencyStats {
    /// Sets the percentiles from `interval`, the waits of the last interval.
    pub fn set_interval(&mut self, interval: &Latency) {
        let bound = |i: usize| slot_bound_us(i).unwrap_or(1 << (LATENCY_SLOTS - 1));
        let total: u64 = interval.slots.iter().sum();
        let at = |q: f64| -> Option<u64> {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a rank among at most 2^64 waits"
            )]
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            interval.slots.iter().enumerate().find_map(|(i, n)| {
                seen += n;
                (seen >= rank).then(|| bound(i))
            })
        };
        if total == 0 {
            (self.p50, self.p99, self.max) = (None, None, None);
            return;
        }
        self.p50 = at(0.5);
        self.p99 = at(0.99);
        self.max = interval.slots.iter().rposition(|&n| n > 0).map(bound);
    }
}

/// `now` less `before`, slot by slot (a histogram that went backwards, because its
/// container's counting restarted, gives `now`).
pub fn since(now: &Latency, before: &Latency) -> Latency {
    let mut out = *now;
    for (o, b) in out.slots.iter_mut().zip(before.slots) {
        if *o < b {
            return *now;
        }
        *o -= b;
    }
    out.sum_ns = now.sum_ns.saturating_sub(before.sum_ns);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(waits_us: &[(u64, u64)]) -> Latency {
        let mut l = Latency::default();
        for &(us, times) in waits_us {
            for _ in 0..times {
                l.record(us * 1000);
            }
        }
        l
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        // 98 waits of 3 µs (bucket [2, 4)), one of 100 µs ([64, 128)), one of 5 ms.
        let s = LatencyStats::from(histogram(&[(3, 98), (100, 1), (5000, 1)]));
        assert_eq!((s.p50, s.p99, s.max), (Some(4), Some(128), Some(8192)));
        assert_eq!(s.count, 100);
        assert_eq!(s.sum_us, 98 * 3 + 100 + 5000);
        assert_eq!(s.buckets["4"], 98);
        assert_eq!(s.buckets["8192"], 1);
        assert_eq!(s.buckets.len(), 3, "empty buckets are left out");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["buckets"]["128"], 1);
        assert!(json.get("histogram").is_none());
    }

    #[test]
    fn nothing_counted_has_no_percentiles() {
        let s = LatencyStats::from(Latency::default());
        assert_eq!((s.p50, s.p99, s.max, s.count), (None, None, None, 0));
    }

    #[test]
    fn interval_percentiles_ignore_older_waits() {
        let before = histogram(&[(5000, 50)]);
        let now = before.plus(&histogram(&[(3, 10)]));
        let mut s = LatencyStats::from(now);
        assert_eq!(s.p99, Some(8192), "since counting began");
        s.set_interval(&since(&now, &before));
        assert_eq!((s.p50, s.p99, s.max), (Some(4), Some(4), Some(4)));
        assert_eq!(s.count, 60, "counts stay cumulative");
        assert_eq!(
            since(&before, &now),
            before,
            "a restart is not a negative interval"
        );
    }

    #[test]
    fn the_last_bucket_is_open() {
        let s = LatencyStats::from(histogram(&[(1 << 40, 1)]));
        assert_eq!(s.buckets["inf"], 1);
        assert_eq!(s.max, Some(1 << (LATENCY_SLOTS - 1)));
    }
}
