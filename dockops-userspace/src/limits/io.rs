//! Block IO throttles: devices resolved to the disk the kernel throttles, and the cgroup files
//! that hold them (v1 `blkio.throttle.*`, v2 `io.max`). Docker's update API cannot change
//! these on a running container, so dockops writes them and re-applies them after restarts.

use std::{
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::sys::stat::{major, minor};

use super::LimitError;
use crate::{
    capabilities::CgroupMode,
    cgroupfs::{
        self, DeviceThrottles, io_max_line, parse_io_max, parse_v1_throttle, v1_throttle_file,
        v1_throttle_line,
    },
    discovery::CgroupPaths,
    policy::resources::IoKind,
};

const V1_BLKIO: &str = "/sys/fs/cgroup/blkio";

/// The disk (`major`, `minor`) behind `path`: a block device itself, or the filesystem a path
/// lives on. Partitions resolve to their disk, which is what blk-throttle takes.
pub fn resolve(path: &Path) -> Result<(u32, u32), String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else if meta.file_type().is_char_device() {
        return Err(
            "is a character device, not a block device (give a disk such as /dev/vda, or a \
             path on a filesystem)"
                .into(),
        );
    } else if major(meta.dev()) == 0 {
        // btrfs, overlay, tmpfs: an anonymous device number. The mount's source may name a
        // block device.
        crate::quota::mount_source(path)
            .and_then(|source| fs::metadata(source).ok())
            .filter(|m| m.file_type().is_block_device())
            .map(|m| m.rdev())
            .ok_or(
                "is on a filesystem without a block device of its own (overlay, tmpfs?): give \
                 the disk, e.g. /dev/vda",
            )?
    } else {
        meta.dev()
    };
    let (maj, min) = (
        u32::try_from(major(dev)).unwrap_or(u32::MAX),
        u32::try_from(minor(dev)).unwrap_or(u32::MAX),
    );
    let sys = PathBuf::from(format!("/sys/dev/block/{maj}:{min}"));
    let sys = fs::canonicalize(&sys)
        .map_err(|_| format!("device {maj}:{min} is not a block device the kernel lists"))?;
    if !sys.join("partition").exists() {
        return Ok((maj, min));
    }
    let disk_dev = sys
        .parent()
        .map_or_else(|| sys.join("dev"), |disk| disk.join("dev"));
    let disk = fs::read_to_string(disk_dev)
        .map_err(|e| format!("the disk of partition {maj}:{min}: {e}"))?;
    cgroupfs::device(disk.trim())
        .ok_or_else(|| format!("the disk of partition {maj}:{min} is unreadable"))
}

/// The cgroup directory holding the container's throttles.
fn dir(mode: &CgroupMode, paths: &CgroupPaths, name: &str) -> Result<PathBuf, LimitError> {
    let (root, path) = match mode {
        CgroupMode::V1 { .. } => (Path::new(V1_BLKIO), paths.v1.get("blkio")),
        CgroupMode::V2 { root } => (root.as_path(), paths.v2.as_ref()),
    };
    path.map(|p| root.join(p.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .ok_or_else(|| LimitError::NoCgroup {
            container: name.to_owned(),
            what: "block IO",
        })
}

/// The throttles set on the container's cgroup now.
pub fn read(
    mode: &CgroupMode,
    paths: &CgroupPaths,
    name: &str,
) -> Result<Vec<DeviceThrottles>, LimitError> {
    let dir = dir(mode, paths, name)?;
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|source| LimitError::Cgroup { path, source })
    };
    Ok(match mode {
        CgroupMode::V1 { .. } => {
            let mut devices = Vec::new();
            for kind in IoKind::ALL {
                parse_v1_throttle(kind, &read(v1_throttle_file(kind))?, &mut devices);
            }
            devices
        }
        CgroupMode::V2 { .. } => parse_io_max(&read("io.max").map_err(|e| match e {
            LimitError::Cgroup { path, .. } if !path.exists() => LimitError::NoIoController {
                container: name.to_owned(),
            },
            other => other,
        })?),
    })
}

/// Sets one throttle (`None`: removes it).
pub fn write(
    mode: &CgroupMode,
    paths: &CgroupPaths,
    name: &str,
    (maj, min): (u32, u32),
    kind: IoKind,
    value: Option<u64>,
) -> Result<(), LimitError> {
    let dir = dir(mode, paths, name)?;
    let (path, line) = match mode {
        CgroupMode::V1 { .. } => (
            dir.join(v1_throttle_file(kind)),
            v1_throttle_line(maj, min, value),
        ),
        CgroupMode::V2 { .. } => (dir.join("io.max"), io_max_line(maj, min, kind, value)),
    };
    tracing::info!(container = name, "{}: {line}", path.display());
    fs::write(&path, line).map_err(|source| LimitError::Cgroup { path, source })
}

/// The value of one throttle in what [`read`] returned.
pub fn current(devices: &[DeviceThrottles], (maj, min): (u32, u32), kind: IoKind) -> Option<u64> {
    devices
        .iter()
        .find(|d| (d.major, d.minor) == (maj, min))
        .and_then(|d| d.get(kind))
}
