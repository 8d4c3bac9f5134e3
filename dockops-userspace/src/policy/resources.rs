//! CPU, memory, pids, block IO and storage limits as operators write them: docker's flag
//! names and units, so habits carry over. Parsing and the checks against the host's facts;
//! what Docker is asked for is in [`super::update`].

use std::{collections::BTreeSet, fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::parse_size;

/// Docker's smallest memory limit ("Minimum memory limit allowed is 6MB").
pub const MIN_MEMORY: u64 = 6 << 20;
/// The kernel's and Docker's bounds for `--cpu-shares` (cgroup v1 `cpu.shares`).
pub const SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;
/// CFS period bounds, microseconds (1 ms to 1 s).
pub const PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The smallest CFS quota, microseconds.
pub const MIN_QUOTA_US: u64 = 1_000;
/// The smallest `--storage-size`: a writable layer needs room for its own metadata.
pub const MIN_STORAGE: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("--{flag} {value:?}: {why}")]
    Value {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("{0}")]
    Conflict(String),
}

fn bad(flag: &'static str, value: &str, why: impl Into<String>) -> ResourceError {
    ResourceError::Value {
        flag,
        value: value.to_owned(),
        why: why.into(),
    }
}

/// Which block IO throttle a device limit sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl IoKind {
    pub const ALL: [Self; 4] = [
        Self::ReadBps,
        Self::WriteBps,
        Self::ReadIops,
        Self::WriteIops,
    ];

    /// The `limit` flag that sets it.
    pub const fn flag(self) -> &'static str {
        match self {
            Self::ReadBps => "device-read-bps",
            Self::WriteBps => "device-write-bps",
            Self::ReadIops => "device-read-iops",
            Self::WriteIops => "device-write-iops",
        }
    }
}

/// A `--device-*` value as given: a device or any path on a filesystem, and a rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLimit {
    pub path: PathBuf,
    pub kind: IoKind,
    /// Bytes or operations per second.
    pub value: u64,
}

/// A device limit resolved to the disk the kernel throttles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Throttle {
    pub major: u32,
    pub minor: u32,
    pub kind: IoKind,
    pub value: u64,
}

/// `--memory-swap`: memory plus swap, or unlimited swap (`-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Swap {
    Limited(u64),
    Unlimited,
}

/// What one `limit` command asks for; `None` leaves a limit as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// `--cpus`, in billionths of a CPU (Docker's `NanoCpus`).
    pub nano_cpus: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<u64>,
    pub cpuset_cpus: Option<CpuList>,
    pub cpuset_mems: Option<CpuList>,
    pub memory: Option<u64>,
    pub memory_swap: Option<Swap>,
    pub memory_reservation: Option<u64>,
    pub pids_limit: Option<u64>,
    pub io: Vec<DeviceLimit>,
    pub storage: Option<u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The names (as `show` and the state file spell them) of the limits Docker or the
    /// storage driver keep that this request sets.
    pub fn held_names(&self) -> Vec<&'static str> {
        let cpus =
            self.nano_cpus.is_some() || self.cpu_quota.is_some() || self.cpu_period.is_some();
        [
            (cpus, "cpus"),
            (self.cpu_shares.is_some(), "cpu_shares"),
            (self.cpuset_cpus.is_some(), "cpuset_cpus"),
            (self.cpuset_mems.is_some(), "cpuset_mems"),
            (self.memory.is_some(), "memory"),
            (
                self.memory.is_some() || self.memory_swap.is_some(),
                "memory_swap",
            ),
            (self.memory_reservation.is_some(), "memory_reservation"),
            (self.pids_limit.is_some(), "pids"),
            (self.storage.is_some(), "storage"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// What one `unlimit` command takes away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one per limit, as unlimit's flags"
)]
pub struct Unset {
    /// The CPU quota, set by `--cpus` or `--cpu-period`/`--cpu-quota`.
    pub cpus: bool,
    pub cpu_shares: bool,
    pub cpuset_cpus: bool,
    pub cpuset_mems: bool,
    /// The memory limit, and with it the swap limit.
    pub memory: bool,
    pub memory_swap: bool,
    pub memory_reservation: bool,
    pub pids_limit: bool,
    /// These block IO throttles, on every device.
    pub io: Vec<IoKind>,
    pub storage: bool,
}

