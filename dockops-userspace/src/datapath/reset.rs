//! `dockops-bpf reset`: everything dockops put in the kernel, removed.

use std::fs;

use aya::programs::links::PinnedLink;

use super::{
    DatapathError, attach, bpffs, chain,
    pins::{self, Layout, PinName},
    queue, read_dir_names, remove_dir, scan,
};

/// What a reset removed, and what it could not (it carries on past each failure).
#[derive(Debug, Default)]
pub struct Cleared {
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

impl Cleared {
    fn record(&mut self, result: Result<String, DatapathError>) {
        match result {
            Ok(line) => self.removed.push(line),
            Err(error) => self.failed.push(chain(&error)),
        }
    }
}

/// Removes everything dockops attached or pinned: attachments (and the clsact qdiscs it
/// created), queues, programs, maps, and the directory. Needs neither Docker nor the object.
/// Fails only when the lock cannot be taken; each other failure is recorded and skipped.
pub fn reset() -> Result<Cleared, DatapathError> {
    let layout = Layout::default();
    let mut out = Cleared::default();
    if !layout.root().exists() {
        return Ok(out);
    }
    let _lock = bpffs::lock()?;
    match queue::interfaces() {
        Ok(queues) => {
            for (ifindex, discipline) in queues {
                let what = match discipline {
                    queue::Discipline::Queue { .. } => "ingress queue (htb qdisc)",
                    queue::Discipline::Fq => "EDT ingress queue (fq qdisc)",
                    queue::Discipline::Backlog { .. } => "ingress backlog (htb qdisc)",
                };
                out.record(
                    queue::remove(ifindex)
                        .map_err(Into::into)
                        .map(|_| format!("interface {ifindex}: {what} removed")),
                );
            }
        }
        Err(error) => out.record(Err(error.into())),
    }
    for line in super::backlog::remove_everywhere() {
        match line {
            Ok(line) => out.removed.push(line),
            Err(error) => out.failed.push(error),
        }
    }
    match scan(&layout) {
        Ok(containers) => {
            for (id, pins) in containers {
                let dir = layout.container(&id);
                for pin in pins {
                    let path = dir.join(pin.to_string());
                    out.record(
                        attach::detach(&path, pin)
                            .map(|()| format!("{} {}", path.display(), describe(pin))),
                    );
                }
            }
        }
        Err(error) => out.record(Err(error)),
    }
    for name in read_dir_names(&layout.global()).unwrap_or_default() {
        let path = layout.global().join(&name);
        out.record(
            PinnedLink::from_pin(&path)
                .map_err(|source| DatapathError::Link {
                    path: path.clone(),
                    source,
                })
                .and_then(|link| {
                    link.unpin().map_err(|source| DatapathError::Io {
                        path: path.clone(),
                        source,
                    })
                })
                .map(|_| format!("{} (link detached)", path.display())),
        );
    }
    for marker in read_dir_names(layout.root())
        .unwrap_or_default()
        .iter()
        .filter(|n| n.starts_with(pins::BUILD_PREFIX))
    {
        if let Err(error) = remove_dir(&layout.root().join(marker)) {
            out.record(Err(error));
        }
    }
    for dir in [
        layout.global(),
        layout.links(),
        layout.progs(),
        layout.maps(),
        // Left only by a process killed during an upgrade's trial load.
        layout.probe(),
    ] {
        for name in read_dir_names(&dir).unwrap_or_default() {
            let path = dir.join(&name);
            let result = if path.is_dir() {
                // Only container directories remain under links/, now empty or foreign.
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            out.record(
                result
                    .map(|()| path.display().to_string())
                    .map_err(|source| DatapathError::Io { path, source }),
            );
        }
        if let Err(error) = remove_dir(&dir) {
            out.record(Err(error));
        }
    }
    if let Err(error) = remove_dir(layout.root()) {
        out.record(Err(error));
    }
    Ok(out)
}

fn describe(pin: PinName) -> &'static str {
    match pin.kind {
        pins::AttachKind::Tcx => "(tcx link detached)",
        pins::AttachKind::Netlink {
            created_clsact: false,
            ..
        } => "(tc filter removed)",
        pins::AttachKind::Netlink {
            created_clsact: true,
            ..
        } => "(tc filter and clsact qdisc removed)",
    }
}
