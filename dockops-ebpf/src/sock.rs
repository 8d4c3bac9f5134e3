//! Bandwidth caps for TCP, enforced by pacing the sender: one `sock_ops` program on the
//! cgroup v2 root sees every TCP socket on the host and sets `SO_MAX_PACING_RATE` on those
//! sent from a capped container (local address capped for egress) or to one (remote address
//! capped for ingress), IPv4 or IPv6. Pacing at the sender keeps queues empty and avoids
//! drops; on a same-host path (7–20 µs RTT) drop-based policing cannot steer TCP at all.
//!
//! A cap is divided among the sockets sending under it now (`sock/shares.rs`): a socket
//! counts from its first data packet, for as long as its pace says its next one is due, and
//! hands its share back when it closes; it weighs what it used of its share lately, so that
//! what keep-alive connections leave unused between requests goes to the others. Its rate
//! is set again before every data packet it sends (the header-option callback), so shares
//! follow sockets arriving and leaving within one packet of each.

pub mod handshake;
mod shares;

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
        BPF_TCP_CLOSE, BPF_TCP_FIN_WAIT2, BPF_TCP_TIME_WAIT, SO_MAX_PACING_RATE, SO_PRIORITY,
        SOL_SOCKET,
    },
    helpers::{bpf_get_socket_cookie, bpf_getsockopt, bpf_ktime_get_ns, bpf_setsockopt},
    macros::{map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::SockOpsContext,
};
use dockops_common::{
    BULK_PRIORITY, Caps, InsertFailures, MAX_CAPS, window_key_group, window_key_v4, window_key_v6,
};
use shares::{FULL, Lease, NO_KEY, SLOT_SHIFT, TRAFFIC_SHIFT, held};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// The third word of a v4-mapped IPv6 address, `0000:ffff` in network byte order.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const SOL_TCP: i32 = 6;
/// `bpf_setsockopt` only: the initial congestion window, before any data is sent.
const TCP_BPF_IW: i32 = 1001;
/// `bpf_setsockopt` only: the congestion window's upper bound (also its slow-start threshold).
const TCP_BPF_SNDCWND_CLAMP: i32 = 1002;
/// The TCP header's PSH flag, as `skb_tcp_flags` holds it.
const TCPHDR_PSH: u32 = 0x08;
/// How far a socket's smoothed round trip may sit above its least before it counts as
/// queued (µs): the backlog or the hard bucket binds, and the budget stops raising shares.
const QUEUE_US: u32 = 50_000;
/// Caps of at least `FLOOR_FROM` bytes/s (2^26, 537 Mbit/s) pace no socket below the cap /
/// `FLOOR`. TCP sends what pacing lets out in packets of about 1 ms at the pace, at least 2
/// segments, each on its own pacing timer: 256 sockets sharing 1 Gbit/s sent 47 000 packets
/// a second of 1.7 KB (tbf passed 32 000 of 3.8 KB), and a 2-core host ran out of CPU at
/// 0.6-0.8 of the cap (tbf 0.93). Beyond `FLOOR` sockets sending at once the backlog behind
/// holds the excess, as for `--no-pacing`. Below `FLOOR_FROM` packets are few enough, and
/// 256 sockets at cap/16 overfilled a 10 Mbit/s ingress backlog (5 % retransmitted).
const FLOOR: u64 = 16;
const FLOOR_FROM: u64 = 1 << 26;

/// A socket's pace under a cap: its `share`, or the floor of a large cap.
#[inline(always)]
fn floored(cap: u64, share: u64) -> u64 {
    if cap >= FLOOR_FROM {
        share.max(cap / FLOOR)
    } else {
        share
    }
}

/// The rate that means "not paced" (`~0U` in the kernel).
const UNPACED: u32 = u32::MAX;
/// Callbacks a capped socket asks for: one before each packet it sends (header options,
/// none written) and its state changes.
const FLAGS: u32 = BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG;

#[map(name = "CAPS")]
static CAPS: HashMap<u32, Caps> = HashMap::pinned(MAX_CAPS + crate::LAYOUT_VARIANT, 0);

/// IPv6 container address (its 16 bytes) → [`Caps`], as `CAPS` for IPv4.
#[map(name = "CAPS6")]
static CAPS6: HashMap<[u8; 16], Caps> = HashMap::pinned(MAX_CAPS + crate::LAYOUT_VARIANT, 0);

