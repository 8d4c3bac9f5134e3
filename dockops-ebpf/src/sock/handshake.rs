//! A capped container's TCP handshakes wait in its egress backlog's bulk class, with the
//! data.
//!
//! The backlog's HTB picks a class from `skb->priority`, which `established` sets on a
//! capped connection's socket; the handshake comes before that. A listener's SYN-ACKs carry
//! the listener's priority (none), and fell into the prompt class, overtaking the queued
//! data: a sender's first round-trip sample then missed the queue its first flight would
//! meet, and its loss probes fired behind that queue. Here the `cgroup_skb` egress program
//! gives them the bulk priority before they reach the qdisc (it runs in `ip_finish_output`),
//! as it does a connecting socket's SYN. Debian 12's 6.1 does not run the hook for an IPv6
//! SYN-ACK (`ip6_xmit` is handed the listener, the packet belongs to the request): there
//! those stay prompt, as before; 6.18 runs it.

use core::ptr::read_volatile;

use aya_ebpf::programs::SkBuffContext;
use dockops_common::BULK_PRIORITY;

use super::Addr;

/// `sk_state` of a socket whose packets are handshakes: a connect's SYN, a listener's
/// SYN-ACKs (the request's packet runs the program with its listener).
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;

/// Gives a handshake packet leaving a container with a paced egress cap the bulk priority,
/// unless its socket has a priority of its own.
#[inline(always)]
pub fn classify(ctx: &SkBuffContext) {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own `__sk_buff`; `sk` is the packet's full socket or null, and
    // its `state` is readable on any socket. The priority first: a paced socket's data has
    // one, and stops there.
    let handshake = unsafe {
        read_volatile(&raw const (*skb).priority) == 0 && {
            let sk = read_volatile(&raw const (*skb).__bindgen_anon_2.sk);
            !sk.is_null()
                && matches!(
                    read_volatile(&raw const (*sk).state),
                    TCP_SYN_SENT | TCP_LISTEN
                )
        }
    };
    if !handshake {
        return;
    }
    // The packet starts at its IP header: the version, then the source address.
    let source = match ctx.load::<u8>(0).map(|b| b >> 4) {
        Ok(4) => ctx.load::<u32>(12).map(Addr::V4),
        Ok(6) => ctx.load::<[u32; 4]>(8).map(Addr::V6),
        _ => return,
    };
    if source.is_ok_and(|a| a.caps().is_some_and(|c| c.egress_bits != 0)) {
        // SAFETY: cgroup_skb programs may write the priority of their packet.
        unsafe { (*skb).priority = BULK_PRIORITY };
    }
}
