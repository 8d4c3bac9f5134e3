//! `dockops-bpf reset`: remove all dockops kernel state.

use dockops::capabilities::Capabilities;

pub fn run() -> anyhow::Result<()> {
    Capabilities::probe(None)?;
    let removed = dockops::datapath::reset()?;
    if removed.is_empty() {
        println!(
            "nothing to remove: no dockops state under {}",
            dockops::datapath::pins::ROOT
        );
    }
    for line in removed {
        println!("removed {line}");
    }
    Ok(())
}
