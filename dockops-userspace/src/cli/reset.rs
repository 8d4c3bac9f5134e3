//! `dockops-bpf reset`: remove all dockops kernel state (and with `--all`, what was asked).

use dockops::{capabilities::Capabilities, state::Store};

#[derive(clap::Args)]
pub struct Args {
    /// Also forget the caps recorded in the state file, which the next command would
    /// otherwise apply again (as after a reboot).
    #[arg(long)]
    all: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    Capabilities::probe(None)?;
    let cleared = dockops::datapath::reset()?;
    let store = Store::default();
    let mut failed = cleared.failed;
    let mut removed = cleared.removed;
    let kept = if args.all {
        match store.remove() {
            Ok(true) => removed.push(store.path().display().to_string()),
            Ok(false) => {}
            Err(error) => failed.push(format!("{error:#}")),
        }
        0
    } else {
        store.load().map_or(0, |desired| desired.caps.len())
    };
    if removed.is_empty() && failed.is_empty() {
        println!(
            "nothing to remove: no dockops state under {}",
            dockops::datapath::pins::ROOT
        );
    }
    for line in &removed {
        println!("removed {line}");
    }
    if kept > 0 {
        println!(
            "kept the caps of {kept} container(s) in {}: the next command applies them again \
             (reset --all forgets them)",
            store.path().display()
        );
    }
    for error in &failed {
        eprintln!("error: {error}");
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} removals failed (see above); the rest is gone",
            failed.len(),
            failed.len() + removed.len()
        );
    }
    Ok(())
}
