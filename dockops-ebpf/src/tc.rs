//! tc programs on the host side of each container's veth.
//!
//! The host side sees the container's traffic mirrored: tc ingress on the host veth carries what
//! the container sends (its tx), tc egress what is delivered into it (its rx). Both count, and
//! enforce the hard cap of a capped container: a token bucket on wire bytes, behind the
//! sender pacing of `sock.rs`, for what pacing cannot reach (UDP, sockets opened before the
//! cap, senders beyond the host). A low bucket marks ECN-capable packets, an empty one drops
//! (`tc/ecn.rs`). An ingress cap in EDT mode is a departure schedule instead (`tc/edt.rs`).
//! Everything else returns `TC_ACT_UNSPEC`, so later programs in the chain still run.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_spin_lock},
    btf_maps::HashMap as BtfHashMap,
    helpers::{bpf_ktime_get_coarse_ns, bpf_spin_lock as lock, bpf_spin_unlock as unlock},
    macros::{btf_map, classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use dockops_common::{MAX_INTERFACES, MAX_TC_CAPS, TrafficCounters, tc_cap_key};

mod admit;
mod ecn;
mod edt;

/// Host veth ifindex → counters. Userspace inserts the entry when it attaches and removes it
/// when the container goes, so the datapath never allocates and ignores unknown interfaces.
#[map(name = "TRAFFIC")]
static TRAFFIC: PerCpuHashMap<u32, TrafficCounters> =
    PerCpuHashMap::pinned(MAX_INTERFACES + crate::LAYOUT_VARIANT, 0);

/// `tc_cap_key(ifindex, ingress)` → the hook's cap and bucket (pinned by userspace, which
/// writes `rate_bytes`/`burst_bytes` and resets the bucket).
#[btf_map]
static TC_CAPS: BtfHashMap<u64, CapBucket, { (MAX_TC_CAPS + crate::LAYOUT_VARIANT) as usize }> =
    BtfHashMap::new();

/// Same layout as `dockops_common::TcCap`, with the lock typed for the verifier.
#[repr(C)]
struct CapBucket {
    lock: bpf_spin_lock,
    ecn_slot: u32,
    rate_bytes: u64,
    burst_bytes: u64,
    tokens: i64,
    last_ns: u64,
    horizon_ns: u64,
    group_key: u64,
    admit_tokens: i64,
    admit_ns: u64,
    flight_bytes: u64,
    window_ns: u64,
    window_bytes: u64,
    window_syn_acks: u64,
}

const _: () = assert!(size_of::<CapBucket>() == size_of::<dockops_common::TcCap>());

/// `struct __sk_buff` of a packet the container sent (tc ingress of the host veth).
#[classifier]
pub fn tc_ingress_acct(ctx: TcContext) -> i32 {
    account(&ctx, false)
}

/// `struct __sk_buff` of a packet delivered into the container (tc egress of the host veth).
#[classifier]
pub fn tc_egress_acct(ctx: TcContext) -> i32 {
    account(&ctx, true)
}

/// What the hard cap does with one packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Passed with ECN Congestion Experienced set.
    Marked,
    Drop,
}

/// Applies the hook's hard cap, then counts the packet as passed, marked or dropped, into the
/// container (`into`) or out of it.
#[inline(always)]
fn account(ctx: &TcContext, into: bool) -> i32 {
    let (ifindex, packets, bytes) = sizes(ctx);
    let key = tc_cap_key(ifindex, into);
    let (level, key) = match take(key, bytes) {
        Some(taken) => {
            if into {
                classify(ctx, bytes, taken.1);
            }
            taken
        }
        None => (Level::Plenty, key),
    };
    let verdict = match level {
        Level::Plenty => Verdict::Pass,
        Level::Low(slot) => ecn::mark(ctx, slot),
        // A paced sender on this host, into the container: the backlog behind (this veth's
        // root qdisc) holds what it sent unpaced, and its pacing pays the debt back. The
        // debt (as deep as the backlog at 10 Mbit/s) keeps senders beyond the host out
        // meanwhile. Small packets (handshakes, acknowledgements, pings) pass on the same
        // credit, which `ecn::when_empty` would give only a second of: a paced flow's debt
        // would shut them out, and a dropped SYN-ACK costs its connection a second.
        Level::Empty(_)
            if into
                && (bytes <= ecn::SMALL_PACKET || paced_flow(ctx))
                && owe(key, bytes, PACED_DEBT_SECONDS) =>
        {
            Verdict::Pass
        }
        Level::Empty(slot) => ecn::when_empty(ctx, key, slot, bytes),
        Level::Later { at, low, slot } => edt::stamp(ctx, at, low.then_some(slot)),
        Level::Beyond => edt::beyond(bytes),
    };
    if let Some(c) = counters(ifindex) {
        let (p, b) = match (into, verdict == Verdict::Drop) {
            (true, false) => (&mut c.rx_packets, &mut c.rx_bytes),
            (true, true) => (&mut c.rx_dropped_packets, &mut c.rx_dropped_bytes),
            (false, false) => (&mut c.tx_packets, &mut c.tx_bytes),
            (false, true) => (&mut c.tx_dropped_packets, &mut c.tx_dropped_bytes),
        };
        *p += packets;
        *b += bytes;
        if verdict == Verdict::Marked {
            *(if into {
                &mut c.rx_marked_packets
            } else {
                &mut c.tx_marked_packets
            }) += packets;
        }
    }
    if verdict == Verdict::Drop {
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_UNSPEC
    }
}

