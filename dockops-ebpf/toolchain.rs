//! The one pin of the toolchain that builds the eBPF object. `cargo xtask setup` installs
//! exactly this (and never touches a shared `nightly`), `dockops-userspace/build.rs` builds
//! the object with it, `dockops-ebpf/build.rs` watches its linker. How to move the pin:
//! docs/OPERATIONS.md, "Moving the eBPF toolchain".
//!
//! Shared by path (`#[path]` modules), not as a crate: build scripts and xtask need it before
//! anything else builds.

use std::path::{Path, PathBuf};

/// The dated nightly (`rustup run` name) that compiles the eBPF crate with `-Z build-std`.
pub const NIGHTLY: &str = "nightly-2026-10-29";
/// bpf-linker release, built against the LLVM that [`NIGHTLY`] ships.
pub const BPF_LINKER: &str = "0.13.0";
/// Major version of that LLVM (`rustc +NIGHTLY -vV`), the bpf-linker feature `llvm-N`.
pub const LLVM_MAJOR: u32 = 23;

/// Where setup installs this pin's bpf-linker (`bin/bpf-linker`) and the LLVM prefix it is
/// linked against (`llvm/lib`, kept: the linker's RUNPATH points there).
pub fn linker_root(home: &Path) -> PathBuf {
    home.join(".local/share/dockops").join(format!(
        "bpf-linker-{BPF_LINKER}-llvm{LLVM_MAJOR}-{NIGHTLY}"
    ))
}

/// `$HOME`, or root's home when unset (build scripts and CI run as root).
pub fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}
