//! The durable desired state: what operators asked for, by container id, in one JSON file
//! that outlives bpffs (reboots) and builds (upgrades).
//!
//! The pinned maps hold what is applied; this file holds what was asked. Every command that
//! reconciles re-applies it, so after a reboot the first `stats`, `watch` or `limit` puts the
//! caps back. Written atomically (temporary file, fsync, rename, fsync of the directory),
//! root only (directory 0700, file 0600). Callers serialise writers with the datapath lock.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use dockops_common::Caps;
use serde::{Deserialize, Serialize};

use crate::policy::resources::{IoKind, Throttle};

/// Where the state lives unless told otherwise.
pub const DIR: &str = "/var/lib/dockops";
const FILE: &str = "state.json";
/// Bumped when the format changes incompatibly; older files are then migrated, never dropped.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} cannot be read ({source}): fix or move it aside; caps already applied stay as they are"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}, this build reads {VERSION}: upgrade dockops")]
    Version { path: PathBuf, found: u32 },
}

/// The caps one container asked for, as stored (flags spelled out, owner implied by the key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCaps {
    pub egress_bits: u64,
    pub ingress_bits: u64,
    pub burst_bytes: u64,
    #[serde(default)]
    pub no_pacing: bool,
    #[serde(default)]
    pub queue: bool,
    #[serde(default)]
    pub edt: bool,
}

impl StoredCaps {
    pub const fn from_caps(caps: Caps) -> Self {
        Self {
            egress_bits: caps.egress_bits,
            ingress_bits: caps.ingress_bits,
            burst_bytes: caps.burst_bytes,
            no_pacing: caps.flags & Caps::NO_PACING != 0,
            queue: caps.flags & Caps::QUEUE != 0,
            edt: caps.flags & Caps::EDT != 0,
        }
    }

    /// The map value for the container whose id bytes are `owner`.
    pub const fn to_caps(self, owner: [u8; 32]) -> Caps {
        Caps {
            egress_bits: self.egress_bits,
            ingress_bits: self.ingress_bits,
            burst_bytes: self.burst_bytes,
            owner,
            flags: if self.no_pacing { Caps::NO_PACING } else { 0 }
                | if self.queue { Caps::QUEUE } else { 0 }
                | if self.edt { Caps::EDT } else { 0 },
        }
    }

    const fn is_empty(&self) -> bool {
        self.egress_bits == 0 && self.ingress_bits == 0
    }
}

/// The CPU, memory, pids and block IO limits one container was given through dockops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLimits {
    /// Limits dockops set that Docker or the storage driver keep: `cpus`, `memory`,
    /// `storage`... (for `show`, which says where each limit came from).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub held: BTreeSet<String>,
    /// Block IO throttles, which Docker cannot hold: dockops re-applies them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<Throttle>,
    /// Limits the agent applied from labels or the policy file, by name, with their source
    /// (`label`, `policy rule N`): lifted when their label or rule goes away, and shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy: BTreeMap<String, String>,
}

impl StoredLimits {
    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.io.is_empty() && self.policy.is_empty()
    }
}

/// Everything asked for, by container id. (Format 1 files from before `limits` read as
/// having none.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub version: u32,
    #[serde(default)]
    pub caps: BTreeMap<String, StoredCaps>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, StoredLimits>,
}

impl Desired {
    /// Records `caps` for `id`; caps that cap nothing remove the entry.
    pub fn set_caps(&mut self, id: &str, caps: StoredCaps) {
        if caps.is_empty() {
            self.caps.remove(id);
        } else {
            self.caps.insert(id.to_owned(), caps);
        }
    }

    /// Records a change of `id`'s limits: `set` and `cleared` name held limits,
    /// `throttles` replace those of their device and kind, `cleared_io` removes kinds.
    pub fn record_limits(
        &mut self,
        id: &str,
        set: &[&str],
        cleared: &[&str],
        throttles: &[Throttle],
        cleared_io: &[IoKind],
    ) {
        let limits = self.limits.entry(id.to_owned()).or_default();
        for name in cleared {
            limits.held.remove(*name);
        }
        limits.held.extend(set.iter().map(|&n| n.to_owned()));
        limits.io.retain(|t| {
            !cleared_io.contains(&t.kind)
                && !throttles
                    .iter()
                    .any(|n| (n.major, n.minor, n.kind) == (t.major, t.minor, t.kind))
        });
        limits.io.extend_from_slice(throttles);
        limits.io.sort();
        if limits.is_empty() {
            self.limits.remove(id);
        }
    }

    /// Records which limits of `id` the agent applied from labels or the policy file;
    /// true if that changed.
    pub fn record_policy(&mut self, id: &str, applied: BTreeMap<String, String>) -> bool {
        let limits = self.limits.entry(id.to_owned()).or_default();
        let changed = limits.policy != applied;
        limits.policy = applied;
        if limits.is_empty() {
            self.limits.remove(id);
        }
        changed
    }

