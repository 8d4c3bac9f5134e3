//! What this host supports, probed once at start-up.

use std::fmt;

use aya::util::KernelVersion;

/// How tc programs are attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// BPF links on the tcx hook (Linux >= 6.6): pinned, no qdisc needed.
    Tcx,
    /// `cls_bpf` filters on a `clsact` qdisc through netlink, for older kernels.
    Netlink,
}

impl fmt::Display for TcMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// Host features the other modules consult instead of probing themselves.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub tc_mode: TcMode,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "dockops-bpf must run as root: it loads eBPF programs and attaches them to container \
         interfaces (try: sudo dockops-bpf ...)"
    )]
    NotRoot,
    #[error(
        "this kernel has no BPF support (/proc/sys/kernel/bpf_stats_enabled is absent); dockops needs Linux >= 5.8 with CONFIG_BPF_SYSCALL"
    )]
    NoBpf,
}

impl Capabilities {
    /// Probes the running kernel. `tc_mode` overrides the tcx/netlink choice.
    pub fn probe(tc_mode: Option<TcMode>) -> Result<Self, ProbeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProbeError::NotRoot);
        }
        if !std::path::Path::new("/proc/sys/kernel/bpf_stats_enabled").exists() {
            return Err(ProbeError::NoBpf);
        }
        let tc_mode = tc_mode.unwrap_or_else(|| {
            let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
            if tcx {
                TcMode::Tcx
            } else {
                tracing::warn!(
                    "kernel older than 6.6: attaching with netlink clsact instead of tcx"
                );
                TcMode::Netlink
            }
        });
        Ok(Self { tc_mode })
    }
}
