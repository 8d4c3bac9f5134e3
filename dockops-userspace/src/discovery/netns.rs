//! Host-side veths of a container, read through netlink inside its network namespace.
//!
//! `/sys/class/net` cannot be used: sysfs belongs to the mount namespace, so it lists the
//! host's interfaces even after entering the container's network namespace. Inside the
//! namespace, a veth's `IFLA_LINK` is its peer's ifindex in the peer's namespace: the host.

use std::{fs::File, io, thread};

use futures::TryStreamExt as _;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};

use super::HostInterface;

/// Host ifindex and name of every veth inside the network namespace of `pid`.
pub fn host_interfaces(pid: u32) -> io::Result<Vec<HostInterface>> {
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    // setns changes only the calling thread: a short-lived thread keeps the rest of the
    // process (and tokio's workers) in the host namespace. The netlink socket is created
    // inside the container's namespace and answers for it.
    let peers = thread::spawn(move || -> io::Result<Vec<u32>> {
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(veth_peers())
    })
    .join()
    .map_err(|_| io::Error::other("netns reader thread panicked"))??;

    let mut interfaces = Vec::with_capacity(peers.len());
    for ifindex in peers {
        // The peer index is in the host namespace, where this thread is.
        match nix::net::if_::if_indextoname(ifindex) {
            Ok(name) => interfaces.push(HostInterface {
                ifindex,
                name: name.to_string_lossy().into_owned(),
            }),
            Err(error) => tracing::debug!(pid, ifindex, %error, "peer not in the host namespace"),
        }
    }
    interfaces.sort();
    Ok(interfaces)
}

async fn veth_peers() -> io::Result<Vec<u32>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(links.iter().filter_map(veth_peer).collect())
}

/// The peer ifindex of a veth link message, `None` for any other kind of link.
fn veth_peer(link: &LinkMessage) -> Option<u32> {
    let is_veth = link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
    });
    let peer = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    });
    // Without IFLA_LINK_NETNSID the peer lives in the same namespace: not a host veth.
    let crosses = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
    peer.filter(|_| is_veth && crosses)
}
