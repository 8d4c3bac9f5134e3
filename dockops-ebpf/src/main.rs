//! dockops eBPF programs, one module per hook family.
#![no_std]
#![no_main]

mod block;
mod sock;
mod tc;

/// Extra entries in some maps (`CAPS`, `CAPS6`, `TRAFFIC`, `TC_CAPS`) of the
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
