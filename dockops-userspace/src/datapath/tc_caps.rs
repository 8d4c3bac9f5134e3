//! The tc hard caps: one token bucket per host veth and direction, behind the sender pacing.

use std::collections::HashSet;

use dockops_common::{Caps, TcCap, tc_cap_key};

use super::{Datapath, DatapathError, not_found};
use crate::discovery::Container;

/// The hard cap counts wire bytes (headers included) while pacing counts TCP payload: behind
/// pacing, the bucket runs this much faster so that paced flows never reach it. Without
/// pacing it runs at the cap, on wire bytes, as tc's shapers do.
const WIRE_HEADROOM_PERCENT: u64 = 105;

impl Datapath {
    /// Writes (or removes) both hard caps of one host veth, with a full bucket.
    pub(super) fn set_tc_caps(&mut self, ifindex: u32, caps: Caps) -> Result<(), DatapathError> {
        // A queued ingress cap has no bucket.
        let ingress_bits = if caps.queued() { 0 } else { caps.ingress_bits };
        for (ingress, bits) in [(false, caps.egress_bits), (true, ingress_bits)] {
            let key = tc_cap_key(ifindex, ingress);
            if bits == 0 {
                match self.tc_caps.remove(&key) {
                    Err(e) if !not_found(&e) => return Err(e.into()),
                    _ => {}
                }
            } else {
                let headroom = if caps.paced() {
                    WIRE_HEADROOM_PERCENT
                } else {
                    100
                };
                let cap = TcCap {
                    rate_bytes: bits / 8 * headroom / 100,
                    burst_bytes: caps.burst_bytes,
                    tokens: i64::try_from(caps.burst_bytes).unwrap_or(i64::MAX),
                    ..TcCap::default()
                };
                self.tc_caps.insert(key, cap, 0)?;
            }
        }
        Ok(())
    }

    /// Hard caps follow the caps of running containers (a restarted container's new veth
    /// gets them) and go with the interfaces that are gone.
    pub(super) fn reconcile_tc_caps(
        &mut self,
        containers: &[Container],
        live: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        let present: HashSet<u64> = self.tc_caps.keys().filter_map(Result::ok).collect();
        for key in &present {
            if !live.contains(&u32::try_from(key >> 1).unwrap_or(0)) {
                self.tc_caps.remove(key)?;
            }
        }
        let caps = self.caps()?;
        // One netlink dump, and only when a queue may be missing.
        let queues: HashSet<u32> = if caps.values().any(Caps::queued) {
            super::queue::interfaces()?.into_iter().collect()
        } else {
            HashSet::new()
        };
        for container in containers {
            let Some(c) = container.ipv4.first().and_then(|ip| caps.get(ip)).copied() else {
                continue;
            };
            for iface in container.interfaces.iter().flatten() {
                let missing = |ingress, bits| {
                    bits != 0 && !present.contains(&tc_cap_key(iface.ifindex, ingress))
                };
                let ingress_bucket = if c.queued() { 0 } else { c.ingress_bits };
                if missing(false, c.egress_bits) || missing(true, ingress_bucket) {
                    self.set_tc_caps(iface.ifindex, c)?;
                }
                if c.queued() && !queues.contains(&iface.ifindex) {
                    // Not fatal: one container's queue must not stop the others' reconcile.
                    if let Err(error) = super::set_queue(iface.ifindex, c) {
                        tracing::warn!(
                            container = container.name,
                            "ingress queue not restored: {}",
                            super::chain(&error)
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
