//! `dockops-bpf limit` and `unlimit`: bandwidth caps in the pinned datapath, and CPU, memory,
//! pids and block IO limits, set live on running containers, all or nothing.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::Context as _;
use dockops::{
    datapath::{DatapathError, QueueError},
    discovery::Container,
    limits::{LimitError, Plan},
    policy::{
        check_burst, check_burst_packet, default_burst, labels, parse_burst, parse_rate,
        resources::{self, CpuList, DeviceLimit, IoKind, ResourceError, Resources, Swap, Unset},
    },
};
use dockops_common::Caps;
use futures::{StreamExt as _, stream};

use super::{Agent, InputError, TcAttach, select::Selection};

/// A flag's parser for clap: its message without the flag name, which clap adds.
fn why<T>(result: Result<T, ResourceError>) -> Result<T, String> {
    result.map_err(|e| match e {
        ResourceError::Value { why, .. } => why,
        ResourceError::Conflict(text) => text,
    })
}

#[derive(clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line switches, each a flag of its own"
)]
pub struct LimitArgs {
    #[command(flatten)]
    select: Selection,
    /// Cap on what the container sends, in tc units: 50mbit, 1.5gbit, 10mbps (bytes/s)...
    #[arg(long, value_name = "RATE", value_parser = parse_rate, help_heading = "Network")]
    egress: Option<u64>,
    /// Cap on what the container receives, in the same units.
    #[arg(long, value_name = "RATE", value_parser = parse_rate, help_heading = "Network")]
    ingress: Option<u64>,
    /// Bucket of the tc hard cap behind the pacing (e.g. 256kb); default 200 ms at the
    /// larger cap, at least 128 KiB. At least one full-size packet, and what the cap sends in
    /// one kernel clock tick (1–10 ms).
    #[arg(long, value_name = "SIZE", value_parser = parse_burst, help_heading = "Network")]
    burst: Option<u64>,
    /// Do not pace same-host TCP senders: only the tc hard cap (ECN marking, then drops)
    /// holds the rate, as it does for senders beyond this host. For tests and benchmarks.
    #[arg(long, help_heading = "Network")]
    no_pacing: bool,
    /// Hold the ingress cap with a queue (HTB on the host veth) instead of the token bucket:
    /// packets wait rather than being marked or dropped. Smoother rates for senders that are
    /// not paced, at the cost of queueing delay: the queue holds 50 ms at the cap (at least
    /// 128 KiB, ~100 ms at 10 Mbit/s).
    #[arg(long, help_heading = "Network")]
    queue: bool,
    /// Hold the ingress cap with an earliest-departure-time schedule instead of the token
    /// bucket: the tc program stamps each packet's departure time at the cap and an fq qdisc
    /// on the host veth holds it until then. Packets wait rather than drop (up to --burst's
    /// worth of time; ECN-capable ones are marked past half of it), with fq's per-flow
    /// fairness. Needs `sch_fq` (`dockops-bpf probe`).
    #[arg(long, help_heading = "Network", conflicts_with = "queue")]
    edt: bool,
    #[command(flatten)]
    resources: ResourceArgs,
    /// Set --memory even at or below what the container uses now (it is then reclaimed, or
    /// OOM-killed).
    #[arg(long)]
    force: bool,
}