impl Unset {
    pub fn all() -> Self {
        Self {
            cpus: true,
            cpu_shares: true,
            cpuset_cpus: true,
            cpuset_mems: true,
            memory: true,
            memory_swap: true,
            memory_reservation: true,
            pids_limit: true,
            io: IoKind::ALL.to_vec(),
            storage: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The names of the held limits this takes away (lifting the memory limit lifts the swap
    /// limit with it).
    pub fn held_names(&self) -> Vec<&'static str> {
        [
            (self.cpus, "cpus"),
            (self.cpu_shares, "cpu_shares"),
            (self.cpuset_cpus, "cpuset_cpus"),
            (self.cpuset_mems, "cpuset_mems"),
            (self.memory, "memory"),
            (self.memory || self.memory_swap, "memory_swap"),
            (self.memory_reservation, "memory_reservation"),
            (self.pids_limit, "pids"),
            (self.storage, "storage"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// A set of CPU (or memory node) numbers, as `cpuset.cpus` writes it: `0-3,6`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList(pub BTreeSet<u32>);

/// More CPUs than any host has: a typo, not a request.
const MAX_CPU: u32 = 1 << 16;

impl CpuList {
    /// `0-3,6` → {0, 1, 2, 3, 6}. `None` on anything else (empty, reversed ranges, junk).
    pub fn parse(text: &str) -> Option<Self> {
        let mut set = BTreeSet::new();
        for part in text.trim().split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u32, u32) = (lo.parse().ok()?, hi.parse().ok()?);
            if lo > hi || hi >= MAX_CPU {
                return None;
            }
            set.extend(lo..=hi);
        }
        Some(Self(set))
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }
}

impl fmt::Display for CpuList {
    /// Ranges joined by commas, as the kernel prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while iter.peek() == Some(&(hi + 1)) {
                hi += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// `--cpus 1.5` → 1 500 000 000 (billionths of a CPU), at least 0.01 as Docker wants.
pub fn parse_cpus(text: &str) -> Result<u64, ResourceError> {
    let cpus: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|c: &f64| c.is_finite())
        .ok_or_else(|| bad("cpus", text, "give a decimal number of CPUs, e.g. 0.5 or 2"))?;
    if cpus < 0.01 {
        return Err(bad(
            "cpus",
            text,
            "must be at least 0.01 (unlimit --cpus removes the limit)",
        ));
    }
    if cpus > f64::from(MAX_CPU) {
        return Err(bad("cpus", text, "more CPUs than any host has"));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "bounded above"
    )]
    Ok((cpus * 1e9).round() as u64)
}

fn integer(flag: &'static str, text: &str) -> Result<u64, ResourceError> {
    text.trim()
        .parse()
        .map_err(|_| bad(flag, text, "give a positive whole number"))
}

pub fn parse_cpu_shares(text: &str) -> Result<u64, ResourceError> {
    let shares = integer("cpu-shares", text)?;
    if !SHARES.contains(&shares) {
        return Err(bad("cpu-shares", text, "must be between 2 and 262144"));
    }
    Ok(shares)
}

pub fn parse_cpu_period(text: &str) -> Result<u64, ResourceError> {
    let period = integer("cpu-period", text)?;
    if !PERIOD_US.contains(&period) {
        return Err(bad(
            "cpu-period",
            text,
            "must be between 1000 and 1000000 microseconds",
        ));
    }
    Ok(period)
}

pub fn parse_cpu_quota(text: &str) -> Result<u64, ResourceError> {
    let quota = integer("cpu-quota", text)?;
    if quota < MIN_QUOTA_US {
        return Err(bad(
            "cpu-quota",
            text,
            "must be at least 1000 microseconds (unlimit --cpus removes the quota)",
        ));
    }
    Ok(quota)
}

pub fn parse_cpuset(flag: &'static str, text: &str) -> Result<CpuList, ResourceError> {
    CpuList::parse(text).ok_or_else(|| bad(flag, text, "give numbers and ranges, e.g. 0-3,6"))
}

fn size(flag: &'static str, text: &str) -> Result<u64, ResourceError> {
    parse_size(text).map_err(|_| {
        bad(
            flag,
            text,
            "give a size, e.g. 512m or 2g (b, k, m, g are powers of 1024)",
        )
    })
}

pub fn parse_memory(text: &str) -> Result<u64, ResourceError> {
    let bytes = size("memory", text)?;
    if bytes < MIN_MEMORY {
        return Err(bad("memory", text, "Docker's minimum is 6m"));
    }
    Ok(bytes)
}

pub fn parse_memory_swap(text: &str) -> Result<Swap, ResourceError> {
    if text.trim() == "-1" {
        return Ok(Swap::Unlimited);
    }
    let bytes = size("memory-swap", text)?;
    if bytes < MIN_MEMORY {
        return Err(bad(
            "memory-swap",
            text,
            "memory plus swap, at least 6m; -1 for unlimited swap",
        ));
    }
    Ok(Swap::Limited(bytes))
}

pub fn parse_memory_reservation(text: &str) -> Result<u64, ResourceError> {
    let bytes = size("memory-reservation", text)?;
    if bytes == 0 {
        return Err(bad(
            "memory-reservation",
            text,
            "must be above 0 (unlimit --memory-reservation removes it)",
        ));
    }
    Ok(bytes)
}

pub fn parse_pids_limit(text: &str) -> Result<u64, ResourceError> {
    let pids = text
        .trim()
        .parse::<i64>()
        .map_err(|_| bad("pids-limit", text, "give a positive whole number of tasks"))?;
    u64::try_from(pids).ok().filter(|&p| p > 0).ok_or_else(|| {
        bad(
            "pids-limit",
            text,
            "must be at least 1 (unlimit --pids-limit removes the limit)",
        )
    })
}

pub fn parse_storage_size(text: &str) -> Result<u64, ResourceError> {
    let bytes = size("storage-size", text)?;
    if bytes < MIN_STORAGE {
        return Err(bad("storage-size", text, "must be at least 1m"));
    }
    Ok(bytes)
}

/// `PATH:RATE` for `kind`: a size per second for the bps flags, a count for the iops ones.
pub fn parse_device(kind: IoKind, text: &str) -> Result<DeviceLimit, ResourceError> {
    let flag = kind.flag();
    let Some((path, rate)) = text.rsplit_once(':').filter(|(p, _)| !p.is_empty()) else {
        return Err(bad(
            flag,
            text,
            "give DEVICE:RATE, e.g. /dev/vda:10mb or /var/lib/docker:500 (a path on a \
             filesystem stands for its device)",
        ));
    };
    let value = match kind {
        IoKind::ReadBps | IoKind::WriteBps => size(flag, rate)?,
        IoKind::ReadIops | IoKind::WriteIops => integer(flag, rate)?,
    };
    if value == 0 {
        return Err(bad(
            flag,
            text,
            format!("the rate must be above 0 (unlimit --{flag} removes it)"),
        ));
    }
    Ok(DeviceLimit {
        path: PathBuf::from(path),
        kind,
        value,
    })
}

/// What the host offers, read once per command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Online CPUs (`/sys/devices/system/cpu/online`).
    pub cpus: CpuList,
    /// Online memory nodes (`/sys/devices/system/node/online`).
    pub mems: CpuList,
    /// Whether the kernel accounts swap per cgroup (v1 `memory.memsw.*`, v2 `memory.swap.max`).
    pub swap_accounting: bool,
}

impl Host {
    /// `request` against what the host has: CPUs and nodes that exist, swap accounting.
    pub fn check(&self, request: &Resources) -> Result<(), ResourceError> {
        let ncpus = u64::try_from(self.cpus.0.len()).unwrap_or(u64::MAX);
        if let Some(nano) = request.nano_cpus
            && nano > ncpus * 1_000_000_000
        {
            #[expect(clippy::cast_precision_loss, reason = "display")]
            let asked = nano as f64 / 1e9;
            return Err(bad(
                "cpus",
                &asked.to_string(),
                format!("this host has {ncpus} CPU(s) online ({})", self.cpus),
            ));
        }
        for (flag, asked, have) in [
            ("cpuset-cpus", &request.cpuset_cpus, &self.cpus),
            ("cpuset-mems", &request.cpuset_mems, &self.mems),
        ] {
            if let Some(asked) = asked
                && !asked.is_subset(have)
            {
                return Err(bad(
                    flag,
                    &asked.to_string(),
                    format!("this host has only {have} online"),
                ));
            }
        }
        if matches!(request.memory_swap, Some(Swap::Limited(_))) && !self.swap_accounting {
            return Err(ResourceError::Conflict(
                "--memory-swap cannot be enforced: this kernel does not account swap per cgroup \
                 (no memory.memsw.limit_in_bytes; boot with swapaccount=1, or use cgroup v2)"
                    .into(),
            ));
        }
        if request.nano_cpus.is_some()
            && (request.cpu_quota.is_some() || request.cpu_period.is_some())
        {
            return Err(ResourceError::Conflict(
                "--cpus and --cpu-period/--cpu-quota set the same limit: give one or the other"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        let list = CpuList::parse("0-3,6,8-9").unwrap();
        assert_eq!(list.0.len(), 7);
        assert_eq!(list.to_string(), "0-3,6,8-9");
        assert_eq!(CpuList::parse("3,1,2").unwrap().to_string(), "1-3");
        for bad in ["", "a", "3-1", "1,,2", "-1", "1-", "99999"] {
            assert_eq!(CpuList::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cpus_in_billionths() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus("0.01"), Ok(10_000_000));
        for bad in ["0", "-1", "0.001", "x", "", "inf", "NaN", "1e9"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        let err = parse_cpus("abc").unwrap_err().to_string();
        assert!(err.starts_with("--cpus \"abc\""), "{err}");
    }

    #[test]
    fn bounds_of_each_flag() {
        assert_eq!(parse_cpu_shares("512"), Ok(512));
        assert!(parse_cpu_shares("1").is_err());
        assert!(parse_cpu_shares("262145").is_err());
        assert_eq!(parse_cpu_period("100000"), Ok(100_000));
        assert!(parse_cpu_period("999").is_err());
        assert_eq!(parse_cpu_quota("50000"), Ok(50_000));
        assert!(parse_cpu_quota("-1").is_err());
        assert_eq!(parse_memory("32m"), Ok(32 << 20));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        for bad in ["0", "5m", "-32m", "32x", "lots"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_memory_swap("-1"), Ok(Swap::Unlimited));
        assert_eq!(parse_memory_swap("64m"), Ok(Swap::Limited(64 << 20)));
        assert!(parse_memory_swap("-2").is_err());
        assert_eq!(parse_memory_reservation("16m"), Ok(16 << 20));
        assert!(parse_memory_reservation("0").is_err());
        assert_eq!(parse_pids_limit("10"), Ok(10));
        for bad in ["0", "-1", "ten", ""] {
            assert!(parse_pids_limit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_storage_size("50m"), Ok(50 << 20));
        assert!(parse_storage_size("1k").is_err());
    }

    #[test]
    fn device_limits() {
        assert_eq!(
            parse_device(IoKind::WriteBps, "/dev/vda:5mb"),
            Ok(DeviceLimit {
                path: "/dev/vda".into(),
                kind: IoKind::WriteBps,
                value: 5 << 20
            })
        );
        assert_eq!(
            parse_device(IoKind::ReadIops, "/var/lib/docker:300")
                .unwrap()
                .value,
            300
        );
        for bad in [
            "/dev/vda",
            ":5mb",
            "/dev/vda:0",
            "/dev/vda:fast",
            "/dev/vda:-5mb",
        ] {
            let err = parse_device(IoKind::WriteBps, bad).unwrap_err().to_string();
            assert!(err.starts_with("--device-write-bps"), "{bad:?}: {err}");
        }
        assert!(parse_device(IoKind::WriteIops, "/dev/vda:1.5").is_err());
    }

    #[test]
    fn host_checks() {
        let host = Host {
            cpus: CpuList::parse("0-1").unwrap(),
            mems: CpuList::parse("0").unwrap(),
            swap_accounting: false,
        };
        let ok = Resources {
            nano_cpus: Some(2_000_000_000),
            cpuset_cpus: CpuList::parse("1"),
            ..Resources::default()
        };
        assert_eq!(host.check(&ok), Ok(()));
        let too_many = Resources {
            nano_cpus: Some(99_000_000_000),
            ..Resources::default()
        };
        let err = host.check(&too_many).unwrap_err().to_string();
        assert!(err.contains("2 CPU(s)"), "{err}");
        let absent = Resources {
            cpuset_cpus: CpuList::parse("0-3"),
            ..Resources::default()
        };
        assert!(host.check(&absent).is_err());
        let node = Resources {
            cpuset_mems: CpuList::parse("1"),
            ..Resources::default()
        };
        assert!(host.check(&node).is_err());
        let swap = Resources {
            memory_swap: Some(Swap::Limited(64 << 20)),
            ..Resources::default()
        };
        assert!(
            host.check(&swap)
                .unwrap_err()
                .to_string()
                .contains("swapaccount")
        );
        let unlimited_swap = Resources {
            memory_swap: Some(Swap::Unlimited),
            ..Resources::default()
        };
        assert_eq!(host.check(&unlimited_swap), Ok(()));
        let both = Resources {
            nano_cpus: Some(1_000_000_000),
            cpu_quota: Some(50_000),
            ..Resources::default()
        };
        assert!(matches!(host.check(&both), Err(ResourceError::Conflict(_))));
    }
}