    /// Forgets containers that no longer exist; true if anything was forgotten.
    pub fn retain_existing(&mut self, existing: &HashSet<String>) -> bool {
        let before = (self.caps.len(), self.limits.len());
        self.caps.retain(|id, _| existing.contains(id));
        self.limits.retain(|id, _| existing.contains(id));
        (self.caps.len(), self.limits.len()) != before
    }
}

/// The state file in one directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Self::at(DIR)
    }
}

impl Store {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The stored state; empty when there is none yet.
    pub fn load(&self) -> Result<Desired, StateError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Desired {
                    version: VERSION,
                    ..Desired::default()
                });
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let desired: Desired =
            serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if desired.version != VERSION {
            return Err(StateError::Version {
                path,
                found: desired.version,
            });
        }
        Ok(desired)
    }

    /// Replaces the stored state, atomically: a crash leaves the old file or the new one.
    pub fn save(&self, desired: &Desired) -> Result<(), StateError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err(&self.dir))?;
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut text = serde_json::to_vec_pretty(&Desired {
            version: VERSION,
            ..desired.clone()
        })
        .map_err(|e| io_err(&tmp)(io::Error::other(e)))?;
        text.push(b'\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(&text).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Loads, changes and saves (only when `change` changed something).
    pub fn update(&self, change: impl FnOnce(&mut Desired)) -> Result<Desired, StateError> {
        let old = self.load()?;
        let mut new = old.clone();
        change(&mut new);
        if new != old {
            self.save(&new)?;
        }
        Ok(new)
    }

    /// Deletes the state file (`reset --all`); true if there was one.
    pub fn remove(&self) -> Result<bool, StateError> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn temp_store(tag: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("dockops-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Store::at(dir.join("nested"))
    }

    const CAPS: StoredCaps = StoredCaps {
        egress_bits: 20_000_000,
        ingress_bits: 0,
        burst_bytes: 131_072,
        no_pacing: false,
        queue: true,
        edt: false,
    };

    #[test]
    fn round_trips_and_is_private() {
        let store = temp_store("round");
        assert_eq!(store.load().unwrap().caps.len(), 0);
        store.update(|d| d.set_caps("abc", CAPS)).unwrap();
        assert_eq!(store.load().unwrap().caps["abc"], CAPS);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(store.path().parent().unwrap()), 0o700);
        store
            .update(|d| d.set_caps("abc", StoredCaps::default()))
            .unwrap();
        assert!(store.load().unwrap().caps.is_empty());
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
    }

    #[test]
    fn caps_convert_both_ways() {
        let owner = [7; 32];
        let caps = CAPS.to_caps(owner);
        assert_eq!(caps.flags, Caps::QUEUE);
        assert_eq!(caps.owner, owner);
        assert_eq!(StoredCaps::from_caps(caps), CAPS);
        let edt = StoredCaps {
            queue: false,
            edt: true,
            ..CAPS
        };
        assert_eq!(edt.to_caps(owner).flags, Caps::EDT);
        assert_eq!(StoredCaps::from_caps(edt.to_caps(owner)), edt);
    }

    #[test]
    fn gone_containers_are_forgotten() {
        let mut desired = Desired::default();
        desired.set_caps("a", CAPS);
        desired.set_caps("b", CAPS);
        let existing = HashSet::from(["b".to_owned()]);
        assert!(desired.retain_existing(&existing));
        assert!(!desired.retain_existing(&existing));
        assert_eq!(desired.caps.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn limits_are_recorded_and_forgotten() {
        let throttle = |kind, value| Throttle {
            major: 254,
            minor: 0,
            kind,
            value,
        };
        let mut desired = Desired::default();
        desired.record_limits(
            "a",
            &["cpus", "memory"],
            &[],
            &[throttle(IoKind::WriteBps, 5)],
            &[],
        );
        desired.record_limits("a", &[], &[], &[throttle(IoKind::WriteBps, 7)], &[]);
        let a = &desired.limits["a"];
        assert_eq!(a.held.len(), 2);
        assert_eq!(a.io, [throttle(IoKind::WriteBps, 7)], "replaced, not added");
        desired.record_limits("a", &[], &["cpus"], &[], &[IoKind::ReadBps]);
        assert_eq!(desired.limits["a"].io.len(), 1, "another kind stays");
        desired.record_limits("a", &[], &["memory"], &[], &[IoKind::WriteBps]);
        assert!(desired.limits.is_empty(), "nothing left: no entry");
        // A format-1 file written before limits existed still reads.
        let old: Desired = serde_json::from_str(r#"{"version": 1, "caps": {}}"#).unwrap();
        assert!(old.limits.is_empty());
    }

    #[test]
    fn bad_files_are_errors_not_empty_state() {
        let store = temp_store("bad");
        store.save(&Desired::default()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
        fs::write(store.path(), br#"{"version": 99, "caps": {}}"#).unwrap();
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 99, .. })
        ));
    }
}