/// Docker's flag names and units. CPU, memory and pids go through Docker's update API
/// (`docker inspect` shows them, restarts keep them); block IO throttles are written to the
/// cgroup and re-applied by dockops after restarts.
#[derive(clap::Args)]
struct ResourceArgs {
    /// CPU quota in CPUs, e.g. 0.5 or 1.5 (Docker's `NanoCpus`).
    #[arg(long, value_name = "N", value_parser = |s: &str| why(resources::parse_cpus(s)),
          help_heading = "CPU")]
    cpus: Option<u64>,
    /// Relative CPU weight, 2 to 262144 (default 1024; cgroup v2: converted to cpu.weight).
    #[arg(long, value_name = "N", value_parser = |s: &str| why(resources::parse_cpu_shares(s)),
          help_heading = "CPU")]
    cpu_shares: Option<u64>,
    /// CFS period, microseconds (1000 to 1000000), with --cpu-quota.
    #[arg(long, value_name = "US", value_parser = |s: &str| why(resources::parse_cpu_period(s)),
          help_heading = "CPU")]
    cpu_period: Option<u64>,
    /// CFS quota per period, microseconds (at least 1000).
    #[arg(long, value_name = "US", value_parser = |s: &str| why(resources::parse_cpu_quota(s)),
          help_heading = "CPU")]
    cpu_quota: Option<u64>,
    /// CPUs the container may run on, e.g. 0-3,6.
    #[arg(long, value_name = "LIST",
          value_parser = |s: &str| why(resources::parse_cpuset("cpuset-cpus", s)),
          help_heading = "CPU")]
    cpuset_cpus: Option<CpuList>,
    /// Memory nodes the container may use, e.g. 0.
    #[arg(long, value_name = "LIST",
          value_parser = |s: &str| why(resources::parse_cpuset("cpuset-mems", s)),
          help_heading = "CPU")]
    cpuset_mems: Option<CpuList>,
    /// Memory limit, e.g. 512m, 2g (at least 6m). Without --memory-swap, swap as large
    /// again (as `docker run --memory`), or unlimited if it was.
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| why(resources::parse_memory(s)),
          help_heading = "Memory")]
    memory: Option<u64>,
    /// Memory plus swap (Docker's meaning), or -1 for unlimited swap. Needs swap accounting.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true,
          value_parser = |s: &str| why(resources::parse_memory_swap(s)),
          help_heading = "Memory")]
    memory_swap: Option<Swap>,
    /// Soft limit the kernel reclaims down to under memory pressure (v2: memory.low).
    #[arg(long, value_name = "SIZE",
          value_parser = |s: &str| why(resources::parse_memory_reservation(s)),
          help_heading = "Memory")]
    memory_reservation: Option<u64>,
    /// Most tasks (processes and threads) the container may have.
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = |s: &str| why(resources::parse_pids_limit(s)),
          help_heading = "Pids")]
    pids_limit: Option<u64>,
    /// Read rate from a device, DEV:RATE (e.g. /dev/vda:10mb). DEV is a block device or any
    /// path on a filesystem (its disk is throttled). Repeatable.
    #[arg(long, value_name = "DEV:RATE",
          value_parser = |s: &str| why(resources::parse_device(IoKind::ReadBps, s)),
          help_heading = "Block IO")]
    device_read_bps: Vec<DeviceLimit>,
    /// Write rate to a device, DEV:RATE.
    #[arg(long, value_name = "DEV:RATE",
          value_parser = |s: &str| why(resources::parse_device(IoKind::WriteBps, s)),
          help_heading = "Block IO")]
    device_write_bps: Vec<DeviceLimit>,
    /// Read operations per second from a device, DEV:N.
    #[arg(long, value_name = "DEV:N",
          value_parser = |s: &str| why(resources::parse_device(IoKind::ReadIops, s)),
          help_heading = "Block IO")]
    device_read_iops: Vec<DeviceLimit>,
    /// Write operations per second to a device, DEV:N.
    #[arg(long, value_name = "DEV:N",
          value_parser = |s: &str| why(resources::parse_device(IoKind::WriteIops, s)),
          help_heading = "Block IO")]
    device_write_iops: Vec<DeviceLimit>,
    /// Size of the container's writable layer, e.g. 10g (the btrfs storage driver: a qgroup
    /// limit, as `--storage-opt size` sets at create time).
    #[arg(long, value_name = "SIZE",
          value_parser = |s: &str| why(resources::parse_storage_size(s)),
          help_heading = "Storage")]
    storage_size: Option<u64>,
}

impl ResourceArgs {
    fn request(self) -> Resources {
        Resources {
            nano_cpus: self.cpus,
            cpu_shares: self.cpu_shares,
            cpu_period: self.cpu_period,
            cpu_quota: self.cpu_quota,
            cpuset_cpus: self.cpuset_cpus,
            cpuset_mems: self.cpuset_mems,
            memory: self.memory,
            memory_swap: self.memory_swap,
            memory_reservation: self.memory_reservation,
            pids_limit: self.pids_limit,
            io: [
                self.device_read_bps,
                self.device_write_bps,
                self.device_read_iops,
                self.device_write_iops,
            ]
            .concat(),
            storage: self.storage_size,
        }
    }
}

