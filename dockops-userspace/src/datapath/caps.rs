//! Bandwidth caps: the host-wide pacing program and the per-address caps it reads.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    net::IpAddr,
    path::Path,
};

use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{CgroupAttachMode, SockOps},
};
use dockops_common::{Caps, LeaseRing, names, window_key_group, window_key_v4, window_key_v6};

use super::{DatapathError, pins::Layout};

/// The pinned `sock_ops` link on the cgroup v2 root and the `CAPS` maps it reads. What each
/// container asked for is in the durable store ([`crate::state`]), not here.
pub(super) struct Pacing {
    caps: BpfHashMap<MapData, u32, Caps>,
    caps6: BpfHashMap<MapData, [u8; 16], Caps>,
    /// The program's count of active sockets per capped address and direction.
    windows: BpfHashMap<MapData, u64, LeaseRing>,
}

impl Pacing {
    /// Adopts the pinned link, or attaches the program to the cgroup v2 root `unified` (it
    /// sees every socket on the host) and pins it. `fresh`: the pinned program comes from
    /// another build, so this build's is loaded and pinned for [`super::upgrade`] to swap in.
    pub(super) fn open(
        ebpf: &mut Ebpf,
        layout: &Layout,
        unified: &Path,
        fresh: bool,
    ) -> Result<Self, DatapathError> {
        let link = layout.global().join(names::SOCK_PACE);
        let attach = !link.exists();
        if attach || fresh {
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
            super::repin(&layout.progs().join(names::SOCK_PACE), |path| {
                prog.pin(path)
            })?;
            if attach {
                let cgroup = File::open(unified).map_err(|source| DatapathError::Io {
                    path: unified.to_owned(),
                    source,
                })?;
                // Kernel 6.18 rejects BPF_F_ALLOW_MULTI in link flags; links are multi anyway.
                let id = prog
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(prog_err)?;
                super::pin_link(prog.take_link(id).map_err(prog_err)?, &link)?;
            }
        }
        Ok(Self {
            caps: super::take_map(ebpf, names::CAPS)?,
            caps6: super::take_map(ebpf, names::CAPS6)?,
            windows: super::take_map(ebpf, names::WINDOWS)?,
        })
    }

    /// Every capped address, IPv4 and IPv6.
    pub(super) fn all(&self) -> Result<HashMap<IpAddr, Caps>, DatapathError> {
        let mut out = HashMap::new();
        for entry in &self.caps {
            let (k, caps) = entry?;
            out.insert(IpAddr::from(k.to_ne_bytes()), caps);
        }
        for entry in &self.caps6 {
            let (k, caps) = entry?;
            out.insert(IpAddr::from(k), caps);
        }
        Ok(out)
    }

    /// Sets (or, when both directions are 0, removes) the caps of `ip`.
    pub(super) fn set(&mut self, ip: IpAddr, caps: Caps) -> Result<(), DatapathError> {
        match ip {
            IpAddr::V4(ip) => put(&mut self.caps, u32::from_ne_bytes(ip.octets()), caps),
            IpAddr::V6(ip) => put(&mut self.caps6, ip.octets(), caps),
        }
    }

    /// Keeps only the caps whose address belongs to the running container that set them:
    /// an address freed by a removed container may already be another container's.
    pub(super) fn reconcile(
        &mut self,
        live: &HashMap<IpAddr, [u8; 32]>,
    ) -> Result<(), DatapathError> {
        let owns = |ip: IpAddr, caps: &Caps| live.get(&ip) == Some(&caps.owner);
        keep_only(&mut self.caps, |k, caps| {
            owns(IpAddr::from(k.to_ne_bytes()), caps)
        })?;
        keep_only(&mut self.caps6, |k, caps| owns(IpAddr::from(*k), caps))?;
        self.forget_windows()
    }

    /// Drops the socket counts of addresses that are no longer capped (the program creates
    /// them, nothing else removes them).
    fn forget_windows(&mut self) -> Result<(), DatapathError> {
        let mut keep = HashSet::new();
        for entry in &self.caps {
            let (key, caps) = entry?;
            keep.insert(window_key_v4(key));
            keep.insert(window_key_group(caps.group()));
        }
        for entry in &self.caps6 {
            let (key, caps) = entry?;
            keep.insert(window_key_group(caps.group()));
            let word = |i: usize| u32::from_ne_bytes([key[i], key[i + 1], key[i + 2], key[i + 3]]);
            keep.insert(window_key_v6([word(0), word(4), word(8), word(12)]));
        }
        keep_only(&mut self.windows, |k, _| keep.contains(&(k >> 1)))
    }
}

/// Writes `caps` under `key`, or removes the entry when they cap nothing.
fn put<K: Pod>(
    map: &mut BpfHashMap<MapData, K, Caps>,
    key: K,
    caps: Caps,
) -> Result<(), DatapathError> {
    if caps.egress_bits == 0 && caps.ingress_bits == 0 {
        match map.remove(&key) {
            Err(e) if !super::not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    } else {
        Ok(map.insert(key, caps, 0)?)
    }
}

/// Removes the entries `keep` rejects.
fn keep_only<K: Pod, V: Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    keep: impl Fn(&K, &V) -> bool,
) -> Result<(), DatapathError> {
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| !keep(k, v))
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    Ok(())
}
