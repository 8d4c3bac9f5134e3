//! Bandwidth caps: the host-wide pacing program and the per-address caps it reads.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    net::Ipv4Addr,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{CgroupAttachMode, SockOps},
};
use dockops_common::{Caps, names};

use super::DatapathError;

/// The pinned `sock_ops` link on the cgroup v2 root, the `CAPS` map it reads, and the caps
/// each container asked for (`DESIRED_CAPS`, by container id).
pub(super) struct Pacing {
    caps: BpfHashMap<MapData, u32, Caps>,
    desired: BpfHashMap<MapData, [u8; 32], Caps>,
}

const fn uncapped(caps: Caps) -> bool {
    caps.egress_bits == 0 && caps.ingress_bits == 0
}

/// Map keys are addresses as the kernel stores them (network byte order), read natively.
fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl Pacing {
    /// Adopts the pinned link at `link`, or attaches the program to the cgroup v2 root
    /// `unified` (it sees every socket on the host) and pins it.
    pub(super) fn open(
        ebpf: &mut Ebpf,
        link: &Path,
        unified: &Path,
    ) -> Result<Self, DatapathError> {
        if !link.exists() {
            let prog_err = |source| DatapathError::Program {
                name: names::SOCK_PACE,
                source,
            };
            let prog: &mut SockOps = ebpf
                .program_mut(names::SOCK_PACE)
                .ok_or(DatapathError::Missing(names::SOCK_PACE))?
                .try_into()
                .map_err(prog_err)?;
            prog.load().map_err(prog_err)?;
            let cgroup = File::open(unified).map_err(|source| DatapathError::Io {
                path: unified.to_owned(),
                source,
            })?;
            // Kernel 6.18 rejects BPF_F_ALLOW_MULTI in link flags; links are multi anyway.
            let id = prog
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(prog_err)?;
            super::pin_link(prog.take_link(id).map_err(prog_err)?, link)?;
        }
        let mut map = |name| ebpf.take_map(name).ok_or(DatapathError::Missing(name));
        let caps = BpfHashMap::try_from(map(names::CAPS)?)?;
        let desired = BpfHashMap::try_from(map(names::DESIRED_CAPS)?)?;
        Ok(Self { caps, desired })
    }

    pub(super) fn all(&self) -> Result<HashMap<Ipv4Addr, Caps>, DatapathError> {
        let mut out = HashMap::new();
        for entry in &self.caps {
            let (k, caps) = entry?;
            out.insert(Ipv4Addr::from(k.to_ne_bytes()), caps);
        }
        Ok(out)
    }

    /// Sets (or, when both directions are 0, removes) the caps of `ip`.
    pub(super) fn set(&mut self, ip: Ipv4Addr, caps: Caps) -> Result<(), DatapathError> {
        if uncapped(caps) {
            match self.caps.remove(&key(ip)) {
                Err(e) if !super::not_found(&e) => Err(e.into()),
                _ => Ok(()),
            }
        } else {
            Ok(self.caps.insert(key(ip), caps, 0)?)
        }
    }

    /// Records (or forgets) what the container `caps.owner` asked for.
    pub(super) fn remember(&mut self, caps: Caps) -> Result<(), DatapathError> {
        if uncapped(caps) {
            match self.desired.remove(&caps.owner) {
                Err(e) if !super::not_found(&e) => Err(e.into()),
                _ => Ok(()),
            }
        } else {
            Ok(self.desired.insert(caps.owner, caps, 0)?)
        }
    }

    /// What each container asked for, by id.
    pub(super) fn desired(&self) -> Result<HashMap<[u8; 32], Caps>, DatapathError> {
        Ok(self.desired.iter().collect::<Result<_, _>>()?)
    }

    /// Forgets the caps of containers that no longer exist (`existing`: ids as bytes).
    pub(super) fn forget_gone(
        &mut self,
        existing: &HashSet<[u8; 32]>,
    ) -> Result<(), DatapathError> {
        let gone: Vec<[u8; 32]> = self
            .desired
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !existing.contains(id))
            .collect();
        for id in gone {
            self.desired.remove(&id)?;
        }
        Ok(())
    }

    /// Keeps only the caps whose address belongs to the running container that set them:
    /// an address freed by a removed container may already be another container's.
    pub(super) fn reconcile(
        &mut self,
        live: &HashMap<Ipv4Addr, [u8; 32]>,
    ) -> Result<(), DatapathError> {
        let stale: Vec<u32> = self
            .caps
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, caps)| live.get(&Ipv4Addr::from(k.to_ne_bytes())) != Some(&caps.owner))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.caps.remove(&k)?;
        }
        Ok(())
    }
}
