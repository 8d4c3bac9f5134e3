//! Resource usage from cgroup files, v1 (per-controller hierarchies) or v2 (unified).
//!
//! Parsers take file contents and are unit-tested on real contents; the readers only find
//! the files. A file that cannot be read (the container is exiting) reads as zero.

use std::{
    cell::RefCell,
    collections::HashMap,
    fs,
    os::{fd::OwnedFd, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    rc::Rc,
};

use nix::{
    fcntl::{self, OFlag},
    sys::stat::Mode,
};
use serde::Serialize;

use crate::{
    capabilities::CgroupMode,
    cgroupfs::{
        DeviceThrottles, parse_cpu_max, parse_io_max, parse_v1_throttle, shares_from_weight,
        v1_throttle_file,
    },
    discovery::CgroupPaths,
    policy::resources::IoKind,
};

/// `cpuacct.stat` counts in `USER_HZ`, which is 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;
/// v1 reports "no limit" as `PAGE_COUNTER_MAX` pages (`0x7FFFFFFFFFFFF000` with 4 KiB pages).
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CpuStats {
    pub usage_seconds_total: f64,
    pub user_seconds_total: f64,
    pub system_seconds_total: f64,
    /// Over the sampling interval, 100 = one full core; `null` without a previous reading.
    pub percent: Option<f64>,
    pub throttled_periods_total: u64,
    pub throttled_seconds_total: f64,
    /// How long the container's threads waited runnable for a CPU (eBPF, scheduler
    /// tracepoints); `null` where the kernel refused the hooks.
    pub runqueue_latency_us: Option<super::LatencyStats>,
    /// Context switches of its threads, all, and those involuntary (preempted, or yielded
    /// while runnable); `null` as above.
    pub context_switches_total: Option<u64>,
    pub involuntary_context_switches_total: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// Usage less inactive file cache, as cAdvisor and the kubelet compute it.
    pub working_set_bytes: u64,
    /// `null` when unlimited.
    pub limit_bytes: Option<u64>,
    pub swap_bytes: u64,
    pub oom_events_total: u64,
    /// Page cache, anonymous memory and mapped files (`memory.stat`: v1 `total_cache`,
    /// `total_rss`, `total_mapped_file`; v2 `file`, `anon`, `file_mapped`).
    pub cache_bytes: u64,
    pub rss_bytes: u64,
    pub mapped_file_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub reads_total: u64,
    pub writes_total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BlkioStats {
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub reads_total: u64,
    pub writes_total: u64,
    pub devices: Vec<DeviceIo>,
    /// Request latency, submission to completion (eBPF, block tracepoints); `null` where
    /// the kernel refused the hooks.
    pub latency_us: Option<super::IoLatency>,
}

impl BlkioStats {
    pub fn from_devices(devices: Vec<DeviceIo>) -> Self {
        let sum = |f: fn(&DeviceIo) -> u64| devices.iter().map(f).sum();
        Self {
            read_bytes_total: sum(|d| d.read_bytes_total),
            write_bytes_total: sum(|d| d.write_bytes_total),
            reads_total: sum(|d| d.reads_total),
            writes_total: sum(|d| d.writes_total),
            devices,
            latency_us: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    /// Tasks (threads) in the container, from the pids controller.
    pub current: u64,
    /// Processes in the container's own cgroup (`cgroup.procs`).
    pub processes: u64,
    /// `null` when unlimited.
    pub limit: Option<u64>,
}

/// The resource limits in force, read back from the kernel; `null` where there is none.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResourceLimits {
    /// CPU quota over period, in CPUs.
    pub cpus: Option<f64>,
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    /// v1 `cpu.shares`; on v2 the shares value `cpu.weight` stands for
    /// ([`shares_from_weight`]).
    pub cpu_shares: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory_bytes: Option<u64>,
    /// Memory plus swap, as Docker's `--memory-swap` counts it.
    pub memory_swap_bytes: Option<u64>,
    /// The soft limit (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub memory_reservation_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Block IO throttles by device.
    pub io: Vec<DeviceThrottles>,
    /// The writable layer's size limit.
    pub storage_bytes: Option<u64>,
}

/// What the cgroup files say about one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub limits: ResourceLimits,
    /// From `io.stat` on v2; `None` on v1, whose blkio counters stay at zero on current
    /// kernels (the eBPF block accounting fills in).
    pub blkio: Option<BlkioStats>,
    /// From the v2 directory's `*.pressure` files (also beside v1, in the hybrid layout);
    /// `None` without PSI.
    pub pressure: Option<Pressure>,
    /// False when the container's directory could not be opened (it is exiting, or the
    /// path is wrong): the figures are zeros, not readings.
    pub readable: bool,
}

/// Pressure stall information: time some (`waiting`) or all (`stalled`) of the
/// container's runnable tasks were delayed for lack of a resource, as cAdvisor names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub cpu: Stall,
    pub memory: Stall,
    pub io: Stall,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stall {
    /// `some`: at least one task waited.
    pub waiting_seconds_total: f64,
    /// `full`: every non-idle task waited at once.
    pub stalled_seconds_total: f64,
}

impl Stall {
    /// Parses `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345` (µs) and its `full`
    /// line; `None` unless the `some` line is there.
    fn parse(text: &str) -> Option<Self> {
        let total = |kind: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(kind))
                .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
                .and_then(|n| n.parse::<u64>().ok())
                .map(seconds_from_us)
        };
        Some(Self {
            waiting_seconds_total: total("some ")?,
            stalled_seconds_total: total("full ").unwrap_or(0.0),
        })
    }
}

