//! Socket traffic per container, from `cgroup_skb` programs on the cgroup v2 root: every
//! packet a socket of the host sends or receives, counted for the container that owns the
//! socket. Unlike the tc programs on a container's veth, this also sees containers with
//! `--network host` or `--network container:X`, which have no veth of their own.
//!
//! The egress program also puts a capped container's TCP handshakes in its backlog's bulk
//! class (`sock/handshake.rs`).

use aya_ebpf::{
    helpers::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map},
    maps::PerCpuHashMap,
    programs::SkBuffContext,
};
use dockops_common::{InsertFailures, MAX_CGROUPS, SocketCounters};

use crate::cgroup::{Watched, container_of};

#[map(name = "SOCKET_TRAFFIC")]
static SOCKET_TRAFFIC: PerCpuHashMap<u64, SocketCounters> = PerCpuHashMap::pinned(MAX_CGROUPS, 0);

/// Let the packet through: these programs never drop.
const PASS: i32 = 1;

/// Packets delivered to a socket (`sk_filter`): IP header included, link layer not.
#[cgroup_skb(ingress)]
pub fn cg_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true);
    PASS
}

/// Packets a socket sends (`ip_finish_output`, before the qdisc): a GSO aggregate is one
/// skb.
#[cgroup_skb(egress)]
pub fn cg_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false);
    crate::sock::handshake::classify(&ctx);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, ingress: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own skb; 0 without a socket.
    let id = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: as above; 0 where the socket's cgroup is shallower than `level`.
    let Some(Watched { id: container, .. }) = container_of(id, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb, level)
    }) else {
        return;
    };
    let bytes = u64::from(ctx.len());
    // SAFETY: a field of the program's own `__sk_buff`, read at its declared width.
    let segs = u64::from(unsafe { (*skb).gso_segs }).max(1);
    if let Some(c) = SOCKET_TRAFFIC.get_ptr_mut(&container) {
        // SAFETY: this CPU's value of a per-CPU map.
        let c = unsafe { &mut *c };
        if ingress {
            c.rx_bytes += bytes;
            c.rx_packets += segs;
        } else {
            c.tx_bytes += bytes;
            c.tx_packets += segs;
        }
        return;
    }
    let first = if ingress {
        SocketCounters {
            rx_bytes: bytes,
            rx_packets: segs,
            ..SocketCounters::default()
        }
    } else {
        SocketCounters {
            tx_bytes: bytes,
            tx_packets: segs,
            ..SocketCounters::default()
        }
    };
    if SOCKET_TRAFFIC.insert(&container, &first, 0).is_err() {
        crate::insert_failed(InsertFailures::SocketTraffic);
    }
}
