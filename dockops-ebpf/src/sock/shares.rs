//! How many sockets share a cap right now: each socket that sends holds a lease, renewed at
//! every data packet and long enough to reach its next one at its paced rate; a closing
//! socket hands it back at once. The count per cap is the number of unexpired leases.
//!
//! Leases end on ~16.8 ms slots. Per cap key, a ring of 64 slots (~1.07 s) holds how many
//! leases end in each slot, with their total: renewing, handing back and expiring are O(1)
//! (expiring clears the slots passed since the last packet, at most 64).

use aya_ebpf::{
    bindings::bpf_spin_lock,
    btf_maps::HashMap as BtfHashMap,
    helpers::{bpf_spin_lock as lock, bpf_spin_unlock as unlock},
    macros::btf_map,
};
use dockops_common::{InsertFailures, MAX_CAPS};

/// log2 of a slot in ns (~16.8 ms).
pub const SLOT_SHIFT: u32 = 24;
/// Slots in a ring: the longest lease is one less.
const SLOTS: u64 = 64;
/// The shortest lease, in slots (17–34 ms): covers a socket's gaps that are not pacing
/// (waiting for an ACK or for its application) on a short path.
const MIN_LEASE: u64 = 2;

/// Lease ring per (address or group, direction): key = address key << 1 | ingress.
/// Userspace removes the entries of addresses that are no longer capped.
#[btf_map]
static WINDOWS: BtfHashMap<u64, Ring, { (2 * MAX_CAPS) as usize }> = BtfHashMap::new();

/// Same size as `dockops_common::LeaseRing`, with the lock typed for the verifier.
#[repr(C)]
pub struct Ring {
    lock: bpf_spin_lock,
    /// Unexpired leases.
    active: u32,
    /// The latest slot the ring has been brought to.
    slot: u64,
    /// Leases ending in slot `s`, at `s % SLOTS`.
    ending: [u16; SLOTS as usize],
}

const _: () = assert!(size_of::<Ring>() == size_of::<dockops_common::LeaseRing>());

/// A paced socket: the slot its lease ends in (0: none), the ring keys it is held in
/// (`NO_KEY`: none), and the congestion window clamp it was given (0: none).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Lease {
    pub end: u64,
    pub keys: [u64; 2],
    pub clamp: u64,
}

pub const NO_KEY: u64 = u64::MAX;

impl Lease {
    pub const NONE: Self = Self {
        end: 0,
        keys: [NO_KEY; 2],
        clamp: 0,
    };
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

/// Holds a lease in `key`'s ring from `slot` to `end` (replacing the one ending at `old_end`
/// there); returns the leases the ring has now.
///
/// The ring functions are global BPF functions: the verifier checks each once, on its own,
/// rather than at every call site along every path (inlined, the program took 680 000 of
/// its million instructions to verify). At most 5 arguments, scalars in and out.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_renew(key: u64, slot: u64, old_end: u64, end: u64) -> u64 {
    let Some(ring) = ring(key, slot) else {
        return 1;
    };
    // SAFETY: a map value, valid for the program run; changed only under its lock.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    release_locked(r, old_end);
    r.ending[(end % SLOTS) as usize] = r.ending[(end % SLOTS) as usize].saturating_add(1);
    r.active += 1;
    let active = r.active;
    unsafe { unlock(&raw mut r.lock) };
    u64::from(active)
}

/// Leases `key`'s ring has at `slot` (at least 1), without taking one.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_active(key: u64, slot: u64) -> u64 {
    let Some(ring) = ring(key, slot) else {
        return 1;
    };
    // SAFETY: as in `renew`.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    let active = r.active;
    unsafe { unlock(&raw mut r.lock) };
    u64::from(active.max(1))
}

/// Hands back a lease ending at `end`, if `key`'s ring still holds it at `slot`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn shares_release(key: u64, slot: u64, end: u64) -> u64 {
    if key == NO_KEY || end <= slot {
        return 0;
    }
    let Some(ring) = WINDOWS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: as in `renew`.
    let r = unsafe { &mut *ring };
    unsafe { lock(&raw mut r.lock) };
    expire(r, slot);
    release_locked(r, end);
    unsafe { unlock(&raw mut r.lock) };
    0
}

/// `key`'s ring, created empty at `slot` if missing.
#[inline(always)]
fn ring(key: u64, slot: u64) -> Option<*mut Ring> {
    if let Some(r) = WINDOWS.get_ptr_mut(key) {
        return Some(r);
    }
    let empty = Ring {
        lock: bpf_spin_lock { val: 0 },
        active: 0,
        slot,
        ending: [0; SLOTS as usize],
    };
    if WINDOWS.insert(key, empty, 0).is_err() {
        crate::insert_failed(InsertFailures::Windows);
    }
    WINDOWS.get_ptr_mut(key)
}

/// Ends the leases of the slots after `r.slot` up to `slot`. Called with the lock held.
///
/// Always 64 rounds without a branch (a mask says whether a round's slot has passed): a loop
/// whose length or body branches on the data makes the verifier walk every combination, at
/// every call site, past its million instructions.
#[inline(always)]
fn expire(r: &mut Ring, slot: u64) {
    let passed = slot.saturating_sub(r.slot).min(SLOTS);
    let mut ended_total = 0u32;
    for i in 0..SLOTS {
        let s = ((r.slot + 1 + i) & (SLOTS - 1)) as usize;
        // All ones when i < passed (both below 2^63, so the difference's sign bit says it).
        let mask = 0u16.wrapping_sub((i.wrapping_sub(passed) >> 63) as u16);
        let ended = r.ending[s] & mask;
        r.ending[s] -= ended;
        ended_total += u32::from(ended);
    }
    r.active = r.active.saturating_sub(ended_total);
    r.slot = r.slot.max(slot);
}

/// Hands back a lease ending at `end` if it has not ended. Called with the lock held, after
/// `expire`.
#[inline(always)]
fn release_locked(r: &mut Ring, end: u64) {
    if end <= r.slot {
        return;
    }
    let s = (end % SLOTS) as usize;
    if r.ending[s] > 0 {
        r.ending[s] -= 1;
        r.active = r.active.saturating_sub(1);
    }
}
