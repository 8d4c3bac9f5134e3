//! How many sockets share a cap right now: each socket that sends holds a lease, renewed at
//! every data packet and long enough to reach its next one at its paced rate; a closing
//! socket hands it back at once. A lease weighs what its socket uses of its share: a socket
//! that sends all the time weighs 1 ([`FULL`]); a keep-alive connection that waits for its
//! next request half of the time weighs 1/2, and the others' shares grow by what it leaves
//! unused. The cap is divided by the leases' total weight, and multiplied by the ring's
//! boost ([`budget`]: up to 2× while its sockets send less than the cap allows).
//!
//! Leases end on ~16.8 ms slots. Per cap key, a ring of 64 slots (~1.07 s) holds the weight
//! of the leases ending in each slot, with their total: renewing, handing back and expiring
//! are O(1) (expiring clears the slots passed since the last packet, at most 64).

use aya_ebpf::{
    bindings::bpf_spin_lock,
    btf_maps::HashMap as BtfHashMap,
    helpers::{bpf_spin_lock as lock, bpf_spin_unlock as unlock},
    macros::{btf_map, map},
    maps::Array,
};
use dockops_common::{InsertFailures, LeaseRing, MAX_CAPS};

/// log2 of a slot in ns (~16.8 ms).
pub const SLOT_SHIFT: u32 = 24;
/// Slots in a ring: the longest lease is one less.
const SLOTS: u64 = 64;
/// The shortest lease, in slots (17–34 ms): covers a socket's gaps that are not pacing
/// (waiting for an ACK or for its application) on a short path.
const MIN_LEASE: u64 = 2;
/// The weight of a socket that uses all of its share.
pub const FULL: u64 = 256;
/// The lightest lease: a socket that sends now and then still counts 1/32.
const MIN_WEIGHT: u64 = FULL / 32;
/// How far back a socket's use of its share is measured, in ns: past this, what was
/// measured counts half.
const USE_SPAN_NS: u64 = 32_000_000;
/// log2 of a budget period in slots (4 slots, ~67 ms): a ring compares what its sockets
/// sent in one with what the cap allows.
const PERIOD_SHIFT: u32 = 2;
/// The most the budget raises the shares: 2×.
const MAX_BOOST: u64 = 2 * FULL;
/// [`shares_renew`]'s `traffic`: the packet's bytes in the low 20 bits, the flags
/// [`QUEUED`] and [`BOUND`], and the paced cap (bytes/s) from [`TRAFFIC_SHIFT`].
pub const TRAFFIC_SHIFT: u32 = 22;
/// The socket's smoothed round trip is well above its least: a queue (the hard bucket or
/// the backlog binds, not the pacing).
pub const QUEUED: u64 = 1 << 20;
/// The packet is not the last of what the application had written (no PSH): its socket has
/// more to send, and its pace, not its application, holds it back.
pub const BOUND: u64 = 1 << 21;

/// Lease ring per (address or group, direction): key = address key << 1 | ingress.
/// Userspace removes the entries of addresses that are no longer capped.
#[btf_map]
static WINDOWS: BtfHashMap<u64, Ring, { (2 * MAX_CAPS) as usize }> = BtfHashMap::new();

/// One ring of zeros (not pinned): a new ring is inserted from it rather than from the stack,
/// where its 296 bytes put the deepest call chain past the verifier's 512 bytes on Linux 6.1
/// ("combined stack size of 3 calls is 544"). Its type holds no spin lock: the verifier
/// refuses a helper reading a value that does.
#[map(name = "EMPTY_RING")]
static EMPTY_RING: Array<LeaseRing> = Array::with_max_entries(1, 0);

/// Same size as `dockops_common::LeaseRing`, with the lock typed for the verifier.
#[repr(C)]
pub struct Ring {
    lock: bpf_spin_lock,
    /// The unexpired leases' total weight.
    active: u32,
    /// The latest slot the ring has been brought to.
    slot: u64,
    /// The weight of the leases ending in slot `s`, at `s % SLOTS`.
    ending: [u32; SLOTS as usize],
    /// The budget period (`slot >> PERIOD_SHIFT`) `sent` counts.
    period: u64,
    /// Bytes the sockets sent in that period.
    sent: u64,
    /// What the shares are multiplied by, over [`FULL`].
    boost: u32,
    /// Of the flags [`QUEUED`] and [`BOUND`] (shifted down to bits 0 and 1), those some
    /// packet of that period carried; bit 2: the period is counted whole (traffic went on
    /// from the one before).
    seen: u32,
}

