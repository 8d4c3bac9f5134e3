//! The kernel's cgroup limit files, v1 and v2: their formats, pure. The writers
//! ([`crate::limits`]) and the readers ([`crate::collection`]) share them.

use serde::Serialize;

use crate::policy::resources::IoKind;

/// The block IO throttles of one device, as read back; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceThrottles {
    pub major: u32,
    pub minor: u32,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl DeviceThrottles {
    pub const fn get(&self, kind: IoKind) -> Option<u64> {
        match kind {
            IoKind::ReadBps => self.read_bps,
            IoKind::WriteBps => self.write_bps,
            IoKind::ReadIops => self.read_iops,
            IoKind::WriteIops => self.write_iops,
        }
    }

    const fn slot(&mut self, kind: IoKind) -> &mut Option<u64> {
        match kind {
            IoKind::ReadBps => &mut self.read_bps,
            IoKind::WriteBps => &mut self.write_bps,
            IoKind::ReadIops => &mut self.read_iops,
            IoKind::WriteIops => &mut self.write_iops,
        }
    }
}

/// Finds or adds the entry of `major:minor` (kept sorted by device).
fn entry(devices: &mut Vec<DeviceThrottles>, major: u32, minor: u32) -> &mut DeviceThrottles {
    let at = match devices.binary_search_by_key(&(major, minor), |d| (d.major, d.minor)) {
        Ok(at) => at,
        Err(at) => {
            devices.insert(
                at,
                DeviceThrottles {
                    major,
                    minor,
                    ..DeviceThrottles::default()
                },
            );
            at
        }
    };
    &mut devices[at]
}

/// `MAJ:MIN` → the device numbers.
pub fn device(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// v1: the file of each throttle.
pub const fn v1_throttle_file(kind: IoKind) -> &'static str {
    match kind {
        IoKind::ReadBps => "blkio.throttle.read_bps_device",
        IoKind::WriteBps => "blkio.throttle.write_bps_device",
        IoKind::ReadIops => "blkio.throttle.read_iops_device",
        IoKind::WriteIops => "blkio.throttle.write_iops_device",
    }
}

/// v1: adds the `MAJ:MIN VALUE` lines of one throttle file to `devices`.
pub fn parse_v1_throttle(kind: IoKind, text: &str, devices: &mut Vec<DeviceThrottles>) {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(Some((major, minor))), Some(Ok(value))) =
            (fields.next().map(device), fields.next().map(str::parse))
        else {
            continue;
        };
        *entry(devices, major, minor).slot(kind) = Some(value);
    }
}

/// v1: the line that sets (or with `None`, removes: a 0) a throttle.
pub fn v1_throttle_line(major: u32, minor: u32, value: Option<u64>) -> String {
    format!("{major}:{minor} {}", value.unwrap_or(0))
}

/// v2 `io.max` key of each throttle.
pub const fn io_max_key(kind: IoKind) -> &'static str {
    match kind {
        IoKind::ReadBps => "rbps",
        IoKind::WriteBps => "wbps",
        IoKind::ReadIops => "riops",
        IoKind::WriteIops => "wiops",
    }
}

/// v2 `io.max`: `MAJ:MIN rbps=N wbps=max riops=max wiops=N` per throttled device.
pub fn parse_io_max(text: &str) -> Vec<DeviceThrottles> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(device) else {
            continue;
        };
        let throttles = entry(&mut devices, major, minor);
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            if let Some(kind) = IoKind::ALL.into_iter().find(|&k| io_max_key(k) == key) {
                *throttles.slot(kind) = value.parse().ok();
            }
        }
    }
    devices
}

/// v2: the `io.max` line that sets (or with `None`, removes) one throttle.
pub fn io_max_line(major: u32, minor: u32, kind: IoKind, value: Option<u64>) -> String {
    let value = value.map_or_else(|| "max".to_owned(), |v| v.to_string());
    format!("{major}:{minor} {}={value}", io_max_key(kind))
}