/// How far in debt (seconds at the rate, beyond a burst) the bucket lets paced same-host
/// senders go into the ingress backlog: 256 connections opening at once put 3.7 MB there.
const PACED_DEBT_SECONDS: u64 = 4;

/// Puts a packet into the container (hard cap `key`) in a class of the backlog behind. A
/// sender's socket priority does not reach this far (crossing a veth clears it), so the
/// packet decides: data and handshakes in bulk, the rest (pings, acknowledgements) stays
/// prompt. Handshakes wait with the data so that the senders' first round trip, on which
/// they time their retransmissions, measures the wait their data will have; a SYN-ACK that
/// finds no credit for its connection's first flight waits in the admission class instead
/// (`tc/admit.rs`).
#[inline(always)]
fn classify(ctx: &TcContext, bytes: u64, key: u64) {
    const TCP_FLAGS: usize = 13;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let priority = if bytes > ecn::SMALL_PACKET {
        dockops_common::BULK_PRIORITY
    } else {
        let flags = tcp_header(ctx)
            .and_then(|(tcp, _)| ctx.load::<u8>(tcp + TCP_FLAGS).ok())
            .unwrap_or(0);
        if flags & (SYN | ACK) == SYN | ACK && !admit::admitted(key) {
            dockops_common::ADMIT_PRIORITY
        } else if flags & SYN != 0 {
            dockops_common::BULK_PRIORITY
        } else {
            return;
        }
    };
    // SAFETY: ctx.skb.skb is the kernel's __sk_buff, whose priority tc programs may write.
    unsafe { (*ctx.skb.skb).priority = priority };
}

/// Whether a TCP packet belongs to a flow `sock_ops` paces into a capped container.
#[inline(always)]
fn paced_flow(ctx: &TcContext) -> bool {
    const SOURCE6: usize = 14 + 8;
    let Some((tcp, v6)) = tcp_header(ctx) else {
        return false;
    };
    let word = |offset: usize| ctx.load::<u32>(offset).ok();
    // SAFETY (both lookups): plain lookups, read at once.
    if v6 {
        let flow = || -> Option<[u32; 9]> {
            let mut key = [0; 9];
            for (i, k) in key.iter_mut().take(8).enumerate() {
                *k = word(SOURCE6 + 4 * i)?;
            }
            key[8] = word(tcp)?;
            Some(key)
        };
        flow().is_some_and(|f| unsafe { crate::sock::PACED_FLOWS6.get(&f) }.is_some())
    } else {
        let flow = || Some([word(26)?, word(30)?, word(tcp)?]);
        flow().is_some_and(|f| unsafe { crate::sock::PACED_FLOWS.get(&f) }.is_some())
    }
}

/// Where a TCP packet's header starts, and whether it is IPv6 (without extension headers);
/// `None` for anything but TCP over IPv4 or IPv6.
#[inline(always)]
fn tcp_header(ctx: &TcContext) -> Option<(usize, bool)> {
    use ecn::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP};
    match u16::from_be(ctx.load::<u16>(12).ok()?) {
        ETH_P_IP if ctx.load::<u8>(23).ok()? == IPPROTO_TCP => {
            Some((14 + usize::from(ctx.load::<u8>(14).ok()? & 0x0f) * 4, false))
        }
        ETH_P_IPV6 if ctx.load::<u8>(20).ok()? == IPPROTO_TCP => Some((14 + 40, true)),
        _ => None,
    }
}

/// This CPU's counters of an interface. Per-CPU values need no atomics: a tc program runs to
/// completion on one CPU without preemption by itself.
#[inline(always)]
fn counters(ifindex: u32) -> Option<&'static mut TrafficCounters> {
    // SAFETY: a per-CPU value is only touched by this CPU while the program runs.
    TRAFFIC.get_ptr_mut(ifindex).map(|p| unsafe { &mut *p })
}

