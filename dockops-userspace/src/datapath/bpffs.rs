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
    sys::statfs::{BPF_FS_MAGIC, TRACEFS_MAGIC, statfs},
};

use super::{DatapathError, pins::Layout};

const BPFFS: &str = "/sys/fs/bpf";
/// Tracepoints are attached by the ids tracefs lists.
const TRACEFS: &str = "/sys/kernel/tracing";
/// bpffs holds no regular files, so the lock lives in /run.
const LOCK: &str = "/run/dockops.lock";

/// Mounts bpffs when absent (fresh machines often lack it) and creates dockops' directories,
/// readable by root only.
pub(super) fn prepare(layout: &Layout) -> Result<(), DatapathError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DatapathError::Io { path, source }
    };
    let mounted = statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if !mounted {
        tracing::info!("mounting bpffs at {BPFFS}");
        std::fs::create_dir_all(BPFFS).map_err(io_err(Path::new(BPFFS)))?;
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| DatapathError::Mount {
            path: BPFFS.into(),
            source,
        })?;
    }
    let traced = statfs(TRACEFS).is_ok_and(|s| s.filesystem_type() == TRACEFS_MAGIC);
    if !traced {
        tracing::info!("mounting tracefs at {TRACEFS}");
        mount(
            Some("tracefs"),
            TRACEFS,
            Some("tracefs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| DatapathError::Mount {
            path: TRACEFS.into(),
            source,
        })?;
    }
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
