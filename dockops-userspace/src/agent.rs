//! The agent: discovery, the datapath and the limiter together, kept in line with the
//! running containers by [`Agent::refresh`] and read by [`Agent::snapshot`]. Every command
//! of the binary starts one.

use std::collections::{HashMap, HashSet};

use crate::{
    capabilities::{Capabilities, ProbeError, TcMode},
    collection::{Snapshot, Sources, cgroup},
    datapath::{Datapath, DatapathError, Failure, PolicyCaps},
    discovery::{Container, DiscoveryError, Docker},
    limits::Limiter,
    policy::{
        desired::{self, Wanted},
        file::Policy,
        labels::Declared,
        resources::{Resources, Unset},
    },
    state::Desired,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Docker(#[from] DiscoveryError),
    #[error("preparing the eBPF datapath")]
    Open(#[source] DatapathError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Discovery and datapath, ready to reconcile and read.
pub struct Agent {
    pub docker: Docker,
    pub datapath: Datapath,
    pub limiter: Limiter,
    pub caps: Capabilities,
    /// Cgroup directories kept open between snapshots.
    dirs: cgroup::Dirs,
    /// What the last refresh found.
    pub containers: Vec<Container>,
    /// What the last reconcile could not do, by container id (empty id: host-wide).
    failures: HashMap<String, Vec<String>>,
    /// Failures already warned about, so a container failing at every refresh warns once.
    warned: HashSet<(String, String)>,
    /// Failed map inserts at the last snapshot, to warn when they grow.
    insert_failures: HashMap<&'static str, u64>,
    /// Set by [`Self::enforce`]: this agent applies labels and the policy file to every
    /// limit, and lifts what they no longer ask for. Otherwise (one-shot commands) only the
    /// labels' caps are applied, and nothing is lifted.
    policy: Option<Policy>,
    /// Containers whose limits are brought in line at the next refresh whatever changed
    /// (all, after [`Self::enforce`]).
    recheck_all: bool,
}

impl Agent {
    /// Probes the host, connects to Docker and opens the datapath. `tc_mode` overrides the
    /// tcx/netlink choice.
    pub async fn start(tc_mode: Option<TcMode>) -> Result<Self, AgentError> {
        raise_fd_limit();
        let caps = Capabilities::probe(tc_mode)?;
        let docker = Docker::connect(caps.cgroup.unified().map(Into::into)).await?;
        let datapath =
            Datapath::open(caps.tc_mode, caps.cgroup.unified()).map_err(AgentError::Open)?;
        let limiter = Limiter::new(docker.client(), caps.cgroup.clone(), caps.host.clone());
        Ok(Self {
            docker,
            datapath,
            limiter,
            caps,
            dirs: cgroup::Dirs::default(),
            containers: Vec::new(),
            failures: HashMap::new(),
            warned: HashSet::new(),
            insert_failures: HashMap::new(),
            policy: None,
            recheck_all: false,
        })
    }

    /// Makes this the agent: from now on each refresh applies every limit labels and
    /// `policy` ask for (CLI-set ones win), and lifts those they no longer ask for. Call it
    /// again with a reloaded file; every container is checked at the next refresh.
    pub fn enforce(&mut self, policy: Policy) {
        self.policy = Some(policy);
        self.recheck_all = true;
    }

    /// Discovers running containers (re-reading those in `changed`) and brings the datapath
    /// in line with them. One container's failure is kept for its notes (and warned about
    /// once); the others are reconciled all the same.
    pub async fn refresh(&mut self, changed: &HashSet<String>) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let found = self.docker.running(&self.containers, changed).await?;
        self.dirs.reread_limits();
        let stored = self.datapath.desired()?;
        let wanted: HashMap<String, Wanted> = found
            .running
            .iter()
            .map(|c| (c.id.clone(), self.wanted(c, &stored)))
            .collect();
        let policy_caps = PolicyCaps {
            wanted: wanted
                .iter()
                .map(|(id, w)| {
                    let caps = w
                        .group
                        .as_ref()
                        .map_or_else(|| (0, caps_only(&w.limits)), |g| (g.id, g.caps.clone()));
                    (id.clone(), caps)
                })
                .collect(),
            lift: self.policy.is_some(),
        };
        let mut report = self
            .datapath
            .reconcile(&found.running, &found.existing, &policy_caps)?;
        for container in &found.running {
            report
                .failures
                .extend(wanted[&container.id].refused.iter().map(|e| Failure {
                    id: container.id.clone(),
                    error: format!("refused {e}"),
                }));
        }
        if self.policy.is_some() {
            let recheck = std::mem::take(&mut self.recheck_all);
            let known: HashSet<&str> = self.containers.iter().map(|c| c.id.as_str()).collect();
            let due = found
                .running
                .iter()
                .filter(|c| recheck || changed.contains(&c.id) || !known.contains(c.id.as_str()));
            let failures = self.converge(due, &wanted, &report.desired).await;
            report.failures.extend(failures);
        }
        tracing::debug!(?report, containers = found.running.len(), "reconciled");
        for container in &found.running {
            for note in &container.notes {
                if self.warned.insert((container.id.clone(), note.clone())) {
                    tracing::warn!(container = container.name, "{note}");
                }
            }
        }
        // Forget what was warned about containers that are gone.
        let running: HashSet<&str> = found.running.iter().map(|c| c.id.as_str()).collect();
        self.warned
            .retain(|(id, _)| id.is_empty() || running.contains(id.as_str()));
        // Block IO throttles a restart dropped (Docker does not hold them) are put back.
        let limit_failures = self
            .limiter
            .reconcile(&found.running, &report.desired.limits)
            .into_iter()
            .map(|(id, error)| Failure {
                id,
                error: format!("re-applying block IO limits: {error}"),
            });
        self.failures.clear();
        for failure in report.failures.into_iter().chain(limit_failures) {
            if self
                .warned
                .insert((failure.id.clone(), failure.error.clone()))
            {
                let name = found
                    .running
                    .iter()
                    .find(|c| c.id == failure.id)
                    .map_or(failure.id.as_str(), |c| c.name.as_str());
                tracing::warn!(container = name, "{}", failure.error);
            }
            self.failures
                .entry(failure.id)
                .or_default()
                .push(failure.error);
        }
        tracing::debug!(
            refresh_us = started.elapsed().as_micros(),
            containers = found.running.len(),
            changed = changed.len(),
            "refreshed"
        );
        self.containers = found.running;
        Ok(())
    }

    /// What the labels and the policy file (the agent's; none otherwise) ask of `container`,
    /// less what `limit` holds (`stored`).
    fn wanted(&self, container: &Container, stored: &Desired) -> Wanted {
        let cli = stored.limits.get(&container.id);
        let cli = desired::cli_names(
            cli.iter().flat_map(|l| l.held.iter()),
            cli.iter().flat_map(|l| l.io.iter().map(|t| t.kind)),
            stored.caps.contains_key(&container.id),
        );
        desired::wanted(container, self.policy.as_ref(), &cli)
    }

    /// Brings the CPU, memory, pids, block IO and storage limits of `due` in line with what
    /// labels and the file ask (`wanted`), lifting what they asked before and no longer do
    /// (recorded in the state), a few containers at a time; returns each container's
    /// failure.
    async fn converge<'c>(
        &self,
        due: impl Iterator<Item = &'c Container>,
        wanted: &HashMap<String, Wanted>,
        stored: &Desired,
    ) -> Vec<Failure> {
        use futures::StreamExt as _;
        let outcomes: Vec<Converged> = futures::stream::iter(due)
            .map(|c| self.converge_one(c, &wanted[&c.id], stored))
            .buffer_unordered(CONCURRENT_UPDATES)
            .collect()
            .await;
        let mut failures = Vec::new();
        let mut records = Vec::new();
        for outcome in outcomes {
            match outcome {
                Converged::Record(id, applied) => records.push((id, applied)),
                Converged::Failed(failure) => failures.push(failure),
                Converged::Unchanged => {}
            }
        }
        // One write for all of them (a start-up applies hundreds).
        if !records.is_empty()
            && let Err(error) = self.datapath.update_state(|d| {
                for (id, applied) in records {
                    d.record_policy(&id, applied);
                }
            })
        {
            failures.push(Failure {
                id: String::new(),
                error: format!("recording the limits applied from labels and policy: {error}"),
            });
        }
        failures
    }

    async fn converge_one(
        &self,
        container: &Container,
        want: &Wanted,
        stored: &Desired,
    ) -> Converged {
        let before = stored
            .limits
            .get(&container.id)
            .map(|l| &l.policy)
            .cloned()
            .unwrap_or_default();
        let applied = want.applied();
        let unset = lifted(
            before
                .keys()
                .filter(|n| !want.sources.contains_key(n.as_str())),
        );
        let request = &want.limits.resources;
        let result = if request.is_empty() && unset.is_empty() {
            Ok(false)
        } else {
            self.limiter.converge(container, request, &unset).await
        };
        match result {
            Ok(changed) => {
                if changed {
                    tracing::info!(
                        container = container.name,
                        ?applied,
                        "limits applied from labels and policy"
                    );
                }
                if applied == before {
                    Converged::Unchanged
                } else {
                    Converged::Record(container.id.clone(), applied)
                }
            }
            Err(error) if !self.limiter.still_running(&container.id).await => {
                tracing::debug!(container = container.name, %error, "gone meanwhile");
                Converged::Unchanged
            }
            Err(error) => Converged::Failed(Failure {
                id: container.id.clone(),
                error: format!(
                    "limits from its labels or the policy file: {}",
                    crate::datapath::chain(&error)
                ),
            }),
        }
    }

    /// Counters of the containers `keep` selects.
    pub fn snapshot(&mut self, keep: impl Fn(&Container) -> bool) -> Result<Snapshot, AgentError> {
        let traffic = self.datapath.counters()?;
        let events = self.datapath.events()?;
        let interfaces = crate::collection::netdev::read();
        let caps = self.datapath.caps()?;
        let mut sources = Sources {
            cgroup: &self.caps.cgroup,
            dirs: &mut self.dirs,
            traffic: &traffic,
            interfaces: &interfaces,
            events: &events,
            caps: &caps,
        };
        let mut snapshot = Snapshot::take(self.containers.iter().filter(|c| keep(c)), &mut sources);
        snapshot.insert_failures = self.datapath.insert_failures()?;
        for &(map, count) in &snapshot.insert_failures {
            let before = self.insert_failures.insert(map, count).unwrap_or(0);
            if count > before {
                tracing::warn!(
                    "map {map} is full: {} insert(s) failed ({count} in all); what they \
                     would have recorded is missing (docs/OPERATIONS.md)",
                    count - before
                );
            }
        }
        for stats in &mut snapshot.containers {
            if let Some(failed) = self.failures.get(&stats.id) {
                stats
                    .notes
                    .extend(failed.iter().map(|e| format!("failed: {e}")));
            }
        }
        Ok(snapshot)
    }
}

/// Containers whose limits are applied at once: Docker serves updates to different
/// containers in parallel (a start-up with hundreds of labelled containers).
const CONCURRENT_UPDATES: usize = 8;

/// What converging one container did.
enum Converged {
    Unchanged,
    /// Applied: record these (name → source) as what labels and the policy gave it.
    Record(String, std::collections::BTreeMap<String, String>),
    Failed(Failure),
}

/// The bandwidth part of declared limits (the datapath's).
fn caps_only(declared: &Declared) -> Declared {
    Declared {
        egress_bits: declared.egress_bits,
        ingress_bits: declared.ingress_bits,
        burst_bytes: declared.burst_bytes,
        resources: Resources::default(),
    }
}

/// What lifting the limits `names` (as labels spell them) takes away. Caps are lifted by
/// the datapath.
fn lifted<'a>(names: impl Iterator<Item = &'a String>) -> Unset {
    let mut unset = Unset::default();
    for name in names {
        match name.as_str() {
            "cpus" | "cpu-period" | "cpu-quota" => unset.cpus = true,
            "cpu-shares" => unset.cpu_shares = true,
            "cpuset-cpus" => unset.cpuset_cpus = true,
            "cpuset-mems" => unset.cpuset_mems = true,
            "memory" => unset.memory = true,
            "memory-swap" => unset.memory_swap = true,
            "memory-reservation" => unset.memory_reservation = true,
            "pids-limit" => unset.pids_limit = true,
            "storage-size" => unset.storage = true,
            other => unset.io.extend(
                crate::policy::resources::IoKind::ALL
                    .into_iter()
                    .filter(|k| k.flag() == other),
            ),
        }
    }
    unset
}

/// Raises the soft limit on open files to the hard one: the agent keeps every container's
/// cgroup directories and the files it reads each tick open (about 15 per container on
/// cgroup v1), past the usual soft limit of 1024 at a few hundred containers. Where the hard
/// limit is lower still, the files it cannot keep are read and closed each time.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(%error, soft, hard, "cannot raise the open files limit");
    }
}
