//! Bandwidth caps for TCP, enforced by pacing the sender: one `sock_ops` program on the
//! cgroup v2 root sees every TCP socket on the host and sets `SO_MAX_PACING_RATE` on those
//! sent from a capped container (local address capped for egress) or to one (remote address
//! capped for ingress), IPv4 or IPv6. Pacing at the sender keeps queues empty and avoids
//! drops; on a same-host path (7–20 µs RTT) drop-based policing cannot steer TCP at all.
//!
//! A cap is shared by the sockets that were active recently (an RTT sample in the current or
//! previous ~134 ms window): idle connections, and thin ones (less than 16 KiB acknowledged in
//! all), do not take a share.

use core::{ffi::c_void, num::NonZeroU64, ptr::read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, SO_MAX_PACING_RATE, SOL_SOCKET,
    },
    helpers::{bpf_get_socket_cookie, bpf_getsockopt, bpf_ktime_get_ns, bpf_setsockopt},
    macros::{map, sock_ops},
    maps::{HashMap, LruHashMap},
    programs::SockOpsContext,
};
use dockops_common::{
    Caps, InsertFailures, MAX_CAPS, window_key_group, window_key_v4, window_key_v6,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// The third word of a v4-mapped IPv6 address, `0000:ffff` in network byte order.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// ~134 ms windows (2^27 ns).
const WINDOW_SHIFT: u32 = 27;
/// The rate that means "not paced" (`~0U` in the kernel).
const UNPACED: u32 = u32::MAX;

#[map(name = "CAPS")]
static CAPS: HashMap<u32, Caps> = HashMap::pinned(MAX_CAPS + crate::LAYOUT_VARIANT, 0);

/// IPv6 container address (its 16 bytes) → [`Caps`], as `CAPS` for IPv4.
#[map(name = "CAPS6")]
static CAPS6: HashMap<[u8; 16], Caps> = HashMap::pinned(MAX_CAPS + crate::LAYOUT_VARIANT, 0);

/// Socket cookie → the window in which it was last counted (`u64::MAX`: not yet). Pinned
/// like every map, so that a new build's program carries on from it.
#[map(name = "PACED_SOCKETS")]
static PACED_SOCKETS: LruHashMap<u64, u64> = LruHashMap::pinned(65536, 0);

/// A socket takes a share of a cap once this many of its bytes have been acknowledged: thin
/// connections (iperf3's control connection, requests, keep-alives) would otherwise halve a
/// busy flow's rate while they exchange a few messages. A bulk flow passes it in its first
/// round trips.
const BULK_BYTES: u64 = 16 << 10;

/// Active sockets per (address, direction): key = address << 1 | ingress. Userspace removes
/// the entries of addresses that are no longer capped.
#[map(name = "WINDOWS")]
static WINDOWS: HashMap<u64, Window> = HashMap::pinned(2 * MAX_CAPS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Window {
    epoch: u64,
    current: u64,
    previous: u64,
}

/// `struct bpf_sock_ops` callbacks on the cgroup v2 root.
#[sock_ops]
pub fn sock_pace(ctx: SockOpsContext) -> u32 {
    try_sock_pace(&ctx);
    1
}

#[inline(always)]
fn try_sock_pace(ctx: &SockOpsContext) {
    let op = ctx.op();
    if !(op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        || op == BPF_SOCK_OPS_RTT_CB)
    {
        return;
    }
    let Some((local, remote)) = addresses(ctx) else {
        return;
    };
    let (local_caps, remote_caps) = (local.caps(), remote.caps());
    let egress = local_caps.map_or(0, |c| c.egress_bits);
    let ingress = remote_caps.map_or(0, |c| c.ingress_bits);
    // SAFETY: ctx.ops is the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if egress == 0 && ingress == 0 {
        // Capped once, no longer: lift the pacing at the next ACK sample and stop watching.
        if op == BPF_SOCK_OPS_RTT_CB && PACED_SOCKETS.get_ptr(&cookie).is_some() {
            set_pacing(ctx, UNPACED);
            let _ = PACED_SOCKETS.remove(&cookie);
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 & !(BPF_SOCK_OPS_RTT_CB_FLAG as i32));
        }
        return;
    }
    if op != BPF_SOCK_OPS_RTT_CB {
        let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_RTT_CB_FLAG as i32);
    }
    // SAFETY: reads the monotonic clock.
    let epoch = unsafe { bpf_ktime_get_ns() } >> WINDOW_SHIFT;
    // SAFETY: ctx.ops is the program's context.
    let acked = unsafe { read_volatile(&raw const (*ctx.ops).bytes_acked) };
    let fresh = counts(cookie, epoch, acked);
    let mut rate = u64::MAX;
    if egress != 0 {
        let key = local.window_key(local_caps) << 1;
        rate = rate.min(egress / 8 / active(key, epoch, fresh));
    }
    if ingress != 0 {
        let key = remote.window_key(remote_caps) << 1 | 1;
        rate = rate.min(ingress / 8 / active(key, epoch, fresh));
    }
    set_pacing(ctx, u32::try_from(rate).unwrap_or(UNPACED - 1).max(1));
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

