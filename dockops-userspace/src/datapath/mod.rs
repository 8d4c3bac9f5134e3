//! The eBPF side: load once, attach to every container's host veths, pin, adopt, clean up.
//!
//! Everything lives under [`pins::ROOT`], so counting goes on between commands and a later
//! command adopts what an earlier one attached instead of attaching twice.

mod attach;
mod backlog;
mod bpffs;
mod btf;
mod caps;
mod events;
mod maps;
pub mod pins;
mod queue;
mod reconcile;
mod reset;
mod sys;
mod tc_caps;
mod upgrade;

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{ProgramError, SchedClassifier},
};
pub use bpffs::tracefs;
use dockops_common::{
    BlockCounters, BlockKey, Caps, InsertFailures, TcCap, TrafficCounters, names,
};
pub use events::{EventReadings, LatencyByCgroup, SchedByCgroup, SocketsByCgroup};
pub use pins::Direction;
use pins::{Layout, PinName};
pub use queue::QueueError;
pub use reconcile::{Failure, PolicyCaps};
pub use reset::reset;

use crate::{
    capabilities::TcMode,
    discovery::Container,
    state::{Desired, StateError, Store, StoredCaps},
};

/// Identifies the eBPF object, so that a later build knows to swap its programs in. (The
/// std hasher may change across Rust releases; that only costs one needless swap.)
fn build_id() -> String {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let mut hasher = DefaultHasher::new();
    OBJECT.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The eBPF object built by `build.rs` (public for the `BPF_PROG_TEST_RUN` tests).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dockops"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount bpffs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("loading the eBPF object failed (is this kernel built with BPF and BTF?)")]
    Load(#[from] aya::EbpfError),
    #[error("the embedded eBPF object cannot be parsed: {0}")]
    Object(String),
    #[error("{path}: {why}")]
    TracepointFormat { path: PathBuf, why: String },
    #[error("map {0} is full")]
    Full(&'static str),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching to {direction:?} of {interface} failed")]
    Attach {
        interface: String,
        direction: Direction,
        #[source]
        source: ProgramError,
    },
    #[error("detaching from {interface} failed")]
    Detach {
        interface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("adding a clsact qdisc to {interface} failed")]
    Clsact {
        interface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("BPF link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("counters map")]
    Map(#[from] MapError),
    #[error("bandwidth caps are unavailable on this host: {0}")]
    NoPacing(&'static str),
    #[error(
        "this build's eBPF programs do not load on this kernel, so it cannot take over from the \
         build whose programs are attached: that build's datapath stays attached and unchanged \
         (run its binary until this one is fixed)"
    )]
    Refused(#[source] Box<DatapathError>),
    #[error("no cgroup v2 hierarchy is mounted to attach to")]
    NoUnifiedCgroup,
    #[error(
        "container {0} has no IP address of its own (--network host or none?): it cannot be capped"
    )]
    NoAddress(String),
    #[error("the eBPF object has no {0}: binary and object are out of step")]
    Missing(&'static str),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "the pinned datapath was taken over by another dockops build (a newer binary ran) or \
         removed (reset): restart this command"
    )]
    Superseded,
    #[error(
        "caps of {container} are applied but could not be recorded: they will not survive a \
         reboot or upgrade"
    )]
    NotRecorded {
        container: String,
        #[source]
        source: StateError,
    },
}

/// The root qdisc an ingress cap needs on its host veth, if any.
fn discipline(caps: Caps) -> Option<queue::Discipline> {
    if caps.queued() {
        Some(queue::Discipline::Queue {
            rate_bytes: caps.ingress_bits / 8,
        })
    } else if caps.edt() {
        Some(queue::Discipline::Fq)
    } else if caps.ingress_bits != 0 && caps.paced() {
        // Behind pacing only: with `--no-pacing` the bucket polices (ECN, drops) senders
        // beyond the host, and a queue behind it at the same rate would hide the signal.
        Some(queue::Discipline::Backlog {
            rate_bytes: tc_caps::wire_rate(caps.ingress_bits, caps),
        })
    } else {
        None
    }
}

