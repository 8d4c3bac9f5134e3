//! The backlog of an egress cap: a queue at the egress bucket's rate inside the capped
//! container's own network namespace, on the veth peer of each of its host veths.
//!
//! Pacing (`sock.rs` in the eBPF crate) cannot reach a TCP connection's first ten segments,
//! nor UDP. A few hundred connections opening together send megabytes at line rate, and a
//! bucket on the host side can only drop them: half the segments retransmitted, a second's
//! timeout each. A queue in the sender's own namespace holds them instead, and TCP's
//! small-queue limit keeps each socket to a couple of packets in it, so senders wait rather
//! than lose. Behind exact pacing it stays empty (pacing sends 0.995 of the cap in payload, the
//! bucket and the backlog pass 1.045 of it in wire bytes), so long flows never wait in it.
//!
//! It is a refinement: when it cannot be set (no HTB, a root qdisc someone else put there,
//! the container is exiting), the cap holds as before, by the bucket alone, with a warning.

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt as _,
    thread,
};

use nix::sched::{CloneFlags, setns};

use dockops_common::Caps;

use super::queue::{self, Discipline, QueueError};
use crate::discovery::{Container, HostInterface};

/// Gives each host veth of `container` the backlog its egress cap needs (none without one).
/// Failures are warned about: the bucket holds the cap without it.
pub(super) fn apply(container: &Container, caps: Caps) {
    let rate = (caps.egress_bits != 0).then(|| super::tc_caps::wire_rate(caps.egress_bits, caps));
    for iface in container.interfaces.iter().flatten() {
        if let Err(error) = set(container.pid, iface, rate) {
            tracing::warn!(
                container = %container.name,
                interface = %iface.name,
                "egress backlog not {}: {error}; the cap holds by the host-side bucket alone, \
                 dropping what pacing lets through",
                if rate.is_some() { "set" } else { "removed" },
            );
        }
    }
}

/// Puts the backlog at `rate_bytes` per second on the peer of `host` in the namespace of
/// `pid`, or (`None`) takes it away. Idempotent.
pub(super) fn set(pid: u32, host: &HostInterface, rate_bytes: Option<u64>) -> io::Result<()> {
    let peer = peer_ifindex(&host.name)?;
    in_namespace(pid, move || match rate_bytes {
        Some(rate_bytes) => queue::set(peer, Discipline::Backlog { rate_bytes }),
        None => queue::remove(peer).map(|_| ()),
    })
}

/// Removes every backlog from every network namespace that has a process (`reset`, which
/// needs no Docker): one line per backlog removed, one error per namespace that failed.
pub(super) fn remove_everywhere() -> Vec<Result<String, String>> {
    let own = fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino());
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    for pid in pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()) {
        // Processes come and go during the scan: skip those gone.
        let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if Some(meta.ino()) == own || !seen.insert(meta.ino()) {
            continue;
        }
        let removed = in_namespace(pid, || {
            let mut removed = Vec::new();
            for (ifindex, d) in queue::interfaces()? {
                if matches!(d, Discipline::Backlog { .. }) && queue::remove(ifindex)? {
                    removed.push(ifindex);
                }
            }
            Ok(removed)
        });
        match removed {
            Ok(list) => out.extend(list.into_iter().map(|ifindex| {
                Ok(format!(
                    "interface {ifindex} in the namespace of pid {pid}: egress backlog \
                     (htb qdisc) removed"
                ))
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.push(Err(format!("network namespace of pid {pid}: {e}"))),
        }
    }
    out
}

/// The peer's ifindex in its own namespace, as the host veth's `iflink` gives it.
fn peer_ifindex(host: &str) -> io::Result<u32> {
    let text = fs::read_to_string(format!("/sys/class/net/{host}/iflink"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{host}: unreadable iflink {text:?}")))
}

/// Runs `f` on a short-lived thread inside the network namespace of `pid` (setns changes
/// only the calling thread; netlink sockets made there answer for that namespace).
fn in_namespace<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> io::Result<T> {
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    thread::spawn(move || {
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f().map_err(|e| match e {
            QueueError::Netlink(e) => e,
            other => io::Error::other(other),
        })
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}
