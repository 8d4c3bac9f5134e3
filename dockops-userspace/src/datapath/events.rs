//! Host-wide tracepoints and the set of container cgroups they count for: block IO
//! counters (`block_bio_queue`), block request latency (`block_io_start`/`block_io_done`,
//! the `block_rq_*` pair before 6.5), run-queue latency with context switches (the
//! scheduler's raw tracepoints) and socket traffic (`cgroup_skb` on the cgroup v2 root).
//! Each family is attached on its own: one the kernel refuses is warned about and the
//! others go on.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, RawTracePoint, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use dockops_common::{
    BlockCounters, BlockKey, Latency, LatencyKey, NO_SLOT, SchedStats, SocketCounters, TaskState,
    names,
};

use super::{BlockByCgroup, DatapathError, btf::Btf, chain, pins::Layout, program_err};

/// One program on one host-wide hook; its link is pinned under `global/` by `tracepoint`
/// (the hook's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hook {
    pub program: &'static str,
    pub kind: Kind,
    pub tracepoint: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A classic tracepoint, in this category.
    Tracepoint(&'static str),
    Raw,
    /// `cgroup_skb` on the cgroup v2 root, egress (or ingress).
    Cgroup {
        egress: bool,
    },
}

/// Hooks that are attached together, what they give, and the record offsets they read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Family {
    what: &'static str,
    hooks: Vec<Hook>,
    globals: Vec<(&'static str, u32)>,
}

