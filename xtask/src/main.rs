//! Developer and operator tasks: `cargo xtask <setup|build|run|test>`.

mod bench;
mod docker;
mod image;
mod run;
mod setup;
mod sh;
mod test;
#[path = "../../dockops-ebpf/toolchain.rs"]
mod toolchain;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, build, run and test dockops")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; fast when done): the pinned
    /// nightly with rust-src and the pinned bpf-linker (dockops-ebpf/toolchain.rs), and on
    /// Debian/Ubuntu as root docker.io, busybox-static, iperf3, bpftool...; mount bpffs and
    /// tracefs when absent.
    Setup,
    /// Build `dockops-bpf` (release), the eBPF object embedded in it.
    Build,
    /// Set up, build, and run `dockops-bpf ARGS` as root (default: `watch`). Starts a Docker
    /// engine when none answers but dockerd is installed.
    Run(run::Args),
    /// Set up, then fmt check, clippy, unit tests, the integration tests against a real
    /// dockerd (the running one, or a private one under target/ that is stopped afterwards),
    /// and the cgroup v2-only guest tier (`vm-test`; `--no-vm` skips it).
    Test(test::Args),
    /// Build, then run the portability tests in a QEMU guest: Debian's 6.1 kernel, cgroup v2
    /// only, netlink attach, `sch_fq`. The guest is built once (about 2 minutes) and cached in
    /// ~/.cache/dockops/vm.
    VmTest(vm::Args),
    /// Benchmarks, side by side with their baselines; results go to docs/BENCHMARKS.md.
    Bench(bench::Args),
    /// The agent as a Docker image (dockops/agent), imported into the engine at `DOCKER_HOST`
    /// without a registry: the release binary and the libraries it links.
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => build(),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::VmTest(args) => crate::setup::run().and_then(|()| vm::run(&args)),
        Command::Bench(args) => bench::run(&args),
        Command::Image => image::run(),
    }
}

/// Builds the release binary.
fn build() -> anyhow::Result<()> {
    sh::run(sh::cargo().args(["build", "--release", "--package", "dockops-userspace"]))
}

/// eBPF object variants the upgrade tests switch between (dockops-userspace's features).
const VARIANTS: [&str; 3] = ["variant-code", "variant-layout", "variant-unverifiable"];

/// Where the binary built with `variant` is kept.
fn variant_binary(variant: &str) -> std::path::PathBuf {
    workspace()
        .join("target/variants")
        .join(variant)
        .join("dockops-bpf")
}

/// Builds the binary with each eBPF variant and copies it aside (cargo caches each feature
/// set, so this is fast after the first time). The default build must come after: the
/// variants overwrite target/release/dockops-bpf.
fn build_variants() -> anyhow::Result<()> {
    for variant in VARIANTS {
        sh::run(sh::cargo().args([
            "build",
            "--release",
            "--package",
            "dockops-userspace",
            "--bin",
            "dockops-bpf",
            "--features",
            variant,
        ]))?;
        let to = variant_binary(variant);
        std::fs::create_dir_all(to.parent().unwrap_or(&to))?;
        std::fs::copy(binary(), &to).map_err(|e| {
            anyhow::anyhow!("copying {} to {}: {e}", binary().display(), to.display())
        })?;
    }
    Ok(())
}

/// The workspace root (xtask's parent directory).
fn workspace() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn binary() -> std::path::PathBuf {
    workspace().join("target/release/dockops-bpf")
}
