//! Block IO per container, from the block layer's tracepoints.
//!
//! cgroup v1's `blkio.throttle.*` counters stay at zero on current kernels unless a throttle
//! rule was ever set on the device, and v1 has no other per-cgroup IO accounting; counting
//! bios where they are submitted works the same on v1 and v2.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use dockops_common::{
    BlockCounters, BlockKey, InsertFailures, IoKey, IoPending, Latency, LatencyKey, MAX_BLOCK_KEYS,
    MAX_PENDING_IO,
};

use crate::cgroup::{Watched, container_of_current};

#[map(name = "BLOCK_IO")]
static BLOCK_IO: PerCpuHashMap<BlockKey, BlockCounters> = PerCpuHashMap::pinned(MAX_BLOCK_KEYS, 0);

#[map(name = "BLOCK_PENDING")]
static BLOCK_PENDING: LruHashMap<IoKey, IoPending> = LruHashMap::pinned(MAX_PENDING_IO, 0);

#[map(name = "BLOCK_LATENCY")]
static BLOCK_LATENCY: PerCpuHashMap<LatencyKey, Latency> = PerCpuHashMap::pinned(MAX_BLOCK_KEYS, 0);

/// Field offsets in the tracepoint record. Userspace sets them at load time from
/// `/sys/kernel/tracing/events/block/block_bio_queue/format` (`set_global`); the values here
/// are those of 4.x–6.18: `dev_t dev` at 8, `unsigned int nr_sector` at 24, `char rwbs[]`
/// at 28 (8 bytes before 6.x, 10 since; only the first 8 are read).
#[unsafe(no_mangle)]
static BLOCK_DEV_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static BLOCK_NR_SECTOR_OFFSET: u32 = 24;
#[unsafe(no_mangle)]
static BLOCK_RWBS_OFFSET: u32 = 28;
/// The same for the request tracepoints: `block_io_start` (or `block_rq_issue`) and
/// `block_io_done` (or `block_rq_complete`); `sector_t sector` is 8 bytes.
#[unsafe(no_mangle)]
static START_DEV_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static START_SECTOR_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static START_RWBS_OFFSET: u32 = 34;
#[unsafe(no_mangle)]
static DONE_DEV_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
static DONE_SECTOR_OFFSET: u32 = 16;

