//! Host-wide block IO accounting: one tracepoint attachment, and the set of container
//! cgroups it counts for.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap},
    programs::TracePoint,
};
use dockops_common::{BlockCounters, BlockKey, names};

use super::{BlockByCgroup, DatapathError, pins::Layout};

/// The tracepoint counted, category and name; its link is pinned under `global/` by name.
pub(super) const TRACEPOINT: (&str, &str) = ("block", "block_bio_queue");

/// Where the fields the program reads sit in the tracepoint's record on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Offsets {
    pub dev: u32,
    pub nr_sector: u32,
    pub rwbs: u32,
}

impl Offsets {
    /// The program's globals and their values, for `EbpfLoader::set_global`.
    pub(super) fn globals(&self) -> [(&'static str, &u32); 3] {
        [
            ("BLOCK_DEV_OFFSET", &self.dev),
            ("BLOCK_NR_SECTOR_OFFSET", &self.nr_sector),
            ("BLOCK_RWBS_OFFSET", &self.rwbs),
        ]
    }

    /// Reads them from the tracepoint's `format` file in tracefs.
    pub(super) fn read(tracefs: &Path) -> Result<Self, DatapathError> {
        let path = tracefs
            .join("events")
            .join(TRACEPOINT.0)
            .join(TRACEPOINT.1)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| DatapathError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|why| DatapathError::TracepointFormat { path, why })
    }

    /// Parses lines such as `field:dev_t dev; offset:8; size:4; signed:0;` (tab-separated), checking
    /// that each field has the size the program reads.
    fn parse(format: &str) -> Result<Self, String> {
        let field = |wanted: &str, min_size: u32, max_size: u32| -> Result<u32, String> {
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
                return match (offset, size) {
                    (Some(offset), Some(size)) if (min_size..=max_size).contains(&size) => {
                        Ok(offset)
                    }
                    _ => Err(format!(
                        "field {wanted} is not {min_size} to {max_size} bytes: {line}"
                    )),
                };
            }
            Err(format!("no field {wanted}"))
        };
        Ok(Self {
            dev: field("dev", 4, 4)?,
            nr_sector: field("nr_sector", 4, 4)?,
            rwbs: field("rwbs", 8, 64)?,
        })
    }
}

/// The pinned `block:block_bio_queue` link and its maps.
pub(super) struct BlockAccounting {
    watched: BpfHashMap<MapData, u64, u8>,
    io: PerCpuHashMap<MapData, BlockKey, BlockCounters>,
}

impl BlockAccounting {
    /// Adopts the pinned tracepoint link, or attaches and pins it; `fresh` as for
    /// [`super::caps::Pacing::open`].
    pub(super) fn open(
        ebpf: &mut Ebpf,
        layout: &Layout,
        fresh: bool,
    ) -> Result<Self, DatapathError> {
        let link = layout.global().join(TRACEPOINT.1);
        let attach = !link.exists();
        if attach || fresh {
            let prog_err = |source| DatapathError::Program {
                name: names::BLOCK_BIO_ACCT,
                source,
            };
            let prog: &mut TracePoint = ebpf
                .program_mut(names::BLOCK_BIO_ACCT)
                .ok_or(DatapathError::Missing(names::BLOCK_BIO_ACCT))?
                .try_into()
                .map_err(prog_err)?;
            prog.load().map_err(prog_err)?;
            super::repin(&layout.progs().join(names::BLOCK_BIO_ACCT), |path| {
                prog.pin(path)
            })?;
            if attach {
                let id = prog.attach(TRACEPOINT.0, TRACEPOINT.1).map_err(prog_err)?;
                super::pin_link(prog.take_link(id).map_err(prog_err)?, &link)?;
            }
        }
        Ok(Self {
            watched: super::take_map(ebpf, names::WATCHED_CGROUPS)?,
            io: super::take_map(ebpf, names::BLOCK_IO)?,
        })
    }

    /// Counts IO for exactly the cgroups in `ids`; drops the counters of the others.
    pub(super) fn reconcile(&mut self, ids: &HashSet<u64>) -> Result<(), DatapathError> {
        let watched: HashSet<u64> = self.watched.keys().filter_map(Result::ok).collect();
        for id in watched.difference(ids) {
            self.watched.remove(id)?;
        }
        for id in ids.difference(&watched) {
            self.watched.insert(id, 1, 0)?;
        }
        let stale: Vec<BlockKey> = self
            .io
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ids.contains(&k.cgroup_id))
            .collect();
        for key in stale {
            self.io.remove(&key)?;
        }
        Ok(())
    }

    /// Counters by cgroup id, then device, summed over CPUs.
    pub(super) fn counters(&self) -> Result<BlockByCgroup, DatapathError> {
        let mut out: HashMap<u64, Vec<(BlockKey, BlockCounters)>> = HashMap::new();
        for entry in &self.io {
            let (key, per_cpu) = entry?;
            let sum = per_cpu
                .iter()
                .fold(BlockCounters::default(), |acc, c| acc.plus(*c));
            out.entry(key.cgroup_id).or_default().push((key, sum));
        }
        for devices in out.values_mut() {
            devices.sort_by_key(|(k, _)| k.dev);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Offsets;

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
    fn reads_offsets_from_the_format() {
        assert_eq!(
            Offsets::parse(FORMAT_6_18),
            Ok(Offsets {
                dev: 8,
                nr_sector: 24,
                rwbs: 28
            })
        );
        let moved = FORMAT_6_18.replace("offset:24", "offset:32");
        assert_eq!(Offsets::parse(&moved).map(|o| o.nr_sector), Ok(32));
    }

    #[test]
    fn refuses_fields_it_cannot_read() {
        let wide = FORMAT_6_18.replace(
            "dev_t dev;\toffset:8;\tsize:4",
            "dev_t dev;\toffset:8;\tsize:8",
        );
        assert!(Offsets::parse(&wide).unwrap_err().contains("dev"));
        let short = FORMAT_6_18.replace(
            "rwbs[10];\toffset:28;\tsize:10",
            "rwbs[6];\toffset:28;\tsize:6",
        );
        assert!(Offsets::parse(&short).is_err());
        let gone = FORMAT_6_18.replace("nr_sector", "nr_sectors");
        assert_eq!(Offsets::parse(&gone), Err("no field nr_sector".into()));
    }
}
