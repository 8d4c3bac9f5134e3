//! Bringing the kernel in line with the running containers.
//!
//! Removals come first (a veth index freed by a removed container can be reused at once), and
//! every step fails alone: a container whose interface vanished mid-way, or whose attachment
//! the kernel refuses, is reported in [`Report::failures`] while the others are reconciled.

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::Entry},
    fs,
};

use dockops_common::{Caps, GROUP_CAP_KEY, tc_cap_key};

use super::{
    Datapath, DatapathError, Direction, Report, attach, bpffs, chain, pins::PinName,
    queue::Discipline, remove_dir, scan,
};
use crate::{
    discovery::{Container, id_bytes},
    policy::labels,
};

/// One step of a reconcile that failed; the rest went on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The container's id, or empty for a host-wide step.
    pub id: String,
    /// What failed, with its causes.
    pub error: String,
}

impl Report {
    pub(super) fn fail(&mut self, id: &str, error: &DatapathError) {
        tracing::debug!(container = id, "{}", chain(error));
        self.failures.push(Failure {
            id: id.to_owned(),
            error: chain(error),
        });
    }
}

impl Datapath {
    /// Makes the kernel match `containers`: removes the attachments of containers and
    /// interfaces that are gone, adopts pinned attachments and attaches to new host veths.
    /// Containers whose interfaces are unknown keep what they have.
    ///
    /// Caps follow containers by id: those of a stopped container are kept (and re-applied to
    /// its new addresses and veths when it starts again) until it is removed; `existing`
    /// holds the ids of every container, stopped ones included.
    ///
    /// Fails only when dockops' own state cannot be read, or another build took it over
    /// ([`DatapathError::Superseded`]); per-container failures are in the report.
    pub fn reconcile(
        &mut self,
        containers: &[Container],
        existing: &HashSet<String>,
        policy: &PolicyCaps,
    ) -> Result<Report, DatapathError> {
        let _lock = bpffs::lock()?;
        self.check_owner()?;
        let mut report = Report::default();
        let pinned = scan(&self.layout)?;
        let mut live = self.remove_gone(containers, &pinned, &mut report);
        for container in containers {
            if let Err(error) = self.attach_container(container, &pinned, &mut live, &mut report) {
                report.fail(&container.id, &error);
            }
        }
        if let Err(error) = self.host_wide(containers, &live) {
            report.fail("", &error);
        }
        self.reconcile_caps(containers, existing, &live, policy, &mut report);
        self.finish_upgrade(&mut report);
        Ok(report)
    }

    /// Detaches what belongs to containers or interfaces that are gone; returns the host
    /// ifindexes whose pins are kept.
    fn remove_gone(
        &mut self,
        containers: &[Container],
        pinned: &BTreeMap<String, Vec<PinName>>,
        report: &mut Report,
    ) -> HashSet<u32> {
        let by_id: HashMap<&str, &Container> =
            containers.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut live = HashSet::new();
        for (id, pins) in pinned {
            let wanted = by_id.get(id.as_str()).map(|c| c.interfaces.as_deref());
            for pin in pins {
                let keep = match wanted {
                    None => false,
                    Some(None) => true,
                    Some(Some(ifaces)) => ifaces.iter().any(|i| i.ifindex == pin.ifindex),
                };
                if keep {
                    live.insert(pin.ifindex);
                    continue;
                }
                match attach::detach(&self.layout.container(id).join(pin.to_string()), *pin) {
                    Ok(()) => report.removed += 1,
                    Err(error) => report.fail(id, &error),
                }
            }
            if wanted.is_none()
                && let Err(error) = remove_dir(&self.layout.container(id))
            {
                report.fail(id, &error);
            }
        }
        live
    }