const _: () = assert!(size_of::<Ring>() == size_of::<dockops_common::LeaseRing>());

/// A paced socket: the lease it holds ([`held`]; 0: none), the ring keys it is held in
/// (`NO_KEY`: none), the congestion window clamp it was given (0: none), and how much of its
/// share it has been using.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Lease {
    pub held: u64,
    /// The lease being taken, while the rings are updated.
    pub next: u64,
    pub keys: [u64; 2],
    pub clamp: u64,
    /// When its last data packet left (ns).
    last_ns: u64,
    /// How long its pace held it after that packet (ns), and whether it carried PSH.
    owed_ns: u64,
    pushed: u64,
    /// Of the time measured (`span_ns`), how long it was sending or waiting on the network
    /// rather than on its application.
    busy_ns: u64,
    span_ns: u64,
}

pub const NO_KEY: u64 = u64::MAX;

impl Lease {
    pub const NONE: Self = Self {
        held: 0,
        next: 0,
        keys: [NO_KEY; 2],
        clamp: 0,
        last_ns: 0,
        owed_ns: 0,
        pushed: 0,
        busy_ns: 0,
        span_ns: 0,
    };
}

/// [`shares_weigh`]'s `packet`: the socket had segments in flight before it.
pub const IN_FLIGHT: u64 = 1;
/// [`shares_weigh`]'s `packet`: it carries PSH, the end of what the application had written
/// when it was queued.
pub const PUSHED: u64 = 2;

/// The weight of a socket's next lease, as a data packet of `bytes` leaves at `now_ns`, paced
/// at `rate` bytes/s (`packet`: [`IN_FLIGHT`], [`PUSHED`]); updates what `lease` measured.
///
/// The time since its last data packet counts as idle beyond what that packet's pace held it
/// back only when the socket may have run out of data: that packet ended what its
/// application had written (PSH), and everything was acknowledged before this one. Any other
/// gap is busy (the pacing timer firing late, waiting on ACKs, on its small-queue limit or
/// on a backlog): counted idle, a late timer made 4 long flows under one cap weigh ~0.95
/// each and send 1.000 of the cap together, above the 0.995 they are paced to. A socket
/// whose lease has run out starts again at full weight: what it sends next is not known.
///
/// A global function, as the ring's: inlined, its branches doubled the states the verifier
/// walks through the rest of the program, past its million instructions. `lease` points to
/// a map value (the verifier only knows it as memory of its size, maybe null).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_weigh(
    lease: *mut Lease,
    now_ns: u64,
    bytes: u64,
    rate: u64,
    packet: u64,
) -> u64 {
    // SAFETY: null or a `Lease` in PACED_SOCKETS, whose socket's callbacks run one at a time.
    let Some(l) = (unsafe { lease.as_mut() }) else {
        return FULL;
    };
    let (mut busy, mut span) = (0, 0);
    if l.held >> 16 > now_ns >> SLOT_SHIFT {
        let passed = now_ns.saturating_sub(l.last_ns);
        let idle = l.pushed != 0 && packet & IN_FLIGHT == 0;
        busy = l.busy_ns + if idle { passed.min(l.owed_ns) } else { passed };
        span = l.span_ns + passed;
        if span > USE_SPAN_NS {
            busy /= 2;
            span /= 2;
        }
    }
    // Stored once each: two stores of zero became a call to `memset`.
    l.busy_ns = busy;
    l.span_ns = span;
    l.last_ns = now_ns;
    l.pushed = packet & PUSHED;
    // Below 2^32 bytes, so the product fits (a saturating product needs 128-bit arithmetic,
    // which BPF lacks).
    l.owed_ns = bytes.min(u64::from(u32::MAX)) * 1_000_000_000 / (rate | 1);
    if span == 0 {
        return FULL;
    }
    (busy.min(span) * FULL / span).clamp(MIN_WEIGHT, FULL)
}