/// A field the programs read: its name in the format file, the global that takes its
/// offset, and the sizes the program can read.
type Field = (&'static str, &'static str, u32, u32);
/// A family as probed: what it gives, its hooks and the fields each reads.
type Wanted = (&'static str, Vec<(Hook, Vec<Field>)>);

impl Family {
    /// The families this kernel's tracepoints allow, each with its fields' offsets read
    /// from tracefs; a family whose format cannot be read is warned about and left out.
    fn probe(tracefs: &Path) -> Vec<Self> {
        let exists =
            |category: &str, name: &str| tracefs.join("events").join(category).join(name).exists();
        let (start, done) = if exists("block", "block_io_start") {
            ("block_io_start", "block_io_done")
        } else {
            ("block_rq_issue", "block_rq_complete")
        };
        let wanted: [Wanted; 4] = [
            (
                "block IO per container",
                vec![(
                    hook(
                        names::BLOCK_BIO_ACCT,
                        Kind::Tracepoint("block"),
                        "block_bio_queue",
                    ),
                    vec![
                        ("dev", "BLOCK_DEV_OFFSET", 4, 4),
                        ("nr_sector", "BLOCK_NR_SECTOR_OFFSET", 4, 4),
                        ("rwbs", "BLOCK_RWBS_OFFSET", 8, 64),
                    ],
                )],
            ),
            (
                "block IO latency per container",
                vec![
                    (
                        hook(names::BLOCK_RQ_START, Kind::Raw, start),
                        vec![
                            ("request.q", "RQ_QUEUE_OFFSET", 8, 8),
                            ("request.cmd_flags", "RQ_CMD_FLAGS_OFFSET", 4, 4),
                            ("request_queue.disk", "QUEUE_DISK_OFFSET", 8, 8),
                            ("gendisk.major", "DISK_MAJOR_OFFSET", 4, 4),
                            ("gendisk.first_minor", "DISK_FIRST_MINOR_OFFSET", 4, 4),
                        ],
                    ),
                    (hook(names::BLOCK_RQ_DONE, Kind::Raw, done), Vec::new()),
                ],
            ),
            (
                "run-queue latency per container",
                vec![
                    (
                        hook(names::SCHED_SWITCH, Kind::Raw, "sched_switch"),
                        Vec::new(),
                    ),
                    (
                        hook(names::SCHED_WAKEUP, Kind::Raw, "sched_wakeup"),
                        Vec::new(),
                    ),
                    (
                        hook(names::SCHED_FORK, Kind::Raw, "sched_wakeup_new"),
                        Vec::new(),
                    ),
                    (
                        hook(names::SCHED_EXIT, Kind::Raw, "sched_process_exit"),
                        Vec::new(),
                    ),
                ],
            ),
            (
                "socket traffic per container",
                vec![
                    (
                        hook(
                            names::CG_SKB_INGRESS,
                            Kind::Cgroup { egress: false },
                            names::CG_SKB_INGRESS,
                        ),
                        Vec::new(),
                    ),
                    (
                        hook(
                            names::CG_SKB_EGRESS,
                            Kind::Cgroup { egress: true },
                            names::CG_SKB_EGRESS,
                        ),
                        Vec::new(),
                    ),
                ],
            ),
        ];
        wanted
            .into_iter()
            .filter_map(|(what, hooks)| {
                Self::read(what, hooks, tracefs)
                    .inspect_err(|error| {
                        tracing::warn!("{what} is unavailable: {}", chain(error));
                    })
                    .ok()
            })
            .collect()
    }

    fn read(
        what: &'static str,
        wanted: Vec<(Hook, Vec<Field>)>,
        tracefs: &Path,
    ) -> Result<Self, DatapathError> {
        let mut globals: Vec<(&'static str, u32)> = Vec::new();
        let mut hooks = Vec::new();
        for (hook, fields) in wanted {
            hooks.push(hook);
            if fields.is_empty() {
                continue;
            }
            // Where the fields are described: the tracepoint's format for a classic one;
            // the kernel's BTF for a raw one, which is passed pointers to kernel structs.
            let (path, source) = if let Kind::Tracepoint(category) = hook.kind {
                let path = tracefs
                    .join("events")
                    .join(category)
                    .join(hook.tracepoint)
                    .join("format");
                let text = std::fs::read_to_string(&path).map_err(io(&path))?;
                (path, Source::Format(text))
            } else {
                let path = PathBuf::from(VMLINUX);
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let types = Btf::parse(&bytes).map_err(|why| DatapathError::TracepointFormat {
                    path: path.clone(),
                    why,
                })?;
                (path, Source::Btf(types))
            };
            for (field, global, min, max) in fields {
                let offset = source
                    .field(field)
                    .and_then(|(offset, size)| {
                        if (min..=max).contains(&size) {
                            Ok(offset)
                        } else {
                            Err(format!("{field} is {size} bytes, not {min} to {max}"))
                        }
                    })
                    .map_err(|why| DatapathError::TracepointFormat {
                        path: path.clone(),
                        why,
                    })?;
                match globals.iter().find(|(g, _)| *g == global) {
                    Some(&(_, known)) if known != offset => {
                        return Err(DatapathError::TracepointFormat {
                            path,
                            why: format!("field {field} at {offset}, not {known} as before"),
                        });
                    }
                    Some(_) => {}
                    None => globals.push((global, offset)),
                }
            }
        }
        Ok(Self {
            what,
            hooks,
            globals,
        })
    }
}

/// The kernel's types, which raw tracepoint programs read struct members by.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatapathError {
    let path = path.to_owned();
    move |source| DatapathError::Io { path, source }
}

/// What describes the fields a hook's program reads.
enum Source {
    /// A classic tracepoint's format file.
    Format(String),
    /// The kernel's BTF (read for the one raw hook that has fields); fields are named
    /// `struct.member`.
    Btf(Btf),
}

impl Source {
    /// The field's offset and size.
    fn field(&self, name: &str) -> Result<(u32, u32), String> {
        match self {
            Self::Format(text) => offset(text, name),
            Self::Btf(types) => {
                let (ty, member) = name.split_once('.').unwrap_or_default();
                types.member(ty, member)
            }
        }
    }
}

const fn hook(program: &'static str, kind: Kind, tracepoint: &'static str) -> Hook {
    Hook {
        program,
        kind,
        tracepoint,
    }
}

/// The offset and size of `wanted` in a tracepoint's format, from lines such as
/// `field:dev_t dev; offset:8; size:4; signed:0;` (tab-separated).
fn offset(format: &str, wanted: &str) -> Result<(u32, u32), String> {
    for line in format.lines() {
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';').map(str::trim) {
            if let Some(decl) = part.strip_prefix("field:") {
                let last = decl.rsplit(' ').next().unwrap_or_default();
                name = Some(last.split('[').next().unwrap_or_default());
            } else if let Some(n) = part.strip_prefix("offset:") {
                offset = n.parse::<u32>().ok();
            } else if let Some(n) = part.strip_prefix("size:") {
                size = n.parse::<u32>().ok();
            }
        }
        if name != Some(wanted) {
            continue;
        }
        return offset
            .zip(size)
            .ok_or_else(|| format!("field {wanted} has no offset and size: {line}"));
    }
    Err(format!("no field {wanted}"))
}

