//! A TCP connection's initial window passes an empty bucket on credit.
//!
//! TCP does not pace a connection's first 10 segments: 256 clients connecting at once get
//! 256 × 14.5 KB from a server at line rate, which no pacing can spread and a bucket of a
//! few hundred ms can only drop (each drop a retransmission, often a timeout). The hook
//! remembers connections from their SYN or SYN-ACK in the capped direction; while the bucket
//! is empty, their first `IW_BYTES` pass on credit, up to a burst and a second of the rate
//! in debt (small packets, SYN-ACKs among them, may go a second deeper: credit for windows
//! must not stop new connections).
//! The pacing leaves room for the bytes it cannot pace (`sock/shares.rs`), so paced senders
//! pay the debt back; other senders' packets wait for the refills, as after any credit.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns, macros::map, maps::LruHashMap, programs::TcContext,
};

use crate::InsertFailures;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
/// Ten full segments on the wire.
const IW_BYTES: u64 = 10 * 1514;
/// How long after its SYN a connection's initial window is on credit.
const IW_NS: u64 = 1_000_000_000;

/// A connection's credit left, bytes, until a time (monotonic coarse ns).
#[repr(C)]
#[derive(Clone, Copy)]
struct Credit {
    until_ns: u64,
    bytes: u64,
}

/// (hook key, folded TCP 4-tuple) → the connection's initial-window credit.
#[map(name = "IW_FLOWS")]
static IW_FLOWS: LruHashMap<[u64; 2], Credit> = LruHashMap::pinned(65536, 0);

/// Remembers the connection of a SYN or SYN-ACK crossing a capped hook.
#[inline(always)]
pub fn track(ctx: &TcContext, hook: u64) {
    let Some((tuple, flags)) = tcp(ctx) else {
        return;
    };
    if flags & TCP_SYN == 0 {
        return;
    }
    let credit = Credit {
        // SAFETY: reads the coarse monotonic clock.
        until_ns: unsafe { bpf_ktime_get_coarse_ns() } + IW_NS,
        bytes: IW_BYTES,
    };
    if IW_FLOWS.insert(&[hook, tuple], &credit, 0).is_err() {
        crate::insert_failed(InsertFailures::IwFlows);
    }
}

/// Whether a packet of `bytes` meeting an empty bucket (`bucket`: its key) passes on its
/// connection's initial-window credit; takes the credit and the debt if so.
#[inline(always)]
pub fn credit(ctx: &TcContext, hook: u64, bucket: u64, bytes: u64) -> bool {
    let Some((tuple, _)) = tcp(ctx) else {
        return false;
    };
    let Some(credit) = IW_FLOWS.get_ptr_mut(&[hook, tuple]) else {
        return false;
    };
    // SAFETY: a map value, valid for the program run; a race with another CPU on the same
    // connection (rare: one sender) at worst grants one packet twice.
    let credit = unsafe { &mut *credit };
    // SAFETY: reads the coarse monotonic clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now > credit.until_ns || credit.bytes < bytes || !super::owe(bucket, bytes, 1) {
        return false;
    }
    credit.bytes -= bytes;
    true
}

/// The packet's TCP 4-tuple folded to 64 bits and its TCP flags, for an IPv4 or IPv6 frame
/// (IPv6 extension headers are not walked).
#[inline(always)]
fn tcp(ctx: &TcContext) -> Option<(u64, u8)> {
    let (addresses, l4) = match u16::from_be(ctx.load::<u16>(12).ok()?) {
        ETH_P_IP => {
            let protocol: u8 = ctx.load(23).ok()?;
            if protocol != IPPROTO_TCP {
                return None;
            }
            let ihl: u8 = ctx.load(14).ok()?;
            let src: u32 = ctx.load(26).ok()?;
            let dst: u32 = ctx.load(30).ok()?;
            (
                u64::from(src) << 32 | u64::from(dst),
                14 + usize::from(ihl & 0xf) * 4,
            )
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(20).ok()?;
            if next != IPPROTO_TCP {
                return None;
            }
            let mut fold = 0u64;
            let mut offset = 22;
            while offset < 54 {
                fold = fold.rotate_left(17) ^ ctx.load::<u64>(offset).ok()?;
                offset += 8;
            }
            (fold, 54)
        }
        _ => return None,
    };
    let ports: u32 = ctx.load(l4).ok()?;
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    Some((addresses.rotate_left(7) ^ u64::from(ports), flags))
}
