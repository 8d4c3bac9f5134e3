//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure.

use crate::{docker::Engine, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Only the integration tests whose names contain this.
    filter: Option<String>,
    /// Skip fmt, clippy and unit tests.
    #[arg(long)]
    integration_only: bool,
}

/// Packages with host-buildable code (the eBPF crate builds only for bpfel).
const HOST_PACKAGES: &[&str] = &[
    "dockops-common",
    "dockops-userspace",
    "xtask",
    "dockops-integration",
];

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    let packages: Vec<String> = HOST_PACKAGES
        .iter()
        .flat_map(|p| ["--package".to_owned(), (*p).to_owned()])
        .collect();
    if !args.integration_only {
        sh::run(sh::cargo().args(["fmt", "--all", "--check"]))?;
        sh::run(
            sh::cargo()
                .args(["clippy", "--all-targets"])
                .args(&packages)
                .args(["--", "-D", "warnings"]),
        )?;
        sh::run(sh::cargo().args([
            "test",
            "--package",
            "dockops-common",
            "--package",
            "dockops-userspace",
            "--package",
            "xtask",
        ]))?;
    }
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let mut cmd = sh::cargo();
    cmd.args(["test", "--package", "dockops-integration", "--"])
        .args(args.filter.as_deref())
        .args(["--test-threads=1"])
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKOPS_BIN", crate::binary())
        .env("DOCKOPS_TEST_IMAGE", crate::docker::TEST_IMAGE);
    let result = sh::run(&mut cmd);
    // Tests leave pins for the containers they removed; leave the host as it was.
    let reset = sh::run(
        std::process::Command::new(crate::binary())
            .arg("reset")
            .env("DOCKER_HOST", &engine.host),
    );
    result.and(reset)
}
