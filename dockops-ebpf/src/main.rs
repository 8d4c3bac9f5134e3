//! dockops eBPF programs, one module per hook family.
#![no_std]
#![no_main]

mod block;
mod cgroup;
mod sched;
mod skb;
mod sock;
mod tc;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use dockops_common::InsertFailures;

/// Inserts the programs could not make (a full map), by [`InsertFailures`] index (the
/// highest one + 1: index 3 is no longer used).
#[map(name = "INSERT_FAILURES")]
static INSERT_FAILURES: PerCpuArray<u64> =
    PerCpuArray::pinned(InsertFailures::SocketTraffic as u32 + 1, 0);

/// Counts a failed insert into `map` (this CPU's slot: no race).
#[inline(always)]
fn insert_failed(map: InsertFailures) {
    if let Some(count) = INSERT_FAILURES.get_ptr_mut(map as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program run.
        unsafe { *count += 1 };
    }
}

/// Extra entries in some maps (`CAPS`, `CAPS6`, `TRAFFIC`, `TC_CAPS`, `PACED_SOCKETS`) of the
/// `variant-layout` test build: a new layout, which an upgrade must rebuild and refill.
const LAYOUT_VARIANT: u32 = if cfg!(feature = "variant-layout") {
    1
} else {
    0
};

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