/// Puts the ingress queue (HTB, fq for EDT, or the backlog behind the bucket) on a host
/// veth, or takes it away, as `caps` say. The backlog is a refinement: when it cannot be
/// set, the bucket holds the cap alone (with a warning).
fn set_queue(ifindex: u32, caps: Caps) -> Result<(), DatapathError> {
    match discipline(caps) {
        Some(backlog @ queue::Discipline::Backlog { .. }) => {
            if let Err(error) = queue::set(ifindex, backlog) {
                tracing::warn!(
                    ifindex,
                    "ingress backlog not set: {error}; the cap holds by the bucket alone, \
                     dropping what same-host senders send unpaced"
                );
            }
        }
        Some(discipline) => queue::set(ifindex, discipline)?,
        None => {
            queue::remove(ifindex)?;
        }
    }
    Ok(())
}

/// Block IO counters by cgroup id, then device (sorted by `dev`).
pub type BlockByCgroup = HashMap<u64, Vec<(BlockKey, BlockCounters)>>;

/// What a reconcile changed, and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Hooks newly attached.
    pub attached: usize,
    /// Hooks found pinned and kept.
    pub adopted: usize,
    /// Hooks removed because their container or interface is gone.
    pub removed: usize,
    /// Steps that failed (the others went on).
    pub failures: Vec<Failure>,
    /// The durable desired state as this reconcile read it (containers that no longer exist
    /// forgotten), for the other enforcement stages; empty if it could not be read.
    pub desired: Desired,
}

/// The loaded (or adopted) programs and the counters map.
pub struct Datapath {
    layout: Layout,
    mode: TcMode,
    ingress: SchedClassifier,
    egress: SchedClassifier,
    traffic: PerCpuHashMap<MapData, u32, TrafficCounters>,
    /// Hard caps and their buckets, by `tc_cap_key`.
    tc_caps: aya::maps::HashMap<MapData, u64, TcCap>,
    /// Inserts the programs could not make, by [`InsertFailures`] index.
    insert_failures: PerCpuArray<MapData, u64>,
    /// Flows each hard cap remembers as ECN-capable, in slots of `TcCap::ecn_slot`.
    ecn_flows: aya::maps::Array<MapData, u32>,
    /// Possible CPUs: the length of every per-CPU value.
    cpus: usize,
    /// The host-wide tracepoints (those the kernel refused were warned about at start).
    events: events::Events,
    /// Why there is no pacing program (no cgroup v2 hierarchy, or the kernel refused it).
    pacing: Result<caps::Pacing, &'static str>,
    /// What operators asked for, durable across reboots and upgrades.
    store: Store,
    /// This build's id ([`build_id`]).
    build: String,
    /// True while the pinned programs are another build's: the next reconcile swaps this
    /// build's in, once the maps hold everything they need.
    upgrading: bool,
}