/// Socket cookie → its [`Lease`] (for every paced socket, so that lifting the cap can unpace
/// it). Pinned like every map, so that a new build's program carries on from it.
#[map(name = "PACED_SOCKETS")]
static PACED_SOCKETS: LruHashMap<u64, Lease> = LruHashMap::pinned(65536 + crate::LAYOUT_VARIANT, 0);

/// IPv4 flows of paced senders into an ingress-capped container, as their packets carry them:
/// source address, destination address, source and destination port (network byte order).
/// The ingress hard cap lets them into its backlog on credit rather than dropping what TCP
/// sends unpaced: they wait there, and their pacing pays the debt back.
#[map(name = "PACED_FLOWS")]
pub static PACED_FLOWS: LruHashMap<[u32; 3], u8> = LruHashMap::pinned(65536, 0);

/// IPv6 flows, as `PACED_FLOWS`: the source address's four words, the destination's, then
/// the ports.
#[map(name = "PACED_FLOWS6")]
pub static PACED_FLOWS6: LruHashMap<[u32; 9], u8> = LruHashMap::pinned(65536, 0);

/// `struct bpf_sock_ops` callbacks on the cgroup v2 root.
#[sock_ops]
pub fn sock_pace(ctx: SockOpsContext) -> u32 {
    // The `variant-unverifiable` test build reads past the context: the verifier refuses it.
    #[cfg(feature = "variant-unverifiable")]
    // SAFETY: never runs; the kernel refuses to load this build's program.
    if unsafe { read_volatile((ctx.ops as *const u8).add(4000)) } != 0 {
        return 0;
    }
    match ctx.op() {
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => {
            // SAFETY: ctx.ops is the program's context; 0 when there is no packet (sizing
            // the MSS) or it carries no data (an ACK).
            let bytes = unsafe { read_volatile(&raw const (*ctx.ops).skb_len) };
            if bytes != 0 {
                sent(&ctx, u64::from(bytes));
            }
        }
        // RTT_CB: a socket paced by a build that refreshed rates on ACKs.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            established(&ctx, false);
        }
        BPF_SOCK_OPS_RTT_CB => established(&ctx, true),
        BPF_SOCK_OPS_STATE_CB => {
            let state = ctx.arg(1);
            // Everything it sent is acknowledged (FIN_WAIT2, TIME_WAIT), or it is gone.
            if state == BPF_TCP_FIN_WAIT2 || state == BPF_TCP_TIME_WAIT || state == BPF_TCP_CLOSE {
                let _ = closed(&ctx, state == BPF_TCP_CLOSE);
            }
        }
        _ => {}
    }
    1
}

/// What caps a socket: per direction (egress of its local address, ingress of its remote
/// one), the cap in bits/s and its lease ring's key, or `NO_KEY`.
struct Wanted {
    bits: [u64; 2],
    keys: [u64; 2],
}

#[inline(always)]
fn wanted(ctx: &SockOpsContext) -> Option<Wanted> {
    let (local, remote) = addresses(ctx)?;
    let (local_caps, remote_caps) = (local.caps(), remote.caps());
    let egress = local_caps.map_or(0, |c| c.egress_bits);
    let ingress = remote_caps.map_or(0, |c| c.ingress_bits);
    if egress == 0 && ingress == 0 {
        return None;
    }
    Some(Wanted {
        bits: [egress, ingress],
        keys: [
            if egress == 0 {
                NO_KEY
            } else {
                local.window_key(local_caps) << 1
            },
            if ingress == 0 {
                NO_KEY
            } else {
                remote.window_key(remote_caps) << 1 | 1
            },
        ],
    })
}

