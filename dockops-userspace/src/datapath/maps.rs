//! This build's maps as they are created on this host: per-CPU maps hold one value per
//! possible CPU, so their size follows the CPU count. At the object's sizes a 192-CPU host
//! would lock 125 MiB for `TRAFFIC` and 201 MiB for `BLOCK_IO`; each is held under
//! [`PER_CPU_BUDGET`] instead (fewer entries, warned about), and a full map counts its
//! failed inserts (`INSERT_FAILURES`).

use std::{collections::BTreeMap, path::Path};

use aya::maps::MapInfo;

use super::{DatapathError, OBJECT};

/// Kernel memory one per-CPU map may take for its values.
pub(super) const PER_CPU_BUDGET: u64 = 32 << 20;
/// Fewer entries than this would not be worth running with.
const MIN_ENTRIES: u32 = 256;

/// `BPF_MAP_TYPE_PERCPU_HASH`, `BPF_MAP_TYPE_PERCPU_ARRAY` and
/// `BPF_MAP_TYPE_LRU_PERCPU_HASH`.
const PER_CPU: [u32; 3] = [5, 6, 10];

/// What a map is, as the kernel reports it (`bpf_map_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Shape {
    /// The map pinned at `path`, as the kernel reports it.
    pub(super) fn pinned(path: &Path) -> Result<Self, DatapathError> {
        let info = MapInfo::from_pin(path)?;
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }
}

/// Every map of the object, by name, as created on a host with `cpus` possible CPUs.
pub(super) fn wanted(cpus: usize) -> Result<BTreeMap<String, Shape>, DatapathError> {
    let object =
        aya_obj::Object::parse(OBJECT).map_err(|e| DatapathError::Object(e.to_string()))?;
    Ok(object
        .maps
        .iter()
        .map(|(name, map)| {
            let mut shape = Shape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            };
            let fits = sized(&shape, cpus);
            if fits < shape.max_entries {
                tracing::info!(
                    "map {name}: {fits} entries instead of {} on this {cpus}-CPU host, to \
                     stay within {} MiB",
                    shape.max_entries,
                    PER_CPU_BUDGET >> 20
                );
            }
            shape.max_entries = fits;
            (name.clone(), shape)
        })
        .collect())
}

/// `max_entries` within the budget for a per-CPU map; the object's value otherwise.
fn sized(shape: &Shape, cpus: usize) -> u32 {
    if !PER_CPU.contains(&shape.map_type) {
        return shape.max_entries;
    }
    // The kernel rounds each CPU's value up to 8 bytes.
    let per_entry = u64::from(shape.value_size.div_ceil(8) * 8) * cpus.max(1) as u64;
    let fits = u32::try_from(PER_CPU_BUDGET / per_entry).unwrap_or(u32::MAX);
    shape.max_entries.min(fits.max(MIN_ENTRIES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> Shape {
        Shape {
            map_type: 5,
            key_size: 4,
            value_size: 80,
            max_entries: 8192,
            flags: 0,
        }
    }

    #[test]
    fn small_hosts_keep_the_object_sizes() {
        assert_eq!(sized(&traffic(), 2), 8192);
        assert_eq!(sized(&traffic(), 48), 8192);
    }

    #[test]
    fn large_hosts_stay_within_the_budget() {
        let n = sized(&traffic(), 192);
        assert_eq!(n, 2184);
        assert!(u64::from(n) * 80 * 192 <= PER_CPU_BUDGET);
        let block = Shape {
            value_size: 32,
            max_entries: 32768,
            ..traffic()
        };
        assert_eq!(sized(&block, 192), 5461);
        assert_eq!(sized(&traffic(), 100_000), MIN_ENTRIES);
    }

    #[test]
    fn other_maps_keep_their_size() {
        let hash = Shape {
            map_type: 1,
            ..traffic()
        };
        assert_eq!(sized(&hash, 192), 8192);
    }

    #[test]
    fn the_object_parses_and_has_the_per_cpu_maps() {
        let maps = wanted(192).unwrap();
        assert_eq!(maps["TRAFFIC"].max_entries, 2184);
        // A per-CPU array of 240-byte values: (32 << 20) / (240 * 192).
        assert_eq!(maps["SCHED_STATS"].max_entries, 728);
        assert_eq!(maps["INSERT_FAILURES"].max_entries, 6);
    }
}