    /// Adopts or attaches both hooks of each of the container's host veths.
    fn attach_container(
        &mut self,
        container: &Container,
        pinned: &BTreeMap<String, Vec<PinName>>,
        live: &mut HashSet<u32>,
        report: &mut Report,
    ) -> Result<(), DatapathError> {
        let Some(ifaces) = &container.interfaces else {
            return Ok(());
        };
        let dir = self.layout.container(&container.id);
        let pins = pinned.get(&container.id).map_or(&[][..], Vec::as_slice);
        for iface in ifaces {
            // A veth is counted once, for the container that owns it (discovery gives the
            // ones sharing a network namespace none).
            if !live.insert(iface.ifindex) && !pins.iter().any(|p| p.ifindex == iface.ifindex) {
                continue;
            }
            self.ensure_counters(iface.ifindex)?;
            for direction in Direction::BOTH {
                if pins
                    .iter()
                    .any(|p| p.ifindex == iface.ifindex && p.direction == direction)
                {
                    report.adopted += 1;
                    continue;
                }
                fs::create_dir_all(&dir).map_err(|source| DatapathError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let prog = match direction {
                    Direction::Ingress => &mut self.ingress,
                    Direction::Egress => &mut self.egress,
                };
                if let Err(error) = attach::attach(prog, iface, direction, self.mode, &dir) {
                    // Counted as live only once attached.
                    live.remove(&iface.ifindex);
                    return Err(error);
                }
                tracing::info!(
                    container = container.name,
                    interface = iface.name,
                    ?direction,
                    "attached"
                );
                report.attached += 1;
            }
        }
        Ok(())
    }

    /// Counters of interfaces that are gone, caps of addresses their owner no longer has,
    /// and the cgroups the host-wide tracepoints count for.
    fn host_wide(
        &mut self,
        containers: &[Container],
        live: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        let stale: Vec<u32> = self
            .traffic
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(k))
            .collect();
        for key in stale {
            self.traffic.remove(&key)?;
        }
        if let Ok(pacing) = &mut self.pacing {
            let owners = containers
                .iter()
                .flat_map(|c| c.addresses().map(|ip| (ip, c.id_bytes())))
                .collect();
            pacing.reconcile(&owners)?;
        }
        self.events.reconcile(
            &containers
                .iter()
                .filter_map(|c| Some((c.cgroup_id?, c.cgroup.v2_level()?)))
                .collect(),
        )?;
        Ok(())
    }

    /// Caps follow what each running container asked for (the durable store): re-applied in
    /// full where its addresses do not carry them (it restarted on a new address, the host
    /// rebooted, a new build rebuilt the map), otherwise completed on new veths. Buckets of
    /// interfaces that are gone go too, and so do the recorded caps of containers that no
    /// longer exist (`existing`: every container, stopped ones included).
    fn reconcile_caps(
        &mut self,
        containers: &[Container],
        existing: &HashSet<String>,
        live: &HashSet<u32>,
        policy: &PolicyCaps,
        report: &mut Report,
    ) {
        if let Err(error) = self.remove_gone_buckets(live) {
            report.fail("", &error);
        }
        let mut stored = match self.store.load() {
            Ok(stored) => stored,
            Err(error) => return report.fail("", &error.into()),
        };
        if stored.retain_existing(existing)
            && let Err(error) = self.store.save(&stored)
        {
            report.fail("", &error.into());
        }
        let mut desired: HashMap<[u8; 32], Caps> = stored
            .caps
            .iter()
            .map(|(id, caps)| (id_bytes(id), caps.to_caps(id_bytes(id))))
            .collect();
        // What `limit` recorded wins; otherwise what the labels or the policy file ask.
        for container in containers {
            if let Entry::Vacant(slot) = desired.entry(container.id_bytes()) {
                let Some((group, declared)) = policy.wanted.get(&container.id) else {
                    continue;
                };
                match policy_caps(container, declared, *group) {
                    Ok(Some(caps)) => {
                        slot.insert(caps);
                    }
                    Ok(None) => {}
                    Err(error) => report.failures.push(super::Failure {
                        id: container.id.clone(),
                        error: format!("caps from its labels or the policy file: {error}"),
                    }),
                }
            }
        }
        report.desired = stored;
        if desired.is_empty() && !policy.lift {
            return;
        }
        let (current, present, queues) = match self.caps_state(&desired) {
            Ok(state) => state,
            Err(error) => return report.fail("", &error),
        };
        for container in containers {
            let result = match desired.get(&container.id_bytes()).copied() {
                Some(want)
                    if container
                        .addresses()
                        .all(|ip| current.get(&ip) == Some(&want)) =>
                {
                    self.complete_caps(container, want, &present, &queues)
                }
                Some(want) => self
                    .apply_caps(container, want)
                    .inspect(|()| tracing::info!(container = container.name, "caps restored")),
                // A label's or rule's caps whose label or rule is gone.
                None if policy.lift
                    && container.addresses().any(|ip| {
                        current
                            .get(&ip)
                            .is_some_and(|c| c.flags & Caps::POLICY != 0)
                    }) =>
                {
                    self.apply_caps(container, Caps::default()).inspect(|()| {
                        tracing::info!(
                            container = container.name,
                            "caps lifted: no label or policy rule asks for them any more"
                        );
                    })
                }
                None => Ok(()),
            };
            if let Err(error) = result {
                report.fail(&container.id, &error);
            }
        }
        // Group buckets whose last member just left.
        if let Err(error) = self.remove_gone_buckets(live) {
            report.fail("", &error);
        }
    }