/// Socket traffic by container cgroup id.
pub type SocketsByCgroup = HashMap<u64, SocketCounters>;
/// Run-queue latency and context switches by container cgroup id.
pub type SchedByCgroup = HashMap<u64, SchedStats>;
/// Block request latency by container cgroup id: (device, write) and the histogram.
pub type LatencyByCgroup = HashMap<u64, Vec<(LatencyKey, Latency)>>;

/// What the host-wide hooks counted, each `None` where its family is not attached.
#[derive(Clone, Debug, Default)]
pub struct EventReadings {
    pub block: Option<BlockByCgroup>,
    pub block_latency: Option<LatencyByCgroup>,
    pub sched: Option<SchedByCgroup>,
    pub sockets: Option<SocketsByCgroup>,
}

/// The families this kernel allows, before the object is loaded.
pub(super) struct Plan(Vec<Family>);

impl Plan {
    pub(super) fn probe(tracefs: &Path) -> Self {
        Self(Family::probe(tracefs))
    }

    /// Sets the record offsets the programs read.
    pub(super) fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        for (name, value) in self.0.iter().flat_map(|f| &f.globals) {
            loader.override_global(name, value, true);
        }
    }
}

/// The pinned tracepoint links and their maps.
pub(super) struct Events {
    /// Container cgroup id → its slot in `sched`.
    watched: BpfHashMap<MapData, u64, u32>,
    version: Array<MapData, u64>,
    levels: Array<MapData, u64>,
    io: PerCpuHashMap<MapData, BlockKey, BlockCounters>,
    latency: PerCpuHashMap<MapData, LatencyKey, Latency>,
    sched: PerCpuArray<MapData, SchedStats>,
    cpus: usize,
    /// An LRU hash map; aya reads it as a hash map.
    tasks: BpfHashMap<MapData, u64, TaskState>,
    sockets: PerCpuHashMap<MapData, u64, SocketCounters>,
    /// The families attached, by what they give.
    attached: Vec<&'static str>,
    /// Their hooks, for the upgrade's swap.
    hooks: Vec<Hook>,
}

