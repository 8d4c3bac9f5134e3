//! The root qdisc dockops puts on a container's host veth for an ingress cap that queues:
//! - queue mode (`limit --queue`): an HTB qdisc, one class at the cap that every packet falls
//!   into, and a byte FIFO under it. Packets wait instead of being dropped or marked:
//!   smoother rates for senders that cannot be paced, at the cost of queueing delay.
//! - EDT mode (`limit --edt`): an fq qdisc, which holds each packet until the departure time
//!   the tc program stamped (`tc/edt.rs` in the eBPF crate); per-flow queues, no shaper of
//!   its own.
//!
//! - backlog (`backlog.rs`): the same HTB over a deep FIFO at the bucket's rate, behind
//!   pacing: for an egress cap in the container's own namespace on the veth peer of each host
//!   veth, for a paced ingress cap at the root of the host veth.
//!
//! dockops' qdiscs carry their own handles ([`ROOT`], [`LEAF`], [`FQ`], [`BACKLOG`],
//! [`BACKLOG_LEAF`]), so they are told apart from the host's and never replace a root qdisc
//! someone else configured.

use std::{io, num::NonZeroI32};

use dockops_common::{ADMIT_PRIORITY, BULK_PRIORITY, FIRST_FLIGHT_BYTES, SYN_ACK_BYTES};
use rtnetlink::{
    packet_core::{
        DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
        NetlinkMessage, NetlinkPayload,
    },
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// Major of dockops' HTB root qdisc ("d0c5:"), and its one class `d0c5:1`.
const ROOT: u16 = 0xd0c5;
/// Major of the FIFO under the class.
const LEAF: u16 = 0xd0c6;
/// Major of dockops' fq root qdisc (EDT mode).
const FQ: u16 = 0xd0c7;
/// Major of the backlog's HTB root, and the minor of its bulk class: what the priority of
/// paced sockets names.
const BACKLOG: u16 = (BULK_PRIORITY >> 16) as u16;
const BULK_MINOR: u16 = (BULK_PRIORITY & 0xffff) as u16;
/// Minor of the backlog's prompt class (`TC_PRIO_INTERACTIVE`), its default.
const PROMPT_MINOR: u16 = 6;
/// Minor of the backlog's admission class: SYN-ACKs into the container that found no credit
/// for their connection's first flight (`tc/admit.rs` in the eBPF crate).
const ADMIT_MINOR: u16 = (ADMIT_PRIORITY & 0xffff) as u16;
/// Majors of the FIFOs under the backlog's bulk, prompt and admission classes.
const BULK_LEAF: u16 = 0xd0cb;
const PROMPT_LEAF: u16 = 0xd0cc;
const ADMIT_LEAF: u16 = 0xd0cd;
/// Full-size frames: what a class's burst holds beyond 10 ms at its rate.
const FRAME: u64 = 1514;
/// The backlog of earlier builds (one class, one FIFO): still dockops', replaced when set.
const OLD_BACKLOG: u16 = 0xd0c8;
/// Minor of the top HTB class: the only one of a queue (and its default), the parent of the
/// backlog's two.
const CLASS_MINOR: u16 = 1;
/// The share of the backlog's rate each class is guaranteed (half); either may borrow up to
/// the whole rate, the prompt one first. A UDP flood (prompt) beside paced TCP (bulk) gets
/// half the cap, and the TCP the other half.
const PROMPT_SHARE: u64 = 2;
/// `TCA_OPTIONS`, and the HTB attributes inside it.
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The queue holds this long at the cap, and at least two 64 KiB aggregates.
const QUEUE_MS: u64 = 50;
const MIN_QUEUE_BYTES: u64 = 128 << 10;
/// The backlog holds a second at the rate, within these bounds: what a few hundred
/// connections starting together put in it at once (TCP's small-queue limit keeps each
/// socket to a couple of packets there), so that it never drops what pacing let through.
const BACKLOG_BYTES: (u64, u64) = (4 << 20, 64 << 20);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("netlink")]
    Netlink(#[from] io::Error),
    #[error(
        "interface {ifindex} already has a root qdisc ({kind}) that dockops did not create: \
         remove it, or cap without --queue or --edt"
    )]
    Occupied { ifindex: u32, kind: String },
    #[error(
        "this kernel has no {kind} qdisc (sch_{kind}), which {flag} needs (see `dockops-bpf \
         probe`): cap without {flag}"
    )]
    Unsupported {
        kind: &'static str,
        flag: &'static str,
    },
}

