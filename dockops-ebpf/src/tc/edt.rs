//! EDT mode of an ingress cap (`limit --edt`): an earliest-departure-time schedule.
//!
//! The program runs at tc egress of the host veth, before its root qdisc, where dockops puts
//! an fq qdisc: fq holds each packet until `skb->tstamp`. Packets are stamped back to back at
//! the cap on one timeline per hook, so the hook sends at the cap and queues instead of
//! dropping; a packet that would wait more than half the horizon is marked CE if
//! ECN-capable, one that would wait beyond it is dropped (the horizon is the burst's worth
//! of time at the rate). Like Cilium's bandwidth manager, but behind sender pacing and on
//! the receiving container's veth.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_spin_lock as lock, bpf_spin_unlock as unlock},
    programs::TcContext,
};

use super::{CapBucket, Level, Verdict, ecn};

/// Up to this size (ACKs, pings) a packet beyond the horizon passes at once, unscheduled,
/// as the bucket's small packets pass on credit.
const SMALL_PACKET: u64 = 128;

/// Schedules `bytes` on the hook's timeline. `last_ns` is when the previous packet has
/// left: an idle timeline starts now, a busy one after its last packet.
#[inline(always)]
pub(super) fn schedule(b: &mut CapBucket, bytes: u64) -> Level {
    // SAFETY: reads the monotonic clock, the one fq compares `skb->tstamp` with. Called
    // before the lock: no helper calls while it is held.
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe { lock(&raw mut b.lock) };
    let at = b.last_ns.max(now);
    let wait = at - now;
    let level = if wait > b.horizon_ns {
        Level::Beyond
    } else {
        // `| 1`: a non-zero divisor, so no panic path is emitted.
        b.last_ns = at + bytes * 1_000_000_000 / (b.rate_bytes | 1);
        Level::Later {
            at,
            low: wait > b.horizon_ns / 2,
            slot: b.ecn_slot,
        }
    };
    unsafe { unlock(&raw mut b.lock) };
    level
}

/// Stamps the departure time, and marks CE when the wait is long (`low` carries the ECN
/// slot).
#[inline(always)]
pub(super) fn stamp(ctx: &TcContext, at: u64, low: Option<u32>) -> Verdict {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `tstamp` is writable from tc programs; at egress it is the delivery time.
    unsafe { (*skb).tstamp = at };
    low.map_or(Verdict::Pass, |slot| ecn::mark(ctx, slot))
}

/// Beyond the horizon: small packets pass now, the rest is dropped.
#[inline(always)]
pub(super) fn beyond(bytes: u64) -> Verdict {
    if bytes <= SMALL_PACKET {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}
