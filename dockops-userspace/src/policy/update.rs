//! What Docker's update API is asked for, so that `docker inspect` stays true and the limit
//! outlives a container restart.
//!
//! The API (1.41, measured on Docker 20.10) reads 0 and "" as "unchanged", so nothing can be
//! set back to "unlimited" with a zero: a memory limit is lifted by setting the kernel's
//! largest (what an unlimited cgroup reads back), unlimited swap and reservation are -1, a
//! `--cpus` limit becomes every online CPU, a CFS quota -1, shares Docker's default 1024 and a
//! cpuset every online CPU. It also refuses to mix `NanoCpus` with `CpuPeriod`/`CpuQuota`, and
//! at a restart a `CpuQuota` of -1 would override `NanoCpus`: the quota is therefore always
//! expressed the way the container already expresses it.

use super::resources::{Host, ResourceError, Resources, Swap, Unset};

/// What cgroup v1 reads back for "no memory limit" (`PAGE_COUNTER_MAX` 4 KiB pages). Docker
/// accepts it as a limit, and cgroup v2 shows it as `max`.
pub const NO_MEMORY_LIMIT: i64 = 0x7FFF_FFFF_FFFF_F000;
/// The kernel's default CFS period, microseconds.
const DEFAULT_PERIOD_US: i64 = 100_000;
/// Docker's (and cgroup v1's) default CPU shares.
const DEFAULT_SHARES: i64 = 1024;

pub use crate::discovery::DockerResources;

impl DockerResources {
    /// The memory limit, if there is one.
    fn memory_limit(&self) -> Option<i64> {
        (self.memory > 0 && self.memory < NO_MEMORY_LIMIT).then_some(self.memory)
    }
}

