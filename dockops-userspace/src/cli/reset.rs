//! `dockops-bpf reset`: remove all dockops kernel state.

use dockops::capabilities::Capabilities;

pub fn run() -> anyhow::Result<()> {
    Capabilities::probe(None)?;
    let cleared = dockops::datapath::reset()?;
    if cleared.removed.is_empty() && cleared.failed.is_empty() {
        println!(
            "nothing to remove: no dockops state under {}",
            dockops::datapath::pins::ROOT
        );
    }
    for line in &cleared.removed {
        println!("removed {line}");
    }
    for error in &cleared.failed {
        eprintln!("error: {error}");
    }
    if !cleared.failed.is_empty() {
        anyhow::bail!(
            "{} of {} removals failed (see above); the rest is gone",
            cleared.failed.len(),
            cleared.failed.len() + cleared.removed.len()
        );
    }
    Ok(())
}
