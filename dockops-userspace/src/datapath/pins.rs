//! Where the datapath keeps its state on bpffs, and how pin names encode an attachment.
//!
//! ```text
//! /sys/fs/bpf/dockops/            root only (0700)
//!   maps/TRAFFIC                  per-CPU counters, by host ifindex
//!   progs/tc_ingress_acct        the loaded programs, shared by every attachment
//!   progs/tc_egress_acct
//!   maps/WATCHED_CGROUPS, maps/BLOCK_IO  block IO by container cgroup and device
//!   global/block_bio_queue        the pinned tracepoint link (host-wide)
//!   build-<hash>/                 empty: which build's object is pinned here
//!   links/<container id>/12-ingress-tcx            a pinned tcx link
//!   links/<container id>/12-egress-netlink-clsact  a netlink filter's record (a program pin);
//!                                                  `-clsact`: dockops created the qdisc
//! ```
//! The pins are the only record: nothing else needs to survive a restart.
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
    Netlink { created_clsact: bool },
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
        let kind = match self.kind {
            AttachKind::Tcx => "tcx",
            AttachKind::Netlink {
                created_clsact: false,
            } => "netlink",
            AttachKind::Netlink {
                created_clsact: true,
            } => "netlink-clsact",
        };
        write!(f, "{}-{}-{kind}", self.ifindex, self.direction.as_str())
    }
}

impl FromStr for PinName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.splitn(3, '-');
        let (ifindex, direction, kind) = (
            parts.next().ok_or(())?,
            parts.next().ok_or(())?,
            parts.next().ok_or(())?,
        );
        let direction = match direction {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return Err(()),
        };
        let kind = match kind {
            "tcx" => AttachKind::Tcx,
            "netlink" => AttachKind::Netlink {
                created_clsact: false,
            },
            "netlink-clsact" => AttachKind::Netlink {
                created_clsact: true,
            },
            _ => return Err(()),
        };
        Ok(Self {
            ifindex: ifindex.parse().map_err(|_| ())?,
            direction,
            kind,
        })
    }
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
            },
            AttachKind::Netlink {
                created_clsact: true,
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