/// The interface, wire packets and bytes of the skb: a GSO aggregate of `gso_segs` segments
/// counts as that many packets; bytes are `skb->len`, as the interface counters account them.
#[inline(always)]
fn sizes(ctx: &TcContext) -> (u32, u64, u64) {
    // SAFETY: ctx.skb.skb is the kernel's __sk_buff for this program run.
    let (ifindex, segs) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_segs) };
    (ifindex, u64::from(segs.max(1)), u64::from(ctx.len()))
}

/// The bucket after a packet asked for its bytes.
enum Level {
    /// No cap, or more than half the bucket left after taking the bytes.
    Plenty,
    /// Taken, but less than half the bucket is left: the flow is faster than the cap. With
    /// the hook's ECN slot.
    Low(u32),
    /// Not enough tokens: nothing was taken. With the hook's ECN slot.
    Empty(u32),
    /// EDT: leaves at `at` (monotonic ns); `low` when it waits more than half the horizon.
    Later { at: u64, low: bool, slot: u32 },
    /// EDT: would wait beyond the horizon; not scheduled.
    Beyond,
}

/// Takes `bytes` from the hook's bucket (`None`: the hook has no cap). The bucket is shared
/// by all CPUs, so it is updated under its spin lock (no helper calls while held).
///
/// The clock is the coarse one (one tick, 4 ms at HZ=250): reading it costs a few ns where
/// `bpf_ktime_get_coarse_ns` costs ~30 ns in a VM. Tokens then arrive a tick's worth at a time, so a
/// bucket must hold at least one tick at the rate; userspace refuses smaller bursts.
///
/// A group member's entry points at the group's bucket, which all members share: the key
/// returned is the bucket's.
#[inline(always)]
fn take(key: u64, bytes: u64) -> Option<(Level, u64)> {
    let (bucket, key) = bucket(key)?;
    Some((take_from(bucket, bytes), key))
}

/// The bucket of hook `key` and its own key: the hook's, or its group's.
#[inline(always)]
fn bucket(key: u64) -> Option<(*mut CapBucket, u64)> {
    let hook = TC_CAPS.get_ptr_mut(key)?;
    // SAFETY: a map value, valid for the program run. Userspace writes `group_key` with the
    // whole value; reading it without the lock sees the old or the new one.
    let group = unsafe { (*hook).group_key };
    if group == 0 {
        return Some((hook, key));
    }
    TC_CAPS.get_ptr_mut(group).map(|b| (b, group))
}

#[inline(always)]
fn take_from(bucket: *mut CapBucket, bytes: u64) -> Level {
    // SAFETY: a map value, valid for the program run; mutated only under its lock (the
    // horizon only by userspace, which rewrites the whole value).
    let b = unsafe { &mut *bucket };
    if b.horizon_ns != 0 {
        return edt::schedule(b, bytes);
    }
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    unsafe { lock(&raw mut b.lock) };
    let burst = b.burst_bytes as i64;
    let tokens = (b.tokens + refill(b.last_ns, now, b.rate_bytes)).min(burst);
    let want = bytes as i64;
    let level = if tokens < want {
        Level::Empty(b.ecn_slot)
    } else if tokens - want < burst / 2 {
        Level::Low(b.ecn_slot)
    } else {
        Level::Plenty
    };
    b.tokens = if tokens < want { tokens } else { tokens - want };
    b.last_ns = b.last_ns.max(now);
    b.window_bytes += bytes;
    unsafe { unlock(&raw mut b.lock) };
    level
}

/// Bytes a bucket at `rate` bytes/s gains from `since` to `now`: at most one second's,
/// which keeps `elapsed * rate` below 2^63 at any rate.
#[inline(always)]
fn refill(since: u64, now: u64, rate: u64) -> i64 {
    let elapsed = now.saturating_sub(since).min(1_000_000_000);
    (elapsed * rate / 1_000_000_000) as i64
}

/// Takes `bytes` the bucket does not have, for a packet that must pass anyway (a
/// retransmission): later refills pay the debt. False when that would owe more than a burst
/// and `seconds` at the rate.
#[inline(always)]
fn owe(key: u64, bytes: u64, seconds: u64) -> bool {
    let Some(bucket) = TC_CAPS.get_ptr_mut(key) else {
        return true;
    };
    // SAFETY: as in `take`.
    let b = unsafe { &mut *bucket };
    unsafe { lock(&raw mut b.lock) };
    let tokens = b.tokens - bytes as i64;
    let limit = b.burst_bytes + seconds * b.rate_bytes;
    let granted = tokens >= -(limit as i64);
    if granted {
        b.tokens = tokens;
    }
    unsafe { unlock(&raw mut b.lock) };
    granted
}
