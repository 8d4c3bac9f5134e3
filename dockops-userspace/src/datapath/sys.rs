//! The one bpf(2) command aya offers for no pinned link but XDP and tcx ones: point a link
//! at another program (`BPF_LINK_UPDATE`, Linux >= 5.7), atomically for the traffic.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `bpf_attr` for `BPF_OBJ_GET` (uapi/linux/bpf.h), zero-padded to its aligned size.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// `bpf_attr` for `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr variant the kernel reads (and may write) within its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Makes the link pinned at `pin` run `prog` from now on. The kernel swaps the program
/// pointer under RCU: every packet or event sees the old program or the new one, never
/// neither.
pub(super) fn link_update(pin: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        ..ObjGet::default()
    };
    let fd = i32::try_from(bpf(BPF_OBJ_GET, &mut get)?).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd_u32 = |fd: i32| u32::try_from(fd).map_err(io::Error::other);
    let mut update = LinkUpdate {
        link_fd: fd_u32(link.as_raw_fd())?,
        new_prog_fd: fd_u32(prog.as_raw_fd())?,
        ..LinkUpdate::default()
    };
    bpf(BPF_LINK_UPDATE, &mut update).map(drop)
}
