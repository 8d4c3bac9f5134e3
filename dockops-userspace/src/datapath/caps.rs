//! Bandwidth caps: the host-wide pacing program and the per-address caps it reads.

use std::{collections::HashMap, fs::File, net::Ipv4Addr, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{CgroupAttachMode, SockOps},
};
use dockops_common::{Caps, names};

use super::DatapathError;

/// The pinned `sock_ops` link on the cgroup v2 root and the `CAPS` map.
pub(super) struct Pacing {
    caps: BpfHashMap<MapData, u32, Caps>,
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
        let caps = ebpf
            .take_map(names::CAPS)
            .ok_or(DatapathError::Missing(names::CAPS))?;
        Ok(Self {
            caps: BpfHashMap::try_from(caps)?,
        })
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
        if caps == Caps::default() {
            match self.caps.remove(&key(ip)) {
                Err(e) if !super::not_found(&e) => Err(e.into()),
                _ => Ok(()),
            }
        } else {
            Ok(self.caps.insert(key(ip), caps, 0)?)
        }
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
