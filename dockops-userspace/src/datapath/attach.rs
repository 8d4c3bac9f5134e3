//! Attaching one program to one hook of one interface, and undoing it from its pin alone.

use std::{fs, io, os::fd::AsFd as _, path::Path};

use aya::programs::{
    LinkOrder, SchedClassifier,
    links::PinnedLink,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
};

use super::{
    DatapathError,
    pins::{AttachKind, Direction, PinName},
};
use crate::{
    capabilities::TcMode,
    discovery::{HostInterface, interface_name},
};

/// Attaches `prog` to `direction` of `iface` and pins the record at `dir/<pin name>`.
pub(super) fn attach(
    prog: &mut SchedClassifier,
    iface: &HostInterface,
    direction: Direction,
    mode: TcMode,
    dir: &Path,
) -> Result<PinName, DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        interface: iface.name.clone(),
        direction,
        source,
    };
    let pin_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DatapathError::Pin { path, source }
    };
    match mode {
        TcMode::Tcx => {
            let pin = PinName {
                ifindex: iface.ifindex,
                direction,
                kind: AttachKind::Tcx,
            };
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = prog
                .attach_with_options(&iface.name, direction.attach_type(), options)
                .map_err(attach_err)?;
            super::pin_link(
                prog.take_link(id).map_err(attach_err)?,
                &dir.join(pin.to_string()),
            )?;
            Ok(pin)
        }
        TcMode::Netlink => {
            let created_clsact = add_clsact(&iface.name)?;
            let options = TcAttachOptions::Netlink(NlOptions::default());
            let id = prog
                .attach_with_options(&iface.name, direction.attach_type(), options)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let filter = (
                link.priority().map_err(attach_err)?,
                link.handle().map_err(attach_err)?.into(),
            );
            // The filter lives on in the qdisc after we exit; its record is the program pin.
            std::mem::forget(link);
            let pin = PinName {
                ifindex: iface.ifindex,
                direction,
                kind: AttachKind::Netlink {
                    created_clsact,
                    filter: Some(filter),
                },
            };
            let path = dir.join(pin.to_string());
            prog.pin(&path).map_err(pin_err(&path))?;
            Ok(pin)
        }
    }
}

/// Points the attachment recorded at `path` at `prog`, in place: a tcx link is updated, a
/// netlink filter replaced at its priority and handle (and its record re-pinned). Records
/// of older builds carry no priority: their filter is removed and added again.
pub(super) fn replace(
    prog: &mut SchedClassifier,
    path: &Path,
    pin: PinName,
) -> Result<(), DatapathError> {
    let io_err = |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    };
    match pin.kind {
        AttachKind::Tcx => {
            let fd = prog.fd().map_err(|source| DatapathError::Program {
                name: pin.direction.program(),
                source,
            })?;
            super::sys::link_update(path, fd.as_fd()).map_err(io_err)
        }
        AttachKind::Netlink { filter, .. } => {
            // Gone with its device: the next reconcile removes the record.
            let Some(name) = interface_name(pin.ifindex) else {
                return Ok(());
            };
            let iface = HostInterface::new(pin.ifindex, name);
            let attach_err = |source| DatapathError::Attach {
                interface: iface.name.clone(),
                direction: pin.direction,
                source,
            };
            let Some((priority, handle)) = filter else {
                detach(path, pin)?;
                let dir = path.parent().unwrap_or(path);
                return attach(prog, &iface, pin.direction, TcMode::Netlink, dir).map(drop);
            };
            let link = SchedClassifierLink::attached(
                &iface.name,
                pin.direction.attach_type(),
                priority,
                handle.into(),
                None,
            )
            .map_err(io_err)?;
            let id = prog.attach_to_link(link).map_err(attach_err)?;
            std::mem::forget(prog.take_link(id).map_err(attach_err)?);
            super::repin(path, |path| prog.pin(path))
        }
    }
}

/// Adds a clsact qdisc; true if this call created it (so dockops removes it again).
fn add_clsact(interface: &str) -> Result<bool, DatapathError> {
    match tc::qdisc_add_clsact(interface) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(source) => Err(DatapathError::Clsact {
            interface: interface.to_owned(),
            source,
        }),
    }
}

/// Removes the attachment recorded at `path`. Succeeds when the interface is already gone.
pub(super) fn detach(path: &Path, pin: PinName) -> Result<(), DatapathError> {
    let io_err = |source| DatapathError::Io {
        path: path.to_owned(),
        source,
    };
    match pin.kind {
        AttachKind::Tcx => {
            // Unpinning drops the last reference: the kernel detaches the link.
            let link = PinnedLink::from_pin(path).map_err(|source| DatapathError::Link {
                path: path.to_owned(),
                source,
            })?;
            drop(link.unpin().map_err(io_err)?);
        }
        AttachKind::Netlink { created_clsact, .. } => {
            if let Some(name) = interface_name(pin.ifindex) {
                match tc::qdisc_detach_program(
                    &name,
                    pin.direction.attach_type(),
                    pin.direction.program(),
                ) {
                    Ok(()) => {}
                    Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(DatapathError::Detach {
                            interface: name,
                            source,
                        });
                    }
                }
                if created_clsact {
                    delete_clsact(pin.ifindex).map_err(io_err)?;
                }
            }
            fs::remove_file(path).map_err(io_err)?;
        }
    }
    Ok(())
}

/// `tc qdisc del dev IF clsact`, through rtnetlink on a private thread (aya's calls are
/// synchronous and may run inside the caller's tokio runtime).
fn delete_clsact(ifindex: u32) -> io::Result<()> {
    use rtnetlink::packet_route::tc::TcHandle;
    let index = i32::try_from(ifindex).map_err(io::Error::other)?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let mut request = handle.qdisc().del(index);
            request.message_mut().header.parent = TcHandle::CLSACT;
            request.message_mut().header.handle = TcHandle {
                major: 0xffff,
                minor: 0,
            };
            match request.execute().await {
                Ok(()) => Ok(()),
                // Gone with its device, or removed by someone else: nothing left to do.
                Err(rtnetlink::Error::NetlinkError(e))
                    if matches!(
                        e.raw_code().abs(),
                        libc::ENOENT | libc::ENODEV | libc::EINVAL
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            }
        })
    })
    .join()
    .map_err(|_| io::Error::other("netlink thread panicked"))?
}