impl Datapath {
    /// Loads the programs, or adopts the ones pinned by an earlier run, and the pinned maps.
    ///
    /// Pins of another build are adopted too: maps whose layout this build shares are kept
    /// (counters go on), the others are rebuilt, and this build's programs are loaded and
    /// pinned beside the attached ones; [`Datapath::reconcile`] fills the maps and then
    /// swaps the programs in place ([`upgrade`]), so traffic is never uncapped.
    pub fn open(mode: TcMode, unified: Option<&Path>) -> Result<Self, DatapathError> {
        let layout = Layout::default();
        let build = build_id();
        let store = Store::default();
        let _lock = bpffs::lock()?;
        let fresh = upgrade::pinned_by_other_build(&layout, &build);
        bpffs::prepare(&layout)?;
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| DatapathError::Io {
            path: PathBuf::from(path),
            source,
        })?;
        let shapes = maps::wanted(cpus)?;
        let plan = events::Plan::probe(Path::new(bpffs::TRACEFS));
        if fresh {
            let paces = unified.is_some() && layout.global().join(names::SOCK_PACE).exists();
            upgrade::probe(&layout, &shapes, &plan, paces)?;
            upgrade::check_maps(&layout, &store, &shapes)?;
        }
        let mut ebpf = load(&layout.maps(), &shapes, &plan)?;
        let ingress = program(&mut ebpf, &layout, names::TC_INGRESS_ACCT, fresh)?;
        let egress = program(&mut ebpf, &layout, names::TC_EGRESS_ACCT, fresh)?;
        let traffic = take_map(&mut ebpf, names::TRAFFIC)?;
        let tc_caps = take_map(&mut ebpf, names::TC_CAPS)?;
        let insert_failures = take_map(&mut ebpf, names::INSERT_FAILURES)?;
        let ecn_flows = take_map(&mut ebpf, names::ECN_FLOWS)?;
        let events = events::Events::open(&mut ebpf, &layout, &plan, unified, fresh, cpus)?;
        let pacing = match unified {
            Some(root) => caps::Pacing::open(&mut ebpf, &layout, root, fresh).map_err(|error| {
                tracing::warn!("bandwidth caps are unavailable: {}", chain(&error));
                "the kernel refused the sock_ops pacing program (the warning above says why)"
            }),
            None => {
                Err("no cgroup v2 hierarchy is mounted to attach the sock_ops pacing program to")
            }
        };
        if !fresh {
            upgrade::mark_build(&layout, &build)?;
        }
        Ok(Self {
            layout,
            mode,
            ingress,
            egress,
            traffic,
            tc_caps,
            insert_failures,
            ecn_flows,
            cpus,
            events,
            pacing,
            store,
            build,
            upgrading: fresh,
        })
    }

    /// Fails once another build has taken the pins over (or `reset` removed them): this
    /// process's programs and maps are no longer the attached ones, so writing to them would
    /// change nothing, or bring old programs back.
    fn check_owner(&self) -> Result<(), DatapathError> {
        if self.upgrading || self.layout.build_marker(&self.build).exists() {
            Ok(())
        } else {
            Err(DatapathError::Superseded)
        }
    }

    /// Every capped address, IPv4 and IPv6. Each of a container's addresses carries the same
    /// caps.
    pub fn caps(&self) -> Result<HashMap<IpAddr, Caps>, DatapathError> {
        self.pacing
            .as_ref()
            .map_or_else(|_| Ok(HashMap::new()), caps::Pacing::all)
    }

    /// Sets the caps of every address of `container`, and records them in the durable store
    /// so that they outlive reboots and upgrades; all-zero caps remove them.
    ///
    /// Two layers: TCP senders from and to the container are paced to the cap (`sock_ops`),
    /// and a tc token bucket on each of its host veths marks (ECN) and drops what still
    /// exceeds it, or, for a queued ingress cap, an HTB queue holds it.
    pub fn set_caps(&mut self, container: &Container, caps: Caps) -> Result<(), DatapathError> {
        let _lock = bpffs::lock()?;
        self.check_owner()?;
        // A state file that cannot be read fails the command before anything changes.
        let mut desired = self.store.load()?;
        self.apply_caps(container, caps)?;
        desired.set_caps(&container.id, StoredCaps::from_caps(caps));
        self.store
            .save(&desired)
            .map_err(|source| DatapathError::NotRecorded {
                container: container.name.clone(),
                source,
            })
    }

    /// What operators asked for, as recorded.
    pub fn desired(&self) -> Result<Desired, DatapathError> {
        Ok(self.store.load()?)
    }

    /// Changes the recorded state under the lock every writer takes (limits other than caps
    /// are recorded here too, so that no writer loses another's change).
    pub fn update_state(&self, change: impl FnOnce(&mut Desired)) -> Result<(), DatapathError> {
        let _lock = bpffs::lock()?;
        self.store.update(change)?;
        Ok(())
    }

    /// Puts `caps` in the maps (and queues) of `container`, without recording them.
    fn apply_caps(&mut self, container: &Container, caps: Caps) -> Result<(), DatapathError> {
        if container.addresses().next().is_none() {
            return Err(DatapathError::NoAddress(container.name.clone()));
        }
        let pacing = self
            .pacing
            .as_mut()
            .map_err(|why| DatapathError::NoPacing(why))?;
        let caps = Caps {
            owner: container.id_bytes(),
            ..caps
        };
        // The queue first: the one step that can be refused (a foreign root qdisc).
        for iface in container.interfaces.iter().flatten() {
            set_queue(iface.ifindex, caps)?;
        }
        for ip in container.addresses() {
            pacing.set(ip, caps)?;
        }
        for iface in container.interfaces.iter().flatten() {
            self.set_tc_caps(iface.ifindex, caps)?;
        }
        backlog::apply(container, caps);
        Ok(())
    }

    /// What the host-wide tracepoints counted: block IO, its latency, run-queue latency.
    pub fn events(&self) -> Result<EventReadings, DatapathError> {
        self.events.readings()
    }

    /// Counters of every attached interface, summed over CPUs.
    pub fn counters(&self) -> Result<HashMap<u32, TrafficCounters>, DatapathError> {
        self.check_owner()?;
        let mut out = HashMap::new();
        for entry in &self.traffic {
            let (ifindex, per_cpu) = entry?;
            let sum = per_cpu
                .iter()
                .fold(TrafficCounters::default(), |acc, c| acc.plus(*c));
            out.insert(ifindex, sum);
        }
        Ok(out)
    }

    /// Inserts the programs could not make because a map was full, by map name.
    pub fn insert_failures(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        InsertFailures::ALL
            .iter()
            .map(|&map| {
                let per_cpu = self.insert_failures.get(&(map as u32), 0)?;
                Ok((map.map(), per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Starts an interface's counters at zero unless they already exist (adoption).
    fn ensure_counters(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let zeros = zeros::<TrafficCounters>(self.cpus)?;
        match self
            .traffic
            .insert(ifindex, zeros, u64::from(aya_obj_flags::BPF_NOEXIST))
        {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

mod aya_obj_flags {
    /// `BPF_NOEXIST` from uapi/linux/bpf.h: create the element only if it does not exist.
    pub const BPF_NOEXIST: u32 = 1;
}

/// The pinned program `name`, loading and pinning it from the object the first time, or
/// when the pinned one is another build's (`fresh`).
fn program(
    ebpf: &mut Ebpf,
    layout: &Layout,
    name: &'static str,
    fresh: bool,
) -> Result<SchedClassifier, DatapathError> {
    let prog_err = |source| DatapathError::Program { name, source };
    let path = layout.progs().join(name);
    if fresh || !path.exists() {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(prog_err)?;
        prog.load().map_err(prog_err)?;
        repin(&path, |path| prog.pin(path))?;
    }
    SchedClassifier::from_pin(&path).map_err(prog_err)
}

/// Loads the eBPF object (not yet its programs), its maps pinned in `maps` and sized as
/// `shapes` say, its globals set as `plan` says.
fn load(
    maps: &Path,
    shapes: &BTreeMap<String, maps::Shape>,
    plan: &events::Plan,
) -> Result<Ebpf, DatapathError> {
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(maps)
        // BTF maps (their values hold a spin lock) cannot ask for pinning themselves.
        .map_pin_path(names::TC_CAPS, maps.join(names::TC_CAPS))
        .map_pin_path(names::WINDOWS, maps.join(names::WINDOWS));
    for (name, shape) in shapes {
        loader.map_max_entries(name, shape.max_entries);
    }
    plan.set_globals(&mut loader);
    Ok(loader.load(OBJECT)?)
}

/// The map `name` of the loaded object, typed.
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    Ok(T::try_from(map)?)
}

/// A per-CPU value of zeros for each of `cpus` CPUs.
pub(super) fn zeros<T: aya::Pod + Default>(cpus: usize) -> Result<PerCpuValues<T>, DatapathError> {
    PerCpuValues::try_from((0..cpus).map(|_| T::default()).collect::<Vec<_>>()).map_err(|source| {
        DatapathError::Io {
            path: PathBuf::from("nr_cpus"),
            source,
        }
    })
}

fn program_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

/// Pins at `path`, replacing what is pinned there (what is attached keeps its program).
fn repin(
    path: &Path,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            return Err(DatapathError::Io {
                path: path.to_owned(),
                source,
            });
        }
        _ => {}
    }
    pin(path).map_err(|source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    })
}

/// Attachment pins by container id.
fn scan(layout: &Layout) -> Result<BTreeMap<String, Vec<PinName>>, DatapathError> {
    let mut out = BTreeMap::new();
    for id in read_dir_names(&layout.links())? {
        if !pins::is_container_id(&id) {
            continue;
        }
        let pins = read_dir_names(&layout.container(&id))?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        out.insert(id, pins);
    }
    Ok(out)
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DatapathError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn remove_dir(dir: &Path) -> Result<(), DatapathError> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DatapathError::Io {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// An error and its causes, `: `-separated (tracing shows only the outer message otherwise).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// True for "no such key" from a map removal (aya reports it as a syscall error).
fn not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Pins a freshly attached link at `path` so that it outlives this process.
fn pin_link<L>(link: L, path: &Path) -> Result<(), DatapathError>
where
    L: TryInto<aya::programs::links::FdLink, Error = aya::programs::links::LinkError>,
{
    let link = link.try_into().map_err(|source| DatapathError::Link {
        path: path.to_owned(),
        source,
    })?;
    link.pin(path).map_err(|source| DatapathError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}