/// What dockops puts at the root of an interface's egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discipline {
    /// HTB at `rate_bytes` per second over a byte FIFO.
    Queue { rate_bytes: u64 },
    /// fq, releasing packets at the times the tc program stamped.
    Fq,
    /// HTB at `rate_bytes` per second, behind the bucket, in two classes over deep byte
    /// FIFOs: bulk for what paced sockets send ([`BULK_PRIORITY`]), prompt for the rest; and
    /// an admission class for SYN-ACKs into the container ([`ADMIT_PRIORITY`], set by the tc
    /// program on ingress only), at the pace the rate carries their connections' first
    /// flights, with a second of them in its FIFO.
    Backlog { rate_bytes: u64 },
}

impl Discipline {
    /// Major of its root qdisc, and the root's kind.
    fn handles(self) -> (u16, &'static str) {
        match self {
            Self::Queue { .. } => (ROOT, "htb"),
            Self::Fq => (FQ, "fq"),
            Self::Backlog { .. } => (BACKLOG, "htb"),
        }
    }

    /// Its HTB classes under the root, parents first.
    fn classes(self) -> Vec<Class> {
        match self {
            Self::Fq => Vec::new(),
            Self::Queue { rate_bytes: r } => vec![Class {
                minor: CLASS_MINOR,
                parent: 0,
                rate: r,
                ceil: r,
                prio: 0,
                frame: FRAME,
                leaf: Some((LEAF, (r * QUEUE_MS / 1000).max(MIN_QUEUE_BYTES))),
            }],
            Self::Backlog { rate_bytes: r } => {
                let limit = r.clamp(BACKLOG_BYTES.0, BACKLOG_BYTES.1);
                let prompt = (r / PROMPT_SHARE).max(1);
                let admit = (r * SYN_ACK_BYTES / FIRST_FLIGHT_BYTES).max(1);
                let top = Class {
                    minor: CLASS_MINOR,
                    parent: 0,
                    rate: r,
                    ceil: r,
                    prio: 0,
                    frame: FRAME,
                    leaf: None,
                };
                vec![
                    top,
                    Class {
                        minor: PROMPT_MINOR,
                        parent: CLASS_MINOR,
                        rate: prompt,
                        leaf: Some((PROMPT_LEAF, limit)),
                        ..top
                    },
                    Class {
                        minor: BULK_MINOR,
                        parent: CLASS_MINOR,
                        rate: r.saturating_sub(prompt),
                        prio: 1,
                        leaf: Some((BULK_LEAF, limit)),
                        ..top
                    },
                    Class {
                        minor: ADMIT_MINOR,
                        parent: CLASS_MINOR,
                        rate: admit,
                        ceil: admit,
                        frame: SYN_ACK_BYTES,
                        leaf: Some((ADMIT_LEAF, admit.max(FRAME))),
                        ..top
                    },
                ]
            }
        }
    }

    /// The class that takes what no priority names.
    fn default_minor(self) -> u16 {
        match self {
            Self::Backlog { .. } => PROMPT_MINOR,
            _ => CLASS_MINOR,
        }
    }
}

/// One HTB class of a [`Discipline`].
#[derive(Clone, Copy)]
struct Class {
    minor: u16,
    /// The parent class's minor; 0: the root qdisc.
    parent: u16,
    /// Bytes per second it is guaranteed, and may borrow up to.
    rate: u64,
    ceil: u64,
    /// Order among classes borrowing (0 first).
    prio: u32,
    /// The largest frame it sends: its burst holds one beyond 10 ms at its rates.
    frame: u64,
    /// A leaf's FIFO: its major, and its limit in bytes.
    leaf: Option<(u16, u64)>,
}