/// The pressure files of a v2 directory.
fn pressure(dir: &Dir) -> Option<Pressure> {
    let stall = |file: &str| dir.read(file).as_deref().and_then(Stall::parse);
    Some(Pressure {
        cpu: stall("cpu.pressure")?,
        memory: stall("memory.pressure")?,
        io: stall("io.pressure")?,
    })
}

pub fn read(dirs: &mut Dirs, mode: &CgroupMode, paths: &CgroupPaths) -> CgroupStats {
    let v2_dir = |dirs: &mut Dirs| match mode {
        CgroupMode::V2 { root } => paths.v2.as_deref().and_then(|p| dirs.get(join(root, p))),
        CgroupMode::V1 { .. } => None,
    };
    let mut stats = match mode {
        CgroupMode::V2 { .. } => v2_dir(dirs).map(|dir| read_v2(&dir)).unwrap_or_default(),
        CgroupMode::V1 { .. } => read_v1(dirs, Path::new(V1_ROOT), paths),
    };
    let unified = match mode {
        CgroupMode::V2 { root } => Some(root.as_path()),
        CgroupMode::V1 { unified } => unified.as_deref(),
    };
    stats.pressure = unified
        .zip(paths.v2.as_deref())
        .and_then(|(root, p)| dirs.get(join(root, p)))
        .and_then(|dir| pressure(&dir));
    // Limits change on events (`limit`, `docker update`, a restart), not every tick: they
    // are read again only after `Dirs::reread_limits`.
    let key = paths
        .v2
        .clone()
        .or_else(|| paths.v1.get("cpu").cloned())
        .unwrap_or_default();
    let cached = if dirs.reread {
        None
    } else {
        dirs.limits.get_mut(&key).map(|(limits, used)| {
            *used = true;
            limits.clone()
        })
    };
    stats.limits = cached.unwrap_or_else(|| {
        let limits = match mode {
            CgroupMode::V2 { .. } => v2_dir(dirs).map(|dir| limits_v2(&dir)).unwrap_or_default(),
            CgroupMode::V1 { .. } => limits_v1(dirs, Path::new(V1_ROOT), paths),
        };
        dirs.limits.insert(key, (limits.clone(), true));
        limits
    });
    // Limits, read with the others (not every tick).
    stats.memory.limit_bytes = stats.limits.memory_bytes;
    stats.pids.limit = stats.limits.pids;
    stats
}

/// Cgroup directories kept open across snapshots. Opening `memory.stat` relative to an open
/// directory skips the walk down `/sys/fs/cgroup/memory/docker/<64 hex digits>/`, which
/// profiling showed costing as much as generating the file.
#[derive(Default)]
pub struct Dirs {
    /// Directory → its descriptor, and whether this round used it.
    open: HashMap<PathBuf, (Rc<Dir>, bool)>,
    /// Limits read back, by cgroup path, and whether this round used them.
    limits: HashMap<String, (ResourceLimits, bool)>,
    /// Read the limits again at the next snapshot.
    reread: bool,
}