/// A global set by userspace (volatile: the compiler must not fold the default in).
#[inline(always)]
fn offset(global: &'static u32) -> usize {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// `block:block_bio_queue`, fired in `submit_bio` in the submitting task's context, so the
/// current cgroup is the container's (or one below it). Writeback from kernel threads is
/// not attributed.
#[tracepoint(category = "block", name = "block_bio_queue")]
pub fn block_bio_acct(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, at the offsets its format gives.
    let _ = unsafe { try_block_bio_acct(&ctx) };
    0
}

unsafe fn try_block_bio_acct(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(Watched { id: cgroup_id, .. }) = container_of_current() else {
        return Ok(());
    };
    let dev: u32 = unsafe { ctx.read_at(offset(&BLOCK_DEV_OFFSET))? };
    let sectors: u32 = unsafe { ctx.read_at(offset(&BLOCK_NR_SECTOR_OFFSET))? };
    let rwbs: [u8; 8] = unsafe { ctx.read_at(offset(&BLOCK_RWBS_OFFSET))? };
    let Some(write) = direction(&rwbs) else {
        return Ok(());
    };
    let bytes = u64::from(sectors) * 512;
    let key = BlockKey {
        cgroup_id,
        dev,
        pad: 0,
    };
    if let Some(c) = BLOCK_IO.get_ptr_mut(&key) {
        // SAFETY: this CPU's value; per-CPU values are not shared.
        let c = unsafe { &mut *c };
        if write {
            c.write_bytes += bytes;
            c.writes += 1;
        } else {
            c.read_bytes += bytes;
            c.reads += 1;
        }
    } else {
        let first = if write {
            BlockCounters {
                write_bytes: bytes,
                writes: 1,
                ..BlockCounters::default()
            }
        } else {
            BlockCounters {
                read_bytes: bytes,
                reads: 1,
                ..BlockCounters::default()
            }
        };
        // From a program, a per-CPU update writes only this CPU's slot, so two CPUs racing
        // to create the entry both keep their first bio.
        if BLOCK_IO.insert(&key, &first, 0).is_err() {
            crate::insert_failed(InsertFailures::BlockIo);
        }
    }
    Ok(())
}

/// `block:block_io_start` (6.5+; `block_rq_issue` before), fired where a request is made
/// from bios, in the submitting task's context on 6.5+. Before 6.5 a request dispatched by
/// a kworker is not timed (its cgroup is no container's).
#[tracepoint(category = "block", name = "block_io_start")]
pub fn block_rq_start(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record, at the offsets its format gives.
    let _ = unsafe { try_block_rq_start(&ctx) };
    0
}

unsafe fn try_block_rq_start(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(Watched { id: container, .. }) = container_of_current() else {
        return Ok(());
    };
    let rwbs: [u8; 8] = unsafe { ctx.read_at(offset(&START_RWBS_OFFSET))? };
    let Some(write) = direction(&rwbs) else {
        return Ok(());
    };
    let key = IoKey {
        sector: unsafe { ctx.read_at(offset(&START_SECTOR_OFFSET))? },
        dev: unsafe { ctx.read_at(offset(&START_DEV_OFFSET))? },
        pad: 0,
    };
    let pending = IoPending {
        // SAFETY: no arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        container,
        write: u32::from(write),
        pad: 0,
    };
    // An LRU map: a request whose completion never matches (a merge changed its first
    // sector) ages out instead of filling the map.
    let _ = BLOCK_PENDING.insert(&key, &pending, 0);
    Ok(())
}

/// `block:block_io_done` (6.5+; `block_rq_complete` before), often in interrupt context:
/// the container comes from the start's record, matched by device and first sector.
#[tracepoint(category = "block", name = "block_io_done")]
pub fn block_rq_done(ctx: TracePointContext) -> u32 {
    // SAFETY: as for `block_rq_start`.
    let _ = unsafe { try_block_rq_done(&ctx) };
    0
}

unsafe fn try_block_rq_done(ctx: &TracePointContext) -> Result<(), i64> {
    let io = IoKey {
        sector: unsafe { ctx.read_at(offset(&DONE_SECTOR_OFFSET))? },
        dev: unsafe { ctx.read_at(offset(&DONE_DEV_OFFSET))? },
        pad: 0,
    };
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { BLOCK_PENDING.get(&io) }).copied() else {
        return Ok(());
    };
    let _ = BLOCK_PENDING.remove(&io);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now <= pending.start_ns {
        return Ok(());
    }
    let ns = now - pending.start_ns;
    let key = LatencyKey {
        cgroup_id: pending.container,
        dev: io.dev,
        write: pending.write,
    };
    if let Some(l) = BLOCK_LATENCY.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of a per-CPU map.
        unsafe { (*l).record(ns) };
    } else {
        let mut first = Latency::default();
        first.record(ns);
        if BLOCK_LATENCY.insert(&key, &first, 0).is_err() {
            crate::insert_failed(InsertFailures::BlockLatency);
        }
    }
    Ok(())
}

/// `Some(true)` for a write, `Some(false)` for a read, `None` for discards, secure erases,
/// flushes without data and anything else. rwbs is e.g. "WS", "RA", "FWS", "D", "FF".
#[inline(always)]
fn direction(rwbs: &[u8; 8]) -> Option<bool> {
    let mut i = 0;
    while i < rwbs.len() {
        match rwbs[i] {
            b'D' | b'E' | 0 => return None,
            b'W' => return Some(true),
            b'R' => return Some(false),
            _ => i += 1,
        }
    }
    None
}
