//! Enforcement of CPU, memory, pids and block IO limits on running containers.
//!
//! CPU, memory and pids go through Docker's update API ([`docker`]): `docker inspect` stays
//! true and Docker re-applies them when the container restarts. Block IO throttles per device
//! cannot be changed through the API, so they are written to the cgroup files ([`io`]),
//! recorded in the durable state, and re-applied by [`Limiter::reconcile`] after a restart.
//!
//! Every change is planned first (all checks, nothing written), then applied: throttles
//! first, the Docker update last; if anything fails, what was applied is put back.

mod docker;
mod io;
mod storage;

use std::path::PathBuf;

pub use io::resolve;

use crate::{
    capabilities::CgroupMode,
    discovery::{CgroupPaths, Container},
    policy::{
        resources::{Host, IoKind, ResourceError, Resources, Throttle, Unset},
        update::{self, Update},
    },
    state::StoredLimits,
};

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Input(#[from] ResourceError),
    #[error("--{flag} {path}: {why}")]
    Device {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("Docker refused to update {container}: {message}")]
    Refused { container: String, message: String },
    #[error("the Docker API request for {container} failed")]
    Docker {
        container: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} cgroup of {container} was not found (has it stopped?)")]
    NoCgroup {
        container: String,
        what: &'static str,
    },
    #[error(
        "{container}: the io controller is not enabled for its cgroup (no io.max), so block IO \
         cannot be limited"
    )]
    NoIoController { container: String },
    #[error("--storage-size cannot be enforced: {why}")]
    Storage { container: String, why: String },
}

impl LimitError {
    /// A mistake in what was asked (exit status 2), not a failure of the host.
    pub const fn is_input(&self) -> bool {
        matches!(
            self,
            Self::Input(_) | Self::Device { .. } | Self::Refused { .. } | Self::Storage { .. }
        )
    }
}

/// One throttle write: the device, the throttle, the value to set (`None` removes it) and the
/// value before, to put back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IoWrite {
    device: (u32, u32),
    kind: IoKind,
    value: Option<u64>,
    before: Option<u64>,
}

/// A change to one container, checked and ready to apply.
#[derive(Clone, Debug)]
pub struct Plan {
    pub id: String,
    pub name: String,
    paths: CgroupPaths,
    /// What Docker is asked for, and what puts it back.
    pub update: Update,
    restore: Update,
    io: Vec<IoWrite>,
    /// The throttles asked for, resolved to their disks (for the durable state).
    pub throttles: Vec<Throttle>,
    storage: Option<StorageWrite>,
}

impl Plan {
    /// The limits (as `limit`'s flags name them) this plan removes or resets.
    pub fn removed(&self) -> Vec<&'static str> {
        let u = &self.update;
        let mut names: Vec<&'static str> = [
            (u.nano_cpus.is_some() || u.cpu_quota.is_some(), "cpus"),
            (u.cpu_shares.is_some(), "cpu-shares"),
            (u.cpuset_cpus.is_some(), "cpuset-cpus"),
            (u.cpuset_mems.is_some(), "cpuset-mems"),
            (u.memory.is_some(), "memory"),
            (u.memory_swap.is_some(), "memory-swap"),
            (u.memory_reservation.is_some(), "memory-reservation"),
            (u.pids_limit.is_some(), "pids-limit"),
        ]
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect();
        for kind in IoKind::ALL {
            if self.io.iter().any(|w| w.kind == kind && w.value.is_none()) {
                names.push(kind.flag());
            }
        }
        if self
            .storage
            .as_ref()
            .is_some_and(|s| s.value.is_none() && s.before.is_some())
        {
            names.push("storage-size");
        }
        names
    }
}

/// A writable-layer limit to set (`None` removes it), and the one before.
#[derive(Clone, Debug)]
struct StorageWrite {
    target: storage::Target,
    value: Option<u64>,
    before: Option<u64>,
}

/// Applies limits through Docker and the cgroup files.
pub struct Limiter {
    client: bollard::Docker,
    cgroup: CgroupMode,
    pub host: Host,
}

