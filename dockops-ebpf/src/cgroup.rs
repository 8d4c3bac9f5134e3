//! Which container a task or socket belongs to, for the host-wide hooks (block and
//! scheduler tracepoints, cgroup_skb on the root): the container's cgroup v2 directory, or
//! one below it.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{Array, HashMap},
};
use dockops_common::MAX_CGROUPS;

/// cgroup v2 ids of the containers dockops watches → their slot in `SCHED_STATS`
/// (userspace keeps it in step).
#[map(name = "WATCHED_CGROUPS")]
static WATCHED_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_CGROUPS, 0);

/// Bumped by userspace after each change of `WATCHED_CGROUPS`.
#[map(name = "WATCHED_VERSION")]
static WATCHED_VERSION: Array<u64> = Array::pinned(1, 0);

/// A watched container: its cgroup id and its slot in `SCHED_STATS`.
#[derive(Clone, Copy)]
pub struct Watched {
    pub id: u64,
    pub slot: u32,
}

/// The current version of `WATCHED_CGROUPS`: a result of [`container_of`] holds while it
/// does.
#[inline(always)]
pub fn watched_version() -> u64 {
    WATCHED_VERSION.get(0).copied().unwrap_or(0)
}

/// Bit N set when a watched cgroup sits at level N of the hierarchy.
#[map(name = "CGROUP_LEVELS")]
static CGROUP_LEVELS: Array<u64> = Array::pinned(1, 0);

/// Deepest level looked at for a container above the current task's cgroup.
const MAX_LEVEL: i32 = 16;

/// The cgroup id of the container the current task runs in: its own cgroup, or the
/// nearest watched ancestor for a task in a cgroup the container made below its own.
#[inline(always)]
pub fn container_of_current() -> Option<Watched> {
    // SAFETY: a helper without arguments to check.
    container_of_current_in(unsafe { bpf_get_current_cgroup_id() })
}

/// As [`container_of_current`], `id` being the current task's cgroup id.
#[inline(always)]
pub fn container_of_current_in(id: u64) -> Option<Watched> {
    // SAFETY: returns 0 when the task's cgroup is shallower than `level`.
    container_of(id, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// The container of cgroup `id`: itself if watched, else the watched ancestor that
/// `ancestor(level)` (0 where the cgroup is shallower) names.
#[inline(always)]
pub fn container_of(id: u64, ancestor: impl Fn(i32) -> u64) -> Option<Watched> {
    // SAFETY: a map lookup.
    if let Some(&slot) = unsafe { WATCHED_CGROUPS.get(&id) } {
        return Some(Watched { id, slot });
    }
    let levels = CGROUP_LEVELS.get(0).copied().unwrap_or(0);
    let mut level = 1;
    while level < MAX_LEVEL {
        if levels & (1 << level) != 0 {
            let ancestor = ancestor(level);
            // SAFETY: a map lookup.
            if ancestor != 0 && ancestor != id {
                if let Some(&slot) = unsafe { WATCHED_CGROUPS.get(&ancestor) } {
                    return Some(Watched { id: ancestor, slot });
                }
            }
        }
        level += 1;
    }
    None
}
