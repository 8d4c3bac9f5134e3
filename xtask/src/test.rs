//! `cargo xtask test`: everything CI checks, the cgroup v2-only guest tier last. Every stage runs even when an earlier one failed
//! (except those that need the build), and every test binary runs (`--no-fail-fast`); the
//! failures are listed at the end.

use std::process::Command;

use anyhow::Context as _;

use crate::{docker::Engine, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Only the integration tests whose names contain this.
    filter: Option<String>,
    /// Skip fmt, clippy and unit tests.
    #[arg(long)]
    integration_only: bool,
    /// Skip the cgroup v2-only guest tier (`cargo xtask vm-test`), for quick local runs.
    #[arg(long)]
    no_vm: bool,
}

/// Packages with host-buildable code (the eBPF crate builds only for bpfel).
const HOST_PACKAGES: &[&str] = &[
    "dockops-common",
    "dockops-userspace",
    "xtask",
    "dockops-integration",
];

/// The integration test that loads every program, run before the others.
const PROGRAMS_TEST: &str = "programs";

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    let mut failed: Vec<String> = Vec::new();
    let mut stage = |name: &str, result: anyhow::Result<()>| {
        if let Err(error) = result {
            eprintln!("xtask test: {name} FAILED: {error:#}");
            failed.push(name.to_owned());
        }
    };
    let packages: Vec<String> = HOST_PACKAGES
        .iter()
        .flat_map(|p| ["--package".to_owned(), (*p).to_owned()])
        .collect();
    if !args.integration_only {
        stage(
            "fmt",
            sh::run(sh::cargo().args(["fmt", "--all", "--check"])),
        );
        stage(
            "clippy",
            sh::run(
                sh::cargo()
                    .args(["clippy", "--all-targets"])
                    .args(&packages)
                    .args(["--", "-D", "warnings"]),
            ),
        );
        stage(
            "unit tests",
            sh::run(sh::cargo().args([
                "test",
                "--no-fail-fast",
                "--package",
                "dockops-common",
                "--package",
                "dockops-userspace",
                "--package",
                "xtask",
            ])),
        );
    }
    if let Err(error) = crate::build_variants().and_then(|()| crate::build()) {
        stage("build", Err(error));
    } else {
        stage("integration tests", integration(args));
        if !args.no_vm {
            let vm = crate::vm::Args {
                filter: args.filter.clone(),
                timeout_minutes: crate::vm::TIMEOUT_MINUTES,
            };
            stage("cgroup v2 guest tier", crate::vm::run(&vm));
        }
    }
    if failed.is_empty() {
        eprintln!("xtask test: every stage passed");
        Ok(())
    } else {
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}

/// Every program loads first (a verifier rejection names itself there), then every other
/// test binary runs; the host is reset afterwards whatever happened.
fn integration(args: &Args) -> anyhow::Result<()> {
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    // Storage limits need btrfs (or overlay2 on a filesystem with project quotas, which
    // this project's kernel cannot mount: no CONFIG_QFMT_V2): a second, private engine.
    let btrfs = Engine::private_btrfs(&crate::workspace().join("target/dockerd-btrfs"))
        .context("starting the btrfs engine the storage tests need")?;
    btrfs.ensure_test_image()?;
    // The agent's image, run as a container by a test: from the binary under test.
    crate::image::import(&engine)?;
    let cargo_test = |selection: &[&str]| {
        let mut cmd = sh::cargo();
        cmd.args(["test", "--no-fail-fast", "--package", "dockops-integration"])
            .args(selection)
            .arg("--")
            .args(args.filter.as_deref())
            .args(["--test-threads=1"])
            .env("DOCKER_HOST", &engine.host)
            .env("DOCKOPS_BIN", crate::binary())
            .env("DOCKOPS_TEST_IMAGE", crate::docker::TEST_IMAGE)
            .env("DOCKOPS_AGENT_IMAGE", crate::image::AGENT_IMAGE)
            .env(
                "DOCKOPS_K8S_VALIDATE",
                crate::setup::kubernetes_validate_dir(),
            )
            .env("DOCKOPS_BTRFS_HOST", &btrfs.host);
        if let Some(pidfile) = engine.pidfile() {
            cmd.env("DOCKOPS_ENGINE_PIDFILE", pidfile);
        }
        for variant in crate::VARIANTS {
            let var = format!("DOCKOPS_BIN_{}", variant.to_uppercase().replace('-', "_"));
            cmd.env(var, crate::variant_binary(variant));
        }
        cmd
    };
    // What this kernel offers, for the log (the guest tier prints its own).
    let _ = sh::run(Command::new(crate::binary()).arg("probe"));
    let loads = if args.filter.is_none() {
        sh::run(&mut cargo_test(&["--test", PROGRAMS_TEST]))
    } else {
        Ok(())
    };
    let others = sh::run(&mut cargo_test(&[]));
    // Tests leave pins for the containers they removed; leave the host as it was.
    let cleanup = sh::run(
        Command::new(crate::binary())
            .args(["reset", "--all"])
            .env("DOCKER_HOST", &engine.host),
    );
    let failures: Vec<String> = [
        ("every program loads", loads),
        ("integration tests", others),
        ("reset afterwards", cleanup),
    ]
    .into_iter()
    .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e:#}")))
    .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failures.join("; "))
    }
}