impl Limiter {
    pub const fn new(client: bollard::Docker, cgroup: CgroupMode, host: Host) -> Self {
        Self {
            client,
            cgroup,
            host,
        }
    }

    const fn v1(&self) -> bool {
        matches!(self.cgroup, CgroupMode::V1 { .. })
    }

    /// The container's resource settings as Docker holds them (`docker inspect`).
    pub async fn docker_resources(
        &self,
        id: &str,
        name: &str,
    ) -> Result<crate::policy::update::DockerResources, LimitError> {
        docker::inspect(&self.client, id, name).await
    }

    /// Checks `request` and `unset` for `container` (whose memory use is `usage`) against
    /// the host and Docker's settings (inspected now), resolves devices, and says what would
    /// change. Changes nothing.
    pub async fn plan(
        &self,
        container: &Container,
        request: &Resources,
        unset: &Unset,
        usage: Option<u64>,
        force: bool,
    ) -> Result<Plan, LimitError> {
        let current = docker::inspect(&self.client, &container.id, &container.name).await?;
        let discovered = Container {
            resources: current,
            ..container.clone()
        };
        self.plan_changes(&discovered, request, unset, usage, force, false)
    }

    /// Whether the container still runs and is not being removed (a failure for one that
    /// stopped meanwhile is no failure: its next start is another event).
    pub async fn still_running(&self, id: &str) -> bool {
        use bollard::models::ContainerStateStatusEnum::RUNNING;
        self.client
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .is_some_and(|s| s.status == Some(RUNNING))
    }

    /// Brings `container` to `request` and removes `unset`, writing only what does not
    /// hold already (the agent, applying labels and the policy file at every event): true
    /// when something was written. Docker's settings are the ones discovery read (it
    /// inspects a container again on each of its events); no check against memory use:
    /// declared limits are applied as `docker update` applies them.
    pub async fn converge(
        &self,
        container: &Container,
        request: &Resources,
        unset: &Unset,
    ) -> Result<bool, LimitError> {
        let plan = self.plan_changes(container, request, unset, None, true, true)?;
        if plan.update.is_empty() && plan.io.is_empty() && plan.storage.is_none() {
            return Ok(false);
        }
        self.apply(&plan).await?;
        Ok(true)
    }

    /// The plan from Docker's settings in `container.resources`.
    fn plan_changes(
        &self,
        container: &Container,
        request: &Resources,
        unset: &Unset,
        usage: Option<u64>,
        force: bool,
        prune: bool,
    ) -> Result<Plan, LimitError> {
        self.host.check(request)?;
        let current = &container.resources;
        let mut update = update::plan(request, unset, current, &self.host, usage, force)?;
        if prune {
            update = update.pruned(current);
        }
        let restore = update::restore(current, &update, &self.host);
        let mut throttles = Vec::new();
        for limit in &request.io {
            let (major, minor) = resolve(&limit.path).map_err(|why| LimitError::Device {
                flag: limit.kind.flag(),
                path: limit.path.clone(),
                why,
            })?;
            throttles
                .retain(|t: &Throttle| (t.major, t.minor, t.kind) != (major, minor, limit.kind));
            throttles.push(Throttle {
                major,
                minor,
                kind: limit.kind,
                value: limit.value,
            });
        }
        let mut io = Vec::new();
        if !throttles.is_empty() || !unset.io.is_empty() {
            let now = io::read(&self.cgroup, &container.cgroup, &container.name)?;
            for t in &throttles {
                io.push(IoWrite {
                    device: (t.major, t.minor),
                    kind: t.kind,
                    value: Some(t.value),
                    before: io::current(&now, (t.major, t.minor), t.kind),
                });
            }
            for d in &now {
                for &kind in &unset.io {
                    if let Some(before) = d.get(kind) {
                        io.push(IoWrite {
                            device: (d.major, d.minor),
                            kind,
                            value: None,
                            before: Some(before),
                        });
                    }
                }
            }
        }
        let storage = if request.storage.is_some() || unset.storage {
            let before = storage::current(container);
            match storage::target(container) {
                Ok(target) => Some(StorageWrite {
                    target,
                    value: request.storage,
                    before,
                }),
                // Nothing to remove where nothing can be set.
                Err(_) if request.storage.is_none() => None,
                Err(error) => return Err(error),
            }
        } else {
            None
        };
        if prune {
            io.retain(|w| w.value != w.before);
        }
        let storage = storage.filter(|s| !prune || s.value != s.before);
        Ok(Plan {
            id: container.id.clone(),
            name: container.name.clone(),
            paths: container.cgroup.clone(),
            update,
            restore,
            io,
            throttles,
            storage,
        })
    }

