//! The agent: discovery, the datapath and the limiter together, kept in line with the
//! running containers by [`Agent::refresh`] and read by [`Agent::snapshot`]. Every command
//! of the binary starts one.

use std::collections::{HashMap, HashSet};

use crate::{
    capabilities::{Capabilities, ProbeError, TcMode},
    collection::{Snapshot, Sources, cgroup},
    datapath::{Datapath, DatapathError, Failure},
    discovery::{Container, DiscoveryError, Docker},
    limits::Limiter,
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
}

impl Agent {
    /// Probes the host, connects to Docker and opens the datapath. `tc_mode` overrides the
    /// tcx/netlink choice.
    pub async fn start(tc_mode: Option<TcMode>) -> Result<Self, AgentError> {
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
        })
    }

    /// Discovers running containers (re-reading those in `changed`) and brings the datapath
    /// in line with them. One container's failure is kept for its notes (and warned about
    /// once); the others are reconciled all the same.
    pub async fn refresh(&mut self, changed: &HashSet<String>) -> Result<(), AgentError> {
        let found = self.docker.running(&self.containers, changed).await?;
        self.dirs.reread_limits();
        let report = self.datapath.reconcile(&found.running, &found.existing)?;
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
        self.containers = found.running;
        Ok(())
    }

    /// Counters of the containers `keep` selects.
    pub fn snapshot(&mut self, keep: impl Fn(&Container) -> bool) -> Result<Snapshot, AgentError> {
        let traffic = self.datapath.counters()?;
        let block = self.datapath.block_counters()?;
        let caps = self.datapath.caps()?;
        let mut sources = Sources {
            cgroup: &self.caps.cgroup,
            dirs: &mut self.dirs,
            traffic: &traffic,
            block: block.as_ref(),
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
