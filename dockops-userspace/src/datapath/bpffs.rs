//! The bpffs mount and dockops' directory on it.

use std::{
    fs::{DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::DirBuilderExt as _,
    path::Path,
};

use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, FsType, TRACEFS_MAGIC, statfs},
};

use super::{DatapathError, pins::Layout};

const BPFFS: &str = "/sys/fs/bpf";
pub(super) const TRACEFS: &str = "/sys/kernel/tracing";
/// bpffs holds no regular files, so the lock lives in /run.
const LOCK: &str = "/run/dockops.lock";

/// Mounts bpffs and tracefs when absent and creates dockops' directories, root only.
pub(super) fn prepare(layout: &Layout) -> Result<(), DatapathError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DatapathError::Io { path, source }
    };
    // Fresh machines often have neither: programs pin into bpffs, tracepoints attach by the
    // ids tracefs lists.
    mount_if_absent("bpf", BPFFS, BPF_FS_MAGIC)?;
    mount_if_absent("tracefs", TRACEFS, TRACEFS_MAGIC)?;
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for dir in [
        layout.root().to_owned(),
        layout.maps(),
        layout.progs(),
        layout.links(),
        layout.global(),
    ] {
        builder.create(&dir).map_err(io_err(&dir))?;
    }
    Ok(())
}

/// Where tracefs is, mounted first if absent (root only).
pub fn tracefs() -> Result<&'static Path, DatapathError> {
    mount_if_absent("tracefs", TRACEFS, TRACEFS_MAGIC)?;
    Ok(Path::new(TRACEFS))
}

fn mount_if_absent(fstype: &str, target: &str, magic: FsType) -> Result<(), DatapathError> {
    if statfs(target).is_ok_and(|s| s.filesystem_type() == magic) {
        return Ok(());
    }
    tracing::info!("mounting {fstype} at {target}");
    std::fs::create_dir_all(target).map_err(|source| DatapathError::Io {
        path: target.into(),
        source,
    })?;
    mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DatapathError::Mount {
        path: target.into(),
        source,
    })
}

/// Serialises dockops processes (a `watch` and a `stats`, say) while they change pins.
pub(super) fn lock() -> Result<Flock<File>, DatapathError> {
    let io_err = |source| DatapathError::Io {
        path: LOCK.into(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(io_err)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io_err(io::Error::from(errno)))
}
