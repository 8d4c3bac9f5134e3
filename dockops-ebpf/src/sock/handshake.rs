//! A capped container's TCP handshakes wait in its egress backlog, with the data, and its
//! SYN-ACKs take credit for their connections' first flights.
//!
//! The backlog's HTB picks a class from `skb->priority`, which `established` sets on a
//! capped connection's socket; the handshake comes before that. A listener's SYN-ACKs carry
//! the listener's priority (none), and fell into the prompt class, overtaking the queued
//! data: a sender's first round-trip sample then missed the queue its first flight would
//! meet, and its loss probes fired behind that queue. Here the `cgroup_skb` egress program
//! gives a connecting socket's SYN the bulk priority before it reaches the qdisc (it runs
//! in `ip_finish_output`), and a SYN-ACK the bulk one when the cap has credit for its
//! connection's first flight, the admission class's otherwise (`tc/admit.rs`): hundreds of
//! connections opening at once are then spaced at the pace the cap carries their first
//! flights, rather than all queueing theirs behind handshakes that measured an empty queue.

use core::ptr::read_volatile;

use aya_ebpf::programs::SkBuffContext;
use dockops_common::{ADMIT_PRIORITY, BULK_PRIORITY};

use super::{Addr, now_slot, paced_cap, shares::shares_admit};

/// `sk_state` of a socket whose packets are handshakes: a connect's SYN, a listener's
/// SYN-ACKs (the request's packet runs the program with its listener).
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;

/// Gives a handshake packet leaving a container with a paced egress cap the bulk or the
/// admission priority, unless its socket has a priority of its own.
#[inline(always)]
pub fn classify(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own `__sk_buff`; `sk` is the packet's full socket or null, and
    // its `state` is readable on any socket.
    let state = unsafe {
        let sk = read_volatile(&raw const (*skb).__bindgen_anon_2.sk);
        if sk.is_null() || read_volatile(&raw const (*skb).priority) != 0 {
            return;
        }
        read_volatile(&raw const (*sk).state)
    };
    if state != TCP_SYN_SENT && state != TCP_LISTEN {
        return;
    }
    // The packet starts at its IP header: the version, then the source address.
    let source = match ctx.load::<u8>(0).map(|b| b >> 4) {
        Ok(4) => ctx.load::<u32>(12).map(Addr::V4),
        Ok(6) => ctx.load::<[u32; 4]>(8).map(Addr::V6),
        _ => return,
    };
    let Some((source, caps)) = source
        .ok()
        .and_then(|a| Some((a, a.caps().filter(|c| c.egress_bits != 0)?)))
    else {
        return;
    };
    let key = source.window_key(Some(caps)) << 1;
    let priority =
        if state == TCP_LISTEN && shares_admit(key, now_slot(), paced_cap(caps.egress_bits)) == 0 {
            ADMIT_PRIORITY
        } else {
            BULK_PRIORITY
        };
    // SAFETY: cgroup_skb programs may write the priority of their packet.
    unsafe { (*skb).priority = priority };
}
