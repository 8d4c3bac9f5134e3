//! Builds the eBPF object with the pinned nightly (aya-build) so it can be embedded in the
//! binary.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

#[path = "../dockops-ebpf/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // aya-build watches the eBPF crate; the shared types shape its maps too.
    let common = packages
        .iter()
        .find(|p| p.name.as_str() == "dockops-common")
        .ok_or_else(|| anyhow!("dockops-common package not found"))?;
    if let Some(dir) = common.manifest_path.parent() {
        println!("cargo:rerun-if-changed={dir}");
    }
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "dockops-ebpf")
        .ok_or_else(|| anyhow!("dockops-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    use_pinned_linker()?;
    // This package's `variant-*` features select the eBPF object's (upgrade tests).
    let features: Vec<&str> = ["variant-code", "variant-layout", "variant-unverifiable"]
        .into_iter()
        .filter(|f| {
            let var = format!("CARGO_FEATURE_{}", f.to_uppercase().replace('-', "_"));
            std::env::var_os(var).is_some()
        })
        .collect();
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            no_default_features: false,
            features: &features,
        }],
        Toolchain::Custom(toolchain::NIGHTLY),
    )
}

/// rustc finds `bpf-linker` on PATH: the pinned one goes first. Without it (setup not run)
/// the build goes on with whatever PATH has, and says so.
fn use_pinned_linker() -> anyhow::Result<()> {
    let bin = toolchain::linker_root(&toolchain::home()).join("bin");
    if !bin.join("bpf-linker").exists() {
        println!(
            "cargo:warning=pinned bpf-linker missing at {}: using the one on PATH \
             (cargo xtask setup installs the pinned one)",
            bin.display()
        );
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(bin).chain(std::env::split_paths(&path));
    let joined: std::ffi::OsString = std::env::join_paths(paths.collect::<Vec<PathBuf>>())?;
    // SAFETY: the build script is single-threaded here; aya-build's cargo inherits PATH.
    unsafe { std::env::set_var("PATH", joined) };
    Ok(())
}