    /// Removes the buckets of interfaces that are gone, and the group buckets no live
    /// interface points at.
    fn remove_gone_buckets(&mut self, live: &HashSet<u32>) -> Result<(), DatapathError> {
        let entries: Vec<(u64, u64)> = self
            .tc_caps
            .iter()
            .filter_map(Result::ok)
            .map(|(key, bucket)| (key, bucket.group_key))
            .collect();
        let is_live = |key: u64| live.contains(&u32::try_from(key >> 1).unwrap_or(0));
        let groups: HashSet<u64> = entries
            .iter()
            .filter(|(key, group)| *group != 0 && is_live(*key))
            .map(|(_, group)| *group)
            .collect();
        let stale: Vec<u64> = entries
            .iter()
            .map(|(key, _)| *key)
            .filter(|key| {
                if key & GROUP_CAP_KEY == 0 {
                    !is_live(*key)
                } else {
                    !groups.contains(key)
                }
            })
            .collect();
        for key in stale {
            self.tc_caps.remove(&key)?;
        }
        Ok(())
    }

    /// The caps by address, the buckets present, and (one netlink dump, only when a queue
    /// may be missing) the interfaces with a dockops queue.
    fn caps_state(&self, desired: &HashMap<[u8; 32], Caps>) -> Result<CapsState, DatapathError> {
        let current = self.caps()?;
        // A bucket without an ECN slot (set by an older build) is rewritten as missing; a
        // group member's hook has none of its own, but its group's bucket must be there.
        let entries: HashMap<u64, u64> = self
            .tc_caps
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, bucket)| bucket.ecn_slot != 0 || bucket.group_key != 0)
            .map(|(key, bucket)| (key, bucket.group_key))
            .collect();
        let present = entries
            .iter()
            .filter(|(_, group)| **group == 0 || entries.contains_key(group))
            .map(|(key, _)| *key)
            .collect();
        let queues = if desired.values().any(|c| c.ingress_bits != 0) {
            super::queue::interfaces()?.into_iter().collect()
        } else {
            HashMap::new()
        };
        Ok((current, present, queues))
    }

    /// Buckets and queues on the container's veths that a new veth is still missing.
    fn complete_caps(
        &mut self,
        container: &Container,
        want: Caps,
        present: &HashSet<u64>,
        queues: &HashMap<u32, Discipline>,
    ) -> Result<(), DatapathError> {
        // A new veth is a new namespace (a restart): its backlog went with the old one. A
        // new build may lay the backlogs out differently: they are set again.
        let mut backlog = self.upgrading;
        for iface in container.interfaces.iter().flatten() {
            let missing =
                |ingress, bits| bits != 0 && !present.contains(&tc_cap_key(iface.ifindex, ingress));
            let ingress_bucket = if want.queued() { 0 } else { want.ingress_bits };
            if missing(false, want.egress_bits) || missing(true, ingress_bucket) {
                self.set_tc_caps(iface.ifindex, want)?;
                backlog = true;
            }
            let kind = |d: &Discipline| std::mem::discriminant(d);
            if let Some(needed) = super::discipline(want)
                && (self.upgrading || queues.get(&iface.ifindex).map(kind) != Some(kind(&needed)))
            {
                super::set_queue(iface.ifindex, want)?;
            }
        }
        if backlog {
            super::backlog::apply(container, want);
        }
        Ok(())
    }
}

/// The coarsest clock tick (HZ=100): a label's burst must hold one at its rate wherever it
/// runs (`limit` checks against this host's tick).
const COARSEST_TICK_NS: u64 = 10_000_000;

/// What labels and the policy file ask of the caps, for [`Datapath::reconcile`].
#[derive(Debug, Default)]
pub struct PolicyCaps {
    /// By container id, the egress, ingress and burst it is to have: its own (group 0) or
    /// those of the group it shares them with.
    pub wanted: HashMap<String, (u32, labels::Declared)>,
    /// Lift the caps they set earlier and no longer ask for: only the agent, which reads
    /// the policy file, may (a command without it would lift the file's caps).
    pub lift: bool,
}

/// The caps a container's labels or policy rules declare (its own, or with `group` its
/// group's), marked as theirs.
fn policy_caps(
    container: &Container,
    declared: &labels::Declared,
    group: u32,
) -> Result<Option<Caps>, crate::policy::PolicyError> {
    let largest = container.largest_packet();
    let caps = labels::caps(declared, container.id_bytes(), largest, COARSEST_TICK_NS)?;
    Ok(caps.map(|c| Caps {
        flags: c.flags | Caps::POLICY | u64::from(group) << Caps::GROUP_SHIFT,
        ..c
    }))
}

type CapsState = (
    HashMap<std::net::IpAddr, Caps>,
    HashSet<u64>,
    HashMap<u32, Discipline>,
);
