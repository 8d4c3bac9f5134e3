//! Run-queue latency and context switches per container, from the scheduler's raw
//! tracepoints.
//!
//! Raw tracepoints, not the classic ones: a classic tracepoint program is skipped whenever
//! another one runs on the CPU (the kernel's `bpf_prog_active`), so a wakeup or a block
//! completion in interrupt context would be lost each time it lands while a context switch
//! is being counted. A raw tracepoint program only skips running inside itself.
//!
//! Threads are keyed by their `task_struct` address, which the tracepoints pass: no field
//! of it is read. A container's thread is remembered (`TASKS`) the first time it is
//! switched out, when it is the current task and its cgroup is known. From then on a
//! wakeup stamps it runnable, being switched out while runnable (preempted, or yielding)
//! stamps it too, and being switched in ends the wait, which counts for the container the
//! thread belongs to, whoever woke it and whatever ran before it. A thread's first wait
//! after dockops started is missed; a new thread's is not (its parent forks it in its own
//! cgroup).
//!
//! `sched_switch` runs on every context switch of the host, containers' or not, so it does
//! as little as it can: statistics live in per-CPU arrays indexed by the container's slot
//! (inlined lookups, no hashing), and a per-CPU memo (`SCHED_CPU`) keeps the container of
//! the cgroup last seen on the CPU and whether the thread it switched in is known, so that
//! a thread going to sleep costs no lookup at all. What is left is one hash lookup for the
//! thread switched in, and one for each wakeup.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use dockops_common::{MAX_CGROUPS, MAX_TASKS, NO_SLOT, SchedStats, TaskState};

use crate::cgroup::{Watched, container_of_current, container_of_current_in, watched_version};

#[map(name = "TASKS")]
static TASKS: LruHashMap<u64, TaskState> = LruHashMap::pinned(MAX_TASKS, 0);

#[map(name = "SCHED_STATS")]
static SCHED_STATS: PerCpuArray<SchedStats> = PerCpuArray::pinned(MAX_CGROUPS, 0);

/// What `sched_switch` remembers about its CPU from one run to the next.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuMemo {
    /// `WATCHED_VERSION` when `cgroup` was looked up.
    version: u64,
    /// The cgroup id last looked up on this CPU, and its container (`container` 0: none).
    cgroup: u64,
    container: u64,
    slot: u32,
    /// The slot the `TASKS` entry of `task` names.
    task_slot: u32,
    /// The thread switched in last, current until the next switch, and the container its
    /// `TASKS` entry names (0: it has none).
    task: u64,
    task_container: u64,
}

#[map(name = "SCHED_CPU")]
static SCHED_CPU: PerCpuArray<CpuMemo> = PerCpuArray::pinned(1, 0);

/// The time of this run, read once and only if needed: a clock read costs about as much as
/// the rest of a switch (some 40 ns here), and most switches of the host involve no
/// container thread.
struct Clock(u64);

impl Clock {
    #[inline(always)]
    fn read(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: no arguments.
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}

/// `TASK_RUNNING`, the task state of a thread that stays runnable.
const TASK_RUNNING: u64 = 0;

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` (5.18+), in the context of `prev`, the thread giving up the
/// CPU.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let Some(memo) = SCHED_CPU.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's entry; a raw tracepoint program does not run inside itself, and
    // only this program uses the memo.
    let memo = unsafe { &mut *memo };
    let mut now = Clock(0);
    if let Some(container) = current_container(memo) {
        switched_out(&ctx, memo, container, &mut now);
    }
    let next: u64 = ctx.arg(2);
    memo.task = next;
    memo.task_container = 0;
    if let Some(t) = TASKS.get_ptr_mut(&next) {
        // SAFETY: the map's value, valid for this program run.
        let t = unsafe { &mut *t };
        memo.task_container = t.container;
        memo.task_slot = t.slot;
        let since = t.queued_at;
        if since != 0 {
            t.queued_at = 0;
            let now = now.read();
            if now > since
                && let Some(s) = SCHED_STATS.get_ptr_mut(t.slot)
            {
                // SAFETY: this CPU's value of a per-CPU array.
                unsafe { (*s).runqueue.record(now - since) };
            }
        }
    }
    0
}

/// The container of the current thread (`prev`), looked up only when the CPU runs another
/// cgroup than at the last switch, or the watched set changed since.
#[inline(always)]
fn current_container(memo: &mut CpuMemo) -> Option<Watched> {
    // SAFETY: a helper without arguments to check.
    let id = unsafe { bpf_get_current_cgroup_id() };
    // Read before the lookup: a change made after it bumps the version past this one.
    let version = watched_version();
    if memo.cgroup != id || memo.version != version {
        let found = container_of_current_in(id);
        memo.cgroup = id;
        memo.version = version;
        memo.container = found.map_or(0, |w| w.id);
        memo.slot = found.map_or(NO_SLOT, |w| w.slot);
    }
    (memo.container != 0).then_some(Watched {
        id: memo.container,
        slot: memo.slot,
    })
}

/// Counts the switch of `prev`, a thread of `container`, and keeps its entry true.
#[inline(always)]
fn switched_out(ctx: &RawTracePointContext, memo: &CpuMemo, container: Watched, now: &mut Clock) {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let state: u64 = ctx.arg(3);
    // As `__schedule` counts `nivcsw`: preempted, or switched out still runnable.
    let runnable = preempt != 0 || state & 0xffff_ffff == TASK_RUNNING;
    if let Some(s) = SCHED_STATS.get_ptr_mut(container.slot) {
        // SAFETY: this CPU's value of a per-CPU array.
        let s = unsafe { &mut *s };
        if runnable {
            s.involuntary += 1;
        } else {
            s.voluntary += 1;
        }
    }
    // Going to sleep with an entry naming this container and slot: the entry is right
    // already (its stamp was cleared when it was switched in; a wakeup stamps it before it
    // can be switched in again).
    if !runnable
        && memo.task == prev
        && memo.task_container == container.id
        && memo.task_slot == container.slot
    {
        return;
    }
    let task = TaskState {
        container: container.id,
        slot: container.slot,
        queued_at: if runnable { now.read() } else { 0 },
        pad: 0,
    };
    match TASKS.get_ptr_mut(&prev) {
        // SAFETY: the map's value; a racing wakeup stamp on another CPU is overwritten by
        // this later, truer state.
        Some(t) => unsafe { *t = task },
        None => {
            let _ = TASKS.insert(&prev, &task, 0);
        }
    }
}

/// `sched_wakeup(struct task_struct *p)`: a container's thread becomes runnable (in any
/// context; the waker is whoever runs).
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    if let Some(t) = TASKS.get_ptr_mut(&task) {
        // SAFETY: the map's value; the task's own switch-in reads and clears it.
        unsafe { (*t).queued_at = bpf_ktime_get_ns() };
    }
    0
}

/// `sched_wakeup_new(struct task_struct *p)`: a new thread, runnable at once, in its
/// parent's cgroup; the parent is the current task.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_fork(ctx: RawTracePointContext) -> i32 {
    if let Some(container) = container_of_current() {
        let task: u64 = ctx.arg(0);
        let state = TaskState {
            container: container.id,
            slot: container.slot,
            // SAFETY: no arguments.
            queued_at: unsafe { bpf_ktime_get_ns() },
            pad: 0,
        };
        let _ = TASKS.insert(&task, &state, 0);
    }
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: the thread's memory may hold another
/// thread next.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let _ = TASKS.remove(&task);
    0
}
