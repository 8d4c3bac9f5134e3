//! The btrfs ioctls storage limits need (`linux/btrfs.h`): which subvolume and filesystem a
//! directory is, quota on, a qgroup limit. Shared by discovery (where a container's qgroup is)
//! and the limits (setting it); no subprocess.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

const MAGIC: u8 = 0x94;
/// `BTRFS_FIRST_FREE_OBJECTID`: the root directory of every subvolume.
const FIRST_FREE_OBJECTID: u64 = 256;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// `CLEAR_VALUE` in fs/btrfs/qgroup.c: a limit of all ones removes it.
const CLEAR: u64 = u64::MAX;

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
#[derive(Default)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

const _: () = assert!(size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(size_of::<QgroupLimitArgs>() == 48);

nix::ioctl_readwrite!(ino_lookup, MAGIC, 18, InoLookupArgs);
nix::ioctl_read!(fs_info, MAGIC, 31, FsInfoArgs);
nix::ioctl_readwrite!(quota_ctl, MAGIC, 40, QuotaCtlArgs);
// The kernel declares it _IOR though it reads the argument.
nix::ioctl_read!(qgroup_limit, MAGIC, 43, QgroupLimitArgs);

fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// The id of the subvolume `dir` is in.
fn subvolume_id(dir: &File) -> io::Result<u64> {
    let mut lookup = InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: the argument is the kernel's struct, alive across the call.
    unsafe { ino_lookup(dir.as_raw_fd(), &raw mut lookup) }?;
    Ok(lookup.treeid)
}

/// The subvolume `path` is in, and its filesystem's sysfs directory of qgroups: its
/// `referenced` and `max_referenced` files hold usage and limit once quota is on.
pub fn qgroup_dir(path: &Path) -> io::Result<std::path::PathBuf> {
    let dir = open(path)?;
    let id = subvolume_id(&dir)?;
    // SAFETY: all-zero is a valid value of this plain struct.
    let mut info: FsInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: the argument is the kernel's struct, alive across the call.
    unsafe { fs_info(dir.as_raw_fd(), &raw mut info) }?;
    Ok(Path::new("/sys/fs/btrfs")
        .join(uuid(&info.fsid))
        .join("qgroups")
        .join(format!("0_{id}")))
}

/// Turns quota on for the filesystem of `path` (a no-op when it is on already).
pub fn enable_quota(path: &Path) -> io::Result<()> {
    let dir = open(path)?;
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: the argument is the kernel's struct, alive across the call.
    unsafe { quota_ctl(dir.as_raw_fd(), &raw mut args) }?;
    Ok(())
}

/// Limits what the subvolume at `path` references (its files, shared ones included, as
/// Docker's `--storage-opt size` does), or with `None` removes the limit.
///
/// The call goes through the parent directory, in the enclosing subvolume: the ioctl's
/// transaction reserves space in the subvolume of its descriptor, and a subvolume over its
/// limit refuses that (EDQUOT), so a limit could never be raised or removed from inside.
pub fn limit_referenced(path: &Path, bytes: Option<u64>) -> io::Result<()> {
    let id = subvolume_id(&open(path)?)?;
    let parent = open(path.parent().unwrap_or(path))?;
    let mut args = QgroupLimitArgs {
        qgroupid: id,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes.unwrap_or(CLEAR),
            ..QgroupLimit::default()
        },
    };
    // SAFETY: the argument is the kernel's struct, alive across the call.
    unsafe { qgroup_limit(parent.as_raw_fd(), &raw mut args) }?;
    Ok(())
}

/// A filesystem id as sysfs names it: `8-4-4-4-12` lowercase hex.
fn uuid(bytes: &[u8; 16]) -> String {
    let hex = bytes.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_as_sysfs_spells_it() {
        let bytes = [
            0x4f, 0x1d, 0x2c, 0x3b, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99,
            0xaa, 0xbb,
        ];
        assert_eq!(super::uuid(&bytes), "4f1d2c3b-0011-2233-4455-66778899aabb");
    }
}
