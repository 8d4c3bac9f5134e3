//! Bringing the kernel in line with the running containers.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
};

use dockops_common::{Caps, tc_cap_key};

use super::{
    Datapath, DatapathError, Direction, Report, attach, bpffs, pins::PinName, remove_dir, scan,
};
use crate::discovery::{Container, id_bytes};

impl Datapath {
    /// Makes the kernel match `containers`: attaches to new host veths, adopts pinned
    /// attachments, and removes those of containers and interfaces that are gone.
    /// Containers whose interfaces are unknown keep what they have.
    ///
    /// Caps follow containers by id: those of a stopped container are kept (and re-applied to
    /// its new addresses and veths when it starts again) until it is removed; `existing`
    /// holds the ids of every container, stopped ones included.
    pub fn reconcile(
        &mut self,
        containers: &[Container],
        existing: &HashSet<String>,
    ) -> Result<Report, DatapathError> {
        let _lock = bpffs::lock()?;
        let mut report = Report::default();
        let pinned = scan(&self.layout)?;
        let by_id: HashMap<&str, &Container> =
            containers.iter().map(|c| (c.id.as_str(), c)).collect();

        let mut live = HashSet::new();
        for (id, pins) in &pinned {
            let wanted = by_id.get(id.as_str()).map(|c| c.interfaces.as_deref());
            for pin in pins {
                let keep = match wanted {
                    None => false,
                    Some(None) => true,
                    Some(Some(ifaces)) => ifaces.iter().any(|i| i.ifindex == pin.ifindex),
                };
                if keep {
                    live.insert(pin.ifindex);
                } else {
                    attach::detach(&self.layout.container(id).join(pin.to_string()), *pin)?;
                    report.removed += 1;
                }
            }
            if wanted.is_none() {
                remove_dir(&self.layout.container(id))?;
            }
        }

        for container in containers {
            let Some(ifaces) = &container.interfaces else {
                continue;
            };
            let dir = self.layout.container(&container.id);
            for iface in ifaces {
                // Two containers can share one network namespace (`--network container:`):
                // the first one listed owns its veth.
                if !live.insert(iface.ifindex) && !has_pin(&pinned, &container.id, iface.ifindex) {
                    continue;
                }
                self.ensure_counters(iface.ifindex)?;
                for direction in Direction::BOTH {
                    let present = pinned.get(&container.id).is_some_and(|pins| {
                        pins.iter()
                            .any(|p| p.ifindex == iface.ifindex && p.direction == direction)
                    });
                    if present {
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
                    attach::attach(prog, iface, direction, self.mode, &dir)?;
                    tracing::info!(
                        container = container.name,
                        interface = iface.name,
                        ?direction,
                        "attached"
                    );
                    report.attached += 1;
                }
            }
        }

        let stale: Vec<u32> = self
            .traffic
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(k))
            .collect();
        for key in stale {
            self.traffic.remove(&key)?;
        }
        if let Some(pacing) = &mut self.pacing {
            let live = containers
                .iter()
                .flat_map(|c| c.addresses().map(|ip| (ip, c.id_bytes())))
                .collect();
            pacing.reconcile(&live)?;
            pacing.forget_gone(&existing.iter().map(|id| id_bytes(id)).collect())?;
        }
        self.reconcile_caps(containers, &live)?;
        if let Some(block) = &mut self.block {
            block.reconcile(&containers.iter().filter_map(|c| c.cgroup_id).collect())?;
        }
        Ok(report)
    }

    /// Caps follow what each running container asked for (`DESIRED_CAPS`): re-applied in
    /// full where its addresses do not carry them (it restarted on a new address, or a
    /// reconcile ran while it was stopped), otherwise completed on new veths. Buckets of
    /// interfaces that are gone go too.
    fn reconcile_caps(
        &mut self,
        containers: &[Container],
        live: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        let present: HashSet<u64> = self.tc_caps.keys().filter_map(Result::ok).collect();
        for key in &present {
            if !live.contains(&u32::try_from(key >> 1).unwrap_or(0)) {
                self.tc_caps.remove(key)?;
            }
        }
        let desired = match &self.pacing {
            Some(pacing) => pacing.desired()?,
            None => return Ok(()),
        };
        if desired.is_empty() {
            return Ok(());
        }
        let current = self.caps()?;
        // One netlink dump, and only when a queue may be missing.
        let queues: HashSet<u32> = if desired.values().any(Caps::queued) {
            super::queue::interfaces()?.into_iter().collect()
        } else {
            HashSet::new()
        };
        for container in containers {
            let Some(want) = desired.get(&container.id_bytes()).copied() else {
                continue;
            };
            // Not fatal: one container's caps must not stop the others' reconcile.
            let warn = |error: &DatapathError| {
                tracing::warn!(
                    container = container.name,
                    "caps not restored: {}",
                    super::chain(error)
                );
            };
            if !container
                .addresses()
                .all(|ip| current.get(&ip) == Some(&want))
            {
                match self.set_caps(container, want) {
                    Ok(()) => tracing::info!(container = container.name, "caps restored"),
                    Err(error) => warn(&error),
                }
                continue;
            }
            for iface in container.interfaces.iter().flatten() {
                let missing = |ingress, bits| {
                    bits != 0 && !present.contains(&tc_cap_key(iface.ifindex, ingress))
                };
                let ingress_bucket = if want.queued() { 0 } else { want.ingress_bits };
                if missing(false, want.egress_bits) || missing(true, ingress_bucket) {
                    self.set_tc_caps(iface.ifindex, want)?;
                }
                if want.queued()
                    && !queues.contains(&iface.ifindex)
                    && let Err(error) = super::set_queue(iface.ifindex, want)
                {
                    warn(&error);
                }
            }
        }
        Ok(())
    }
}

fn has_pin(pinned: &BTreeMap<String, Vec<PinName>>, id: &str, ifindex: u32) -> bool {
    pinned
        .get(id)
        .is_some_and(|pins| pins.iter().any(|p| p.ifindex == ifindex))
}
