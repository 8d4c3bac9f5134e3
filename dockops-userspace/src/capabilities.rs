//! What this host supports, probed once at start-up.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::util::KernelVersion;

use crate::policy::resources::{CpuList, Host};
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

/// Whether the kernel has a piece, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Loaded now (or built in with a sysfs entry).
    Loaded,
    /// Built into the kernel.
    BuiltIn,
    /// A module the kernel loads on first use.
    Module,
    Absent,
    /// Not loaded, and the kernel's module lists are not there to say (a container without
    /// `/lib/modules`): using it will tell.
    Unknown,
}

impl Presence {
    pub fn usable(self) -> bool {
        self != Self::Absent
    }
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loaded => "loaded",
            Self::BuiltIn => "built in",
            Self::Module => "module (loaded on first use)",
            Self::Absent => "absent",
            Self::Unknown => "unknown (not loaded; no /lib/modules to look in)",
        })
    }
}

/// One BPF helper probed for a program type.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Helper {
    pub program: &'static str,
    pub name: String,
    /// None: the probe itself could not run (loading decides).
    pub present: Option<bool>,
}

/// Host features the other modules consult instead of probing themselves.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel: String,
    pub tc_mode: TcMode,
    /// Whether tc programs are attached by version (tcx needs 6.6) or were asked for.
    pub tc_mode_reason: &'static str,
    /// The helpers the programs need, as probed.
    pub helpers: Vec<Helper>,
    pub cgroup: CgroupMode,
    /// Resolution of the coarse monotonic clock the tc hard cap refills by (one jiffy).
    pub clock_tick_ns: u64,
    /// CPUs, memory nodes and swap accounting, for checking limits.
    pub host: Host,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "dockops-bpf must run as root: it loads eBPF programs and attaches them to container \
         interfaces (try: sudo dockops-bpf ...)"
    )]
    NotRoot,
    #[error(
        "this kernel has no BPF support (/proc/sys/kernel/bpf_stats_enabled is absent); dockops needs Linux >= {MIN_KERNEL} with CONFIG_BPF_SYSCALL"
    )]
    NoBpf,
    #[error(
        "this kernel lacks the BPF helper(s) {helpers} for tc programs, so dockops can neither count nor cap: it needs Linux >= {MIN_KERNEL} (bpf_ktime_get_coarse_ns came in 5.11)"
    )]
    MissingHelpers { helpers: String },
}

/// The oldest kernel dockops runs on: the tc programs' coarse clock needs 5.11, pinned
/// tracepoint links (BPF perf links) 5.15. tcx (6.6) is used where present.
pub const MIN_KERNEL: &str = "5.15";

impl Capabilities {
    /// Probes the running kernel. `tc_mode` overrides the tcx/netlink choice.
    pub fn probe(tc_mode: Option<TcMode>) -> Result<Self, ProbeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProbeError::NotRoot);
        }
        if !std::path::Path::new("/proc/sys/kernel/bpf_stats_enabled").exists() {
            return Err(ProbeError::NoBpf);
        }
        let kernel = KernelVersion::current().ok();
        if kernel.is_none_or(|v| v < KernelVersion::new(5, 11, 0)) {
            raise_memlock();
        }
        let helpers = probe_helpers()?;
        if kernel.is_some_and(|v| v < KernelVersion::new(5, 15, 0)) {
            tracing::warn!(
                "kernel older than 5.15: no BPF perf links, so block IO per container is \
                 unavailable (dockops needs Linux >= {MIN_KERNEL})"
            );
        }
        let (tc_mode, tc_mode_reason) = tc_mode.map_or_else(
            || {
                if kernel.is_some_and(|v| v >= KernelVersion::new(6, 6, 0)) {
                    (TcMode::Tcx, "kernel >= 6.6")
                } else {
                    tracing::warn!(
                        "kernel older than 6.6: attaching with netlink clsact instead of tcx"
                    );
                    (TcMode::Netlink, "kernel < 6.6 has no tcx")
                }
            },
            |mode| (mode, "--tc-attach"),
        );
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
        let host = probe_host(&cgroup);
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            kernel: release,
            tc_mode,
            tc_mode_reason,
            helpers,
            cgroup,
            clock_tick_ns,
            host,
        })
    }
}

