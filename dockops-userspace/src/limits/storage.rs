//! The size of a container's writable layer, changed live. Docker sets it only at create time
//! (`--storage-opt size`); dockops sets the same limit on a running container where the
//! storage driver can enforce it: btrfs, as a qgroup limit on the layer's subvolume (what
//! the layer references, as Docker's option counts it). Other drivers get a clear error.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::sys::statfs::statfs;

use super::LimitError;
use crate::{btrfs, discovery::Container};

/// Where the limit of `container` is set: its btrfs subvolume.
pub fn target(container: &Container) -> Result<PathBuf, LimitError> {
    let unsupported = |why: String| LimitError::Storage {
        container: container.name.clone(),
        why,
    };
    let Some(layer) = &container.storage else {
        return Err(unsupported(
            "the engine did not say which storage driver it uses (docker info failed)".into(),
        ));
    };
    match (layer.driver.as_str(), &layer.path) {
        ("btrfs", Some(path)) => Ok(path.clone()),
        ("btrfs", None) => Err(unsupported(
            "its btrfs subvolume was not found in the engine's layer store".into(),
        )),
        (driver, path) => {
            let fs = path.as_deref().and_then(|p| statfs(p).ok()).map_or_else(
                || "an unknown filesystem".to_owned(),
                |s| fs_name(s.filesystem_type().0),
            );
            Err(unsupported(format!(
                "it uses the {driver} storage driver on {fs}: dockops limits the writable layer \
                 with the btrfs storage driver (a qgroup per container); project quotas for \
                 overlay2 are not supported yet (docs/OPERATIONS.md)"
            )))
        }
    }
}

fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("a filesystem of type {other:#x}"),
    }
}

/// The limit set now (`None`: none, or quota is off).
pub fn current(container: &Container) -> Option<u64> {
    let dir = container.storage.as_ref()?.qgroup.as_ref()?;
    read_limit(&fs::read_to_string(dir.join("max_referenced")).ok()?)
}

/// `max_referenced` in sysfs: bytes, 0 for none.
fn read_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&b| b > 0)
}

/// Sets (or with `None`, removes) the limit, turning quota on for the filesystem first.
pub fn set(name: &str, subvolume: &Path, bytes: Option<u64>) -> Result<(), LimitError> {
    let failed = |source| LimitError::Cgroup {
        path: subvolume.to_owned(),
        source,
    };
    if bytes.is_some() {
        btrfs::enable_quota(subvolume).map_err(failed)?;
    }
    tracing::info!(
        container = name,
        ?bytes,
        "btrfs qgroup limit on {}",
        subvolume.display()
    );
    btrfs::limit_referenced(subvolume, bytes).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::WritableLayer;

    #[test]
    fn other_drivers_are_named_in_the_error() {
        let container = Container {
            name: "web".into(),
            storage: Some(WritableLayer {
                driver: "overlay2".into(),
                path: None,
                qgroup: None,
            }),
            ..Container::default()
        };
        let err = target(&container).unwrap_err().to_string();
        assert!(err.contains("overlay2") && err.contains("btrfs"), "{err}");
        assert!(err.starts_with("--storage-size"), "{err}");
        assert_eq!(read_limit("0\n"), None);
        assert_eq!(read_limit("52428800\n"), Some(52_428_800));
    }
}