/// What the sockets under a cap of `bits`/s are paced to share, in payload bytes/s: 99.5 %
/// of the cap. The egress backlog and the tc bucket behind count wire bytes at 1.045×
/// (about 0.9995× of payload in full segments), so paced traffic stays just under them and
/// never waits there; what TCP sends unpaced (a connection's first ten segments) queues in
/// the backlog instead.
#[inline(always)]
fn paced_cap(bits: u64) -> u64 {
    bits / 8 * 995 / 1000
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: ctx.ops is the program's context.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

#[inline(always)]
fn now_slot() -> u64 {
    // SAFETY: reads the monotonic clock.
    unsafe { bpf_ktime_get_ns() >> SLOT_SHIFT }
}

/// A connection is up: asks for the per-packet and state callbacks of a capped one, puts it
/// in the backlogs' bulk class, and paces it at the share it will have once it sends.
/// `paced`: a build paced it already.
#[inline(always)]
fn established(ctx: &SockOpsContext, paced: bool) {
    let cookie = cookie(ctx);
    let Some(want) = wanted(ctx) else {
        unpace(ctx, cookie, paced);
        return;
    };
    let _ = ctx.set_cb_flags(((ctx.cb_flags() | FLAGS) & !BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
    // A priority the application chose stays.
    if priority(ctx) == Some(0) {
        set_priority(ctx, BULK_PRIORITY);
    }
    if want.keys[1] != NO_KEY {
        match flow(ctx) {
            Some(Flow::V4(f)) => {
                let _ = PACED_FLOWS.insert(&f, &1, 0);
            }
            Some(Flow::V6(f)) => {
                let _ = PACED_FLOWS6.insert(&f, &1, 0);
            }
            None => {}
        }
    }
    if PACED_SOCKETS.get_ptr(&cookie).is_none()
        && PACED_SOCKETS.insert(&cookie, &Lease::NONE, 0).is_err()
    {
        crate::insert_failed(InsertFailures::PacedSockets);
    }
    let slot = now_slot();
    let mut rate = u64::MAX;
    for i in 0..2 {
        if want.keys[i] != NO_KEY {
            let weight = shares::shares_active(want.keys[i], slot) + FULL;
            let cap = paced_cap(want.bits[i]);
            rate = rate.min(floored(cap, cap * FULL / weight));
        }
    }
    set_pacing(ctx, rate);
    // TCP paces none of a connection's first ten segments: the initial window goes out at
    // once and stands in the backlog, which the shares drain at 0.5 % of the cap. Cut to
    // what the share sends in 1 ms and one round trip (never raised): 256 connections
    // under 10 Mbit/s left 0.76 MB there, not 3 MB. Refused (harmlessly) once the socket
    // has sent data. One round trip, not the clamp's two: the handshake waited in the
    // egress backlog (`sock/handshake.rs`), so the round trip holds the queue, and a
    // window of two would grow it (by hand, 256 × 4 KiB one per request at 10 Mbit/s:
    // 0.90 % retransmitted with two, 0.63 % with one, means of 13 runs each).
    // Into a capped container the path is this host's: its round trip so far is time spent
    // in the ingress backlog's admission class, not a path to keep full, so the window
    // counts 1 ms alone (with the round trip, connections admitted late in a burst of
    // hundreds started with all 10 segments, a queue longer than the wait they measured).
    let window = if want.keys[1] == NO_KEY {
        window_rtts(ctx, rate, 1)
    } else {
        window(ctx, rate, 1000)
    };
    // SAFETY: ctx.ops is the program's context.
    if window < u64::from(unsafe { read_volatile(&raw const (*ctx.ops).snd_cwnd) }) {
        set_tcp(ctx, TCP_BPF_IW, window);
    }
}

/// A data packet of `bytes` is leaving: renews the socket's lease (taking one if it had
/// none) and paces it at its share.
#[inline(always)]
fn sent(ctx: &SockOpsContext, bytes: u64) {
    let cookie = cookie(ctx);
    let Some(want) = wanted(ctx) else {
        // Only paced sockets ask for this callback.
        unpace(ctx, cookie, true);
        return;
    };
    let lease = match PACED_SOCKETS.get_ptr_mut(&cookie) {
        Some(l) => l,
        None => {
            if PACED_SOCKETS.insert(&cookie, &Lease::NONE, 0).is_err() {
                crate::insert_failed(InsertFailures::PacedSockets);
            }
            let Some(l) = PACED_SOCKETS.get_ptr_mut(&cookie) else {
                return;
            };
            l
        }
    };
    // SAFETY: a map value, valid for the program run; a socket's callbacks run under its
    // lock, one at a time.
    let lease = unsafe { &mut *lease };
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let slot = now >> SLOT_SHIFT;
    // SAFETY: ctx.ops is the program's context; srtt_us is the smoothed RTT << 3, rtt_min
    // the least seen (µs, ~0 before any), packets_out what is in flight before this packet.
    let (srtt8, rtt_min, in_flight, flags) = unsafe {
        (
            read_volatile(&raw const (*ctx.ops).srtt_us),
            read_volatile(&raw const (*ctx.ops).rtt_min),
            read_volatile(&raw const (*ctx.ops).packets_out),
            read_volatile(&raw const (*ctx.ops).skb_tcp_flags),
        )
    };
    // What the ring's budget counts of this packet (`shares::budget`).
    let traffic = bytes.min(shares::QUEUED - 1)
        | if srtt8 / 8 > rtt_min.saturating_add(QUEUE_US) {
            shares::QUEUED
        } else {
            0
        }
        | if flags & TCPHDR_PSH == 0 {
            shares::BOUND
        } else {
            0
        };
    let packet = if in_flight > 0 { shares::IN_FLIGHT } else { 0 }
        | if flags & TCPHDR_PSH != 0 {
            shares::PUSHED
        } else {
            0
        };
    let rate = u64::from(pacing(ctx).unwrap_or(UNPACED));
    let weight = shares::shares_weigh(lease, now, bytes, rate, packet);
    lease.next = held(
        slot + shares::length(bytes, rate, u64::from(srtt8) * 125),
        weight,
    );
    let mut rate = u64::MAX;
    for i in 0..2 {
        let (old_key, key) = (lease.keys[i], want.keys[i]);
        // The leases are read back from the map value in each round rather than kept from
        // above: a value live across the loop doubles the states the verifier walks.
        // SAFETY: fields of the map value.
        let mut old = unsafe { read_volatile(&raw const lease.held) };
        if old_key != key {
            let _ = shares::shares_release(old_key, slot, old);
            old = 0;
        }
        if key != NO_KEY {
            // SAFETY: as above.
            let new = unsafe { read_volatile(&raw const lease.next) };
            // Pacing rates are 32 bits (at most ~4.3 GB/s): a cap taken at most 2^37 bytes/s
            // sets the same rates and keeps the budget's products below 2^64.
            let cap = paced_cap(want.bits[i]).min(1 << 37);
            let ring = shares::shares_renew(key, slot, old, new, cap << TRAFFIC_SHIFT | traffic);
            let (active, boost) = (ring & u64::from(u32::MAX), ring >> 32);
            rate = rate.min(floored(cap, cap * FULL / active.max(FULL) * boost / FULL));
        }
    }
    lease.held = lease.next;
    lease.keys = want.keys;
    // Read again rather than kept from above: a value live across the loop doubles the
    // states the verifier walks, past its limit of a million instructions.
    set_pacing(ctx, rate);
    let clamp = window_clamp(ctx, rate);
    if clamp != lease.clamp && set_clamp(ctx, clamp) {
        lease.clamp = clamp;
    }
}

/// The congestion window (segments) that lets a socket paced at `rate` bytes/s keep its
/// pace: what it sends in two round trips plus 1 ms, at least 2 segments.
///
/// TCP sends a window's worth as one TSO packet, then waits out the pacing gap; on a short
/// path it builds 64 KiB packets (its TSO autosizing counts round trips below 512 µs as
/// none), so a socket paced at 150 KB/s would burst 64 KiB every 400 ms, and a few dozen
/// such bursts meeting empty the tc bucket. The clamp keeps each burst to the window.
#[inline(always)]
fn window_clamp(ctx: &SockOpsContext, rate: u64) -> u64 {
    window_rtts(ctx, rate, 2)
}

/// What a socket paced at `rate` bytes/s sends in 1 ms and `rtts` smoothed round trips, in
/// segments, at least 2.
#[inline(always)]
fn window_rtts(ctx: &SockOpsContext, rate: u64, rtts: u64) -> u64 {
    // SAFETY: ctx.ops is the program's context; srtt_us is the smoothed RTT << 3.
    let srtt8 = unsafe { read_volatile(&raw const (*ctx.ops).srtt_us) };
    window(ctx, rate, 1000 + u64::from(srtt8) * rtts / 8)
}

/// What a socket paced at `rate` bytes/s sends in `span_us`, in segments, at least 2.
#[inline(always)]
fn window(ctx: &SockOpsContext, rate: u64, span_us: u64) -> u64 {
    // SAFETY: ctx.ops is the program's context.
    let mss = unsafe { read_volatile(&raw const (*ctx.ops).mss_cache) };
    (rate.min(1 << 40) * span_us / 1_000_000 / (u64::from(mss) | 1)).max(2)
}

/// Sets the socket's congestion window clamp (`i32::MAX`: none); true if the kernel took it.
#[inline(always)]
fn set_clamp(ctx: &SockOpsContext, segments: u64) -> bool {
    set_tcp(ctx, TCP_BPF_SNDCWND_CLAMP, segments)
}

/// Sets a `SOL_TCP` option the kernel takes as an int (`value` saturates at `i32::MAX`);
/// true if it took it.
#[inline(always)]
fn set_tcp(ctx: &SockOpsContext, option: i32, value: u64) -> bool {
    let mut value = i32::try_from(value).unwrap_or(i32::MAX);
    // SAFETY: optval points to a 4-byte stack value, optlen is that size.
    unsafe { bpf_setsockopt(ctx.ops.cast(), SOL_TCP, option, (&raw mut value).cast(), 4) == 0 }
}

/// The socket has nothing more to send: hands its share back; `gone`: forgets it. Returns
/// whether it had its window clamped.
#[inline(always)]
fn closed(ctx: &SockOpsContext, gone: bool) -> bool {
    let cookie = cookie(ctx);
    let mut clamped = false;
    if let Some(lease) = PACED_SOCKETS.get_ptr_mut(&cookie) {
        // SAFETY: as in `sent`.
        let lease = unsafe { &mut *lease };
        let slot = now_slot();
        for key in lease.keys {
            let _ = shares::shares_release(key, slot, lease.held);
        }
        lease.held = 0;
        clamped = lease.clamp != 0;
    }
    if gone {
        let _ = PACED_SOCKETS.remove(&cookie);
        match flow(ctx) {
            Some(Flow::V4(f)) => {
                let _ = PACED_FLOWS.remove(&f);
            }
            Some(Flow::V6(f)) => {
                let _ = PACED_FLOWS6.remove(&f);
            }
            None => {}
        }
    }
    clamped
}

/// Capped once, no longer: lifts the pacing, the window clamp and the bulk priority, stops
/// the callbacks and forgets the socket. `paced`: known to be paced, even without an entry
/// in `PACED_SOCKETS` (a build with another `Lease` layout paced it, and the map was built
/// anew); otherwise the sockets without one were never paced, and stop at the lookup.
#[inline(always)]
fn unpace(ctx: &SockOpsContext, cookie: u64, paced: bool) {
    if !paced && PACED_SOCKETS.get_ptr(&cookie).is_none() {
        return;
    }
    if closed(ctx, true) || paced {
        set_clamp(ctx, u64::MAX);
    }
    set_pacing(ctx, u64::MAX);
    if priority(ctx) == Some(BULK_PRIORITY) {
        set_priority(ctx, 0);
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !(FLAGS | BPF_SOCK_OPS_RTT_CB_FLAG)) as i32);
}

/// A socket's flow as its packets carry it: the key of [`PACED_FLOWS`] or [`PACED_FLOWS6`].
enum Flow {
    V4([u32; 3]),
    V6([u32; 9]),
}

/// The socket's flow as its packets carry it.
#[inline(always)]
fn flow(ctx: &SockOpsContext) -> Option<Flow> {
    let (local, remote) = addresses(ctx)?;
    // SAFETY: ctx.ops is the program's context. `local_port` is in host byte order,
    // `remote_port` holds the network-order port in its upper 16 bits.
    let (local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ctx.ops).local_port),
            read_volatile(&raw const (*ctx.ops).remote_port),
        )
    };
    let ports = u32::from((local_port as u16).to_be()) | (remote_port >> 16) << 16;
    match (local, remote) {
        (Addr::V4(l), Addr::V4(r)) => Some(Flow::V4([l, r, ports])),
        (Addr::V6(l), Addr::V6(r)) => Some(Flow::V6([
            l[0], l[1], l[2], l[3], r[0], r[1], r[2], r[3], ports,
        ])),
        _ => None,
    }
}

