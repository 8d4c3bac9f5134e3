//! tc programs on the host side of each container's veth.
//!
//! The host side sees the container's traffic mirrored: tc ingress on the host veth carries what
//! the container sends (its tx), tc egress what is delivered into it (its rx).
//! Both programs only count and return `TC_ACT_UNSPEC`, so later programs in the chain still run.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use dockops_common::{MAX_INTERFACES, TrafficCounters};

/// Host veth ifindex → counters. Userspace inserts the entry when it attaches and removes it
/// when the container goes, so the datapath never allocates and ignores unknown interfaces.
#[map(name = "TRAFFIC")]
static TRAFFIC: PerCpuHashMap<u32, TrafficCounters> = PerCpuHashMap::pinned(MAX_INTERFACES, 0);

/// `struct __sk_buff` of a packet the container sent (tc ingress of the host veth).
#[classifier]
pub fn tc_ingress_acct(ctx: TcContext) -> i32 {
    if let Some(c) = counters(&ctx) {
        let (packets, bytes) = sizes(&ctx);
        c.tx_packets += packets;
        c.tx_bytes += bytes;
    }
    TC_ACT_UNSPEC
}

/// `struct __sk_buff` of a packet delivered into the container (tc egress of the host veth).
#[classifier]
pub fn tc_egress_acct(ctx: TcContext) -> i32 {
    if let Some(c) = counters(&ctx) {
        let (packets, bytes) = sizes(&ctx);
        c.rx_packets += packets;
        c.rx_bytes += bytes;
    }
    TC_ACT_UNSPEC
}

/// This CPU's counters of the interface the packet is on. Per-CPU values need no atomics:
/// a tc program runs to completion on one CPU without preemption by itself.
#[inline(always)]
fn counters(ctx: &TcContext) -> Option<&mut TrafficCounters> {
    // SAFETY: ctx.skb.skb is the kernel's __sk_buff for this program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a per-CPU value is only touched by this CPU while the program runs.
    TRAFFIC.get_ptr_mut(ifindex).map(|p| unsafe { &mut *p })
}

/// Wire packets and bytes of the skb: a GSO aggregate of `gso_segs` segments counts as that
/// many packets; bytes are `skb->len` as the interface counters account them.
#[inline(always)]
fn sizes(ctx: &TcContext) -> (u64, u64) {
    // SAFETY: as above.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    (u64::from(segs.max(1)), u64::from(ctx.len()))
}