#[derive(clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per limit, as docker has"
)]
pub struct UnlimitArgs {
    #[command(flatten)]
    select: Selection,
    /// Remove every limit dockops can set (caps, CPU, memory, pids, block IO).
    #[arg(long)]
    all: bool,
    /// Remove the egress cap.
    #[arg(long)]
    egress: bool,
    /// Remove the ingress cap.
    #[arg(long)]
    ingress: bool,
    /// Remove the CPU quota (--cpus, or --cpu-period/--cpu-quota).
    #[arg(long)]
    cpus: bool,
    /// Back to the default weight (1024 shares).
    #[arg(long)]
    cpu_shares: bool,
    /// Every online CPU.
    #[arg(long)]
    cpuset_cpus: bool,
    /// Every online memory node.
    #[arg(long)]
    cpuset_mems: bool,
    /// Remove the memory limit (and the swap limit with it).
    #[arg(long)]
    memory: bool,
    /// Unlimited swap.
    #[arg(long)]
    memory_swap: bool,
    #[arg(long)]
    memory_reservation: bool,
    #[arg(long)]
    pids_limit: bool,
    /// Remove read throttles on every device.
    #[arg(long)]
    device_read_bps: bool,
    #[arg(long)]
    device_write_bps: bool,
    #[arg(long)]
    device_read_iops: bool,
    #[arg(long)]
    device_write_iops: bool,
    /// Remove the writable layer's size limit.
    #[arg(long)]
    storage_size: bool,
}

impl UnlimitArgs {
    fn unset(&self) -> Unset {
        if self.all {
            return Unset::all();
        }
        let io = [
            (self.device_read_bps, IoKind::ReadBps),
            (self.device_write_bps, IoKind::WriteBps),
            (self.device_read_iops, IoKind::ReadIops),
            (self.device_write_iops, IoKind::WriteIops),
        ];
        Unset {
            cpus: self.cpus,
            cpu_shares: self.cpu_shares,
            cpuset_cpus: self.cpuset_cpus,
            cpuset_mems: self.cpuset_mems,
            memory: self.memory,
            memory_swap: self.memory_swap,
            memory_reservation: self.memory_reservation,
            pids_limit: self.pids_limit,
            io: io.iter().filter(|(on, _)| *on).map(|&(_, k)| k).collect(),
            storage: self.storage_size,
        }
    }
}

/// One container's change: its checked resource plan and, when caps change, the caps
/// before and after.
struct Change {
    container: Container,
    plan: Plan,
    caps: Option<(Caps, Caps)>,
}