/// A socket's address, in network byte order.
#[derive(Clone, Copy)]
enum Addr {
    V4(u32),
    V6([u32; 4]),
}

impl Addr {
    /// The caps of a container with this address, if they are paced.
    #[inline(always)]
    fn caps(self) -> Option<&'static Caps> {
        // SAFETY: plain lookups; the values are read at once.
        let caps = match self {
            Self::V4(ip) => unsafe { CAPS.get(&ip) },
            // SAFETY: [u32; 4] and [u8; 16] have the same size; the bytes are the address.
            Self::V6(ip) => unsafe { CAPS6.get(&core::mem::transmute::<[u32; 4], [u8; 16]>(ip)) },
        };
        caps.filter(|c| c.paced())
    }

    /// Key of the address in [`WINDOWS`] (before the direction bit): its group's when its
    /// `caps` are a group's, so that every member's sockets share one cap.
    #[inline(always)]
    fn window_key(self, caps: Option<&Caps>) -> u64 {
        if let Some(group) = caps.map(Caps::group).filter(|g| *g != 0) {
            return window_key_group(group);
        }
        match self {
            Self::V4(ip) => window_key_v4(ip),
            Self::V6(a) => window_key_v6(a),
        }
    }
}

/// Local and remote addresses. Servers often listen on the IPv6 wildcard, so their IPv4
/// connections are IPv6 sockets with v4-mapped addresses (`::ffff:a.b.c.d`): those count as
/// IPv4.
///
/// The context is read with volatile loads in each arm, at each field's declared width:
/// otherwise LLVM merges the two arms' loads into one through a computed context pointer,
/// which the verifier rejects ("dereference of modified ctx ptr"), or widens them.
#[inline(always)]
fn addresses(ctx: &SockOpsContext) -> Option<(Addr, Addr)> {
    let ops = ctx.ops;
    // SAFETY: ops is the program's context; the fields are plain u32s.
    unsafe {
        match read_volatile(&raw const (*ops).family) {
            AF_INET => Some((
                Addr::V4(read_volatile(&raw const (*ops).local_ip4)),
                Addr::V4(read_volatile(&raw const (*ops).remote_ip4)),
            )),
            AF_INET6 => {
                let local = ip6(&raw const (*ops).local_ip6);
                let remote = ip6(&raw const (*ops).remote_ip6);
                let mapped = |a: [u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED;
                Some(if mapped(local) && mapped(remote) {
                    (Addr::V4(local[3]), Addr::V4(remote[3]))
                } else {
                    (Addr::V6(local), Addr::V6(remote))
                })
            }
            _ => None,
        }
    }
}

/// An IPv6 address field of `bpf_sock_ops`, one u32 at a time: the verifier allows only
/// 4-byte loads there, and a volatile read of the whole array became two 8-byte loads with
/// LLVM 23 ("invalid bpf_context access off=56 size=8").
///
/// SAFETY: `field` points into the program's context.
#[inline(always)]
unsafe fn ip6(field: *const [u32; 4]) -> [u32; 4] {
    let word = field.cast::<u32>();
    // SAFETY: the four words of the field.
    unsafe {
        [
            read_volatile(word),
            read_volatile(word.add(1)),
            read_volatile(word.add(2)),
            read_volatile(word.add(3)),
        ]
    }
}

/// The socket's `SO_MAX_PACING_RATE` (bytes per second).
#[inline(always)]
fn pacing(ctx: &SockOpsContext) -> Option<u32> {
    get_int(ctx, SO_MAX_PACING_RATE)
}

/// The socket's `SO_PRIORITY`: its packets' `skb->priority`.
#[inline(always)]
fn priority(ctx: &SockOpsContext) -> Option<u32> {
    get_int(ctx, SO_PRIORITY)
}

#[inline(always)]
fn set_priority(ctx: &SockOpsContext, priority: u32) {
    set_int(ctx, SO_PRIORITY, priority);
}

/// A 4-byte `SOL_SOCKET` option of the socket.
#[inline(always)]
fn get_int(ctx: &SockOpsContext, option: u32) -> Option<u32> {
    let mut current: u32 = 0;
    // SAFETY: optval points to a 4-byte stack value, optlen is that size (the kernel takes
    // exactly an int for these options).
    let read = unsafe {
        bpf_getsockopt(
            ctx.ops.cast(),
            SOL_SOCKET as i32,
            option as i32,
            (&raw mut current).cast(),
            4,
        )
    };
    (read == 0).then_some(current)
}

/// Sets `SO_MAX_PACING_RATE` to `rate` bytes per second (`u64::MAX`: unpaced; at least 1)
/// unless it already has that value.
#[inline(always)]
fn set_pacing(ctx: &SockOpsContext, rate: u64) {
    let rate = if rate == u64::MAX {
        UNPACED
    } else {
        u32::try_from(rate).unwrap_or(UNPACED - 1).max(1)
    };
    if pacing(ctx) == Some(rate) {
        return;
    }
    set_int(ctx, SO_MAX_PACING_RATE, rate);
}

/// Sets a 4-byte `SOL_SOCKET` option of the socket.
#[inline(always)]
fn set_int(ctx: &SockOpsContext, option: u32, value: u32) {
    let ops: *mut c_void = ctx.ops.cast();
    let mut value = value;
    // SAFETY: optval points to a 4-byte stack value, optlen is that size (the kernel takes
    // exactly an int for these options).
    let _ = unsafe {
        bpf_setsockopt(
            ops,
            SOL_SOCKET as i32,
            option as i32,
            (&raw mut value).cast(),
            4,
        )
    };
}