/// Online CPUs and memory nodes, and whether swap is accounted per cgroup (v1: the root has
/// `memory.memsw.*`; v2: child cgroups have `memory.swap.max`, the root has none).
fn probe_host(cgroup: &CgroupMode) -> Host {
    let list = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| CpuList::parse(&text))
    };
    let cpus = list("/sys/devices/system/cpu/online").unwrap_or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        CpuList((0..u32::try_from(n).unwrap_or(1)).collect())
    });
    // Kernels without NUMA have no node directory: one node, 0.
    let mems = list("/sys/devices/system/node/online").unwrap_or_else(|| CpuList([0].into()));
    let swap_accounting = match cgroup {
        CgroupMode::V1 { .. } => Path::new(CGROUP_ROOT)
            .join("memory/memory.memsw.limit_in_bytes")
            .exists(),
        CgroupMode::V2 { root } => std::fs::read_dir(root).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().join("memory.swap.max").exists())
        }),
    };
    if !swap_accounting {
        tracing::debug!("no swap accounting per cgroup: --memory-swap cannot be enforced");
    }
    Host {
        cpus,
        mems,
        swap_accounting,
    }
}

/// Kernels before 5.11 charge BPF maps and programs to `RLIMIT_MEMLOCK` (64 KiB by default
/// on many distributions); later ones charge the memory cgroup, so it is raised only there
/// (raising it needs `CAP_SYS_RESOURCE`, which a container's root may lack).
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain syscall on a struct that lives across it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        tracing::warn!(
            "cannot raise RLIMIT_MEMLOCK ({}): loading may fail on kernels before 5.11",
            std::io::Error::last_os_error()
        );
    }
}

/// Loads a one-call program per helper the programs need (libbpf's probe, through aya).
/// The tc helpers are required; without the `sock_ops` ones caps are unavailable (warned).
fn probe_helpers() -> Result<Vec<Helper>, ProbeError> {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    let mut probed = Vec::new();
    let mut missing = |program: ProgramType, helpers: &[BpfHelper]| -> Vec<String> {
        let name = match program {
            ProgramType::SchedClassifier => "tc",
            _ => "sock_ops",
        };
        let mut missing = Vec::new();
        for &helper in helpers {
            // An error means the probe itself could not run: leave the verdict to loading.
            let present = is_helper_supported(program, helper).ok();
            let helper = format!("{helper:?}")
                .trim_start_matches("BPF_FUNC_")
                .to_owned();
            if present == Some(false) {
                missing.push(helper.clone());
            }
            probed.push(Helper {
                program: name,
                name: helper,
                present,
            });
        }
        missing
    };
    let tc = missing(
        ProgramType::SchedClassifier,
        &[
            BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
            BpfHelper::BPF_FUNC_skb_ecn_set_ce,
            BpfHelper::BPF_FUNC_get_hash_recalc,
            BpfHelper::BPF_FUNC_spin_lock,
        ],
    );
    if !tc.is_empty() {
        return Err(ProbeError::MissingHelpers {
            helpers: tc.join(", "),
        });
    }
    let sock = missing(
        ProgramType::SockOps,
        &[
            BpfHelper::BPF_FUNC_setsockopt,
            BpfHelper::BPF_FUNC_getsockopt,
            BpfHelper::BPF_FUNC_get_socket_cookie,
        ],
    );
    if !sock.is_empty() {
        tracing::warn!(
            "this kernel lacks {} in sock_ops programs: bandwidth caps are unavailable",
            sock.join(", ")
        );
    }
    Ok(probed)
}