pub async fn limit(args: LimitArgs, tc_attach: TcAttach) -> anyhow::Result<()> {
    let network = args.egress.is_some() || args.ingress.is_some();
    let request = args.resources.request();
    if !network && request.is_empty() {
        return Err(InputError(
            "give at least one limit: --egress/--ingress RATE, --cpus N, --memory SIZE, \
             --pids-limit N, --device-write-bps DEV:RATE... (see --help)"
                .into(),
        )
        .into());
    }
    if !network && (args.burst.is_some() || args.no_pacing || args.queue || args.edt) {
        return Err(InputError(
            "--burst, --no-pacing, --queue and --edt shape a bandwidth cap: give --egress or \
             --ingress"
                .into(),
        )
        .into());
    }
    for (flag, given) in [("--queue", args.queue), ("--edt", args.edt)] {
        if given && args.ingress.is_none() {
            return Err(InputError(format!(
                "{flag} holds the ingress cap: give --ingress RATE with it"
            ))
            .into());
        }
    }
    let mut agent = Agent::start(tc_attach.mode()).await?;
    if args.edt && !agent.caps.fq().usable() {
        return Err(InputError(format!(
            "--edt needs the fq qdisc (sch_fq), which kernel {} lacks (see `dockops-bpf \
             probe`): cap without --edt, or with --queue",
            agent.caps.kernel
        ))
        .into());
    }
    agent.refresh(&HashSet::new()).await?;
    let targets: Vec<Container> = args
        .select
        .pick(&agent.containers)?
        .into_iter()
        .cloned()
        .collect();
    let usage = if request.memory.is_some() {
        memory_usage(&mut agent, &targets)?
    } else {
        HashMap::new()
    };
    let caps_change = |old: Caps, largest: u64| {
        let egress_bits = args.egress.unwrap_or(old.egress_bits);
        let ingress_bits = args.ingress.unwrap_or(old.ingress_bits);
        let burst_bytes = args
            .burst
            .unwrap_or_else(|| default_burst(egress_bits.max(ingress_bits)).max(largest));
        Caps {
            egress_bits,
            ingress_bits,
            burst_bytes,
            flags: if args.no_pacing { Caps::NO_PACING } else { 0 }
                | if args.queue { Caps::QUEUE } else { 0 }
                | if args.edt { Caps::EDT } else { 0 },
            ..old
        }
    };
    let changes = prepare(
        &agent,
        targets,
        (&request, &Unset::default()),
        &usage,
        args.force,
        network.then_some(&caps_change as &dyn Fn(Caps, u64) -> Caps),
    )
    .await?;
    apply(&mut agent, &changes).await?;
    let set = request.held_names();
    agent.datapath.update_state(|desired| {
        for change in &changes {
            desired.record_limits(&change.container.id, &set, &[], &change.plan.throttles, &[]);
        }
    })?;
    for change in &changes {
        report(change, Some(&request), None);
    }
    Ok(())
}

pub async fn unlimit(args: UnlimitArgs, tc_attach: TcAttach) -> anyhow::Result<()> {
    let unset = args.unset();
    // No flag at all: both caps, as before there were other limits.
    let bare = unset.is_empty() && !args.egress && !args.ingress;
    let (egress, ingress) = (
        args.all || bare || args.egress,
        args.all || bare || args.ingress,
    );
    let mut agent = Agent::start(tc_attach.mode()).await?;
    agent.refresh(&HashSet::new()).await?;
    let targets: Vec<Container> = args
        .select
        .pick(&agent.containers)?
        .into_iter()
        .cloned()
        .collect();
    let caps_change = |old: Caps, _| Caps {
        egress_bits: if egress { 0 } else { old.egress_bits },
        ingress_bits: if ingress { 0 } else { old.ingress_bits },
        ..old
    };
    let changes = prepare(
        &agent,
        targets,
        (&Resources::default(), &unset),
        &HashMap::new(),
        false,
        (egress || ingress).then_some(&caps_change as &dyn Fn(Caps, u64) -> Caps),
    )
    .await?;
    apply(&mut agent, &changes).await?;
    let cleared = unset.held_names();
    agent.datapath.update_state(|desired| {
        for change in &changes {
            desired.record_limits(&change.container.id, &[], &cleared, &[], &unset.io);
        }
    })?;
    for change in &changes {
        report(change, None, Some(&unset));
        let (declared, _) = labels::declared(&change.container.labels);
        if change.caps.is_some()
            && (declared.egress_bits.is_some() || declared.ingress_bits.is_some())
        {
            println!(
                "{}: its dockops.egress/ingress labels cap it again at the next refresh (labels \
                 apply where `limit` set no cap)",
                change.container.name
            );
        }
    }
    Ok(())
}

/// Memory in use now, by container id (a limit at or below it needs --force).
fn memory_usage(agent: &mut Agent, targets: &[Container]) -> anyhow::Result<HashMap<String, u64>> {
    let ids: HashSet<&str> = targets.iter().map(|c| c.id.as_str()).collect();
    let snapshot = agent.snapshot(|c| ids.contains(c.id.as_str()))?;
    Ok(snapshot
        .containers
        .into_iter()
        .map(|c| (c.id, c.memory.usage_bytes))
        .collect())
}

/// Containers planned, or updated, at once: each plan asks Docker, each update runs runc.
const PARALLEL: usize = 4;