/// A lease as the ring functions take it: the slot it ends in, then its weight in the low
/// 16 bits.
#[inline(always)]
pub fn held(end: u64, weight: u64) -> u64 {
    end << 16 | weight.min(FULL)
}

/// Lease length in slots for a socket that just sent `bytes` at `rate` bytes/s with a
/// smoothed round trip of `srtt_ns`: twice the pacing gap before its next packet, plus a
/// round trip, plus the slot it is in. The round trip counts a socket whose packets wait in
/// the egress backlog (its small-queue limit holds it back until they leave): without it,
/// such sockets dropped out, the others' shares grew, and the backlog stood full.
#[inline(always)]
pub fn length(bytes: u64, rate: u64, srtt_ns: u64) -> u64 {
    let gap_ns = bytes.saturating_mul(1_000_000_000) / (rate | 1);
    ((2 * gap_ns + srtt_ns.min(1 << 32)) >> SLOT_SHIFT)
        .saturating_add(1)
        .clamp(MIN_LEASE, SLOTS - 1)
}

/// Holds the lease `new` ([`held`]) in `key`'s ring from `slot` (replacing `old` there) and
/// counts the packet `traffic` describes ([`QUEUED`]); returns the ring's total weight now in
/// the low 32 bits and its boost above.
///
/// The ring functions are global BPF functions: the verifier checks each once, on its own,
/// rather than at every call site along every path (inlined, the program took 680 000 of
/// its million instructions to verify). At most 5 arguments, scalars in and out.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_renew(key: u64, slot: u64, old: u64, new: u64, traffic: u64) -> u64 {
    let Some(ring) = ring(key) else {
        return FULL | FULL << 32;
    };
    // SAFETY: a map value, valid for the program run; changed only under its lock.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    release_locked(r, old);
    let (end, weight) = ((new >> 16) % SLOTS, (new & 0xffff) as u32);
    r.ending[end as usize] = r.ending[end as usize].saturating_add(weight);
    r.active = r.active.saturating_add(weight);
    budget(r, slot, traffic);
    let (active, boost) = (r.active, u64::from(r.boost).clamp(FULL, MAX_BOOST));
    unsafe { unlock(&raw mut r.lock) };
    u64::from(active) | boost << 32
}

/// The aggregate budget: at the first packet of each period, compares what the ring's
/// sockets sent in the one before with what their paced cap allows. When some socket was
/// held back by its pace ([`BOUND`]) and none saw a queue ([`QUEUED`]), a shortfall of more
/// than 1/64 and at most 1/4 raises the boost by as much (up to [`MAX_BOOST`]), a smaller
/// one keeps it, and an excess lowers it by as much and by a quarter of the boost above 1.
/// Any other period sets it back to 1: a queue (the hard bucket or the backlog binds), no
/// socket held back (nothing to make up), a period without traffic or the first one after
/// it (nothing measured, or only part of a period). So the boost only makes up for shares that go unused
/// (weights lagging sockets that wait for requests, pacing timers firing late on a busy
/// host). Called with the lock held.
#[inline(always)]
fn budget(r: &mut Ring, slot: u64, traffic: u64) {
    let period = slot >> PERIOD_SHIFT;
    if period != r.period {
        let boost = u64::from(r.boost).clamp(FULL, MAX_BOOST);
        // What the paced cap allows in one period.
        let allowed =
            (traffic >> TRAFFIC_SHIFT) * (1 << (SLOT_SHIFT + PERIOD_SHIFT)) / 1_000_000_000;
        let sent = r.sent;
        let (whole, queued, held_back) = (r.seen & 4 != 0, r.seen & 1 != 0, r.seen & 2 != 0);
        let next = period == r.period + 1;
        r.boost = if !(next && whole && !queued && held_back) {
            FULL
        } else if sent * 64 < allowed * 63 {
            // Below 3/4 of the budget the shortfall is not shares left unused but a host or
            // clients that cannot keep up (256 keep-alive connections for 4 KiB under
            // 1 Gbit/s here: 0.3-0.65 of it a period): higher rates cannot fill it and
            // only make each socket's bursts larger.
            if sent * 4 < allowed * 3 {
                FULL
            } else {
                (boost * allowed.min(sent + sent / 4) / (sent | 1)).min(MAX_BOOST)
            }
        } else if sent > allowed {
            // Lowered by the excess and a quarter of the boost: the excess alone is small
            // when the bucket or the backlog holds the sockets back, and kept a boost up.
            (boost * allowed / sent)
                .saturating_sub((boost - FULL) / 4)
                .max(FULL)
        } else {
            boost
        } as u32;
        r.period = period;
        r.sent = 0;
        // The new period counts whole if traffic went on into it from the one before.
        r.seen = if next { 4 } else { 0 };
    }
    r.sent += traffic & (QUEUED - 1);
    r.seen |= ((traffic >> 20) & 3) as u32;
}