/// Whether the socket is counted now among the sockets sharing its caps: the first time in a
/// window that it calls back once it has had [`BULK_BYTES`] acknowledged. Remembers it as
/// paced either way (so that lifting the cap can unpace it).
#[inline(always)]
fn counts(cookie: u64, epoch: u64, acked: u64) -> bool {
    let bulk = acked >= BULK_BYTES;
    match PACED_SOCKETS.get_ptr_mut(&cookie) {
        // SAFETY: a map value, valid for the program run.
        Some(last) => {
            let last = unsafe { &mut *last };
            let fresh = bulk && *last != epoch;
            if fresh {
                *last = epoch;
            }
            fresh
        }
        None => {
            if PACED_SOCKETS
                .insert(&cookie, &(if bulk { epoch } else { u64::MAX }), 0)
                .is_err()
            {
                crate::insert_failed(InsertFailures::PacedSockets);
            }
            bulk
        }
    }
}

/// Sockets active in this or the previous window for `key` (at least 1), counting this one if
/// `fresh`.
/// Updates race across CPUs (a count may be off by one for one window): accepted, the next
/// RTT sample corrects the rate.
#[inline(always)]
fn active(key: u64, epoch: u64, fresh: bool) -> NonZeroU64 {
    let count = match WINDOWS.get_ptr_mut(&key) {
        Some(w) => {
            // SAFETY: a map value, valid for the program run.
            let w = unsafe { &mut *w };
            if w.epoch != epoch {
                w.previous = if w.epoch + 1 == epoch { w.current } else { 0 };
                w.epoch = epoch;
                w.current = 0;
            }
            if fresh {
                w.current += 1;
            }
            w.current.max(w.previous)
        }
        None => {
            let window = Window {
                epoch,
                current: u64::from(fresh),
                previous: 0,
            };
            if WINDOWS.insert(&key, &window, 0).is_err() {
                crate::insert_failed(InsertFailures::Windows);
            }
            1
        }
    };
    NonZeroU64::new(count).unwrap_or(NonZeroU64::MIN)
}

/// Sets `SO_MAX_PACING_RATE` (bytes per second) unless it already has that value.
#[inline(always)]
fn set_pacing(ctx: &SockOpsContext, rate: u32) {
    let ops: *mut c_void = ctx.ops.cast();
    let mut current: u32 = 0;
    // SAFETY: optval points to a 4-byte stack value, optlen is that size (the kernel takes
    // exactly an int for this option).
    let read = unsafe {
        bpf_getsockopt(
            ops,
            SOL_SOCKET as i32,
            SO_MAX_PACING_RATE as i32,
            (&raw mut current).cast(),
            4,
        )
    };
    if read == 0 && current == rate {
        return;
    }
    let mut value = rate;
    // SAFETY: as above.
    let _ = unsafe {
        bpf_setsockopt(
            ops,
            SOL_SOCKET as i32,
            SO_MAX_PACING_RATE as i32,
            (&raw mut value).cast(),
            4,
        )
    };
}