/// Plans every container's change (`what`: limits to set and to remove; `caps`: how the
/// bandwidth caps change), several at a time. Changes nothing.
async fn prepare(
    agent: &Agent,
    targets: Vec<Container>,
    (request, unset): (&Resources, &Unset),
    usage: &HashMap<String, u64>,
    force: bool,
    caps: Option<&dyn Fn(Caps, u64) -> Caps>,
) -> anyhow::Result<Vec<Change>> {
    let plans: Vec<Result<Plan, LimitError>> = stream::iter(&targets)
        .map(|c| {
            agent
                .limiter
                .plan(c, request, unset, usage.get(&c.id).copied(), force)
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let caps_now = if caps.is_some() {
        agent.datapath.caps()?
    } else {
        HashMap::new()
    };
    let mut changes = Vec::with_capacity(targets.len());
    for (container, plan) in targets.into_iter().zip(plans) {
        let plan = plan.map_err(|e| limit_error(&container, e))?;
        let caps = caps
            .map(|change| plan_caps(agent, &caps_now, &container, change))
            .transpose()?;
        changes.push(Change {
            container,
            plan,
            caps,
        });
    }
    Ok(changes)
}

/// The container's caps now (in `caps_now`, by address) and after `change` (given them and
/// the largest packet its veths pass), checked.
fn plan_caps(
    agent: &Agent,
    caps_now: &HashMap<IpAddr, Caps>,
    container: &Container,
    change: &dyn Fn(Caps, u64) -> Caps,
) -> anyhow::Result<(Caps, Caps)> {
    let old = container
        .addresses()
        .next()
        .and_then(|ip| caps_now.get(&ip).copied())
        .unwrap_or_default();
    let largest = container.largest_packet();
    let new = change(old, largest);
    let fastest = new.egress_bits.max(new.ingress_bits);
    if fastest != 0 {
        check_burst(new.burst_bytes, fastest, agent.caps.clock_tick_ns)
            .and_then(|()| check_burst_packet(new.burst_bytes, largest))
            .map_err(|e| InputError(e.to_string()))?;
    }
    if new != old && container.addresses().next().is_none() {
        let why = container.notes.first().map_or(
            "it has no IP address of its own (--network host or none?)",
            String::as_str,
        );
        return Err(InputError(format!(
            "container {} cannot be capped: {why}",
            container.name
        ))
        .into());
    }
    Ok((old, new))
}

/// Applies every change, or none: resource limits several containers at a time, then the
/// caps; when anything fails, what was changed is put back and the error says so.
async fn apply(agent: &mut Agent, changes: &[Change]) -> anyhow::Result<()> {
    let results: Vec<Result<(), LimitError>> = stream::iter(changes)
        .map(|c| agent.limiter.apply(&c.plan))
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut error = None;
    let mut applied = Vec::new();
    for (change, result) in changes.iter().zip(results) {
        match result {
            Ok(()) => applied.push(change),
            Err(e) => {
                error.get_or_insert_with(|| limit_error(&change.container, e));
            }
        }
    }
    let mut capped = Vec::new();
    if error.is_none() {
        for change in changes {
            // Nothing to change (unlimit of a container without caps, which may have no
            // address to cap at all).
            let Some((_, new)) = change.caps.filter(|(old, new)| old != new) else {
                continue;
            };
            match set_caps(agent, &change.container, new) {
                Ok(()) => capped.push(change),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    let Some(error) = error else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for change in capped.iter().rev() {
        if let Some((old, _)) = change.caps
            && let Err(e) = agent.datapath.set_caps(&change.container, old)
        {
            failed.push(format!("{}: caps: {e}", change.container.name));
        }
    }
    let undone: Vec<Vec<LimitError>> = stream::iter(&applied)
        .map(|c| agent.limiter.undo(&c.plan))
        .buffered(PARALLEL)
        .collect()
        .await;
    for (change, errors) in applied.iter().zip(undone) {
        failed.extend(
            errors
                .iter()
                .map(|e| format!("{}: {e}", change.container.name)),
        );
    }
    let context = if failed.is_empty() {
        "nothing was changed".to_owned()
    } else {
        format!("and putting back failed too: {}", failed.join("; "))
    };
    Err(error.context(context))
}

fn set_caps(agent: &mut Agent, container: &Container, caps: Caps) -> anyhow::Result<()> {
    match agent.datapath.set_caps(container, caps) {
        Err(DatapathError::Queue(
            e @ (QueueError::Occupied { .. } | QueueError::Unsupported { .. }),
        )) => Err(InputError(e.to_string()).into()),
        other => other.with_context(|| format!("capping {}", container.name)),
    }
}

/// A limit error as the user sees it: bad input exits 2.
fn limit_error(container: &Container, error: LimitError) -> anyhow::Error {
    if error.is_input() {
        InputError(format!("{}: {error}", container.name)).into()
    } else {
        anyhow::Error::new(error).context(format!("limiting {}", container.name))
    }
}

/// Says what changed for one container.
fn report(change: &Change, set: Option<&Resources>, unset: Option<&Unset>) {
    let name = &change.container.name;
    if let Some((_, caps)) = change.caps {
        println!(
            "{name}: egress {}, ingress {}",
            show_rate(caps.egress_bits),
            show_rate(caps.ingress_bits)
        );
    }
    let mut parts = Vec::new();
    if let Some(r) = set {
        parts.extend(describe(r, &change.plan));
    }
    if unset.is_some_and(|u| !u.is_empty()) {
        let removed = change.plan.removed();
        if removed.is_empty() {
            println!("{name}: no limits to remove");
        } else {
            println!("{name}: removed {}", removed.join(", "));
        }
    }
    if !parts.is_empty() {
        println!("{name}: {}", parts.join(", "));
    }
}

fn describe(r: &Resources, plan: &Plan) -> Vec<String> {
    let mut parts = Vec::new();
    let mib = |b: u64| format!("{}M", b >> 20);
    #[expect(clippy::cast_precision_loss, reason = "display")]
    if let Some(n) = r.nano_cpus {
        parts.push(format!("cpus {}", n as f64 / 1e9));
    }
    if let Some(q) = r.cpu_quota {
        parts.push(format!("cpu-quota {q}"));
    }
    if let Some(p) = r.cpu_period {
        parts.push(format!("cpu-period {p}"));
    }
    if let Some(s) = r.cpu_shares {
        parts.push(format!("cpu-shares {s}"));
    }
    if let Some(c) = &r.cpuset_cpus {
        parts.push(format!("cpuset-cpus {c}"));
    }
    if let Some(m) = &r.cpuset_mems {
        parts.push(format!("cpuset-mems {m}"));
    }
    if let Some(m) = r.memory {
        parts.push(format!("memory {}", mib(m)));
    }
    if let Some(swap) = plan.update.memory_swap {
        parts.push(if swap < 0 {
            "memory-swap unlimited".to_owned()
        } else {
            format!("memory-swap {}", mib(swap.unsigned_abs()))
        });
    }
    if let Some(m) = r.memory_reservation {
        parts.push(format!("memory-reservation {}", mib(m)));
    }
    if let Some(p) = r.pids_limit {
        parts.push(format!("pids-limit {p}"));
    }
    for t in &plan.throttles {
        let value = match t.kind {
            IoKind::ReadBps | IoKind::WriteBps => format!("{}/s", mib(t.value)),
            IoKind::ReadIops | IoKind::WriteIops => format!("{}/s", t.value),
        };
        parts.push(format!("{} {}:{} {value}", t.kind.flag(), t.major, t.minor));
    }
    if let Some(bytes) = r.storage {
        parts.push(format!("storage-size {}", mib(bytes)));
    }
    parts
}

fn show_rate(bits: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display")]
    let b = bits as f64;
    match bits {
        0 => "not capped".to_owned(),
        1..1_000 => format!("{bits} bit/s"),
        1_000..1_000_000 => format!("{} kbit/s", b / 1e3),
        1_000_000..1_000_000_000 => format!("{} Mbit/s", b / 1e6),
        _ => format!("{} Gbit/s", b / 1e9),
    }
}
