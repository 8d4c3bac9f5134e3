//! Host-side veths of a container, read through netlink inside its network namespace.
//!
//! `/sys/class/net` cannot be used: sysfs belongs to the mount namespace, so it lists the
//! host's interfaces even after entering the container's network namespace. Inside the
//! namespace, a veth's `IFLA_LINK` is its peer's ifindex in the namespace that
//! `IFLA_LINK_NETNSID` names. Only peers whose namespace id is the host's are host veths: an
//! overlay network's veth peer lives in the overlay's sandbox namespace, and its index there
//! may well be taken on the host by an unrelated interface.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    thread,
};

use futures::{StreamExt as _, TryStreamExt as _};
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        nsid::{NsidAttribute, NsidMessage},
    },
};

use super::HostInterface;

/// What a container's network namespace holds, seen from the host.
#[derive(Debug, Default)]
pub struct Netns {
    /// Host ends of its veths.
    pub veths: Vec<HostInterface>,
    /// Interfaces dockops cannot count or cap, one sentence each.
    pub notes: Vec<String>,
}

/// Whether the process `pid` runs in the host's (this process's) network namespace.
pub fn is_host_netns(pid: u32) -> io::Result<bool> {
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok(own.ino() == theirs.ino() && own.dev() == theirs.dev())
}

/// The host veths of the network namespace of `pid`, and notes on its other interfaces.
pub fn host_interfaces(pid: u32) -> io::Result<Netns> {
    let netns = File::open(format!("/proc/{pid}/ns/net"))?;
    let host = File::open("/proc/self/ns/net")?;
    // setns changes only the calling thread: a short-lived thread keeps the rest of the
    // process (and tokio's workers) in the host namespace. The netlink socket is created
    // inside the container's namespace and answers for it.
    let links = thread::spawn(move || -> io::Result<Vec<Link>> {
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(links(&host))
    })
    .join()
    .map_err(|_| io::Error::other("netns reader thread panicked"))??;

    let mut out = Netns::default();
    for link in links {
        match link.peer {
            // The peer index is in the host namespace, where this thread is.
            Peer::Host(ifindex) => {
                if let Some(name) = interface_name(ifindex) {
                    out.veths.push(HostInterface::new(ifindex, name));
                } else {
                    tracing::debug!(pid, ifindex, "host veth vanished");
                }
            }
            Peer::Elsewhere => out.notes.push(format!(
                "{}: its veth peer is in another network namespace (an overlay network's \
                 sandbox?), not on the host: not counted, capped only by sender pacing",
                link.name
            )),
            Peer::Bypass(kind) => out.notes.push(format!(
                "{}: a {kind} interface, whose traffic bypasses host veths: not counted, \
                 capped only by sender pacing",
                link.name
            )),
        }
    }
    out.veths.sort();
    Ok(out)
}

/// An interface of the container worth reporting.
struct Link {
    name: String,
    peer: Peer,
}

enum Peer {
    /// A veth whose peer is in the host namespace, at this index.
    Host(u32),
    /// A veth whose peer is in some other namespace.
    Elsewhere,
    /// macvlan, ipvlan...: traffic leaves through the host's device directly.
    Bypass(&'static str),
}

async fn links(host: &File) -> io::Result<Vec<Link>> {
    let (connection, mut handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    // Asked after the dump: listing a veth gives its peer's namespace an id if it had none.
    let host_id = namespace_id(&mut handle, host).await?;
    Ok(messages
        .iter()
        .filter_map(|m| classify(m, host_id))
        .collect())
}

/// The id this namespace gives the namespace of `fd` (`RTM_GETNSID`); -1 if none.
async fn namespace_id(handle: &mut rtnetlink::Handle, fd: &File) -> io::Result<i32> {
    let mut request = NsidMessage::default();
    let raw = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
    request.attributes.push(NsidAttribute::Fd(raw));
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(request));
    message.header.flags = NLM_F_REQUEST;
    let mut responses = handle
        .request(message)
        .map_err(|e| io::Error::other(e.to_string()))?;
    while let Some(response) = responses.next().await {
        match response.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                return Ok(m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    })
                    .unwrap_or(-1));
            }
            NetlinkPayload::Error(e) => {
                return Err(io::Error::other(format!("RTM_GETNSID: {e:?}")));
            }
            _ => {}
        }
    }
    Ok(-1)
}

/// Sorts one link of the container's namespace; `None` for loopback and the like.
fn classify(link: &LinkMessage, host_id: i32) -> Option<Link> {
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })?;
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("interface {}", link.header.index));
    let peer = match kind {
        InfoKind::Veth => {
            let index = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(index) => Some(*index),
                _ => None,
            });
            let netns = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkNetNsId(id) => Some(*id),
                _ => None,
            });
            match (index, netns) {
                (Some(index), Some(id)) if host_id >= 0 && id == host_id => Peer::Host(index),
                // Without IFLA_LINK_NETNSID the peer is in this same namespace.
                (_, None) => return None,
                _ => Peer::Elsewhere,
            }
        }
        InfoKind::MacVlan | InfoKind::MacVtap => Peer::Bypass("macvlan"),
        InfoKind::IpVlan | InfoKind::IpVtap => Peer::Bypass("ipvlan"),
        _ => return None,
    };
    Some(Link { name, peer })
}

/// The name of the host interface `ifindex`, or `None` when there is none (nix 0.30 returns
/// an empty name instead of an error for an unknown index).
pub fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
}

/// Linux's default `gso_max_size` (64 KiB), when sysfs does not say.
pub const GSO_MAX_SIZE: u64 = 65_536;

/// The largest aggregate (GSO) packet the host interface `name` passes, from sysfs.
pub fn gso_max_size(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/gso_max_size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
