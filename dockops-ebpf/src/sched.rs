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

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use dockops_common::{InsertFailures, MAX_CGROUPS, MAX_TASKS, SchedStats, TaskState};

use crate::cgroup::container_of_current;

#[map(name = "TASKS")]
static TASKS: LruHashMap<u64, TaskState> = LruHashMap::pinned(MAX_TASKS, 0);

#[map(name = "SCHED_STATS")]
static SCHED_STATS: PerCpuHashMap<u64, SchedStats> = PerCpuHashMap::pinned(MAX_CGROUPS, 0);

/// `TASK_RUNNING`, the task state of a thread that stays runnable.
const TASK_RUNNING: u64 = 0;

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` (5.18+), in the context of `prev`, the thread giving up the
/// CPU.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(container) = container_of_current() {
        let preempt: u64 = ctx.arg(0);
        let prev: u64 = ctx.arg(1);
        let state: u64 = ctx.arg(3);
        // As `__schedule` counts `nivcsw`: preempted, or switched out still runnable.
        let runnable = preempt != 0 || state & 0xffff_ffff == TASK_RUNNING;
        update(container, |s| {
            if runnable {
                s.involuntary += 1;
            } else {
                s.voluntary += 1;
            }
        });
        let task = TaskState {
            container,
            queued_at: if runnable { now } else { 0 },
        };
        match TASKS.get_ptr_mut(&prev) {
            // SAFETY: the map's value; a racing wakeup stamp on another CPU is overwritten
            // by this later, truer state.
            Some(t) => unsafe { *t = task },
            None => {
                let _ = TASKS.insert(&prev, &task, 0);
            }
        }
    }
    let next: u64 = ctx.arg(2);
    if let Some(t) = TASKS.get_ptr_mut(&next) {
        // SAFETY: the map's value, valid for this program run.
        let t = unsafe { &mut *t };
        let since = t.queued_at;
        t.queued_at = 0;
        if since != 0 && now > since {
            update(t.container, |s| s.runqueue.record(now - since));
        }
    }
    0
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
            container,
            // SAFETY: no arguments.
            queued_at: unsafe { bpf_ktime_get_ns() },
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

/// Applies `f` to this CPU's statistics of `container`, creating them on first use.
#[inline(always)]
fn update(container: u64, f: impl FnOnce(&mut SchedStats)) {
    if let Some(s) = SCHED_STATS.get_ptr_mut(&container) {
        // SAFETY: this CPU's value of a per-CPU map.
        f(unsafe { &mut *s });
        return;
    }
    let mut first = SchedStats::default();
    f(&mut first);
    if SCHED_STATS.insert(&container, &first, 0).is_err() {
        crate::insert_failed(InsertFailures::SchedStats);
    }
}