/// v2 `cpu.max`: `QUOTA PERIOD` in microseconds, `max` for no quota.
pub fn parse_cpu_max(text: &str) -> (Option<u64>, Option<u64>) {
    let mut fields = text.split_whitespace();
    let quota = fields.next().and_then(|q| q.parse().ok());
    let period = fields.next().and_then(|p| p.parse().ok());
    (quota, period)
}

/// v2 `cpu.weight` from v1 shares, as runc converts them (runc 1.1: linear, 2..262144 onto
/// 1..10000; Docker 20.10 ships it).
pub const fn weight_from_shares(shares: u64) -> u64 {
    if shares < 2 {
        return 100;
    }
    1 + (shares - 2) * 9999 / 262_142
}

/// What `cpu_shares` reads back as on v2: the conversion loses the last digits of the shares
/// (999 to 1024 all become weight 39), so the default's weight reads back as the default,
/// 1024, and any other as the smallest shares value with that weight.
pub const fn shares_from_weight(weight: u64) -> u64 {
    const DEFAULT: u64 = 1024;
    if weight == weight_from_shares(DEFAULT) {
        return DEFAULT;
    }
    if weight <= 1 {
        return 2;
    }
    // Ceiling of the inverse, then the integer division above maps it back to `weight`.
    ((weight - 1) * 262_142).div_ceil(9999) + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_both_ways() {
        let text = "254:0 rbps=max wbps=5242880 riops=max wiops=100\n8:16 rbps=1000 wbps=max riops=max wiops=max\n";
        let devices = parse_io_max(text);
        assert_eq!(
            devices,
            [
                DeviceThrottles {
                    major: 8,
                    minor: 16,
                    read_bps: Some(1000),
                    ..DeviceThrottles::default()
                },
                DeviceThrottles {
                    major: 254,
                    minor: 0,
                    write_bps: Some(5_242_880),
                    write_iops: Some(100),
                    ..DeviceThrottles::default()
                },
            ]
        );
        assert_eq!(
            io_max_line(254, 0, IoKind::WriteBps, Some(5_242_880)),
            "254:0 wbps=5242880"
        );
        assert_eq!(
            io_max_line(254, 0, IoKind::ReadIops, None),
            "254:0 riops=max"
        );
        assert!(parse_io_max("").is_empty());
        assert!(parse_io_max("garbage\n").is_empty());
    }

    #[test]
    fn v1_throttle_files_merge_by_device() {
        let mut devices = Vec::new();
        parse_v1_throttle(IoKind::WriteBps, "254:0 5242880\n", &mut devices);
        parse_v1_throttle(
            IoKind::ReadIops,
            "254:0 300\n8:0 50\nnonsense\n",
            &mut devices,
        );
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[1].write_bps, Some(5_242_880));
        assert_eq!(devices[1].get(IoKind::ReadIops), Some(300));
        assert_eq!(devices[0].get(IoKind::ReadIops), Some(50));
        assert_eq!(devices[0].write_bps, None);
        assert_eq!(v1_throttle_line(254, 0, Some(42)), "254:0 42");
        assert_eq!(v1_throttle_line(254, 0, None), "254:0 0");
    }

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), (None, Some(100_000)));
        assert_eq!(
            parse_cpu_max("50000 100000\n"),
            (Some(50_000), Some(100_000))
        );
        assert_eq!(parse_cpu_max(""), (None, None));
    }

    #[test]
    fn weights_as_runc_converts() {
        assert_eq!(weight_from_shares(2), 1);
        assert_eq!(weight_from_shares(262_144), 10_000);
        assert_eq!(weight_from_shares(1024), 39);
        assert_eq!(weight_from_shares(512), 20);
        for weight in [1, 20, 39, 100, 5000, 10_000] {
            let shares = shares_from_weight(weight);
            assert_eq!(weight_from_shares(shares), weight, "weight {weight}");
            assert!(shares == 2 || shares == 1024 || weight_from_shares(shares - 1) < weight);
        }
        assert_eq!(
            shares_from_weight(39),
            1024,
            "the default reads back as itself"
        );
        assert_eq!(shares_from_weight(20), 501);
    }
}
