//! Admission of new connections under a cap: into a container with an ingress cap here (the
//! tc program on its host veth), out of one with an egress cap in `sock/handshake.rs`.
//!
//! TCP times a connection's first retransmission on the handshake's round trip. When
//! hundreds of connections open at once, all their handshakes pass before any first flight
//! is queued, and then the first flights wait in the ingress backlog far longer than that
//! round trip: the senders' loss probes and timeouts fire spuriously (nothing pushes back on
//! a sender in another namespace). So each SYN-ACK into the container takes credit for its
//! connection's first flight from a bucket refilled at the cap; one that finds none waits in
//! the backlog's admission class, which lets SYN-ACKs through at the pace the cap carries
//! first flights. The sender's first round trip then includes that wait, and its first
//! flight meets a short queue.
//!
//! A first flight counts as what the last second delivered per SYN-ACK, at most
//! [`FIRST_FLIGHT_BYTES`]: connections that carry a few hundred bytes each (API calls, one
//! per connection) are admitted as fast as the cap carries them.
//!
//! The credit is an [`Admission`] in the hook's bucket here; egress keeps one in the cap's
//! lease ring, for the `cgroup_skb` program that classifies a container's own SYN-ACKs
//! (`sock/handshake.rs`), with [`take_credit`] the same.

use aya_ebpf::helpers::{
    bpf_ktime_get_coarse_ns, bpf_spin_lock as lock, bpf_spin_unlock as unlock,
};
use dockops_common::{Admission, FIRST_FLIGHT_BYTES, SYN_ACK_BYTES};

use super::{TC_CAPS, refill};

const SECOND: u64 = 1_000_000_000;

/// Takes a first flight's credit from the bucket at `key`: true when there was enough.
#[inline(always)]
pub(super) fn admitted(key: u64) -> bool {
    let Some(bucket) = TC_CAPS.get_ptr_mut(key) else {
        return true;
    };
    // SAFETY: a map value, valid for the program run; mutated only under its lock.
    let b = unsafe { &mut *bucket };
    // SAFETY: reads the monotonic clock (before the lock: no helper calls while held).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    unsafe { lock(&raw mut b.lock) };
    let admitted = take_credit(&mut b.admit, b.rate_bytes, now);
    unsafe { unlock(&raw mut b.lock) };
    admitted
}

/// Takes a first flight's credit from `a`, refilled at `rate` bytes/s, at `now`: true when
/// there was enough. The credit holds 10 ms at the rate (at least one first flight), so a
/// few connections open at once without waiting, and goes at most a second at the rate
/// into debt, what the admission class holds. Called under the lock of the value that
/// holds `a`.
#[inline(always)]
pub fn take_credit(a: &mut Admission, rate: u64, now: u64) -> bool {
    let flight = flight_bytes(a, now) as i64;
    let most = ((rate / 100) as i64).max(flight);
    let tokens = (a.tokens + refill(a.ns, now, rate)).min(most);
    a.tokens = (tokens - flight).max(-(rate as i64));
    a.ns = a.ns.max(now);
    tokens >= flight
}

/// Counts a SYN-ACK in the window, starting a new one (and a new estimate) after a second.
#[inline(always)]
fn flight_bytes(a: &mut Admission, now: u64) -> u64 {
    if now.saturating_sub(a.window_ns) > SECOND {
        a.flight_bytes = match a.window_syn_acks {
            0 => FIRST_FLIGHT_BYTES,
            n => (a.window_bytes / n).clamp(SYN_ACK_BYTES, FIRST_FLIGHT_BYTES),
        };
        a.window_ns = now;
        a.window_bytes = 0;
        a.window_syn_acks = 0;
    }
    a.window_syn_acks += 1;
    match a.flight_bytes {
        0 => FIRST_FLIGHT_BYTES,
        f => f,
    }
}
