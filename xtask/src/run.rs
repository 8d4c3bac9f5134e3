//! `cargo xtask run`: build and start dockops-bpf, optionally with demo containers.

use std::process::Command;

use anyhow::Context as _;

use crate::{docker::Engine, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Also start labelled demo containers making CPU, disk and network traffic; they are
    /// removed when dockops-bpf exits.
    #[arg(long)]
    demo: bool,
    /// Arguments for dockops-bpf (default: watch).
    #[arg(last = true)]
    args: Vec<String>,
}

const DEMO_LABEL: &str = "dockops.demo=1";

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(None)?;
    // Ctrl-C reaches dockops-bpf too, which exits cleanly; this process must outlive it to
    // remove the demo containers, so it only notes the signal.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    let demo = if args.demo {
        Some(Demo::start(&engine)?)
    } else {
        None
    };
    let mut cmd = if sh::is_root() {
        Command::new(crate::binary())
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("--preserve-env=DOCKER_HOST,RUST_LOG")
            .arg(crate::binary());
        sudo
    };
    cmd.env("DOCKER_HOST", &engine.host);
    if args.args.is_empty() {
        cmd.arg("watch");
    } else {
        cmd.args(&args.args);
    }
    let result = sh::run(&mut cmd);
    drop(demo);
    result
}

/// Demo containers, removed on drop.
struct Demo<'a> {
    engine: &'a Engine,
}

impl<'a> Demo<'a> {
    fn start(engine: &'a Engine) -> anyhow::Result<Self> {
        engine.ensure_test_image()?;
        let demo = Self { engine };
        let image = crate::docker::TEST_IMAGE;
        let run = |name: &str, script: &str| {
            sh::run(engine.docker().args([
                "run", "-d", "--rm", "--name", name, "--label", DEMO_LABEL, image, "sh", "-c",
                script,
            ]))
        };
        run(
            "demo-web",
            "dd if=/dev/urandom of=/www/blob bs=1M count=4 2>/dev/null; httpd -f -p 80 -h /www",
        )?;
        let ip = sh::output(engine.docker().args([
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}",
            "demo-web",
        ]))
        .unwrap_or_default();
        run(
            "demo-client",
            &format!(
                "while :; do wget -q -O /dev/null http://{}/blob; sleep 1; done",
                ip.trim()
            ),
        )?;
        run(
            "demo-cpu",
            "while :; do i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1; done",
        )?;
        run(
            "demo-disk",
            "while :; do dd if=/dev/zero of=/tmp/f bs=1M count=32 oflag=direct 2>/dev/null; rm /tmp/f; sleep 2; done",
        )?;
        Ok(demo)
    }
}

impl Drop for Demo<'_> {
    fn drop(&mut self) {
        let removed = self.engine.remove_labelled(DEMO_LABEL);
        if removed > 0 {
            eprintln!("demo: removed {removed} containers");
        }
    }
}