impl Events {
    /// Adopts each family's pinned links, or attaches and pins them; `fresh` as for
    /// [`super::caps::Pacing::open`]. A family that fails is warned about, its new links
    /// taken away again, and left out.
    pub(super) fn open(
        ebpf: &mut Ebpf,
        layout: &Layout,
        plan: &Plan,
        unified: Option<&Path>,
        fresh: bool,
        cpus: usize,
    ) -> Result<Self, DatapathError> {
        let mut attached = Vec::new();
        let mut hooks = Vec::new();
        for family in &plan.0 {
            let mut linked = Vec::new();
            let result = family
                .hooks
                .iter()
                .try_for_each(|h| attach(ebpf, layout, *h, unified, fresh, &mut linked));
            match result {
                Ok(()) => {
                    attached.push(family.what);
                    hooks.extend(family.hooks.iter().copied());
                }
                Err(error) => {
                    tracing::warn!("{} is unavailable: {}", family.what, chain(&error));
                    for link in linked {
                        let _ = std::fs::remove_file(link);
                    }
                }
            }
        }
        Ok(Self {
            watched: super::take_map(ebpf, names::WATCHED_CGROUPS)?,
            version: super::take_map(ebpf, names::WATCHED_VERSION)?,
            levels: super::take_map(ebpf, names::CGROUP_LEVELS)?,
            io: super::take_map(ebpf, names::BLOCK_IO)?,
            latency: super::take_map(ebpf, names::BLOCK_LATENCY)?,
            sched: super::take_map(ebpf, names::SCHED_STATS)?,
            tasks: super::take_map(ebpf, names::TASKS)?,
            sockets: super::take_map(ebpf, names::SOCKET_TRAFFIC)?,
            cpus,
            attached,
            hooks,
        })
    }

    pub(super) fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// Counts for exactly the cgroups in `ids` (container id → its level in the v2
    /// hierarchy); drops what was counted for the others.
    pub(super) fn reconcile(&mut self, ids: &HashMap<u64, u32>) -> Result<(), DatapathError> {
        let levels = ids
            .values()
            .filter(|&&l| l < 64)
            .fold(0_u64, |acc, &l| acc | 1 << l);
        if self.levels.get(&0, 0)? != levels {
            self.levels.set(0, levels, 0)?;
        }
        let gone = |id: &u64| !ids.contains_key(id);
        let stale: Vec<BlockKey> = self
            .io
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone(&k.cgroup_id))
            .collect();
        for key in stale {
            self.io.remove(&key)?;
        }
        let stale: Vec<LatencyKey> = self
            .latency
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone(&k.cgroup_id))
            .collect();
        for key in stale {
            self.latency.remove(&key)?;
        }
        let stale: Vec<u64> = self
            .tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, t)| gone(&t.container))
            .map(|(task, _)| task)
            .collect();
        for task in stale {
            // A thread that exited meanwhile is gone already.
            let _ = self.tasks.remove(&task);
        }
        // Last: a slot freed by the containers that left is given again only at a later
        // call, after this pruning has taken their threads' entries (which name the slot)
        // out of `TASKS` again, should a switch have put one back meanwhile.
        self.watch(ids)
    }

    /// Makes `WATCHED_CGROUPS` hold exactly `ids`, each with a slot of `SCHED_STATS` (zeroed
    /// when given; [`NO_SLOT`] while all are taken), and bumps `WATCHED_VERSION` after a
    /// change. A slot freed now is given again only at a later call: until then a switch may
    /// still count into it for the container that left.
    fn watch(&mut self, ids: &HashMap<u64, u32>) -> Result<(), DatapathError> {
        let watched: HashMap<u64, u32> = self.watched.iter().filter_map(Result::ok).collect();
        let taken: HashSet<u32> = watched.values().copied().collect();
        let mut changed = false;
        for id in watched.keys().filter(|id| !ids.contains_key(id)) {
            self.watched.remove(id)?;
            changed = true;
        }
        let mut free = (0..self.sched.len()).filter(|slot| !taken.contains(slot));
        let mut given = Vec::new();
        for &id in ids.keys() {
            // A container that found no slot earlier tries again.
            let before = watched.get(&id).copied();
            if before.is_some_and(|slot| slot != NO_SLOT) {
                continue;
            }
            let slot = free.next().unwrap_or(NO_SLOT);
            if slot != NO_SLOT {
                self.sched
                    .set(slot, super::zeros::<SchedStats>(self.cpus)?, 0)?;
            } else if before.is_none() {
                tracing::warn!(
                    "no room for the run-queue statistics of container cgroup {id}: all {} \
                     slots are taken",
                    self.sched.len()
                );
            } else {
                continue;
            }
            given.push((id, slot));
        }
        for (id, slot) in given {
            self.watched.insert(id, slot, 0)?;
            changed = true;
        }
        if changed {
            let version = self.version.get(&0, 0)?;
            self.version.set(0, version.wrapping_add(1), 0)?;
        }
        Ok(())
    }

    /// Everything counted, summed over CPUs.
    pub(super) fn readings(&self) -> Result<EventReadings, DatapathError> {
        let has = |what: &str| self.attached.iter().any(|a| a.starts_with(what));
        let mut out = EventReadings::default();
        if has("block IO per") {
            let mut block: BlockByCgroup = HashMap::new();
            for entry in &self.io {
                let (key, per_cpu) = entry?;
                let sum = per_cpu
                    .iter()
                    .fold(BlockCounters::default(), |acc, c| acc.plus(*c));
                block.entry(key.cgroup_id).or_default().push((key, sum));
            }
            for devices in block.values_mut() {
                devices.sort_by_key(|(k, _)| k.dev);
            }
            out.block = Some(block);
        }
        if has("block IO latency") {
            let mut latency: LatencyByCgroup = HashMap::new();
            for entry in &self.latency {
                let (key, per_cpu) = entry?;
                let sum = per_cpu.iter().fold(Latency::default(), Latency::plus);
                latency.entry(key.cgroup_id).or_default().push((key, sum));
            }
            for devices in latency.values_mut() {
                devices.sort_by_key(|(k, _)| (k.dev, k.write));
            }
            out.block_latency = Some(latency);
        }
        if has("run-queue") {
            let mut sched = HashMap::new();
            for entry in &self.watched {
                let (id, slot) = entry?;
                if slot != NO_SLOT {
                    let per_cpu = self.sched.get(&slot, 0)?;
                    let sum = per_cpu.iter().fold(SchedStats::default(), SchedStats::plus);
                    sched.insert(id, sum);
                }
            }
            out.sched = Some(sched);
        }
        if has("socket traffic") {
            let mut sockets = HashMap::new();
            for entry in &self.sockets {
                let (id, per_cpu) = entry?;
                let sum = per_cpu
                    .iter()
                    .fold(SocketCounters::default(), SocketCounters::plus);
                sockets.insert(id, sum);
            }
            out.sockets = Some(sockets);
        }
        Ok(out)
    }
}

