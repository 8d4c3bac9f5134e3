//! Host-wide block IO accounting: one tracepoint attachment, and the set of container
//! cgroups it counts for.

use std::collections::{HashMap, HashSet};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap},
    programs::TracePoint,
};
use dockops_common::{BlockCounters, BlockKey, names};

use super::{BlockByCgroup, DatapathError, pins::Layout};

/// The tracepoint counted, category and name; its link is pinned under `global/` by name.
pub(super) const TRACEPOINT: (&str, &str) = ("block", "block_bio_queue");

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
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::Missing(name))
        };
        Ok(Self {
            watched: BpfHashMap::try_from(take(ebpf, names::WATCHED_CGROUPS)?)?,
            io: PerCpuHashMap::try_from(take(ebpf, names::BLOCK_IO)?)?,
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
