//! Block IO per container, from the block layer's tracepoints: bios counted where they are
//! queued (a classic tracepoint), requests timed from start to completion (raw ones).
//!
//! cgroup v1's `blkio.throttle.*` counters stay at zero on current kernels unless a throttle
//! rule was ever set on the device, and v1 has no other per-cgroup IO accounting; counting
//! bios where they are submitted works the same on v1 and v2.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use dockops_common::{
    BlockCounters, BlockKey, InsertFailures, IoPending, Latency, LatencyKey, MAX_BLOCK_KEYS,
    MAX_PENDING_IO,
};

use crate::cgroup::{Watched, container_of_current};

#[map(name = "BLOCK_IO")]
static BLOCK_IO: PerCpuHashMap<BlockKey, BlockCounters> = PerCpuHashMap::pinned(MAX_BLOCK_KEYS, 0);

#[map(name = "BLOCK_PENDING")]
static BLOCK_PENDING: LruHashMap<u64, IoPending> = LruHashMap::pinned(MAX_PENDING_IO, 0);

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
/// Member offsets the request programs read, set by userspace from the kernel's BTF:
/// `struct request` `q` and `cmd_flags`, `struct request_queue` `disk`, `struct gendisk`
/// `major` and `first_minor` (the defaults are 6.18's).
#[unsafe(no_mangle)]
static RQ_QUEUE_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static RQ_CMD_FLAGS_OFFSET: u32 = 24;
#[unsafe(no_mangle)]
static QUEUE_DISK_OFFSET: u32 = 104;
#[unsafe(no_mangle)]
static DISK_MAJOR_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static DISK_FIRST_MINOR_OFFSET: u32 = 4;

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

/// `block_io_start(struct request *rq)` (6.5+; `block_rq_issue` before), a raw tracepoint,
/// fired where a request is made from bios, in the submitting task's context on 6.5+. Before
/// 6.5 a request dispatched by a kworker is not timed (its cgroup is no container's).
///
/// Raw tracepoints, as for the scheduler (see `sched`): a classic tracepoint program is
/// skipped whenever another classic one runs on the CPU, and a completion interrupt that
/// lands while `block_bio_queue` counts another bio there would go untimed; on a host busy
/// with IO that was up to one completion in ten. Requests are keyed by their address.
#[raw_tracepoint(tracepoint = "block_io_start")]
pub fn block_rq_start(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let Some(Watched { id: container, .. }) = container_of_current() else {
        // The address may still hold a request of a container whose completion was not
        // seen (it started before the completion program was attached): forget it, or this
        // request's completion would be counted for that container.
        let _ = BLOCK_PENDING.remove(&rq);
        return 0;
    };
    // SAFETY: reads of the kernel's request, at offsets its BTF gives.
    if unsafe { started(rq, container) }.is_none() {
        let _ = BLOCK_PENDING.remove(&rq);
    }
    0
}

unsafe fn started(rq: u64, container: u64) -> Option<()> {
    let flags: u32 = unsafe { read(rq, &RQ_CMD_FLAGS_OFFSET)? };
    // `REQ_OP_READ` and `REQ_OP_WRITE`; flushes, discards, zeroing and zone operations
    // move no data of the container's.
    let write = match flags & REQ_OP_MASK {
        0 => 0,
        1 => 1,
        _ => return None,
    };
    let queue: u64 = unsafe { read(rq, &RQ_QUEUE_OFFSET)? };
    let disk: u64 = unsafe { read(queue, &QUEUE_DISK_OFFSET)? };
    if disk == 0 {
        return None;
    }
    let major: u32 = unsafe { read(disk, &DISK_MAJOR_OFFSET)? };
    let minor: u32 = unsafe { read(disk, &DISK_FIRST_MINOR_OFFSET)? };
    let pending = IoPending {
        // SAFETY: no arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        container,
        write,
        // The kernel's `MKDEV`, as the tracepoints report devices.
        dev: major << 20 | (minor & 0xf_ffff),
    };
    // An LRU map: a request whose completion is never seen ages out.
    BLOCK_PENDING.insert(&rq, &pending, 0).ok()
}

/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` are the operation.
const REQ_OP_MASK: u32 = 0xff;

/// The `T` at `base` plus the offset in `global`.
#[inline(always)]
unsafe fn read<T>(base: u64, global: &'static u32) -> Option<T> {
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset(global) as u64) as *const T) }.ok()
}

/// `block_io_done(struct request *rq)` (6.5+; `block_rq_complete(rq, error, nr_bytes)`
/// before), often in interrupt context: the container comes from the start's record.
#[raw_tracepoint(tracepoint = "block_io_done")]
pub fn block_rq_done(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    // SAFETY: copied out before the entry is removed.
    let Some(pending) = (unsafe { BLOCK_PENDING.get(&rq) }).copied() else {
        return 0;
    };
    let _ = BLOCK_PENDING.remove(&rq);
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now <= pending.start_ns {
        return 0;
    }
    let ns = now - pending.start_ns;
    let key = LatencyKey {
        cgroup_id: pending.container,
        dev: pending.dev,
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
    0
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
