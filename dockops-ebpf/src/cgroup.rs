//! Which container a task or socket belongs to, for the host-wide hooks (block and
//! scheduler tracepoints, cgroup_skb on the root): the container's cgroup v2 directory, or
//! one below it.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::map,
    maps::{Array, HashMap},
};
use dockops_common::MAX_CGROUPS;

/// cgroup v2 ids of the containers dockops watches (userspace keeps it in step).
#[map(name = "WATCHED_CGROUPS")]
static WATCHED_CGROUPS: HashMap<u64, u8> = HashMap::pinned(MAX_CGROUPS, 0);

/// Bit N set when a watched cgroup sits at level N of the hierarchy.
#[map(name = "CGROUP_LEVELS")]
static CGROUP_LEVELS: Array<u64> = Array::pinned(1, 0);

/// Deepest level looked at for a container above the current task's cgroup.
const MAX_LEVEL: i32 = 16;

/// The cgroup id of the container the current task runs in: its own cgroup, or the
/// nearest watched ancestor for a task in a cgroup the container made below its own.
#[inline(always)]
pub fn container_of_current() -> Option<u64> {
    // SAFETY: helpers without arguments to check.
    let id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: returns 0 when the task's cgroup is shallower than `level`.
    container_of(id, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// The container of cgroup `id`: itself if watched, else the watched ancestor that
/// `ancestor(level)` (0 where the cgroup is shallower) names.
#[inline(always)]
pub fn container_of(id: u64, ancestor: impl Fn(i32) -> u64) -> Option<u64> {
    // SAFETY: a map lookup.
    if unsafe { WATCHED_CGROUPS.get(&id) }.is_some() {
        return Some(id);
    }
    let levels = CGROUP_LEVELS.get(0).copied().unwrap_or(0);
    let mut level = 1;
    while level < MAX_LEVEL {
        if levels & (1 << level) != 0 {
            let ancestor = ancestor(level);
            // SAFETY: a map lookup.
            if ancestor != 0
                && ancestor != id
                && unsafe { WATCHED_CGROUPS.get(&ancestor) }.is_some()
            {
                return Some(ancestor);
            }
        }
        level += 1;
    }
    None
}
