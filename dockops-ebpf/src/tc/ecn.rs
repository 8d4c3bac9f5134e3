//! ECN for the hard cap, for senders it cannot pace (beyond the host, or pacing off).
//!
//! While the bucket runs low, ECN-capable packets pass with Congestion Experienced set: the
//! sender slows down as after a loss, without losing anything. Once it is empty, packets are
//! dropped, except the non-ECT TCP packets of flows already marked: Linux sends
//! retransmissions and loss probes without ECT, and dropping them would turn every episode
//! into a retransmission timeout (>= 200 ms, which starves the flow on a short path). They
//! pass on credit, so the cap still holds on average. So do small packets.

use aya_ebpf::{
    helpers::{bpf_get_hash_recalc, bpf_skb_ecn_set_ce},
    macros::map,
    maps::Array,
    programs::TcContext,
};
use dockops_common::{ECN_WAYS, MAX_TC_CAPS};

use super::Verdict;

pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86DD;
pub(super) const IPPROTO_TCP: u8 = 6;
const NOT_ECT: u8 = 0;
/// Up to this size (a pure ACK, a ping, a DNS query) a packet passes an empty bucket on
/// credit: they are a trickle of the bytes, and dropping them costs the most (a stalled
/// reverse flow, a lost probe). A flood of them still runs into the debt limit.
/// (129 in the `variant-code` test build: an object that differs, with the same maps.)
pub(super) const SMALL_PACKET: u64 = if cfg!(feature = "variant-code") {
    129
} else {
    128
};

/// Flow hashes (0: empty) of flows a hook marked or found ECN-capable: [`ECN_WAYS`] entries
/// per hook from `slot * ECN_WAYS`, direct-mapped by hash. A hook's flows collide only with
/// each other, so a container with many flows cannot push out another container's.
#[map(name = "ECN_FLOWS")]
static ECN_FLOWS: Array<u32> = Array::pinned((MAX_TC_CAPS + 1) * ECN_WAYS, 0);

/// The bucket runs low: marks the packet CE if it is ECN-capable, and passes it either way.
#[inline(always)]
pub fn mark(ctx: &TcContext, slot: u32) -> Verdict {
    // SAFETY: the program's own skb. Returns 1 when the packet is (now) CE, 0 if not ECT.
    if unsafe { bpf_skb_ecn_set_ce(ctx.skb.skb) } == 1 {
        remember(ctx, slot);
        Verdict::Marked
    } else {
        Verdict::Pass
    }
}

/// The bucket is empty: drops, except small packets (ACKs, SYN-ACKs, pings, DNS; up to a
/// burst and a second of the rate in debt, deeper than other credit goes, so that it never
/// shuts them out) and a marked flow's non-ECT TCP packets (up to one burst of debt), which
/// pass on credit.
#[inline(always)]
pub fn when_empty(ctx: &TcContext, key: u64, slot: u32, bytes: u64) -> Verdict {
    if bytes <= SMALL_PACKET {
        return if super::owe(key, bytes, 1) {
            Verdict::Pass
        } else {
            Verdict::Drop
        };
    }
    let Some((ecn, tcp)) = header(ctx) else {
        return Verdict::Drop;
    };
    if ecn != NOT_ECT {
        remember(ctx, slot);
        return Verdict::Drop;
    }
    if tcp && known(ctx, slot) && super::owe(key, bytes, 0) {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// Records the flow in the hook's slots (slot 0: the hook has none yet).
#[inline(always)]
fn remember(ctx: &TcContext, slot: u32) {
    let (index, hash) = entry(ctx, slot);
    if slot != 0
        && let Some(p) = ECN_FLOWS.get_ptr_mut(index)
    {
        // SAFETY: an array value, valid for the program run; a racing writer on another CPU
        // stores another flow of the same hook, which is as good.
        unsafe { *p = hash };
    }
}

/// Whether the flow is one the hook remembers.
#[inline(always)]
fn known(ctx: &TcContext, slot: u32) -> bool {
    let (index, hash) = entry(ctx, slot);
    slot != 0 && ECN_FLOWS.get(index).is_some_and(|&h| h == hash)
}

/// The flow's entry in `ECN_FLOWS` and the (non-zero) hash stored there.
#[inline(always)]
fn entry(ctx: &TcContext, slot: u32) -> (u32, u32) {
    // SAFETY: the program's own skb; computes the flow hash if the skb has none yet.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) }.max(1);
    (
        slot.wrapping_mul(ECN_WAYS).wrapping_add(hash % ECN_WAYS),
        hash,
    )
}

/// The ECN field and whether the packet is TCP, for an IPv4 or IPv6 frame (IPv6 extension
/// headers are not walked: such packets count as not TCP).
#[inline(always)]
fn header(ctx: &TcContext) -> Option<(u8, bool)> {
    match u16::from_be(ctx.load::<u16>(12).ok()?) {
        ETH_P_IP => {
            let tos: u8 = ctx.load(15).ok()?;
            let protocol: u8 = ctx.load(23).ok()?;
            Some((tos & 3, protocol == IPPROTO_TCP))
        }
        ETH_P_IPV6 => {
            let first = u16::from_be(ctx.load::<u16>(14).ok()?);
            let next: u8 = ctx.load(20).ok()?;
            Some(((first >> 4) as u8 & 3, next == IPPROTO_TCP))
        }
        _ => None,
    }
}