/// Whether the module at `path` (under `kernel/`, without `.ko`) is loaded, built in, or
/// can be loaded, from sysfs and the module lists of the running kernel.
fn module_presence(release: &str, path: &str) -> Presence {
    let name = path.rsplit('/').next().unwrap_or(path);
    if Path::new("/sys/module").join(name).exists() {
        return Presence::Loaded;
    }
    let modules = Path::new("/lib/modules").join(release);
    if !modules.is_dir() {
        return Presence::Unknown;
    }
    // `kernel/net/sched/sch_fq.ko`, `.ko.xz`, `.ko.zst`...
    let file = format!("kernel/{path}.ko");
    let listed = |list: &str| {
        std::fs::read_to_string(modules.join(list)).is_ok_and(|text| {
            text.lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.starts_with(&file)))
        })
    };
    if listed("modules.builtin") {
        Presence::BuiltIn
    } else if listed("modules.dep") {
        Presence::Module
    } else {
        Presence::Absent
    }
}

/// Everything `dockops-bpf probe` prints: what was probed at start-up and the kernel
/// features dockops uses or will use, found on this host.
#[derive(Debug, serde::Serialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "a report of yes/no findings, printed as such"
)]
pub struct Report {
    pub kernel: String,
    /// `v2` or `v1` (hybrid when a v2 hierarchy sits beside: `unified` names it).
    pub cgroup: &'static str,
    pub cgroup_v2_root: Option<PathBuf>,
    /// Controllers enabled in the v2 hierarchy's root.
    pub cgroup_v2_controllers: Vec<String>,
    pub tc_attach: String,
    pub tc_attach_reason: &'static str,
    pub fq: Presence,
    pub btf: bool,
    /// Pressure stall information (`/proc/pressure`).
    pub psi: bool,
    pub kprobes: bool,
    pub swap_accounting: bool,
    pub helpers: Vec<Helper>,
    /// `category:name` → present.
    pub tracepoints: Vec<(String, bool)>,
}

/// Tracepoints dockops attaches to (`block_bio_queue`) or may, by kernel.
const TRACEPOINTS: &[&str] = &[
    "block:block_bio_queue",
    "block:block_io_start",
    "block:block_io_done",
    "block:block_rq_issue",
    "block:block_rq_complete",
    "sched:sched_switch",
    "sched:sched_wakeup",
    "sched:sched_wakeup_new",
];

impl Capabilities {
    /// The `fq` qdisc, which honours `skb->tstamp` (earliest departure time). Looked up when
    /// asked (it reads the kernel's module lists), not at every start.
    pub fn fq(&self) -> Presence {
        module_presence(&self.kernel, "net/sched/sch_fq")
    }

    /// Looks up the rest of the report; `tracefs` is where tracefs is mounted.
    pub fn report(&self, tracefs: &Path) -> Report {
        let (cgroup, v2) = match &self.cgroup {
            CgroupMode::V2 { root } => ("v2", Some(root.clone())),
            CgroupMode::V1 { unified } => ("v1", unified.clone()),
        };
        let controllers = v2
            .as_ref()
            .and_then(|root| std::fs::read_to_string(root.join("cgroup.controllers")).ok())
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Report {
            kernel: self.kernel.clone(),
            cgroup,
            cgroup_v2_root: v2,
            cgroup_v2_controllers: controllers,
            tc_attach: self.tc_mode.to_string(),
            tc_attach_reason: self.tc_mode_reason,
            fq: self.fq(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            psi: Path::new("/proc/pressure/cpu").exists(),
            kprobes: tracefs.join("kprobe_events").exists(),
            swap_accounting: self.host.swap_accounting,
            helpers: self.helpers.clone(),
            tracepoints: TRACEPOINTS
                .iter()
                .map(|tp| {
                    let dir = tp.replace(':', "/");
                    ((*tp).to_owned(), tracefs.join("events").join(dir).exists())
                })
                .collect(),
        }
    }
}
