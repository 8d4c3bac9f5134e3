//! `dockops-bpf reset`: everything dockops put in the kernel, removed.

use std::fs;

use aya::programs::links::PinnedLink;

use super::{
    DatapathError, attach, bpffs,
    pins::{self, Layout, PinName},
    queue, read_dir_names, remove_dir, scan,
};

/// Removes everything dockops attached or pinned: attachments (and the clsact qdiscs it
/// created), programs, maps, and the directory. Needs neither Docker nor the object.
pub fn reset() -> Result<Vec<String>, DatapathError> {
    let layout = Layout::default();
    if !layout.root().exists() {
        return Ok(Vec::new());
    }
    let _lock = bpffs::lock()?;
    let mut removed = Vec::new();
    for ifindex in queue::interfaces()? {
        if queue::remove(ifindex)? {
            removed.push(format!(
                "interface {ifindex}: ingress queue (htb qdisc) removed"
            ));
        }
    }
    for (id, pins) in scan(&layout)? {
        let dir = layout.container(&id);
        for pin in pins {
            attach::detach(&dir.join(pin.to_string()), pin)?;
            removed.push(format!(
                "{} {}",
                dir.join(pin.to_string()).display(),
                describe(pin)
            ));
        }
    }
    for name in read_dir_names(&layout.global())? {
        let path = layout.global().join(&name);
        let link = PinnedLink::from_pin(&path).map_err(|source| DatapathError::Link {
            path: path.clone(),
            source,
        })?;
        drop(link.unpin().map_err(|source| DatapathError::Io {
            path: path.clone(),
            source,
        })?);
        removed.push(format!("{} (link detached)", path.display()));
    }
    for marker in read_dir_names(layout.root())?
        .iter()
        .filter(|n| n.starts_with(pins::BUILD_PREFIX))
    {
        remove_dir(&layout.root().join(marker))?;
    }
    for dir in [
        layout.global(),
        layout.links(),
        layout.progs(),
        layout.maps(),
    ] {
        for name in read_dir_names(&dir)? {
            let path = dir.join(&name);
            let result = if path.is_dir() {
                // Only container directories remain under links/, now empty or foreign.
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(|source| DatapathError::Io {
                path: path.clone(),
                source,
            })?;
            removed.push(path.display().to_string());
        }
        remove_dir(&dir)?;
    }
    remove_dir(layout.root())?;
    Ok(removed)
}

fn describe(pin: PinName) -> &'static str {
    match pin.kind {
        pins::AttachKind::Tcx => "(tcx link detached)",
        pins::AttachKind::Netlink {
            created_clsact: false,
        } => "(tc filter removed)",
        pins::AttachKind::Netlink {
            created_clsact: true,
        } => "(tc filter and clsact qdisc removed)",
    }
}
