//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, free of implicit padding and of `bool`,
//! with a compile-time size check: the kernel copies these as raw bytes.
#![no_std]

/// Names of the eBPF maps and programs, as the object file knows them. Program names stay
/// within 15 characters: the kernel truncates longer ones, and netlink filters are found by it.
pub mod names {
    /// Per-CPU hash map: host-side veth ifindex (`u32`) → [`super::TrafficCounters`].
    pub const TRAFFIC: &str = "TRAFFIC";
    /// tc ingress of the host-side veth: packets the container sends.
    pub const TC_INGRESS_ACCT: &str = "tc_ingress_acct";
    /// tc egress of the host-side veth: packets delivered into the container.
    pub const TC_EGRESS_ACCT: &str = "tc_egress_acct";
}

/// Room for this many host-side veths (several per container are possible).
pub const MAX_INTERFACES: u32 = 8192;

/// Packet and byte counts of one host-side veth, seen from the container: `rx` is traffic
/// delivered into the container, `tx` traffic it sent. One copy per CPU, summed in userspace.
///
/// `packets` counts wire packets (`gso_segs` of an aggregate); `bytes` counts `skb->len`,
/// link layer included, as the interface counters Docker reports do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 32);

impl TrafficCounters {
    /// Adds another CPU's (or interface's) counts to these.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
        }
    }
}

// SAFETY: repr(C), only u64 fields, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for TrafficCounters {}

#[cfg(test)]
mod tests {
    use super::TrafficCounters;

    #[test]
    fn plus_adds_each_field() {
        let a = TrafficCounters {
            rx_packets: 1,
            rx_bytes: 100,
            tx_packets: 2,
            tx_bytes: 200,
        };
        let b = TrafficCounters {
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 4,
            tx_bytes: 400,
        };
        assert_eq!(
            a.plus(b),
            TrafficCounters {
                rx_packets: 4,
                rx_bytes: 400,
                tx_packets: 6,
                tx_bytes: 600
            }
        );
    }
}