/// Puts `discipline` at the root of the interface's egress (what its container receives).
/// Idempotent: an existing dockops queue is updated in place, one of the other kind replaced.
pub fn set(ifindex: u32, discipline: Discipline) -> Result<(), QueueError> {
    let (major, kind) = discipline.handles();
    match root_qdisc(ifindex)? {
        Some((handle, _)) if handle.major == major => {}
        Some((handle, kind)) if handle != TcHandle::UNSPEC && !is_ours(handle) => {
            return Err(QueueError::Occupied { ifindex, kind });
        }
        // The default (noqueue, pfifo_fast...) has handle 0: replaced, as is dockops' other
        // kind.
        found => {
            if found.is_some_and(|(h, _)| is_ours(h)) {
                remove(ifindex)?;
            }
            let mut msg = tc_message(ifindex, TcHandle::ROOT, TcHandle { major, minor: 0 });
            msg.attributes.push(TcAttribute::Kind(kind.into()));
            if kind == "htb" {
                // version, r2q, default class
                let glob = [3_u32, 10, u32::from(discipline.default_minor()), 0, 0];
                msg.attributes
                    .push(TcAttribute::Options(vec![TcOption::Other(
                        DefaultNla::new(TCA_HTB_INIT, words(&glob)),
                    )]));
            }
            match request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE) {
                // "Specified qdisc kind is unknown": not built, and no module to load.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let flag = match major {
                        FQ => "--edt",
                        BACKLOG => "the backlog",
                        _ => "--queue",
                    };
                    return Err(QueueError::Unsupported { kind, flag });
                }
                other => other?,
            };
        }
    }
    for class in discipline.classes() {
        let handle = |minor| TcHandle { major, minor };
        let mut msg = tc_message(ifindex, handle(class.parent), handle(class.minor));
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        msg.attributes
            .push(TcAttribute::Options(vec![TcOption::Other(
                DefaultNla::new(TCA_HTB_PARMS, htb_opt(&class)),
            )]));
        request(
            RouteNetlinkMessage::NewTrafficClass(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        let Some((leaf_major, limit)) = class.leaf else {
            continue;
        };
        let mut leaf = tc_message(
            ifindex,
            handle(class.minor),
            TcHandle {
                major: leaf_major,
                minor: 0,
            },
        );
        leaf.attributes.push(TcAttribute::Kind("bfifo".into()));
        // A FIFO's options are a bare `struct tc_fifo_qopt { __u32 limit; }`.
        leaf.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            words(&[u32::try_from(limit).unwrap_or(u32::MAX)]),
        )));
        request(
            RouteNetlinkMessage::NewQueueDiscipline(leaf),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(())
}

fn is_ours(handle: TcHandle) -> bool {
    matches!(handle.major, ROOT | FQ | BACKLOG | OLD_BACKLOG)
}

/// Removes dockops' root qdisc from the interface, if it has one. True if it did.
pub fn remove(ifindex: u32) -> Result<bool, QueueError> {
    let Some((handle, _)) = root_qdisc(ifindex)?.filter(|(h, _)| is_ours(*h)) else {
        return Ok(false);
    };
    let msg = tc_message(ifindex, TcHandle::ROOT, handle);
    match request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
        // Gone in between (the interface went with its container).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT)) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(true),
    }
}

/// Interfaces that carry a dockops root qdisc, and which.
pub fn interfaces() -> Result<Vec<(u32, Discipline)>, QueueError> {
    Ok(roots()?
        .into_iter()
        .filter(|(_, handle, _)| is_ours(*handle))
        .map(|(ifindex, handle, _)| {
            // The rate is the class's; a reconcile compares kinds only.
            let discipline = match handle.major {
                FQ => Discipline::Fq,
                BACKLOG | OLD_BACKLOG => Discipline::Backlog { rate_bytes: 0 },
                _ => Discipline::Queue { rate_bytes: 0 },
            };
            (ifindex, discipline)
        })
        .collect())
}

fn root_qdisc(ifindex: u32) -> io::Result<Option<(TcHandle, String)>> {
    Ok(roots()?
        .into_iter()
        .find(|(i, _, _)| *i == ifindex)
        .map(|(_, handle, kind)| (handle, kind)))
}

/// The root qdisc of every interface: ifindex, handle, kind.
fn roots() -> io::Result<Vec<(u32, TcHandle, String)>> {
    let dump = request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(dump
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.parent == TcHandle::ROOT => {
                let kind = q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?;
                Some((u32::try_from(q.header.index).ok()?, q.header.handle, kind))
            }
            _ => None,
        })
        .collect())
}

fn tc_message(ifindex: u32, parent: TcHandle, handle: TcHandle) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = i32::try_from(ifindex).unwrap_or(i32::MAX);
    msg.header.parent = parent;
    msg.header.handle = handle;
    msg
}

