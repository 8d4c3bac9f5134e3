//! The size of a container's writable layer, changed live. Docker sets it only at create time
//! (`--storage-opt size`); dockops sets the same limit on a running container where the
//! storage can enforce it:
//! - btrfs: a qgroup limit on the layer's subvolume (what it references, as Docker counts);
//! - overlay2 on a filesystem with project quotas (ext4 `prjquota`, xfs `pquota`): the upper
//!   directory tagged with a project of its own, and a block limit on that project.
//!
//! Elsewhere, a clear error naming driver and filesystem.

use std::{fs, path::PathBuf};

use nix::sys::statfs::statfs;

use super::LimitError;
use crate::{btrfs, discovery::Container, quota};

/// Where a container's writable-layer limit is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A btrfs subvolume.
    Subvolume(PathBuf),
    /// An overlay2 upper directory, the block device of its filesystem and the project id.
    Project {
        upper: PathBuf,
        device: PathBuf,
        id: u32,
    },
}

/// Where the limit of `container` can be set.
pub fn target(container: &Container) -> Result<Target, LimitError> {
    let unsupported = |why: String| LimitError::Storage {
        container: container.name.clone(),
        why,
    };
    let Some(layer) = &container.storage else {
        return Err(unsupported(
            "the engine did not say which storage driver it uses (docker info failed)".into(),
        ));
    };
    let Some(path) = &layer.path else {
        return Err(unsupported(format!(
            "it uses the {} storage driver: dockops limits the writable layer with btrfs, or \
             overlay2 on a filesystem with project quotas",
            layer.driver
        )));
    };
    match layer.driver.as_str() {
        "btrfs" => Ok(Target::Subvolume(path.clone())),
        "overlay2" => {
            let fs = statfs(path).map_or_else(
                |_| "an unknown filesystem".to_owned(),
                |s| fs_name(s.filesystem_type().0),
            );
            let device = quota::mount_source(path)
                .filter(|d| quota::enabled(d))
                .ok_or_else(|| {
                    unsupported(format!(
                        "it uses overlay2 on {fs} without project quotas: mount the \
                         filesystem of the Docker data root with prjquota (ext4 made or \
                         tuned with -O project,quota) or pquota (xfs), or use the btrfs \
                         storage driver (docs/OPERATIONS.md)"
                    ))
                })?;
            // A project Docker (`--storage-opt size` on xfs) or an earlier dockops gave it.
            let id = quota::project(path)
                .ok()
                .filter(|&id| id != 0)
                .unwrap_or_else(|| quota::project_for(&container.id));
            Ok(Target::Project {
                upper: path.clone(),
                device,
                id,
            })
        }
        driver => Err(unsupported(format!(
            "it uses the {driver} storage driver: dockops limits the writable layer with btrfs, \
             or overlay2 on a filesystem with project quotas"
        ))),
    }
}

fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        other => format!("a filesystem of type {other:#x}"),
    }
}

/// The limit set now (`None`: none, or quota is off).
pub fn current(container: &Container) -> Option<u64> {
    let layer = container.storage.as_ref()?;
    if let Some(dir) = &layer.qgroup {
        return read_limit(&fs::read_to_string(dir.join("max_referenced")).ok()?);
    }
    let (device, id) = layer.project.as_ref()?;
    quota::usage(device, *id).ok()?.1
}

/// `max_referenced` in sysfs: bytes, 0 for none.
pub fn read_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&b| b > 0)
}

/// Sets (or with `None`, removes) the limit: btrfs turns quota on for the filesystem first;
/// overlay2 tags the upper directory with its project first.
pub fn set(name: &str, target: &Target, bytes: Option<u64>) -> Result<(), LimitError> {
    let failed = |path: &PathBuf| {
        let path = path.clone();
        move |source| LimitError::Cgroup { path, source }
    };
    tracing::info!(container = name, ?bytes, ?target, "writable layer limit");
    match target {
        Target::Subvolume(subvolume) => {
            if bytes.is_some() {
                btrfs::enable_quota(subvolume).map_err(failed(subvolume))?;
            }
            btrfs::limit_referenced(subvolume, bytes).map_err(failed(subvolume))
        }
        Target::Project { upper, device, id } => {
            if bytes.is_some() {
                quota::tag(upper, *id).map_err(failed(upper))?;
            }
            quota::set_limit(device, *id, bytes).map_err(failed(device))
        }
    }
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
                driver: "vfs".into(),
                ..WritableLayer::default()
            }),
            ..Container::default()
        };
        let err = target(&container).unwrap_err().to_string();
        assert!(err.contains("vfs") && err.contains("btrfs"), "{err}");
        assert!(err.starts_with("--storage-size"), "{err}");
        assert_eq!(read_limit("0\n"), None);
        assert_eq!(read_limit("52428800\n"), Some(52_428_800));
    }
}