/// Loads and pins `hook`'s program (a fresh build, or none pinned) and attaches it unless
/// its link is pinned already; a link it makes is added to `linked`.
fn attach(
    ebpf: &mut Ebpf,
    layout: &Layout,
    hook: Hook,
    unified: Option<&Path>,
    fresh: bool,
    linked: &mut Vec<std::path::PathBuf>,
) -> Result<(), DatapathError> {
    let link = layout.global().join(hook.tracepoint);
    let new_link = !link.exists();
    if !(new_link || fresh) {
        return Ok(());
    }
    let name = hook.program;
    let prog_err = program_err(name);
    let program = ebpf.program_mut(name).ok_or(DatapathError::Missing(name))?;
    let pin = layout.progs().join(name);
    let made: Option<FdLink> = match hook.kind {
        Kind::Tracepoint(category) => {
            let prog: &mut TracePoint = program.try_into().map_err(&prog_err)?;
            prog.load().map_err(&prog_err)?;
            super::repin(&pin, |path| prog.pin(path))?;
            if new_link {
                let id = prog.attach(category, hook.tracepoint).map_err(&prog_err)?;
                Some(fd_link(prog.take_link(id).map_err(&prog_err)?, &link)?)
            } else {
                None
            }
        }
        Kind::Raw => {
            let prog: &mut RawTracePoint = program.try_into().map_err(&prog_err)?;
            prog.load().map_err(&prog_err)?;
            super::repin(&pin, |path| prog.pin(path))?;
            if new_link {
                let id = prog.attach(hook.tracepoint).map_err(&prog_err)?;
                Some(FdLink::from(prog.take_link(id).map_err(&prog_err)?))
            } else {
                None
            }
        }
        Kind::Cgroup { egress } => {
            let root = unified.ok_or(DatapathError::NoUnifiedCgroup)?;
            let prog: &mut CgroupSkb = program.try_into().map_err(&prog_err)?;
            prog.load().map_err(&prog_err)?;
            super::repin(&pin, |path| prog.pin(path))?;
            if new_link {
                let cgroup = File::open(root).map_err(|source| DatapathError::Io {
                    path: root.to_owned(),
                    source,
                })?;
                // A link is one of many on the cgroup whatever the mode (and 6.18 rejects
                // BPF_F_ALLOW_MULTI in link flags).
                let id = prog
                    .attach(cgroup, attach_type(egress), CgroupAttachMode::Single)
                    .map_err(&prog_err)?;
                Some(fd_link(prog.take_link(id).map_err(&prog_err)?, &link)?)
            } else {
                None
            }
        }
    };
    if let Some(made) = made {
        made.pin(&link).map_err(|source| DatapathError::Pin {
            path: link.clone(),
            source,
        })?;
        linked.push(link);
    }
    Ok(())
}

