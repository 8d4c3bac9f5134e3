//! A new build adopting what an older one pinned, without a moment of uncapped traffic.
//!
//! 0. [`probe`] loads this build's programs that replace attached ones into scratch maps: if
//!    the kernel refuses one, the command fails before any pin changes.
//! 1. Before loading ([`check_maps`]): each pinned map is compared with this build's
//!    definition of it (type, key and value size, max entries, flags). Those that match are
//!    adopted as they are: counters and caps carry on. Those that differ are unpinned, so the
//!    loader creates them anew; the old programs keep the old maps until they are swapped out.
//! 2. Loading pins this build's programs beside the attached ones ([`super::Datapath::open`]).
//! 3. The reconcile fills the new maps (caps from the durable store, buckets, counters at
//!    zero, watched cgroups), then [`super::Datapath::finish_upgrade`] swaps the programs in
//!    place: tcx and `sock_ops` links by `BPF_LINK_UPDATE`, netlink filters by replacing them
//!    at their priority and handle. The tracepoint's perf link cannot change program: the new
//!    one is attached before the old one goes (a bio submitted in between counts twice).
//! 4. Only then is the build marker moved; a run interrupted before it starts over at 1 and
//!    finds the maps already matching.

use std::{collections::BTreeMap, fs, os::fd::AsFd as _, path::Path};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{SchedClassifier, SockOps},
};
use dockops_common::{Caps, names};

use super::{
    Datapath, DatapathError, Report, attach,
    maps::Shape,
    pins::{self, Layout},
    program_err, read_dir_names, remove_dir, scan,
};
use crate::state::{Store, StoredCaps};

/// The map that held what containers asked for before [`crate::state`] existed.
const LEGACY_DESIRED_CAPS: &str = "DESIRED_CAPS";
/// Counter maps: rebuilding one restarts the counters it holds.
const COUNTERS: [&str; 2] = [names::TRAFFIC, names::BLOCK_IO];
/// Maps of what the programs are timing (requests, threads): rebuilt, a sample or so is lost.
const IN_FLIGHT: [&str; 3] = [names::BLOCK_PENDING, names::TASKS, names::SCHED_CPU];

/// True when something is pinned but not by this build.
pub(super) fn pinned_by_other_build(layout: &Layout, build: &str) -> bool {
    layout.root().exists() && !layout.build_marker(build).exists()
}

/// Records that this build's programs are the attached ones.
pub(super) fn mark_build(layout: &Layout, build: &str) -> Result<(), DatapathError> {
    for marker in read_dir_names(layout.root())? {
        if marker.starts_with(pins::BUILD_PREFIX)
            && layout.build_marker(build).file_name() != Some(marker.as_ref())
        {
            remove_dir(&layout.root().join(marker))?;
        }
    }
    let marker = layout.build_marker(build);
    fs::create_dir_all(&marker).map_err(|source| DatapathError::Io {
        path: marker,
        source,
    })
}

/// Loads the programs this build would swap in (the tc programs, and the pacing program when
/// `paces`: the older build's is attached) with maps pinned in a scratch directory, removed
/// after. A program the kernel refuses fails the command with [`DatapathError::Refused`]
/// before anything pinned changes, so the older build's datapath runs on as it was. (Found
/// only while swapping, it would leave the older pacing program attached to maps that may
/// have been rebuilt, while the marker said this build ran.)
pub(super) fn probe(
    layout: &Layout,
    shapes: &BTreeMap<String, Shape>,
    plan: &super::events::Plan,
    paces: bool,
) -> Result<(), DatapathError> {
    let scratch = layout.probe();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DatapathError::Io { path, source }
    };
    // Left by a run that died here: nothing else uses it.
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
    }
    fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let loaded = load_programs(&scratch, shapes, plan, paces);
    fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
    loaded.map_err(|error| DatapathError::Refused(Box::new(error)))
}

fn load_programs(
    scratch: &Path,
    shapes: &BTreeMap<String, Shape>,
    plan: &super::events::Plan,
    paces: bool,
) -> Result<(), DatapathError> {
    let mut ebpf = super::load(scratch, shapes, plan)?;
    for name in [names::TC_INGRESS_ACCT, names::TC_EGRESS_ACCT] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(program_err(name))?;
        prog.load().map_err(program_err(name))?;
    }
    if paces {
        let name = names::SOCK_PACE;
        let prog: &mut SockOps = ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(program_err(name))?;
        prog.load().map_err(program_err(name))?;
    }
    Ok(())
}

