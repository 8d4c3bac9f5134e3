//! Admission of new connections into a container with an ingress cap.
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

use aya_ebpf::helpers::{
    bpf_ktime_get_coarse_ns, bpf_spin_lock as lock, bpf_spin_unlock as unlock,
};
use dockops_common::{FIRST_FLIGHT_BYTES, SYN_ACK_BYTES};

use super::{CapBucket, TC_CAPS, refill};

const SECOND: u64 = 1_000_000_000;

/// Takes a first flight's credit from the bucket at `key`: true when there was enough. The
/// credit holds 10 ms at the rate (at least one first flight), so a few connections open
/// at once without waiting, and goes at most a second at the rate into debt, what the
/// admission class holds.
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
    let flight = flight_bytes(b, now) as i64;
    let most = ((b.rate_bytes / 100) as i64).max(flight);
    let tokens = (b.admit_tokens + refill(b.admit_ns, now, b.rate_bytes)).min(most);
    b.admit_tokens = (tokens - flight).max(-(b.rate_bytes as i64));
    b.admit_ns = b.admit_ns.max(now);
    unsafe { unlock(&raw mut b.lock) };
    tokens >= flight
}

/// Counts a SYN-ACK in the window, starting a new one (and a new estimate) after a second.
#[inline(always)]
fn flight_bytes(b: &mut CapBucket, now: u64) -> u64 {
    if now.saturating_sub(b.window_ns) > SECOND {
        b.flight_bytes = match b.window_syn_acks {
            0 => FIRST_FLIGHT_BYTES,
            n => (b.window_bytes / n).clamp(SYN_ACK_BYTES, FIRST_FLIGHT_BYTES),
        };
        b.window_ns = now;
        b.window_bytes = 0;
        b.window_syn_acks = 0;
    }
    b.window_syn_acks += 1;
    match b.flight_bytes {
        0 => FIRST_FLIGHT_BYTES,
        f => f,
    }
}