    /// Applies `plan`: the throttles, then the Docker update. On failure, what was written
    /// is put back and the error returned.
    pub async fn apply(&self, plan: &Plan) -> Result<(), LimitError> {
        for (done, write) in plan.io.iter().enumerate() {
            if let Err(error) = self.write_io(plan, write, write.value) {
                warn_all(plan, self.put_back(plan, &plan.io[..done], false));
                return Err(error);
            }
        }
        if let Some(s) = &plan.storage
            && let Err(error) = storage::set(&plan.name, &s.target, s.value)
        {
            warn_all(plan, self.put_back(plan, &plan.io, false));
            return Err(error);
        }
        if let Err(error) =
            docker::update(&self.client, &plan.id, &plan.name, &plan.update, self.v1()).await
        {
            warn_all(plan, self.put_back(plan, &plan.io, true));
            return Err(error);
        }
        Ok(())
    }

    /// Puts back what an applied `plan` changed (another container's failure undoes this
    /// one); returns what could not be put back.
    pub async fn undo(&self, plan: &Plan) -> Vec<LimitError> {
        let mut failed = Vec::new();
        if let Err(error) =
            docker::update(&self.client, &plan.id, &plan.name, &plan.restore, self.v1()).await
        {
            failed.push(error);
        }
        failed.extend(self.put_back(plan, &plan.io, true));
        failed
    }

    /// Puts back the throttles `written` and, with `storage`, the storage limit, in reverse
    /// order; returns what could not be put back.
    fn put_back(&self, plan: &Plan, written: &[IoWrite], storage: bool) -> Vec<LimitError> {
        let mut failed = Vec::new();
        if storage
            && let Some(s) = &plan.storage
            && let Err(error) = storage::set(&plan.name, &s.target, s.before)
        {
            failed.push(error);
        }
        failed.extend(
            written
                .iter()
                .rev()
                .filter_map(|w| self.write_io(plan, w, w.before).err()),
        );
        failed
    }

    fn write_io(&self, plan: &Plan, write: &IoWrite, value: Option<u64>) -> Result<(), LimitError> {
        io::write(
            &self.cgroup,
            &plan.paths,
            &plan.name,
            write.device,
            write.kind,
            value,
        )
    }

    /// Re-applies the recorded throttles of each running container where the kernel lost
    /// them (a restart makes a new cgroup); returns each container's failure.
    pub fn reconcile(
        &self,
        containers: &[Container],
        recorded: &std::collections::BTreeMap<String, StoredLimits>,
    ) -> Vec<(String, LimitError)> {
        let mut failures = Vec::new();
        for container in containers {
            let Some(limits) = recorded.get(&container.id) else {
                continue;
            };
            if limits.io.is_empty() {
                continue;
            }
            let result =
                io::read(&self.cgroup, &container.cgroup, &container.name).and_then(|now| {
                    for t in &limits.io {
                        let device = (t.major, t.minor);
                        if io::current(&now, device, t.kind) != Some(t.value) {
                            io::write(
                                &self.cgroup,
                                &container.cgroup,
                                &container.name,
                                device,
                                t.kind,
                                Some(t.value),
                            )?;
                        }
                    }
                    Ok(())
                });
            if let Err(error) = result {
                failures.push((container.id.clone(), error));
            }
        }
        failures
    }
}

/// What a failed apply could not put back: the apply's own error is what the caller sees.
fn warn_all(plan: &Plan, errors: Vec<LimitError>) {
    for error in errors {
        tracing::warn!(
            container = plan.name,
            "putting a limit back failed: {error}"
        );
    }
}