impl Dirs {
    fn get(&mut self, path: PathBuf) -> Option<Rc<Dir>> {
        if let Some((dir, used)) = self.open.get_mut(&path) {
            *used = true;
            return Some(Rc::clone(dir));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let dir = Rc::new(Dir {
            fd: fcntl::open(&path, flags, Mode::empty()).ok()?,
            files: RefCell::default(),
        });
        self.open.insert(path, (Rc::clone(&dir), true));
        Some(dir)
    }

    /// Closes the directories no reading used since the last sweep (containers gone), and
    /// forgets their limits.
    pub fn sweep(&mut self) {
        self.open.retain(|_, (_, used)| std::mem::take(used));
        self.limits.retain(|_, (_, used)| std::mem::take(used));
        self.reread = false;
    }

    /// Makes the next snapshot read every container's limits again (after discovery saw
    /// something change).
    pub fn reread_limits(&mut self) {
        self.reread = true;
    }
}

fn join(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// A cgroup directory kept open, and the files read from it at every tick, kept open too:
/// the kernel generates a cgroup file anew on each read from offset 0, so a `pread` at 0
/// replaces an open, a read and a close (profiling at 500 containers: opening was a fifth
/// of the agent's time).
pub struct Dir {
    fd: OwnedFd,
    files: RefCell<HashMap<String, fs::File>>,
}

impl Dir {
    /// A file read at every tick; `None` if unreadable (the container is exiting).
    fn read(&self, file: &str) -> Option<String> {
        let mut files = self.files.borrow_mut();
        if !files.contains_key(file) {
            match self.open(file) {
                Ok(f) => {
                    files.insert(file.to_owned(), f);
                }
                // Out of descriptors (a low RLIMIT_NOFILE): read it without keeping it.
                Err(nix::errno::Errno::EMFILE) => return self.read_once(file),
                Err(_) => return None,
            }
        }
        let contents = files.get(file).and_then(read_all);
        if contents.is_none() {
            files.remove(file);
        }
        contents
    }

    /// A file read now and then (limits): opened, read, closed.
    fn read_once(&self, file: &str) -> Option<String> {
        read_all(&self.open(file).ok()?)
    }

    fn open(&self, file: &str) -> nix::Result<fs::File> {
        fcntl::openat(
            &self.fd,
            file,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(fs::File::from)
    }
}

/// The whole file, from offset 0. The kernel generates it whole on the first read, so a
/// short read is the end (none of `read_to_string`'s size probe and second read).
fn read_all(f: &fs::File) -> Option<String> {
    let mut buf = [0_u8; 8192];
    let n = f.read_at(&mut buf, 0).ok()?;
    let mut contents = buf[..n].to_vec();
    if n == buf.len() {
        loop {
            let more = f.read_at(&mut buf, contents.len() as u64).ok()?;
            if more == 0 {
                break;
            }
            contents.extend_from_slice(&buf[..more]);
        }
    }
    String::from_utf8(contents).ok()
}

fn text(dir: &Dir, file: &str) -> String {
    dir.read(file).unwrap_or_default()
}

fn number(dir: &Dir, file: &str) -> u64 {
    text(dir, file).trim().parse().unwrap_or(0)
}

/// As [`text`], for a file read only when limits are read again.
fn once(dir: &Dir, file: &str) -> String {
    dir.read_once(file).unwrap_or_default()
}

fn once_number(dir: &Dir, file: &str) -> u64 {
    once(dir, file).trim().parse().unwrap_or(0)
}

#[expect(clippy::cast_precision_loss, reason = "nanoseconds to seconds")]
fn seconds_from_ns(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[expect(clippy::cast_precision_loss, reason = "microseconds to seconds")]
fn seconds_from_us(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Where the v1 controller hierarchies are mounted, one directory each.
const V1_ROOT: &str = "/sys/fs/cgroup";

fn read_v1(dirs: &mut Dirs, root: &Path, paths: &CgroupPaths) -> CgroupStats {
    let mut dir = |controller: &str| {
        let path = paths.v1.get(controller)?;
        dirs.get(join(&root.join(controller), path))
    };
    let mut stats = CgroupStats::default();
    if let Some(d) = dir("cpuacct") {
        stats.cpu.usage_seconds_total = seconds_from_ns(number(&d, "cpuacct.usage"));
        (stats.cpu.user_seconds_total, stats.cpu.system_seconds_total) =
            v1_user_system(&text(&d, "cpuacct.stat"));
    }
    if let Some(d) = dir("cpu") {
        let stat = text(&d, "cpu.stat");
        stats.cpu.throttled_periods_total = value(&stat, "nr_throttled");
        stats.cpu.throttled_seconds_total = seconds_from_ns(value(&stat, "throttled_time"));
    }
    if let Some(d) = dir("memory") {
        let usage = number(&d, "memory.usage_in_bytes");
        let stat = text(&d, "memory.stat");
        stats.memory = MemoryStats {
            usage_bytes: usage,
            working_set_bytes: usage.saturating_sub(value(&stat, "total_inactive_file")),
            limit_bytes: None,
            swap_bytes: value(&stat, "total_swap"),
            oom_events_total: value(&text(&d, "memory.oom_control"), "oom_kill"),
            cache_bytes: value(&stat, "total_cache"),
            rss_bytes: value(&stat, "total_rss"),
            mapped_file_bytes: value(&stat, "total_mapped_file"),
        };
        stats.readable = true;
    }
    if let Some(d) = dir("pids") {
        stats.pids = PidsStats {
            current: number(&d, "pids.current"),
            processes: lines(&d, "cgroup.procs"),
            limit: None,
        };
    }
    stats
}

/// Lines of a file read every tick (`cgroup.procs`: one process per line).
fn lines(dir: &Dir, file: &str) -> u64 {
    dir.read(file).map_or(0, |t| t.lines().count() as u64)
}

/// v1 limits, read again only after an event (`Dirs::reread_limits`).
fn limits_v1(dirs: &mut Dirs, root: &Path, paths: &CgroupPaths) -> ResourceLimits {
    let mut dir = |controller: &str| {
        let path = paths.v1.get(controller)?;
        dirs.get(join(&root.join(controller), path))
    };
    let mut limits = ResourceLimits::default();
    if let Some(d) = dir("cpu") {
        // -1 for no quota.
        let quota = once(&d, "cpu.cfs_quota_us").trim().parse::<u64>().ok();
        let period = Some(once_number(&d, "cpu.cfs_period_us")).filter(|&p| p > 0);
        limits.cpus = cpus(quota, period);
        (limits.cpu_quota_us, limits.cpu_period_us) = (quota, period);
        limits.cpu_shares = Some(once_number(&d, "cpu.shares")).filter(|&s| s > 0);
    }
    if let Some(d) = dir("cpuset") {
        limits.cpuset_cpus = list(&d, "cpuset.cpus");
        limits.cpuset_mems = list(&d, "cpuset.mems");
    }
    if let Some(d) = dir("blkio") {
        for kind in IoKind::ALL {
            parse_v1_throttle(kind, &once(&d, v1_throttle_file(kind)), &mut limits.io);
        }
    }
    if let Some(d) = dir("memory") {
        limits.memory_bytes = v1_limit(once_number(&d, "memory.limit_in_bytes"));
        limits.memory_swap_bytes = v1_limit(once_number(&d, "memory.memsw.limit_in_bytes"));
        limits.memory_reservation_bytes = v1_limit(once_number(&d, "memory.soft_limit_in_bytes"));
    }
    if let Some(d) = dir("pids") {
        limits.pids = max_or(&once(&d, "pids.max"));
    }
    limits
}

/// A v1 memory limit: absent (0) or `PAGE_COUNTER_MAX` pages mean none.
fn v1_limit(bytes: u64) -> Option<u64> {
    (bytes > 0 && bytes < V1_UNLIMITED).then_some(bytes)
}

/// A cpuset list, `None` if empty or unreadable.
fn list(dir: &Dir, file: &str) -> Option<String> {
    Some(once(dir, file).trim().to_owned()).filter(|l| !l.is_empty())
}

#[expect(clippy::cast_precision_loss, reason = "microseconds to CPUs")]
fn cpus(quota: Option<u64>, period: Option<u64>) -> Option<f64> {
    Some(quota? as f64 / period? as f64)
}

fn read_v2(dir: &Dir) -> CgroupStats {
    let cpu = text(dir, "cpu.stat");
    let memory = text(dir, "memory.stat");
    let usage = number(dir, "memory.current");
    CgroupStats {
        cpu: CpuStats {
            usage_seconds_total: seconds_from_us(value(&cpu, "usage_usec")),
            user_seconds_total: seconds_from_us(value(&cpu, "user_usec")),
            system_seconds_total: seconds_from_us(value(&cpu, "system_usec")),
            percent: None,
            throttled_periods_total: value(&cpu, "nr_throttled"),
            throttled_seconds_total: seconds_from_us(value(&cpu, "throttled_usec")),
            ..CpuStats::default()
        },
        memory: MemoryStats {
            usage_bytes: usage,
            working_set_bytes: usage.saturating_sub(value(&memory, "inactive_file")),
            limit_bytes: None,
            swap_bytes: number(dir, "memory.swap.current"),
            oom_events_total: value(&text(dir, "memory.events"), "oom_kill"),
            cache_bytes: value(&memory, "file"),
            rss_bytes: value(&memory, "anon"),
            mapped_file_bytes: value(&memory, "file_mapped"),
        },
        pids: PidsStats {
            current: number(dir, "pids.current"),
            processes: lines(dir, "cgroup.procs"),
            limit: None,
        },
        readable: true,
        limits: ResourceLimits::default(),
        // Without the io controller enabled for the cgroup there is no io.stat at all.
        blkio: dir
            .read("io.stat")
            .map(|io| BlkioStats::from_devices(io_stat(&io))),
        // Read for v1 and v2 alike in `read`.
        pressure: None,
    }
}

/// v2 limits, read again only after an event (`Dirs::reread_limits`).
fn limits_v2(dir: &Dir) -> ResourceLimits {
    let (quota, period) = parse_cpu_max(&once(dir, "cpu.max"));
    let memory = max_or(&once(dir, "memory.max"));
    ResourceLimits {
        cpus: cpus(quota, period),
        cpu_quota_us: quota,
        cpu_period_us: period,
        cpu_shares: max_or(&once(dir, "cpu.weight")).map(shares_from_weight),
        // Empty when the container was not given a cpuset: then it has what its parent has.
        cpuset_cpus: list(dir, "cpuset.cpus").or_else(|| list(dir, "cpuset.cpus.effective")),
        cpuset_mems: list(dir, "cpuset.mems").or_else(|| list(dir, "cpuset.mems.effective")),
        // v2 limits swap alone; Docker's figure is memory plus swap.
        memory_swap_bytes: memory
            .zip(max_or(&once(dir, "memory.swap.max")))
            .map(|(m, s)| m.saturating_add(s)),
        memory_bytes: memory,
        pids: max_or(&once(dir, "pids.max")),
        memory_reservation_bytes: max_or(&once(dir, "memory.low")).filter(|&low| low > 0),
        io: parse_io_max(&once(dir, "io.max")),
        ..ResourceLimits::default()
    }
}

/// The value of `key` in `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`,
/// `memory.oom_control`); 0 when absent. A scan, not a map: one or two keys are wanted.
fn value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// A limit file: a number, or `max` for none.
fn max_or(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `cpuacct.stat`: `user N` and `system N` in `USER_HZ` ticks → seconds.
#[expect(clippy::cast_precision_loss, reason = "ticks to seconds")]
fn v1_user_system(text: &str) -> (f64, f64) {
    let secs = |k: &str| value(text, k) as f64 / USER_HZ;
    (secs("user"), secs("system"))
}

/// io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N` per device.
fn io_stat(text: &str) -> Vec<DeviceIo> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut dev = DeviceIo {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..DeviceIo::default()
            };
            for field in fields {
                let Some((k, v)) = field.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => dev.read_bytes_total = v,
                    "wbytes" => dev.write_bytes_total = v,
                    "rios" => dev.reads_total = v,
                    "wios" => dev.writes_total = v,
                    _ => {}
                }
            }
            Some(dev)
        })
        .collect()
}

#[cfg(test)]
mod pressure_tests {
    use super::Stall;

    #[test]
    fn pressure_totals_are_seconds() {
        let text = "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n";
        assert_eq!(
            Stall::parse(text),
            Some(Stall {
                waiting_seconds_total: 2.5,
                stalled_seconds_total: 0.001
            })
        );
        let some_only = "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(
            Stall::parse(some_only).map(|s| s.stalled_seconds_total),
            Some(0.0)
        );
        assert_eq!(Stall::parse(""), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Contents as documented in Documentation/admin-guide/cgroup-v2.rst and read off a
    // kernel 6.1 cgroup v2 host.
    const V2_CPU_STAT: &str = "usage_usec 2812000\nuser_usec 2000000\nsystem_usec 812000\n\
        core_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 17\nthrottled_usec 345678\n\
        nr_bursts 0\nburst_usec 0\n";
    const V2_IO_STAT: &str = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
        8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n";

    #[test]
    fn v2_files_parse() {
        let dir = std::env::temp_dir().join(format!("dockops-v2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (file, body) in [
            ("cpu.stat", V2_CPU_STAT),
            ("memory.current", "104857600\n"),
            ("memory.max", "max\n"),
            (
                "memory.stat",
                "anon 1048576\nfile 8388608\nfile_mapped 65536\ninactive_file 4194304\n\
                 active_file 4194304\n",
            ),
            ("cgroup.procs", "1\n42\n"),
            ("memory.swap.current", "4096\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
            ),
            ("pids.current", "7\n"),
            ("pids.max", "100\n"),
            ("io.stat", V2_IO_STAT),
        ] {
            fs::write(dir.join(file), body).unwrap();
        }
        let d = Dirs::default().get(dir.clone()).unwrap();
        let (s, limits) = (read_v2(&d), limits_v2(&d));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(limits.pids, Some(100), "a limit, read with the others");
        assert!((s.cpu.usage_seconds_total - 2.812).abs() < 1e-9);
        assert!((s.cpu.user_seconds_total - 2.0).abs() < 1e-9);
        assert!((s.cpu.system_seconds_total - 0.812).abs() < 1e-9);
        assert_eq!(s.cpu.throttled_periods_total, 17);
        assert!((s.cpu.throttled_seconds_total - 0.345_678).abs() < 1e-9);
        assert_eq!(
            s.memory,
            MemoryStats {
                usage_bytes: 104_857_600,
                working_set_bytes: 104_857_600 - 4_194_304,
                limit_bytes: None,
                swap_bytes: 4096,
                oom_events_total: 1,
                cache_bytes: 8_388_608,
                rss_bytes: 1_048_576,
                mapped_file_bytes: 65536,
            }
        );
        assert_eq!(
            s.pids,
            PidsStats {
                current: 7,
                processes: 2,
                limit: None
            },
            "read_v2 reads what changes every tick; `read` adds the limits"
        );
        let io = s.blkio.unwrap();
        assert_eq!(io.devices.len(), 2);
        assert_eq!(
            io.devices[0],
            DeviceIo {
                major: 8,
                minor: 16,
                read_bytes_total: 1_459_200,
                write_bytes_total: 314_773_504,
                reads_total: 192,
                writes_total: 353
            }
        );
        assert_eq!(io.write_bytes_total, 314_773_504 + 299_008_000);
        assert_eq!(io.reads_total, 192 + 8950);
    }

    #[test]
    fn v2_limits_read_back_and_are_kept_until_asked_again() {
        let root = std::env::temp_dir().join(format!("dockops-v2-lim-{}", std::process::id()));
        let dir = root.join("docker/abc");
        fs::create_dir_all(&dir).unwrap();
        for (file, body) in [
            ("cpu.max", "50000 100000\n"),
            ("cpu.weight", "39\n"),
            ("cpuset.cpus", "\n"),
            ("cpuset.cpus.effective", "0-1\n"),
            ("cpuset.mems", "0\n"),
            ("memory.max", "33554432\n"),
            ("memory.swap.max", "33554432\n"),
            ("memory.low", "0\n"),
            ("pids.max", "10\n"),
            (
                "io.max",
                "254:0 rbps=max wbps=5242880 riops=max wiops=max\n",
            ),
        ] {
            fs::write(dir.join(file), body).unwrap();
        }
        let mode = CgroupMode::V2 { root: root.clone() };
        let paths = CgroupPaths::parse("0::/docker/abc\n");
        let mut dirs = Dirs::default();
        let l = read(&mut dirs, &mode, &paths).limits;
        assert_eq!(l.cpus, Some(0.5));
        assert_eq!(
            l.cpu_shares,
            Some(1024),
            "weight 39: the default, as runc converts it"
        );
        assert_eq!(
            l.cpuset_cpus.as_deref(),
            Some("0-1"),
            "effective when unset"
        );
        assert_eq!(l.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(l.memory_bytes, Some(32 << 20));
        assert_eq!(l.memory_swap_bytes, Some(64 << 20), "memory plus swap");
        assert_eq!(l.memory_reservation_bytes, None);
        assert_eq!(l.pids, Some(10));
        assert_eq!(l.io[0].write_bps, Some(5_242_880));
        dirs.sweep();
        fs::write(dir.join("cpu.max"), "max 100000\n").unwrap();
        fs::write(dir.join("pids.max"), "max\n").unwrap();
        let l = read(&mut dirs, &mode, &paths).limits;
        assert_eq!(l.cpus, Some(0.5), "kept between events");
        assert_eq!(l.pids, Some(10), "kept between events too");
        dirs.sweep();
        dirs.reread_limits();
        let s = read(&mut dirs, &mode, &paths);
        assert_eq!(
            (s.limits.cpus, s.limits.pids, s.pids.limit),
            (None, None, None)
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_without_io_controller_has_no_blkio() {
        let dir = std::env::temp_dir().join(format!("dockops-v2-noio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.max"), "536870912\n").unwrap();
        let d = Dirs::default().get(dir.clone()).unwrap();
        let (s, limits) = (read_v2(&d), limits_v2(&d));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.blkio, None);
        assert_eq!(limits.memory_bytes, Some(536_870_912));
    }

    #[test]
    fn v1_contents_parse() {
        // Read off this project's hybrid host (kernel 6.18, Docker 20.10).
        assert_eq!(v1_user_system("user 250\nsystem 31\n"), (2.5, 0.31));
        assert_eq!(
            value("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            2
        );
        assert_eq!(
            value("oom_kill_disable 0\n", "oom_kill"),
            0,
            "absent reads as 0"
        );
        let cpu = "nr_periods 10\nnr_throttled 4\nthrottled_time 1500000000\nnr_bursts 0\n";
        assert_eq!(
            (value(cpu, "nr_throttled"), value(cpu, "throttled_time")),
            (4, 1_500_000_000)
        );
        assert_eq!(max_or("max\n"), None);
        assert_eq!(max_or("64\n"), Some(64));
    }

    #[test]
    fn v1_hierarchies_read() {
        let root = std::env::temp_dir().join(format!("dockops-v1-{}", std::process::id()));
        let files: &[(&str, &str, &str)] = &[
            ("cpuacct", "cpuacct.usage", "2500000000\n"),
            ("cpuacct", "cpuacct.stat", "user 200\nsystem 50\n"),
            (
                "cpu",
                "cpu.stat",
                "nr_periods 10\nnr_throttled 4\nthrottled_time 1500000000\n",
            ),
            ("memory", "memory.usage_in_bytes", "104857600\n"),
            // What this host reports for "no limit".
            ("memory", "memory.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory",
                "memory.stat",
                "cache 8388608\ntotal_cache 8388608\ntotal_rss 2097152\ntotal_mapped_file 4096\n\
                 total_inactive_file 4194304\ntotal_swap 0\n",
            ),
            ("pids", "cgroup.procs", "7\n"),
            (
                "memory",
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            ("pids", "pids.current", "5\n"),
            ("pids", "pids.max", "max\n"),
        ];
        for (controller, file, body) in files {
            let dir = root.join(controller).join("docker/abc");
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(file), body).unwrap();
        }
        let paths = CgroupPaths::parse(
            "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n8:pids:/docker/abc\n",
        );
        let s = read_v1(&mut Dirs::default(), &root, &paths);
        fs::remove_dir_all(&root).unwrap();
        assert!((s.cpu.usage_seconds_total - 2.5).abs() < 1e-9);
        assert_eq!(
            (s.cpu.user_seconds_total, s.cpu.system_seconds_total),
            (2.0, 0.5)
        );
        assert_eq!(s.cpu.throttled_periods_total, 4);
        assert!((s.cpu.throttled_seconds_total - 1.5).abs() < 1e-9);
        assert_eq!(
            s.memory,
            MemoryStats {
                usage_bytes: 104_857_600,
                working_set_bytes: 104_857_600 - 4_194_304,
                limit_bytes: None,
                swap_bytes: 0,
                oom_events_total: 2,
                cache_bytes: 8_388_608,
                rss_bytes: 2_097_152,
                mapped_file_bytes: 4096,
            }
        );
        assert_eq!(
            s.pids,
            PidsStats {
                current: 5,
                processes: 1,
                limit: None
            }
        );
        assert!(s.readable);
        assert_eq!(s.blkio, None, "v1 blkio comes from eBPF");
    }

    #[test]
    fn io_stat_skips_garbage() {
        assert!(io_stat("").is_empty());
        assert!(io_stat("nonsense\n").is_empty());
        let d = io_stat("254:0 rbytes=10 wbytes=20 rios=1 wios=2 newkey=5\n");
        assert_eq!(d[0].write_bytes_total, 20);
        assert_eq!((d[0].major, d[0].minor), (254, 0));
    }
}
