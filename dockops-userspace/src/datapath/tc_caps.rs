//! The tc hard caps: one token bucket per host veth and direction, behind the sender pacing.

use std::collections::HashSet;

use dockops_common::{Caps, ECN_WAYS, MAX_TC_CAPS, TcCap, group_cap_key, tc_cap_key};

use super::{Datapath, DatapathError, not_found};

/// The hard cap counts wire bytes (headers included) while pacing counts TCP payload: behind
/// pacing, the bucket runs this much faster (per mille) so that paced flows never reach it,
/// and full segments still move at most the cap in payload (1448 of 1514 bytes × 1.045 =
/// 0.9995). Without pacing it runs at the cap, on wire bytes, as tc's shapers do.
const WIRE_HEADROOM_PER_MILLE: u64 = 1045;

/// The rate in wire bytes per second that a cap of `bits` per second holds on the host
/// veth (its bucket) and in the container (its egress backlog).
pub(super) fn wire_rate(bits: u64, caps: Caps) -> u64 {
    let headroom = if caps.paced() {
        WIRE_HEADROOM_PER_MILLE
    } else {
        1000
    };
    bits / 8 * headroom / 1000
}

/// How long a packet may wait in EDT mode: the burst's worth of time at the rate (at least
/// 1 ns: 0 means a token bucket).
fn edt_horizon_ns(burst_bytes: u64, rate_bytes: u64) -> u64 {
    let ns = u128::from(burst_bytes) * 1_000_000_000 / u128::from(rate_bytes.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

impl Datapath {
    /// Writes (or removes) both hard caps of one host veth, with a full bucket. Each hook
    /// keeps its ECN slot, or gets a free one (emptied first).
    ///
    /// A group's caps: the hooks point at the group's bucket (one per direction), which is
    /// written when it is missing or its rate or burst changed (not refilled at every
    /// member's arrival).
    pub(super) fn set_tc_caps(&mut self, ifindex: u32, caps: Caps) -> Result<(), DatapathError> {
        let mut used: Option<HashSet<u32>> = None;
        // A queued ingress cap has no bucket (an EDT one has a schedule in its place).
        let ingress_bits = if caps.queued() { 0 } else { caps.ingress_bits };
        for (ingress, bits) in [(false, caps.egress_bits), (true, ingress_bits)] {
            let key = tc_cap_key(ifindex, ingress);
            if bits == 0 {
                match self.tc_caps.remove(&key) {
                    Err(e) if !not_found(&e) => return Err(e.into()),
                    _ => {}
                }
            } else if caps.group() != 0 {
                let group_key = group_cap_key(caps.group(), ingress);
                self.set_bucket(group_key, bits, caps, ingress, &mut used, true)?;
                let hook = TcCap {
                    group_key,
                    ..TcCap::default()
                };
                self.tc_caps.insert(key, hook, 0)?;
            } else {
                self.set_bucket(key, bits, caps, ingress, &mut used, false)?;
            }
        }
        Ok(())
    }

    /// Writes the bucket at `key` for `bits` per second, full; `keep`: leave it as it is if
    /// it already has this rate and burst.
    fn set_bucket(
        &mut self,
        key: u64,
        bits: u64,
        caps: Caps,
        ingress: bool,
        used: &mut Option<HashSet<u32>>,
        keep: bool,
    ) -> Result<(), DatapathError> {
        let rate_bytes = wire_rate(bits, caps);
        let old = self.tc_caps.get(&key, 0).ok().filter(|o| o.ecn_slot != 0);
        if keep
            && old.is_some_and(|o| (o.rate_bytes, o.burst_bytes) == (rate_bytes, caps.burst_bytes))
        {
            return Ok(());
        }
        let ecn_slot = if let Some(old) = old {
            old.ecn_slot
        } else {
            let used = used.get_or_insert_with(|| {
                self.tc_caps
                    .iter()
                    .filter_map(Result::ok)
                    .map(|(_, v)| v.ecn_slot)
                    .collect()
            });
            let slot = self.free_ecn_slot(used)?;
            used.insert(slot);
            slot
        };
        let cap = TcCap {
            ecn_slot,
            rate_bytes,
            burst_bytes: caps.burst_bytes,
            tokens: i64::try_from(caps.burst_bytes).unwrap_or(i64::MAX),
            horizon_ns: if ingress && caps.edt() {
                edt_horizon_ns(caps.burst_bytes, rate_bytes)
            } else {
                0
            },
            ..TcCap::default()
        };
        self.tc_caps.insert(key, cap, 0)?;
        Ok(())
    }

    /// The lowest slot no hook uses, emptied of the flows a former owner left.
    fn free_ecn_slot(&mut self, used: &HashSet<u32>) -> Result<u32, DatapathError> {
        let slot = (1..=MAX_TC_CAPS)
            .find(|s| !used.contains(s))
            .ok_or(DatapathError::Full("TC_CAPS"))?;
        for index in slot * ECN_WAYS..(slot + 1) * ECN_WAYS {
            self.ecn_flows.set(index, 0, 0)?;
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_edt_horizon_is_the_burst_in_time() {
        // 250 KB at 10 Mbit/s (1.25 MB/s): 200 ms.
        assert_eq!(super::edt_horizon_ns(250_000, 1_250_000), 200_000_000);
        assert_eq!(super::edt_horizon_ns(0, 1_250_000), 1);
        assert_eq!(super::edt_horizon_ns(u64::MAX, 1), u64::MAX);
    }
}