/// The total weight of `key`'s ring at `slot` (at least [`FULL`]), without taking a lease.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_active(key: u64, slot: u64) -> u64 {
    let Some(ring) = ring(key) else {
        return FULL;
    };
    // SAFETY: as in `renew`.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    let active = r.active;
    unsafe { unlock(&raw mut r.lock) };
    u64::from(active).max(FULL)
}

/// Hands back the lease `old` ([`held`]), if `key`'s ring still holds it at `slot`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_release(key: u64, slot: u64, old: u64) -> u64 {
    if key == NO_KEY || old >> 16 <= slot {
        return 0;
    }
    let Some(ring) = WINDOWS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: as in `renew`.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    release_locked(r, old);
    unsafe { unlock(&raw mut r.lock) };
    0
}

/// `key`'s ring, created empty if missing (all zeros: slot 0, which the first `expire`
/// brings to now, and boost 0, read as 1).
#[inline(always)]
fn ring(key: u64) -> Option<*mut Ring> {
    if let Some(r) = WINDOWS.get_ptr_mut(key) {
        return Some(r);
    }
    let empty = EMPTY_RING.get_ptr(0)?;
    // SAFETY: a map value of the same size and layout (`LeaseRing`), valid for the program
    // run; only read, by the insert.
    if WINDOWS
        .insert(key, unsafe { &*empty.cast::<Ring>() }, 0)
        .is_err()
    {
        crate::insert_failed(InsertFailures::Windows);
    }
    WINDOWS.get_ptr_mut(key)
}

/// Ends the leases of the slots after `r.slot` up to `slot`. Called with the lock held.
///
/// Nothing when no slot has passed (most packets); otherwise always 64 rounds without a
/// branch (a mask says whether a round's slot has passed): a loop whose length or body
/// branches on the data makes the verifier walk every combination, at every call site, past
/// its million instructions.
#[inline(always)]
fn expire(r: &mut Ring, slot: u64) {
    if slot <= r.slot {
        return;
    }
    let passed = (slot - r.slot).min(SLOTS);
    let mut ended_total = 0u64;
    for i in 0..SLOTS {
        let s = ((r.slot + 1 + i) & (SLOTS - 1)) as usize;
        // All ones when i < passed (both below 2^63, so the difference's sign bit says it),
        // by an arithmetic shift: LLVM turns a negated bit into a branch.
        let mask = ((i.wrapping_sub(passed) as i64) >> 63) as u32;
        let ended = r.ending[s] & mask;
        r.ending[s] -= ended;
        // 64 values below 2^32: no overflow, and no branch for a saturating sum.
        ended_total += u64::from(ended);
    }
    r.active = r
        .active
        .saturating_sub(ended_total.min(u64::from(u32::MAX)) as u32);
    r.slot = slot;
}

/// Hands back the lease `old` ([`held`]) if it has not ended. Called with the lock held,
/// after `expire`.
#[inline(always)]
fn release_locked(r: &mut Ring, old: u64) {
    if old >> 16 <= r.slot {
        return;
    }
    let s = ((old >> 16) % SLOTS) as usize;
    let weight = ((old & 0xffff) as u32).min(r.ending[s]);
    r.ending[s] -= weight;
    r.active = r.active.saturating_sub(weight);
}