/// `struct tc_htb_opt` for `class`: at `rate`, borrowing up to `ceil` (bytes per second),
/// served in order of `prio` (0 first) when borrowing; bursts of 10 ms at each rate plus a
/// frame, in the kernel's 64 ns scheduler ticks.
fn htb_opt(class: &Class) -> Vec<u8> {
    let Class {
        rate, ceil, prio, ..
    } = *class;
    let ticks = |rate_bytes: u64| {
        let burst_bytes = u128::from(rate_bytes / 100 + class.frame);
        let ticks = burst_bytes * 1_000_000_000 / u128::from(rate_bytes.max(1)) / 64;
        u32::try_from(ticks).unwrap_or(u32::MAX)
    };
    // struct tc_ratespec: cell_log u8, linklayer u8, overhead u16, cell_align i16, mpu u16,
    // rate u32 (bytes per second).
    let ratespec = |rate_bytes: u64| {
        let mut spec = vec![0_u8, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0];
        spec.extend_from_slice(&u32::try_from(rate_bytes).unwrap_or(u32::MAX).to_ne_bytes());
        spec
    };
    let mut opt = ratespec(rate);
    opt.extend_from_slice(&ratespec(ceil));
    // The bytes a class sends per round when classes share what they borrow: what the
    // kernel derives (rate / r2q, within 1000..=200000), given so that it does not warn
    // "quantum of class ... is big" to the console for each class above 16 Mbit/s.
    let quantum = u32::try_from((rate / 10).clamp(1000, 200_000)).unwrap_or(200_000);
    // buffer, cbuffer, quantum, level, prio.
    opt.extend_from_slice(&words(&[ticks(rate), ticks(ceil), quantum, 0, prio]));
    opt
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Sends one rtnetlink request and collects the answer: the messages of a dump, or nothing
/// for an acknowledged change. A kernel error comes back as the matching `io::Error`.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = NetlinkMessage::from(msg);
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            offset += reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return match e.code.map(NonZeroI32::get) {
                        None => Ok(answers),
                        Some(code) => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
                _ => {}
            }
            if reply.header.length == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htb_options_have_the_kernel_layout() {
        // 50 Mbit/s: 6 250 000 bytes/s; burst 62 500 + 1514 bytes = 10.242 ms = 160 035 ticks.
        // 100 Mbit/s: 125 000 + 1514 bytes = 10.121 ms = 158 142 ticks.
        let class = Class {
            minor: 2,
            parent: 1,
            rate: 6_250_000,
            ceil: 12_500_000,
            prio: 1,
            frame: FRAME,
            leaf: None,
        };
        let opt = htb_opt(&class);
        assert_eq!(opt.len(), 44, "sizeof(struct tc_htb_opt)");
        let word = |at: usize| u32::from_ne_bytes(opt[at..at + 4].try_into().unwrap());
        assert_eq!(
            (opt[1], opt[13]),
            (TC_LINKLAYER_ETHERNET, TC_LINKLAYER_ETHERNET)
        );
        assert_eq!((word(8), word(20)), (6_250_000, 12_500_000), "rate, ceil");
        assert_eq!((word(24), word(28)), (160_035, 158_142), "buffer, cbuffer");
        assert_eq!(word(40), 1, "prio");
        let fastest = Class {
            rate: u64::MAX,
            ceil: u64::MAX,
            ..class
        };
        assert_eq!(htb_opt(&fastest)[8..12], u32::MAX.to_ne_bytes());
        // The admission class at 39 101 bytes/s: burst 391 + 74 bytes = 11.89 ms.
        let admit = Class {
            rate: 39_101,
            ceil: 39_101,
            frame: SYN_ACK_BYTES,
            ..class
        };
        let word = |at: usize| u32::from_ne_bytes(htb_opt(&admit)[at..at + 4].try_into().unwrap());
        assert_eq!(word(24), 185_816, "buffer: 465 bytes at the rate");
    }

    #[test]
    fn the_backlog_guarantees_each_class_half_and_admits_at_the_first_flights_pace() {
        let classes = Discipline::Backlog {
            rate_bytes: 1_600_000,
        }
        .classes();
        let row = |c: &Class| (c.minor, c.parent, c.rate, c.ceil, c.prio);
        let rows: Vec<_> = classes.iter().map(row).collect();
        assert_eq!(
            rows,
            [
                (1, 0, 1_600_000, 1_600_000, 0),
                (6, 1, 800_000, 1_600_000, 0),
                (2, 1, 800_000, 1_600_000, 1),
                // 1 600 000 bytes/s carry 528 first flights of 3028 bytes a second: as many
                // SYN-ACKs of 74 bytes.
                (3, 1, 39_101, 39_101, 0),
            ]
        );
        assert_eq!(
            classes[0].leaf, None,
            "the parent class has no queue of its own"
        );
        assert_eq!(classes[1].leaf, Some((PROMPT_LEAF, 4 << 20)));
        assert_eq!(classes[2].leaf, Some((BULK_LEAF, 4 << 20)));
        assert_eq!(
            classes[3].leaf,
            Some((ADMIT_LEAF, 39_101)),
            "a second of SYN-ACKs"
        );
        assert_eq!(
            u32::from(BACKLOG) << 16 | u32::from(classes[3].minor),
            ADMIT_PRIORITY
        );
        assert_eq!(
            u32::from(BACKLOG) << 16 | u32::from(classes[2].minor),
            BULK_PRIORITY,
            "paced sockets' priority names the bulk class"
        );
    }
}