/// Unpins the maps whose layout this build does not share, and those it no longer has
/// (carrying over the caps a pre-store build kept in a map).
pub(super) fn check_maps(
    layout: &Layout,
    store: &Store,
    wanted: &BTreeMap<String, Shape>,
) -> Result<(), DatapathError> {
    for name in read_dir_names(&layout.maps())? {
        let path = layout.maps().join(&name);
        let Some(want) = wanted.get(&name) else {
            if name == LEGACY_DESIRED_CAPS {
                import_legacy_caps(&path, store)?;
            }
            tracing::info!("map {name} is not used by this build: unpinned");
            unpin(&path)?;
            continue;
        };
        let found = Shape::pinned(&path)?;
        if found == *want {
            continue;
        }
        if IN_FLIGHT.contains(&name.as_str()) {
            tracing::info!(
                "map {name} has a new layout in this build: rebuilt (what was in flight goes \
                 untimed)"
            );
        } else if COUNTERS.contains(&name.as_str()) {
            tracing::warn!(
                "map {name} has a new layout in this build ({found:?} -> {want:?}): rebuilt, \
                 so its counters restart from zero"
            );
        } else {
            tracing::warn!(
                "map {name} has a new layout in this build: rebuilt and filled again (caps \
                 from {})",
                store.path().display()
            );
        }
        unpin(&path)?;
    }
    Ok(())
}

pub(super) fn unpin(path: &Path) -> Result<(), DatapathError> {
    fs::remove_file(path).map_err(|source| DatapathError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Copies the caps a build before the state file kept in `DESIRED_CAPS` into the store
/// (entries the store already has win).
fn import_legacy_caps(path: &Path, store: &Store) -> Result<(), DatapathError> {
    let map: BpfHashMap<MapData, [u8; 32], Caps> =
        BpfHashMap::try_from(Map::HashMap(MapData::from_pin(path)?))?;
    let legacy: Vec<(String, StoredCaps)> = map
        .iter()
        .filter_map(Result::ok)
        .map(|(id, caps)| (hex(&id), StoredCaps::from_caps(caps)))
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    store.update(|desired| {
        for (id, caps) in legacy {
            desired.caps.entry(id).or_insert(caps);
        }
    })?;
    tracing::info!(
        "caps recorded by an older build moved to {}",
        store.path().display()
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl Datapath {
    /// Swaps this build's programs in for another build's, once the maps are filled. Steps
    /// that fail are reported and retried at the next reconcile (the marker stays old).
    pub(super) fn finish_upgrade(&mut self, report: &mut Report) {
        if !self.upgrading {
            return;
        }
        let before = report.failures.len();
        match scan(&self.layout) {
            Ok(pinned) => {
                for (id, pins) in pinned {
                    for pin in pins {
                        let path = self.layout.container(&id).join(pin.to_string());
                        let prog = match pin.direction {
                            pins::Direction::Ingress => &mut self.ingress,
                            pins::Direction::Egress => &mut self.egress,
                        };
                        if let Err(error) = attach::replace(prog, &path, pin) {
                            report.fail(&id, &error);
                        }
                    }
                }
            }
            Err(error) => report.fail("", &error),
        }
        if let Err(error) = self.swap_host_wide() {
            report.fail("", &error);
        }
        if report.failures.len() > before {
            return;
        }
        match mark_build(&self.layout, &self.build) {
            Ok(()) => {
                tracing::info!("this build's programs now run in place of the pinned ones");
                self.upgrading = false;
            }
            Err(error) => report.fail("", &error),
        }
    }

    fn swap_host_wide(&self) -> Result<(), DatapathError> {
        let global = self.layout.global();
        let progs = self.layout.progs();
        let sock = global.join(names::SOCK_PACE);
        if sock.exists() {
            // The older build paces: a build that cannot must not pass for the running one.
            if let Err(why) = self.pacing {
                return Err(DatapathError::NoPacing(why));
            }
            let prog = SockOps::from_pin(progs.join(names::SOCK_PACE))
                .map_err(program_err(names::SOCK_PACE))?;
            let fd = prog.fd().map_err(program_err(names::SOCK_PACE))?;
            super::sys::link_update(&sock, fd.as_fd()).map_err(|source| DatapathError::Io {
                path: sock.clone(),
                source,
            })?;
        }
        for hook in self.events.hooks() {
            super::events::swap(&self.layout, *hook)?;
        }
        Ok(())
    }
}
