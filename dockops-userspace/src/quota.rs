//! Project quotas (ext4 made with `-O project,quota` and mounted `prjquota`; xfs `pquota`):
//! a directory tree tagged with a project id, and a block limit on that id. overlay2 keeps a
//! container's writes in one upper directory, so a project on it limits the writable layer.
//! Shared by discovery (a layer's project) and the limits (setting one); no subprocess.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

/// `PRJQUOTA` in linux/quota.h.
const PRJQUOTA: i32 = 2;
/// Quota limits count 1 KiB blocks (`QIF_DQBLKSIZE`).
const BLOCK: u64 = 1024;
/// `FS_XFLAG_PROJINHERIT`: new files in the directory take its project.
const PROJINHERIT: u32 = 0x200;

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

const _: () = assert!(size_of::<FsXattr>() == 28);

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// `QCMD(cmd, PRJQUOTA)` (the shift sets the sign bit, as in C).
const fn command(cmd: i32) -> i32 {
    ((cmd.cast_unsigned() << 8) | PRJQUOTA.cast_unsigned()).cast_signed()
}

fn quotactl(cmd: i32, device: &Path, id: u32, data: *mut libc::c_char) -> io::Result<()> {
    let device = CString::new(device.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let id = i32::try_from(id).map_err(io::Error::other)?;
    // SAFETY: `device` is a C string and `data` points to the struct `cmd` takes, or is null.
    if unsafe { libc::quotactl(command(cmd), device.as_ptr(), id, data) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The block device the filesystem holding `path` was mounted from (`/proc/self/mountinfo`,
/// the longest mount point above it).
pub fn mount_source(path: &Path) -> Option<PathBuf> {
    let path = fs::canonicalize(path).ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            path.starts_with(point)
                .then(|| (point.len(), PathBuf::from(source)))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, source)| source)
}

/// Whether project quotas are on for the filesystem on `device`.
pub fn enabled(device: &Path) -> bool {
    // Room for an `if_dqinfo` (two u64 and two u32).
    let mut info: [u64; 3] = [0; 3];
    quotactl(libc::Q_GETINFO, device, 0, info.as_mut_ptr().cast()).is_ok()
}

/// The project id of `path` (0: none).
pub fn project(path: &Path) -> io::Result<u32> {
    let file = File::open(path)?;
    let mut attr = FsXattr::default();
    // SAFETY: the argument is the kernel's struct, alive across the call.
    unsafe { fs_get_xattr(file.as_raw_fd(), &raw mut attr) }?;
    Ok(attr.projid)
}

/// Tags `dir` and everything below it with project `id` (directories also pass it on to
/// what is created in them later). Symbolic links are skipped: they cannot be opened.
pub fn tag(dir: &Path, id: u32) -> io::Result<()> {
    let set = |path: &Path, inherit: bool| -> io::Result<()> {
        let file = File::open(path)?;
        let mut attr = FsXattr::default();
        // SAFETY: the argument is the kernel's struct, alive across the calls.
        unsafe { fs_get_xattr(file.as_raw_fd(), &raw mut attr) }?;
        attr.projid = id;
        if inherit {
            attr.xflags |= PROJINHERIT;
        }
        // SAFETY: as above.
        unsafe { fs_set_xattr(file.as_raw_fd(), &raw const attr) }?;
        Ok(())
    };
    set(dir, true)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tag(&entry.path(), id)?;
        } else if kind.is_file() {
            set(&entry.path(), false)?;
        }
    }
    Ok(())
}

/// Sets (or with `None`, removes) the block limit of project `id` on `device`.
pub fn set_limit(device: &Path, id: u32, bytes: Option<u64>) -> io::Result<()> {
    let blocks = bytes.map_or(0, |b| b.div_ceil(BLOCK));
    // SAFETY: all-zero is a valid `dqblk`.
    let mut quota: libc::dqblk = unsafe { std::mem::zeroed() };
    quota.dqb_bhardlimit = blocks;
    quota.dqb_bsoftlimit = blocks;
    quota.dqb_valid = libc::QIF_BLIMITS;
    quotactl(libc::Q_SETQUOTA, device, id, (&raw mut quota).cast())
}

/// Space project `id` uses on `device`, and its limit (`None`: none), in bytes.
pub fn usage(device: &Path, id: u32) -> io::Result<(u64, Option<u64>)> {
    // SAFETY: all-zero is a valid `dqblk`.
    let mut quota: libc::dqblk = unsafe { std::mem::zeroed() };
    quotactl(libc::Q_GETQUOTA, device, id, (&raw mut quota).cast())?;
    let limit = (quota.dqb_bhardlimit > 0).then(|| quota.dqb_bhardlimit * BLOCK);
    Ok((quota.dqb_curspace, limit))
}

/// The project id dockops gives a container's layer: from its id, in a range of its own
/// (bit 30 set), so that two containers collide with a chance of one in 2^28.
pub fn project_for(container_id: &str) -> u32 {
    let bits = u32::from_str_radix(container_id.get(..7).unwrap_or("0"), 16).unwrap_or(0);
    (1 << 30) | bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_ids() {
        assert_eq!(command(libc::Q_SETQUOTA), 0x8000_0802_u32.cast_signed());
        assert_eq!(project_for("3f2a9c0d1e4b"), (1 << 30) | 0x03f2_a9c0);
        assert_eq!(project_for("zz"), 1 << 30);
    }
}
