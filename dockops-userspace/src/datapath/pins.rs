//! Where the datapath keeps its state on bpffs, and how pin names encode an attachment.
//!
//! ```text
//! /sys/fs/bpf/dockops/            root only (0700)
//!   maps/TRAFFIC                  per-CPU counters, by host ifindex
//!   progs/tc_ingress_acct        the loaded programs, shared by every attachment
//!   progs/tc_egress_acct, progs/sock_pace, progs/block_bio_acct
//!   maps/WATCHED_CGROUPS, maps/BLOCK_IO  block IO by container cgroup and device
//!   global/block_bio_queue        the pinned tracepoint link (host-wide)
//!   global/sock_pace              the pinned sock_ops link on the cgroup v2 root
//!   build-<hash>/                 empty: which build's programs are attached
//!   probe/                        an upgrade's trial load of its programs, while it runs
//!   links/<container id>/12-ingress-tcx            a pinned tcx link
//!   links/<container id>/12-egress-netlink-clsact-p49152-h1
//!                                 a netlink filter's record (a program pin); `-clsact`:
//!                                 dockops created the qdisc; priority and handle, so that
//!                                 an upgrade can replace the filter's program in place
//! ```
//! The pins are the only record of what is attached; what operators asked for is in
//! [`crate::state`], which also survives reboots.
//! bpffs refuses names containing `.`, hence the dashes.

use std::{fmt, path::PathBuf, str::FromStr};

use aya::programs::TcAttachType;

/// The bpffs directory dockops owns.
pub const ROOT: &str = "/sys/fs/bpf/dockops";
/// Prefix of the build marker directory.
pub const BUILD_PREFIX: &str = "build-";

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            root: PathBuf::from(ROOT),
        }
    }
}

impl Layout {
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    /// Host-wide attachments (tracepoints), one link pin each.
    pub fn global(&self) -> PathBuf {
        self.root.join("global")
    }
    /// An empty directory naming the build whose object is pinned here.
    pub fn build_marker(&self, build: &str) -> PathBuf {
        self.root.join(format!("{BUILD_PREFIX}{build}"))
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    /// Scratch maps of an upgrade's trial load, there only while it runs.
    pub fn probe(&self) -> PathBuf {
        self.root.join("probe")
    }
    pub fn container(&self, id: &str) -> PathBuf {
        self.links().join(id)
    }
}

/// Which tc hook of the host veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Host veth ingress: what the container sends.
    Ingress,
    /// Host veth egress: what is delivered into the container.
    Egress,
}

impl Direction {
    pub const BOTH: [Self; 2] = [Self::Ingress, Self::Egress];

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Self::Ingress => TcAttachType::Ingress,
            Self::Egress => TcAttachType::Egress,
        }
    }

    pub const fn program(self) -> &'static str {
        match self {
            Self::Ingress => dockops_common::names::TC_INGRESS_ACCT,
            Self::Egress => dockops_common::names::TC_EGRESS_ACCT,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// How one program is attached to one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    Tcx,
    Netlink {
        created_clsact: bool,
        /// Priority and handle of the filter (`None` in records of older builds).
        filter: Option<(u16, u32)>,
    },
}

/// The file name of one attachment under `links/<container id>/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinName {
    pub ifindex: u32,
    pub direction: Direction,
    pub kind: AttachKind,
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-", self.ifindex, self.direction.as_str())?;
        match self.kind {
            AttachKind::Tcx => write!(f, "tcx"),
            AttachKind::Netlink {
                created_clsact,
                filter,
            } => {
                write!(f, "netlink")?;
                if created_clsact {
                    write!(f, "-clsact")?;
                }
                if let Some((priority, handle)) = filter {
                    write!(f, "-p{priority}-h{handle}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for PinName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('-');
        let ifindex = parts.next().ok_or(())?.parse().map_err(|_| ())?;
        let direction = match parts.next().ok_or(())? {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return Err(()),
        };
        let kind = match parts.next().ok_or(())? {
            "tcx" => AttachKind::Tcx,
            "netlink" => {
                let mut rest: Vec<&str> = parts.by_ref().collect();
                let created_clsact = rest.first() == Some(&"clsact");
                if created_clsact {
                    rest.remove(0);
                }
                let filter = match rest.as_slice() {
                    [] => None,
                    [p, h] => Some((number(p, 'p')?, number(h, 'h')?)),
                    _ => return Err(()),
                };
                AttachKind::Netlink {
                    created_clsact,
                    filter,
                }
            }
            _ => return Err(()),
        };
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Self {
            ifindex,
            direction,
            kind,
        })
    }
}

/// The decimal number after `prefix` in `part`.
fn number<T: FromStr>(part: &str, prefix: char) -> Result<T, ()> {
    part.strip_prefix(prefix)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(())?
        .parse()
        .map_err(|_| ())
}

/// True for names Docker gives containers' ids (64 lowercase hex digits), so stray entries
/// under `links/` are never taken for containers.
pub fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for kind in [
            AttachKind::Tcx,
            AttachKind::Netlink {
                created_clsact: false,
                filter: None,
            },
            AttachKind::Netlink {
                created_clsact: true,
                filter: None,
            },
            AttachKind::Netlink {
                created_clsact: true,
                filter: Some((49152, 1)),
            },
            AttachKind::Netlink {
                created_clsact: false,
                filter: Some((1, 0x8000_0001)),
            },
        ] {
            for direction in Direction::BOTH {
                let pin = PinName {
                    ifindex: 4242,
                    direction,
                    kind,
                };
                assert_eq!(pin.to_string().parse(), Ok(pin));
            }
        }
        assert_eq!(
            PinName {
                ifindex: 7,
                direction: Direction::Egress,
                kind: AttachKind::Tcx
            }
            .to_string(),
            "7-egress-tcx"
        );
        assert_eq!(
            PinName {
                ifindex: 7,
                direction: Direction::Ingress,
                kind: AttachKind::Netlink {
                    created_clsact: true,
                    filter: Some((49152, 1)),
                },
            }
            .to_string(),
            "7-ingress-netlink-clsact-p49152-h1"
        );
    }

    #[test]
    fn foreign_names_are_rejected() {
        for name in [
            "",
            "7",
            "7-egress",
            "7-sideways-tcx",
            "x-egress-tcx",
            "7-egress-xdp",
            "-1-egress-tcx",
            "7-egress.tcx",
            "7-egress-tcx-p1-h1",
            "7-egress-netlink-p1",
            "7-egress-netlink-clsact-h1-p1",
            "7-egress-netlink-p-h1",
            "7-egress-netlink-p70000-h1",
            "7-egress-netlink-clsact-clsact",
        ] {
            assert_eq!(name.parse::<PinName>(), Err(()), "{name}");
        }
    }

    #[test]
    fn container_ids() {
        assert!(is_container_id(&"ab12".repeat(16)));
        assert!(!is_container_id("ab12"));
        assert!(!is_container_id(&"AB12".repeat(16)));
        assert!(!is_container_id(&"zz12".repeat(16)));
    }

    #[test]
    fn layout_paths() {
        let layout = Layout::default();
        assert_eq!(
            layout.container("abc"),
            PathBuf::from("/sys/fs/bpf/dockops/links/abc")
        );
        assert_eq!(layout.maps(), PathBuf::from("/sys/fs/bpf/dockops/maps"));
    }
}
