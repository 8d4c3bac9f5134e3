//! Interface error and drop counters of the host's interfaces, from one read of
//! `/proc/net/dev` per snapshot (the host veths are all there).

use std::collections::HashMap;

/// The kernel's error and drop counts of one interface, as the host sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceErrors {
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

impl InterfaceErrors {
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            rx_errors: self.rx_errors + other.rx_errors,
            rx_dropped: self.rx_dropped + other.rx_dropped,
            tx_errors: self.tx_errors + other.tx_errors,
            tx_dropped: self.tx_dropped + other.tx_dropped,
        }
    }
}

/// Reads `/proc/net/dev` of the caller's network namespace; empty if unreadable.
pub fn read() -> HashMap<String, InterfaceErrors> {
    std::fs::read_to_string("/proc/net/dev")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses lines such as `  eth0: 1234 10 0 0 0 0 0 0 5678 12 0 0 0 0 0 0` (receive:
/// bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs
/// drop fifo colls carrier compressed), after two header lines.
fn parse(text: &str) -> HashMap<String, InterfaceErrors> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (n.len() >= 12).then(|| {
                (
                    name.trim().to_owned(),
                    InterfaceErrors {
                        rx_errors: n[2],
                        rx_dropped: n[3],
                        tx_errors: n[10],
                        tx_dropped: n[11],
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_errors_and_drops_by_interface() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
veth1a2b3c: 9000 50 1 2 0 0 0 0 8000 40 3 4 0 0 0 0
";
        let all = parse(text);
        assert_eq!(
            all["veth1a2b3c"],
            InterfaceErrors {
                rx_errors: 1,
                rx_dropped: 2,
                tx_errors: 3,
                tx_dropped: 4
            }
        );
        assert_eq!(all["lo"], InterfaceErrors::default());
        assert_eq!(all.len(), 2);
    }
}