/// One update request; `None` is not sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub pids_limit: Option<i64>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Without the fields `current` already has: what an agent applying the same limits
    /// again still needs to send (nothing, once they hold). Memory and swap go together, as
    /// Docker checks one against the other.
    #[must_use]
    pub fn pruned(&self, current: &DockerResources) -> Self {
        fn keep<T: PartialEq>(field: Option<&T>, now: &T) -> bool {
            field.is_some_and(|v| v != now)
        }
        let c = current;
        let memory = keep(self.memory.as_ref(), &c.memory)
            || keep(self.memory_swap.as_ref(), &c.memory_swap);
        Self {
            nano_cpus: self.nano_cpus.filter(|v| *v != c.nano_cpus),
            cpu_shares: self.cpu_shares.filter(|v| *v != c.cpu_shares),
            cpu_period: self.cpu_period.filter(|v| *v != c.cpu_period),
            cpu_quota: self.cpu_quota.filter(|v| *v != c.cpu_quota),
            cpuset_cpus: self.cpuset_cpus.clone().filter(|v| *v != c.cpuset_cpus),
            cpuset_mems: self.cpuset_mems.clone().filter(|v| *v != c.cpuset_mems),
            memory: self.memory.filter(|_| memory),
            memory_swap: self.memory_swap.filter(|_| memory),
            memory_reservation: self
                .memory_reservation
                .filter(|v| *v != c.memory_reservation),
            pids_limit: self.pids_limit.filter(|v| *v != c.pids_limit),
        }
    }

    /// The requests that make this update. runc (1.1, cgroup v1) does not write a swap limit
    /// of -1, and then refuses a memory limit above the old memory+swap limit: on v1,
    /// unlimited swap is first raised to the largest limit, in a request of its own. On v2
    /// runc writes -1 as `max`, and refuses a swap limit in a request without a memory
    /// limit ("unable to set swap limit without memory limit"): one request.
    pub fn steps(&self, cgroup_v1: bool) -> Vec<Self> {
        let mut steps = Vec::new();
        if cgroup_v1 && self.memory_swap == Some(-1) {
            steps.push(Self {
                memory_swap: Some(NO_MEMORY_LIMIT),
                ..Self::default()
            });
        }
        if !self.is_empty() {
            steps.push(self.clone());
        }
        steps
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn conflict(text: impl Into<String>) -> ResourceError {
    ResourceError::Conflict(text.into())
}

/// Every online CPU, as `NanoCpus`.
fn all_cpus(host: &Host) -> i64 {
    signed(host.cpus.0.len() as u64 * 1_000_000_000)
}

/// The update that gives `request` and removes `unset`, from the container's `current`
/// settings. `usage` is its memory use now: a limit below it needs `force`.
pub fn plan(
    request: &Resources,
    unset: &Unset,
    current: &DockerResources,
    host: &Host,
    usage: Option<u64>,
    force: bool,
) -> Result<Update, ResourceError> {
    let mut update = Update::default();
    plan_cpu(request, unset, current, host, &mut update)?;
    plan_memory(request, unset, current, host, usage, force, &mut update)?;
    if let Some(pids) = request.pids_limit {
        update.pids_limit = Some(signed(pids));
    } else if unset.pids_limit && current.pids_limit > 0 {
        update.pids_limit = Some(-1);
    }
    Ok(update)
}

fn plan_cpu(
    request: &Resources,
    unset: &Unset,
    current: &DockerResources,
    host: &Host,
    update: &mut Update,
) -> Result<(), ResourceError> {
    let nano_set = current.nano_cpus > 0;
    let quota_set = current.cpu_quota != 0 || current.cpu_period != 0;
    if let Some(nano) = request.nano_cpus {
        match (nano_set, quota_set) {
            (_, false) => update.nano_cpus = Some(signed(nano)),
            (false, true) => {
                let period = if current.cpu_period > 0 {
                    current.cpu_period
                } else {
                    DEFAULT_PERIOD_US
                };
                update.cpu_quota = Some((signed(nano) / 1000 * period / 1_000_000).max(1000));
            }
            (true, true) => {
                return Err(conflict(
                    "Docker holds both NanoCpus and CpuQuota for this container, and refuses \
                     to change either: recreate it with one of --cpus or --cpu-quota",
                ));
            }
        }
    } else if request.cpu_quota.is_some() || request.cpu_period.is_some() {
        if nano_set {
            return Err(conflict(
                "its CPU limit was set with --cpus (NanoCpus) and Docker refuses to mix that \
                 with --cpu-period/--cpu-quota: give --cpus instead",
            ));
        }
        update.cpu_quota = request.cpu_quota.map(signed);
        update.cpu_period = request.cpu_period.map(signed);
    } else if unset.cpus {
        if nano_set {
            if current.nano_cpus != all_cpus(host) {
                update.nano_cpus = Some(all_cpus(host));
            }
        } else if current.cpu_quota > 0 {
            update.cpu_quota = Some(-1);
        }
    }
    if let Some(shares) = request.cpu_shares {
        update.cpu_shares = Some(signed(shares));
    } else if unset.cpu_shares && current.cpu_shares != 0 && current.cpu_shares != DEFAULT_SHARES {
        update.cpu_shares = Some(DEFAULT_SHARES);
    }
    for (asked, clear, now, all, field) in [
        (
            &request.cpuset_cpus,
            unset.cpuset_cpus,
            &current.cpuset_cpus,
            &host.cpus,
            &mut update.cpuset_cpus,
        ),
        (
            &request.cpuset_mems,
            unset.cpuset_mems,
            &current.cpuset_mems,
            &host.mems,
            &mut update.cpuset_mems,
        ),
    ] {
        if let Some(asked) = asked {
            *field = Some(asked.to_string());
        } else if clear && !now.is_empty() && *now != all.to_string() {
            *field = Some(all.to_string());
        }
    }
    Ok(())
}

fn plan_memory(
    request: &Resources,
    unset: &Unset,
    current: &DockerResources,
    host: &Host,
    usage: Option<u64>,
    force: bool,
    update: &mut Update,
) -> Result<(), ResourceError> {
    let memory = if let Some(memory) = request.memory {
        if let Some(usage) = usage
            && memory <= usage
            && !force
        {
            return Err(conflict(format!(
                "--memory {} is not above what the container uses now ({}): it would be \
                 reclaimed or OOM-killed at once; give --force to set it anyway",
                memory >> 10 << 10,
                usage
            )));
        }
        let memory = signed(memory);
        if request.memory_reservation.is_none() && current.memory_reservation > memory {
            return Err(conflict(format!(
                "--memory {memory} is below the container's memory reservation ({}): lower \
                 it too, with --memory-reservation",
                current.memory_reservation
            )));
        }
        update.memory = Some(memory);
        update.memory_swap = Some(match request.memory_swap {
            Some(Swap::Limited(swap)) => signed(swap),
            // As `docker run --memory` alone: swap as large as memory, where swap is
            // accounted and was not unlimited.
            None if host.swap_accounting && current.memory_swap != -1 => memory * 2,
            Some(Swap::Unlimited) | None => -1,
        });
        Some(memory)
    } else if unset.memory {
        if current.memory_limit().is_some() {
            update.memory = Some(NO_MEMORY_LIMIT);
            update.memory_swap = Some(-1);
        }
        None
    } else {
        match request.memory_swap {
            Some(swap) => {
                if current.memory_limit().is_none() {
                    return Err(conflict(
                        "--memory-swap is memory plus swap: it needs a memory limit, give \
                         --memory too",
                    ));
                }
                update.memory_swap = Some(match swap {
                    Swap::Limited(s) => signed(s),
                    Swap::Unlimited => -1,
                });
            }
            None if unset.memory_swap
                && current.memory_limit().is_some()
                && current.memory_swap > 0 =>
            {
                update.memory_swap = Some(-1);
            }
            None => {}
        }
        current.memory_limit()
    };
    if let (Some(memory), Some(swap)) = (memory, update.memory_swap)
        && swap != -1
        && swap < memory
    {
        return Err(conflict(format!(
            "--memory-swap {swap} is memory plus swap: it must be at least the memory limit \
             ({memory}), or -1 for unlimited swap"
        )));
    }
    if let Some(reservation) = request.memory_reservation {
        let reservation = signed(reservation);
        if memory.is_some_and(|m| reservation > m) {
            return Err(conflict(format!(
                "--memory-reservation {reservation} is a soft limit below the memory limit: it \
                 must not exceed it ({})",
                memory.unwrap_or_default()
            )));
        }
        update.memory_reservation = Some(reservation);
    } else if unset.memory_reservation && current.memory_reservation > 0 {
        update.memory_reservation = Some(-1);
    }
    Ok(())
}

/// The update that puts back what `changed` changed, as near as the API allows: a field
/// that was never set comes back as "unlimited" in Docker's own terms, not as 0.
pub fn restore(current: &DockerResources, changed: &Update, host: &Host) -> Update {
    let or = |was: i64, instead: i64| if was > 0 { was } else { instead };
    let text = |was: &str, all: &super::resources::CpuList| {
        if was.is_empty() {
            all.to_string()
        } else {
            was.to_owned()
        }
    };
    Update {
        nano_cpus: changed
            .nano_cpus
            .map(|_| or(current.nano_cpus, all_cpus(host))),
        cpu_shares: changed
            .cpu_shares
            .map(|_| or(current.cpu_shares, DEFAULT_SHARES)),
        cpu_period: changed
            .cpu_period
            .map(|_| or(current.cpu_period, DEFAULT_PERIOD_US)),
        cpu_quota: changed.cpu_quota.map(|_| or(current.cpu_quota, -1)),
        cpuset_cpus: changed
            .cpuset_cpus
            .as_ref()
            .map(|_| text(&current.cpuset_cpus, &host.cpus)),
        cpuset_mems: changed
            .cpuset_mems
            .as_ref()
            .map(|_| text(&current.cpuset_mems, &host.mems)),
        memory: changed.memory.map(|_| or(current.memory, NO_MEMORY_LIMIT)),
        memory_swap: changed.memory_swap.map(|_| {
            if current.memory_swap == 0 {
                -1
            } else {
                current.memory_swap
            }
        }),
        memory_reservation: changed
            .memory_reservation
            .map(|_| or(current.memory_reservation, -1)),
        pids_limit: changed.pids_limit.map(|_| or(current.pids_limit, -1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::resources::CpuList;

    fn host() -> Host {
        Host {
            cpus: CpuList::parse("0-1").unwrap(),
            mems: CpuList::parse("0").unwrap(),
            swap_accounting: true,
        }
    }

    fn ask(request: &Resources, current: &DockerResources) -> Result<Update, ResourceError> {
        plan(
            request,
            &Unset::default(),
            current,
            &host(),
            Some(1 << 20),
            false,
        )
    }

    #[test]
    fn an_update_already_in_force_prunes_to_nothing() {
        let request = Resources {
            nano_cpus: Some(500_000_000),
            memory: Some(256 << 20),
            pids_limit: Some(50),
            ..Resources::default()
        };
        let fresh = DockerResources::default();
        let update = ask(&request, &fresh).unwrap();
        assert_eq!(update.pruned(&fresh), update, "nothing holds yet");
        let applied = DockerResources {
            nano_cpus: 500_000_000,
            memory: 256 << 20,
            memory_swap: 512 << 20,
            pids_limit: 50,
            ..DockerResources::default()
        };
        assert!(ask(&request, &applied).unwrap().pruned(&applied).is_empty());
        // Someone ran `docker update --memory 1g --memory-swap 2g`: memory is sent again,
        // with its swap.
        let drifted = DockerResources {
            memory: 1 << 30,
            memory_swap: 2 << 30,
            ..applied
        };
        let again = ask(&request, &drifted).unwrap().pruned(&drifted);
        assert_eq!(
            (again.memory, again.memory_swap),
            (Some(256 << 20), Some(512 << 20))
        );
        assert_eq!(again.nano_cpus, None);
    }

    #[test]
    fn cpus_follow_how_the_container_expresses_its_quota() {
        let half = Resources {
            nano_cpus: Some(500_000_000),
            ..Resources::default()
        };
        let fresh = DockerResources::default();
        assert_eq!(ask(&half, &fresh).unwrap().nano_cpus, Some(500_000_000));
        let by_quota = DockerResources {
            cpu_quota: 20_000,
            cpu_period: 50_000,
            ..DockerResources::default()
        };
        let update = ask(&half, &by_quota).unwrap();
        assert_eq!((update.nano_cpus, update.cpu_quota), (None, Some(25_000)));
        let by_nano = DockerResources {
            nano_cpus: 1_000_000_000,
            ..DockerResources::default()
        };
        let quota = Resources {
            cpu_quota: Some(50_000),
            ..Resources::default()
        };
        assert!(
            ask(&quota, &by_nano)
                .unwrap_err()
                .to_string()
                .contains("--cpus")
        );
        // Unlimiting a --cpus container: every CPU, never CpuQuota -1 (which would win over
        // NanoCpus at the next restart).
        let off = |current: &DockerResources| {
            plan(
                &Resources::default(),
                &Unset {
                    cpus: true,
                    ..Unset::default()
                },
                current,
                &host(),
                None,
                false,
            )
            .unwrap()
        };
        assert_eq!(off(&by_nano).nano_cpus, Some(2_000_000_000));
        assert_eq!(off(&by_nano).cpu_quota, None);
        assert_eq!(off(&by_quota).cpu_quota, Some(-1));
        assert!(off(&fresh).is_empty(), "nothing to take away");
    }

    #[test]
    fn memory_carries_swap_as_docker_run_does() {
        let mem = Resources {
            memory: Some(32 << 20),
            ..Resources::default()
        };
        let update = ask(&mem, &DockerResources::default()).unwrap();
        assert_eq!(update.memory, Some(32 << 20));
        assert_eq!(update.memory_swap, Some(64 << 20));
        let unlimited_swap = DockerResources {
            memory: 16 << 20,
            memory_swap: -1,
            ..DockerResources::default()
        };
        assert_eq!(ask(&mem, &unlimited_swap).unwrap().memory_swap, Some(-1));
        let no_accounting = Host {
            swap_accounting: false,
            ..host()
        };
        let update = plan(
            &mem,
            &Unset::default(),
            &DockerResources::default(),
            &no_accounting,
            None,
            false,
        )
        .unwrap();
        assert_eq!(update.memory_swap, Some(-1));
    }

    fn mem_32m() -> Resources {
        Resources {
            memory: Some(32 << 20),
            ..Resources::default()
        }
    }

    #[test]
    fn memory_checks() {
        let current = DockerResources::default();
        let below_use = Resources {
            memory: Some(8 << 20),
            ..Resources::default()
        };
        let err = plan(
            &below_use,
            &Unset::default(),
            &current,
            &host(),
            Some(10 << 20),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(
            plan(
                &below_use,
                &Unset::default(),
                &current,
                &host(),
                Some(10 << 20),
                true
            )
            .is_ok()
        );
        let small_swap = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(Swap::Limited(32 << 20)),
            ..Resources::default()
        };
        assert!(ask(&small_swap, &current).is_err());
        let swap_alone = Resources {
            memory_swap: Some(Swap::Limited(64 << 20)),
            ..Resources::default()
        };
        assert!(
            ask(&swap_alone, &current)
                .unwrap_err()
                .to_string()
                .contains("--memory")
        );
        let limited = DockerResources {
            memory: 32 << 20,
            memory_swap: 64 << 20,
            ..DockerResources::default()
        };
        assert_eq!(
            ask(&swap_alone, &limited).unwrap().memory_swap,
            Some(64 << 20)
        );
        let reservation = Resources {
            memory_reservation: Some(64 << 20),
            ..Resources::default()
        };
        assert!(ask(&reservation, &limited).is_err(), "above the limit");
        assert!(ask(&reservation, &current).is_ok(), "no limit to exceed");
        let reserved = DockerResources {
            memory_reservation: 64 << 20,
            ..DockerResources::default()
        };
        assert!(
            ask(&mem_32m(), &reserved)
                .unwrap_err()
                .to_string()
                .contains("reservation")
        );
    }

    #[test]
    fn unlimit_uses_dockers_own_unlimited_values() {
        let current = DockerResources {
            nano_cpus: 500_000_000,
            cpu_shares: 512,
            cpuset_cpus: "1".into(),
            memory: 32 << 20,
            memory_swap: 64 << 20,
            memory_reservation: 16 << 20,
            pids_limit: 10,
            ..DockerResources::default()
        };
        let update = plan(
            &Resources::default(),
            &Unset::all(),
            &current,
            &host(),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            update,
            Update {
                nano_cpus: Some(2_000_000_000),
                cpu_shares: Some(1024),
                cpuset_cpus: Some("0-1".into()),
                memory: Some(NO_MEMORY_LIMIT),
                memory_swap: Some(-1),
                memory_reservation: Some(-1),
                pids_limit: Some(-1),
                ..Update::default()
            }
        );
        assert!(
            plan(
                &Resources::default(),
                &Unset::all(),
                &DockerResources::default(),
                &host(),
                None,
                false
            )
            .unwrap()
            .is_empty(),
            "an unlimited container has nothing to unlimit"
        );
    }

    #[test]
    fn unlimited_swap_is_raised_first_on_v1() {
        let update = Update {
            memory: Some(NO_MEMORY_LIMIT),
            memory_swap: Some(-1),
            ..Update::default()
        };
        let steps = update.steps(true);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].memory_swap, Some(NO_MEMORY_LIMIT));
        assert_eq!(steps[0].memory, None);
        assert_eq!(steps[1], update);
        assert_eq!(
            update.steps(false),
            std::slice::from_ref(&update),
            "v2: one request"
        );
        let cpus = Update {
            nano_cpus: Some(1),
            ..Update::default()
        };
        assert_eq!(cpus.steps(true), std::slice::from_ref(&cpus));
        assert!(Update::default().steps(true).is_empty());
    }

    #[test]
    fn restore_puts_back_what_changed() {
        let before = DockerResources {
            memory: 32 << 20,
            memory_swap: 64 << 20,
            ..DockerResources::default()
        };
        let changed = Update {
            nano_cpus: Some(500_000_000),
            memory: Some(128 << 20),
            memory_swap: Some(256 << 20),
            pids_limit: Some(10),
            ..Update::default()
        };
        assert_eq!(
            restore(&before, &changed, &host()),
            Update {
                nano_cpus: Some(2_000_000_000),
                memory: Some(32 << 20),
                memory_swap: Some(64 << 20),
                pids_limit: Some(-1),
                ..Update::default()
            }
        );
    }
}
