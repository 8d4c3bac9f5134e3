//! Builds the eBPF object with nightly (aya-build) so it can be embedded in the binary.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

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
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            no_default_features: false,
            features: &[],
        }],
        Toolchain::default(),
    )
}
