//! `dockops-bpf install-service`: the agent as a systemd service (deploy/dockops.service).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// The unit, as the repository keeps it.
pub const UNIT: &str = include_str!("../../../deploy/dockops.service");
/// Where the unit runs the binary from.
const BINARY: &str = "usr/local/bin/dockops-bpf";
const UNIT_PATH: &str = "etc/systemd/system/dockops.service";

#[derive(clap::Args)]
pub struct Args {
    /// Install under this directory instead of / (an image being built, a package): files
    /// only, systemd is not asked to do anything.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Install the files and enable the unit, but do not (re)start it.
    #[arg(long)]
    no_start: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let binary = args.root.join(BINARY);
    let unit = args.root.join(UNIT_PATH);
    let this = std::env::current_exe().context("finding this binary")?;
    if fs::canonicalize(&this).ok() != fs::canonicalize(&binary).ok() {
        // A copy renamed into place: the running agent keeps its old binary until restarted.
        replace(
            &binary,
            &fs::read(&this).context("reading this binary")?,
            0o755,
        )?;
        println!("installed {}", binary.display());
    }
    replace(&unit, UNIT.as_bytes(), 0o644)?;
    println!("installed {}", unit.display());
    if args.root != Path::new("/") {
        return Ok(());
    }
    if !Path::new("/run/systemd/system").exists() {
        println!(
            "systemd is not running on this host: start the agent another way, e.g. \
             `dockops-bpf watch --format none --metrics-addr 127.0.0.1:9101`"
        );
        return Ok(());
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "dockops.service"])?;
    if args.no_start {
        println!("enabled dockops.service; start it with `systemctl start dockops`");
    } else {
        // A restart adopts what the previous agent attached: no cap is lifted meanwhile.
        systemctl(&["restart", "dockops.service"])?;
        println!("dockops.service enabled and (re)started: `systemctl status dockops`");
    }
    Ok(())
}

/// Writes `path` whole (a temporary file renamed over it) with `mode`.
fn replace(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("dockops-new");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    anyhow::ensure!(
        status.success(),
        "systemctl {} failed: {status}",
        args.join(" ")
    );
    Ok(())
}