fn fd_link<L>(link: L, path: &Path) -> Result<FdLink, DatapathError>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    link.try_into().map_err(|source| DatapathError::Link {
        path: path.to_owned(),
        source,
    })
}

const fn attach_type(egress: bool) -> CgroupSkbAttachType {
    if egress {
        CgroupSkbAttachType::Egress
    } else {
        CgroupSkbAttachType::Ingress
    }
}

/// Attaches the program pinned for `hook` (this build's, after an upgrade) in place of the
/// one its pinned link runs, if they differ: the new link first, then the old one goes,
/// so the tracepoint is never without a program.
pub(super) fn swap(layout: &Layout, hook: Hook) -> Result<(), DatapathError> {
    let link = layout.global().join(hook.tracepoint);
    if !link.exists() {
        return Ok(());
    }
    let name = hook.program;
    let prog_err = program_err(name);
    let pin = layout.progs().join(name);
    let link_err = |source| DatapathError::Link {
        path: link.clone(),
        source,
    };
    let old = FdLink::from(PinnedLink::from_pin(&link).map_err(link_err)?);
    let running = old.info().map_err(link_err)?.program_id();
    let next = layout.global().join(format!("{}-next", hook.tracepoint));
    let made = match hook.kind {
        Kind::Tracepoint(category) => {
            let mut prog = TracePoint::from_pin(&pin).map_err(&prog_err)?;
            if prog.info().map_err(&prog_err)?.id() == running {
                return Ok(());
            }
            let id = prog.attach(category, hook.tracepoint).map_err(&prog_err)?;
            fd_link(prog.take_link(id).map_err(&prog_err)?, &next)?
        }
        Kind::Raw => {
            let mut prog = RawTracePoint::from_pin(&pin).map_err(&prog_err)?;
            if prog.info().map_err(&prog_err)?.id() == running {
                return Ok(());
            }
            let id = prog.attach(hook.tracepoint).map_err(&prog_err)?;
            FdLink::from(prog.take_link(id).map_err(&prog_err)?)
        }
        Kind::Cgroup { egress } => {
            // A cgroup link takes a new program in place.
            let prog = CgroupSkb::from_pin(&pin, attach_type(egress)).map_err(&prog_err)?;
            if prog.info().map_err(&prog_err)?.id() != running {
                let fd = prog.fd().map_err(&prog_err)?;
                super::sys::link_update(&link, fd.as_fd()).map_err(|source| DatapathError::Io {
                    path: link.clone(),
                    source,
                })?;
            }
            return Ok(());
        }
    };
    made.pin(&next).map_err(|source| DatapathError::Pin {
        path: next.clone(),
        source,
    })?;
    drop(old);
    super::upgrade::unpin(&link)?;
    std::fs::rename(&next, &link).map_err(|source| DatapathError::Io { path: next, source })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Family, Kind, offset};

    /// `block_bio_queue` on 6.18 (rwbs grew from 8 to 10 bytes in 6.x).
    const FORMAT_6_18: &str = "name: block_bio_queue
