//! What this host supports, probed once at start-up.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::util::KernelVersion;
use std::time::Duration;

use nix::{
    sys::statfs::{CGROUP2_SUPER_MAGIC, statfs},
    time::{ClockId, clock_getres},
};

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

/// Which cgroup hierarchies hold the containers' resource files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// Controllers in per-controller v1 hierarchies under `/sys/fs/cgroup/<controller>`;
    /// `unified` is the v2 hierarchy mounted beside them (hybrid), if any.
    V1 { unified: Option<PathBuf> },
    /// One v2 hierarchy with the controllers (`cpu.stat`, `memory.current`, `io.stat`...).
    V2 { root: PathBuf },
}

impl CgroupMode {
    /// Mount point of the v2 hierarchy, whose directory inodes are the cgroup ids that BPF
    /// programs see (`bpf_get_current_cgroup_id`).
    pub fn unified(&self) -> Option<&Path> {
        match self {
            Self::V1 { unified } => unified.as_deref(),
            Self::V2 { root } => Some(root),
        }
    }

    /// Looks at `/sys/fs/cgroup` (and `/sys/fs/cgroup/unified` for the hybrid layout).
    pub fn detect() -> Self {
        let is_v2 = |p: &str| statfs(p).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
        if is_v2(CGROUP_ROOT) {
            return Self::V2 {
                root: CGROUP_ROOT.into(),
            };
        }
        let unified = Path::new(CGROUP_ROOT).join("unified");
        Self::V1 {
            unified: is_v2(&unified.to_string_lossy()).then_some(unified),
        }
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Host features the other modules consult instead of probing themselves.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub tc_mode: TcMode,
    pub cgroup: CgroupMode,
    /// Resolution of the coarse monotonic clock the tc hard cap refills by (one jiffy).
    pub clock_tick_ns: u64,
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
        let cgroup = CgroupMode::detect();
        if cgroup.unified().is_none() {
            tracing::warn!("no cgroup v2 hierarchy: block IO per container is not available");
        }
        // A jiffy: 1 to 10 ms. 10 ms, the coarsest, if the kernel will not say.
        let clock_tick_ns = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE)
            .ok()
            .and_then(|t| u64::try_from(Duration::from(t).as_nanos()).ok())
            .filter(|&ns| ns > 0)
            .unwrap_or(10_000_000);
        Ok(Self {
            tc_mode,
            cgroup,
            clock_tick_ns,
        })
    }
}