ID: 2097
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char rwbs[10];\toffset:28;\tsize:10;\tsigned:0;
\tfield:char comm[16];\toffset:38;\tsize:16;\tsigned:0;
";

    #[test]
    fn reads_offsets_and_sizes_from_the_format() {
        assert_eq!(offset(FORMAT_6_18, "dev"), Ok((8, 4)));
        assert_eq!(offset(FORMAT_6_18, "nr_sector"), Ok((24, 4)));
        assert_eq!(offset(FORMAT_6_18, "rwbs"), Ok((28, 10)));
        assert_eq!(offset(FORMAT_6_18, "sector"), Ok((16, 8)));
        let moved = FORMAT_6_18.replace("offset:24", "offset:32");
        assert_eq!(offset(&moved, "nr_sector"), Ok((32, 4)));
        let gone = FORMAT_6_18.replace("nr_sector", "nr_sectors");
        assert_eq!(offset(&gone, "nr_sector"), Err("no field nr_sector".into()));
    }

    #[test]
    fn refuses_fields_it_cannot_read() {
        let dir = std::env::temp_dir().join(format!("dockops-format-{}", std::process::id()));
        let event = dir.join("events/block/block_bio_queue");
        std::fs::create_dir_all(&event).unwrap();
        let hooks = || {
            vec![(
                super::hook(
                    "block_bio_acct",
                    Kind::Tracepoint("block"),
                    "block_bio_queue",
                ),
                vec![
                    ("dev", "BLOCK_DEV_OFFSET", 4, 4),
                    ("rwbs", "BLOCK_RWBS_OFFSET", 8, 64),
                ],
            )]
        };
        std::fs::write(event.join("format"), FORMAT_6_18).unwrap();
        let family = Family::read("block IO", hooks(), &dir).unwrap();
        assert_eq!(
            family.globals,
            [("BLOCK_DEV_OFFSET", 8), ("BLOCK_RWBS_OFFSET", 28)]
        );
        let wide = FORMAT_6_18.replace(
            "dev_t dev;\toffset:8;\tsize:4",
            "dev_t dev;\toffset:8;\tsize:8",
        );
        std::fs::write(event.join("format"), wide).unwrap();
        let error = Family::read("block IO", hooks(), &dir).unwrap_err();
        assert!(
            error.to_string().ends_with("dev is 8 bytes, not 4 to 4"),
            "{error}"
        );
        let short = FORMAT_6_18.replace(
            "rwbs[10];\toffset:28;\tsize:10",
            "rwbs[6];\toffset:28;\tsize:6",
        );
        std::fs::write(event.join("format"), short).unwrap();
        assert!(Family::read("block IO", hooks(), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_request_members_from_the_kernels_btf() {
        let hooks = vec![(
            super::hook("block_rq_start", Kind::Raw, "block_rq_issue"),
            vec![
                ("request.q", "RQ_QUEUE_OFFSET", 8, 8),
                ("gendisk.first_minor", "DISK_FIRST_MINOR_OFFSET", 4, 4),
            ],
        )];
        let family = Family::read("latency", hooks, Path::new("/nonexistent")).unwrap();
        assert_eq!(family.globals[0], ("RQ_QUEUE_OFFSET", 0));
        let wrong = vec![(
            super::hook("block_rq_start", Kind::Raw, "block_rq_issue"),
            vec![("request.q", "RQ_QUEUE_OFFSET", 4, 4)],
        )];
        let error = Family::read("latency", wrong, Path::new("/nonexistent")).unwrap_err();
        assert!(
            error.to_string().contains("request.q is 8 bytes"),
            "{error}"
        );
    }
}
