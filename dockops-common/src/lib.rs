//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, free of implicit padding and of `bool`,
//! with a compile-time size check: the kernel copies these as raw bytes.
#![no_std]

/// Names of the eBPF maps and programs, as the object file knows them. Program names stay
/// within 15 characters: the kernel truncates longer ones, and netlink filters are found by it.
pub mod names {
    /// Per-CPU hash map: host-side veth ifindex (`u32`) → [`super::TrafficCounters`].
    pub const TRAFFIC: &str = "TRAFFIC";
    /// tc ingress of the host-side veth: packets the container sends.
    pub const TC_INGRESS_ACCT: &str = "tc_ingress_acct";
    /// tc egress of the host-side veth: packets delivered into the container.
    pub const TC_EGRESS_ACCT: &str = "tc_egress_acct";
    /// Hash map: cgroup v2 id (`u64`) of each container → its slot in [`SCHED_STATS`]
    /// (`u32`, [`super::NO_SLOT`] when none is left). Host-wide hooks count only these.
    pub const WATCHED_CGROUPS: &str = "WATCHED_CGROUPS";
    /// Array of one `u64`, bumped by userspace after each change of `WATCHED_CGROUPS`:
    /// the scheduler hooks' per-CPU memo of the current cgroup's container is good while
    /// it holds.
    pub const WATCHED_VERSION: &str = "WATCHED_VERSION";
    /// Per-CPU hash map: [`super::BlockKey`] → [`super::BlockCounters`].
    pub const BLOCK_IO: &str = "BLOCK_IO";
    /// Tracepoint `block:block_bio_queue`: every bio, in the submitting task's context.
    pub const BLOCK_BIO_ACCT: &str = "block_bio_acct";
    /// Array of one `u64`: bit N set when some container's cgroup v2 directory sits at
    /// level N, where host-wide hooks look for the container of a task in a nested cgroup.
    pub const CGROUP_LEVELS: &str = "CGROUP_LEVELS";
    /// Raw tracepoint `block_io_start` (`block_rq_issue` before 6.5): a request starts.
    pub const BLOCK_RQ_START: &str = "block_rq_start";
    /// Raw tracepoint `block_io_done` (`block_rq_complete` before 6.5): it completed.
    pub const BLOCK_RQ_DONE: &str = "block_rq_done";
    /// LRU hash map: request address → [`super::IoPending`], requests in flight.
    pub const BLOCK_PENDING: &str = "BLOCK_PENDING";
    /// Per-CPU hash map: [`super::LatencyKey`] → [`super::Latency`], request latency.
    pub const BLOCK_LATENCY: &str = "BLOCK_LATENCY";
    /// Raw tracepoint `sched_switch`: run-queue latency ends, context switches.
    pub const SCHED_SWITCH: &str = "sched_switch";
    /// Raw tracepoint `sched_wakeup`: a container task becomes runnable.
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    /// Raw tracepoint `sched_wakeup_new`: a container task is born runnable.
    pub const SCHED_FORK: &str = "sched_fork";
    /// Raw tracepoint `sched_process_exit`: forgets the task.
    pub const SCHED_EXIT: &str = "sched_exit";
    /// `cgroup_skb` ingress on the cgroup v2 root: packets to containers' sockets.
    pub const CG_SKB_INGRESS: &str = "cg_skb_ingress";
    /// `cgroup_skb` egress on the cgroup v2 root: packets from containers' sockets.
    pub const CG_SKB_EGRESS: &str = "cg_skb_egress";
    /// Per-CPU hash map: container cgroup id (`u64`) → [`super::SocketCounters`].
    pub const SOCKET_TRAFFIC: &str = "SOCKET_TRAFFIC";
    /// LRU hash map: a thread's `task_struct` address (`u64`) → [`super::TaskState`],
    /// containers' threads.
    pub const TASKS: &str = "TASKS";
    /// Per-CPU array: a container's slot (the value of `WATCHED_CGROUPS`) →
    /// [`super::SchedStats`]. An array, not a hash keyed by cgroup id: `sched_switch` runs on
    /// every context switch of the host, and an array lookup is inlined.
    pub const SCHED_STATS: &str = "SCHED_STATS";
    /// Per-CPU array of one entry: what `sched_switch` remembers about the CPU between runs.
    pub const SCHED_CPU: &str = "SCHED_CPU";
    /// Hash map: container IPv4 address (network byte order) → [`super::Caps`].
    pub const CAPS: &str = "CAPS";
    /// Hash map: container IPv6 address (its 16 bytes) → [`super::Caps`].
    pub const CAPS6: &str = "CAPS6";
    /// BTF hash map: [`super::tc_cap_key`] → [`super::TcCap`], the hard caps in tc.
    pub const TC_CAPS: &str = "TC_CAPS";
    /// `sock_ops` on the cgroup v2 root: paces TCP sockets from and to capped containers.
    pub const SOCK_PACE: &str = "sock_pace";
    /// BTF hash map: [`super::window_key_v4`] (or `_v6`, `_group`) `<< 1 | ingress` → the
    /// [`super::LeaseRing`] of the sockets sharing that cap now.
    pub const WINDOWS: &str = "WINDOWS";
    /// Per-CPU array: failed inserts by the programs, indexed by [`super::InsertFailures`].
    pub const INSERT_FAILURES: &str = "INSERT_FAILURES";
    /// Array: [`super::ECN_WAYS`] flow hashes per capped hook ([`super::TcCap::ecn_slot`]).
    pub const ECN_FLOWS: &str = "ECN_FLOWS";
}

/// The maps programs insert into, as indexes of [`names::INSERT_FAILURES`]: a full map must
/// not lose data silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertFailures {
    BlockIo = 0,
    Windows = 1,
    PacedSockets = 2,
    // 3 was SCHED_STATS, a hash map until it became an array of slots.
    BlockLatency = 4,
    SocketTraffic = 5,
}

impl InsertFailures {
    pub const ALL: [Self; 5] = [
        Self::BlockIo,
        Self::Windows,
        Self::PacedSockets,
        Self::BlockLatency,
        Self::SocketTraffic,
    ];

    /// The map's name, as Prometheus labels it.
    pub const fn map(self) -> &'static str {
        match self {
            Self::BlockIo => names::BLOCK_IO,
            Self::Windows => names::WINDOWS,
            Self::PacedSockets => "PACED_SOCKETS",
            Self::BlockLatency => names::BLOCK_LATENCY,
            Self::SocketTraffic => names::SOCKET_TRAFFIC,
        }
    }
}

/// Key of a capped address in [`names::WINDOWS`] (before the direction bit): the IPv4
/// address as the kernel holds it (network byte order), or the IPv6 address's four words
/// folded to 62 bits with bit 62 set, so the two never meet.
pub const fn window_key_v4(ip: u32) -> u64 {
    ip as u64
}

/// As [`window_key_v4`], for an IPv6 address's four words (network byte order each).
pub const fn window_key_v6(a: [u32; 4]) -> u64 {
    (((a[0] ^ a[1]) as u64) << 32 | (a[2] ^ a[3]) as u64) & ((1 << 62) - 1) | 1 << 62
}

/// Key of [`names::WINDOWS`] for the sockets of a group cap (bit 61: neither an IPv4 key,
/// below 2^32, nor an IPv6 one, which has bit 62).
pub const fn window_key_group(group: u32) -> u64 {
    1 << 61 | group as u64
}

/// The `skb->priority` that `sock_ops` gives every TCP socket it paces: it names the bulk
/// class (`d0ca:2`) of dockops' backlog qdisc (HTB `d0ca:`), which HTB then picks without a
/// filter; the `cgroup_skb` egress program gives it to their handshakes too. Everything else
/// there (ICMP, UDP, DNS) falls into its prompt class and overtakes the bulk. Its low bits,
/// 2, are `TC_PRIO_BULK` for any other qdisc that looks.
pub const BULK_PRIORITY: u32 = 0xd0ca_0002;

/// `skb->priority` of a SYN-ACK into a capped container when new connections arrive faster
/// than the cap carries their first flights: the admission class (`d0ca:3`) of its ingress
/// backlog, which lets SYN-ACKs through at that pace (`tc/admit.rs` in the eBPF crate).
pub const ADMIT_PRIORITY: u32 = 0xd0ca_0003;

/// The largest first flight the admission of new connections into a capped container
/// counts, in wire bytes: the smallest initial window `sock_ops` gives a paced sender (2
/// segments), as full frames. The admission class's rate assumes it; the credit uses less
/// when connections carry less (what the last second delivered per SYN-ACK).
pub const FIRST_FLIGHT_BYTES: u64 = 2 * 1514;

/// Wire bytes of a SYN-ACK over IPv4 with the options Linux sends (MSS, SACK, timestamps,
/// window scale): what the admission class's rate is counted in.
pub const SYN_ACK_BYTES: u64 = 74;

/// Flows each capped hook remembers as marked with ECN: its own slots of `ECN_FLOWS`, so one
/// container's flows never push out another's.
pub const ECN_WAYS: u32 = 32;

/// Room for this many capped container addresses.
pub const MAX_CAPS: u32 = 8192;

/// Bandwidth caps of one container address, bits per second; 0 = no cap in that direction.
/// Egress is what the container sends, ingress what it receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub egress_bits: u64,
    pub ingress_bits: u64,
    /// Bucket of the tc hard cap behind the pacing, bytes.
    pub burst_bytes: u64,
    /// The container that set these caps (its id's 32 bytes): addresses are reused, so a
    /// later container with the same address must not inherit them. Unused by eBPF.
    pub owner: [u8; 32],
    /// [`Caps::NO_PACING`], [`Caps::QUEUE`], [`Caps::EDT`], [`Caps::POLICY`] or 0; a group
    /// id above [`Caps::GROUP_SHIFT`].
    pub flags: u64,
}

const _: () = assert!(core::mem::size_of::<Caps>() == 64);

impl Caps {
    /// Same-host TCP senders are not paced: only the tc hard cap holds the rate, as it does
    /// for senders beyond the host.
    pub const NO_PACING: u64 = 1;
    /// The ingress cap is a queue (HTB on the host veth) instead of the tc token bucket.
    /// Used by userspace only.
    pub const QUEUE: u64 = 2;

    /// The ingress cap is an earliest-departure-time schedule (the tc program stamps
    /// `skb->tstamp`, an fq qdisc at the root of the host veth holds each packet until then)
    /// instead of the token bucket. Used by userspace only.
    pub const EDT: u64 = 4;

    /// Set by the agent from a label or the policy file (not by `limit`): lifted when they
    /// no longer ask for it. Used by userspace only.
    pub const POLICY: u64 = 8;

    /// The upper half of `flags`: nonzero when these are a group's caps, shared by every
    /// member (one pacing share count, one tc bucket per direction).
    pub const GROUP_SHIFT: u32 = 32;

    /// The group these caps belong to; 0: the container's own.
    pub const fn group(&self) -> u32 {
        (self.flags >> Self::GROUP_SHIFT) as u32
    }

    /// Whether the `sock_ops` program paces sockets toward these caps.
    pub const fn paced(&self) -> bool {
        self.flags & Self::NO_PACING == 0
    }

    /// Whether the ingress cap is held by a queue rather than the tc token bucket.
    pub const fn queued(&self) -> bool {
        self.flags & Self::QUEUE != 0 && self.ingress_bits != 0
    }

    /// Whether the ingress cap is an EDT schedule held by fq rather than the token bucket.
    pub const fn edt(&self) -> bool {
        self.flags & Self::EDT != 0 && self.ingress_bits != 0
    }
}

/// Key of [`names::TC_CAPS`]: the host veth and which of the container's directions.
pub const fn tc_cap_key(ifindex: u32, ingress: bool) -> u64 {
    (ifindex as u64) << 1 | ingress as u64
}

/// The bit of a [`names::TC_CAPS`] key that makes it a group's (an interface index is 32
/// bits).
pub const GROUP_CAP_KEY: u64 = 1 << 63;

/// Key of [`names::TC_CAPS`] for the one bucket a group cap's members share, per direction.
pub const fn group_cap_key(group: u32, ingress: bool) -> u64 {
    GROUP_CAP_KEY | (group as u64) << 1 | ingress as u64
}

/// The sockets sharing one cap: the weight of their leases (256 for a socket that uses all
/// of its share) by the ~16.8 ms slot they end in, in a ring of 64 slots. Written by the
/// `sock_ops` program only; userspace removes stale entries. The eBPF side declares the same
/// layout with `struct bpf_spin_lock` as the first field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRing {
    pub lock: u32,
    /// The unexpired leases' total weight: what the cap is divided by, over 256.
    pub active: u32,
    /// The latest slot (monotonic ns >> 24) the ring was brought to.
    pub slot: u64,
    /// The weight of the leases ending in slot `s`, at `s % 64`.
    pub ending: [u32; 64],
    /// The ~67 ms budget period (slot >> 2) `sent` counts.
    pub period: u64,
    /// Bytes the sockets sent in that period.
    pub sent: u64,
    /// What the shares are multiplied by, over 256.
    pub boost: u32,
    /// Bit 0: a socket saw a queue in that period; bit 1: a socket was held back by its pace.
    pub seen: u32,
}

/// The tc hard cap of one hook and its token bucket, as userspace sees a `TC_CAPS` value.
/// The eBPF side declares the same layout with `struct bpf_spin_lock` as the first field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcCap {
    /// `struct bpf_spin_lock`: the kernel keeps it out of userspace reads and writes.
    pub lock: u32,
    /// The hook's slots in `ECN_FLOWS` (from 1, assigned by userspace; 0: none yet, so no
    /// flow is remembered).
    pub ecn_slot: u32,
    /// Wire bytes per second.
    pub rate_bytes: u64,
    pub burst_bytes: u64,
    /// Below zero after retransmissions passed on credit (at most one burst of debt).
    pub tokens: i64,
    /// Token bucket: when it was last refilled. EDT: when the last packet scheduled has
    /// left, on the monotonic clock `skb->tstamp` uses.
    pub last_ns: u64,
    /// 0: a token bucket. Otherwise an EDT schedule at `rate_bytes`: packets are stamped with
    /// their departure time, marked when they would wait more than half of this, dropped
    /// beyond it (the burst's worth of time at the rate).
    pub horizon_ns: u64,
    /// Nonzero on a member of a group cap: the bucket is the group's, at this key
    /// ([`group_cap_key`]), and this entry's own rate and tokens are unused.
    pub group_key: u64,
    /// Credit of first-flight bytes for new connections into the container (ingress, token
    /// bucket): refilled at `rate_bytes`, at most 10 ms of it; each SYN-ACK takes
    /// `flight_bytes`. Without enough, SYN-ACKs wait in the admission class.
    pub admit_tokens: i64,
    /// When `admit_tokens` was last refilled.
    pub admit_ns: u64,
    /// What a SYN-ACK takes: bytes delivered per SYN-ACK in the last window, at most
    /// [`FIRST_FLIGHT_BYTES`] (0: that, no window yet).
    pub flight_bytes: u64,
    /// The current window (a second from `window_ns`): bytes the bucket passed, SYN-ACKs.
    pub window_ns: u64,
    pub window_bytes: u64,
    pub window_syn_acks: u64,
}

const _: () = assert!(core::mem::size_of::<TcCap>() == 104);

/// Room for this many capped hooks.
pub const MAX_TC_CAPS: u32 = 16384;

/// Room for this many host-side veths (several per container are possible).
pub const MAX_INTERFACES: u32 = 8192;
/// Room for this many containers' cgroups.
pub const MAX_CGROUPS: u32 = 8192;
/// The slot of a watched container that got none in `SCHED_STATS` (all taken).
pub const NO_SLOT: u32 = u32::MAX;
/// Room for this many (cgroup, block device) pairs.
pub const MAX_BLOCK_KEYS: u32 = 32768;
/// Room for this many threads in containers (least recently used go first).
pub const MAX_TASKS: u32 = 65536;
/// Room for this many block requests in flight.
pub const MAX_PENDING_IO: u32 = 16384;

/// Packet and byte counts of one host-side veth, seen from the container: `rx` is traffic
/// delivered into the container, `tx` traffic it sent. One copy per CPU, summed in userspace.
///
/// `packets` counts wire packets (`gso_segs` of an aggregate); `bytes` counts `skb->len`,
/// link layer included, as the interface counters Docker reports do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Dropped by the hard cap (never reached the container / never left the host veth).
    pub rx_dropped_packets: u64,
    pub rx_dropped_bytes: u64,
    pub tx_dropped_packets: u64,
    pub tx_dropped_bytes: u64,
    /// Passed with ECN Congestion Experienced set by the hard cap (its bucket ran low).
    pub rx_marked_packets: u64,
    pub tx_marked_packets: u64,
}

const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 80);

impl TrafficCounters {
    /// Adds another CPU's (or interface's) counts to these.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
            rx_dropped_packets: self
                .rx_dropped_packets
                .wrapping_add(other.rx_dropped_packets),
            rx_dropped_bytes: self.rx_dropped_bytes.wrapping_add(other.rx_dropped_bytes),
            tx_dropped_packets: self
                .tx_dropped_packets
                .wrapping_add(other.tx_dropped_packets),
            tx_dropped_bytes: self.tx_dropped_bytes.wrapping_add(other.tx_dropped_bytes),
            rx_marked_packets: self.rx_marked_packets.wrapping_add(other.rx_marked_packets),
            tx_marked_packets: self.tx_marked_packets.wrapping_add(other.tx_marked_packets),
        }
    }
}

/// One container's IO on one block device. `dev` is the kernel's `dev_t`
/// (major << 20 | minor), as the block tracepoints report it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub cgroup_id: u64,
    pub dev: u32,
    pub pad: u32,
}

const _: () = assert!(core::mem::size_of::<BlockKey>() == 16);

impl BlockKey {
    pub const fn major(&self) -> u32 {
        self.dev >> 20
    }
    pub const fn minor(&self) -> u32 {
        self.dev & ((1 << 20) - 1)
    }
}

/// Bytes and bios submitted, by direction. Discards and flushes are not counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

const _: () = assert!(core::mem::size_of::<BlockCounters>() == 32);

impl BlockCounters {
    /// Adds another CPU's (or device's) counts to these.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            read_bytes: self.read_bytes.wrapping_add(other.read_bytes),
            write_bytes: self.write_bytes.wrapping_add(other.write_bytes),
            reads: self.reads.wrapping_add(other.reads),
            writes: self.writes.wrapping_add(other.writes),
        }
    }
}

/// Slots of a latency histogram: slot 0 counts waits under 1 µs, slot `i` those of
/// `[2^(i-1), 2^i)` µs, the last everything from 2^(N-2) µs (33 s) up.
pub const LATENCY_SLOTS: usize = 27;

/// A log2 histogram of latencies in microseconds ([`latency_slot`]), and their sum. One
/// copy per CPU, summed in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub slots: [u64; LATENCY_SLOTS],
    pub sum_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Latency>() == 224);

impl Latency {
    /// Counts one wait of `ns` nanoseconds.
    #[expect(
        clippy::inline_always,
        reason = "called from eBPF programs, which have no calls to spare"
    )]
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        let slot = latency_slot(ns);
        if slot < LATENCY_SLOTS {
            self.slots[slot] = self.slots[slot].wrapping_add(1);
        }
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Adds another CPU's histogram to this one.
    #[must_use]
    pub fn plus(mut self, other: &Self) -> Self {
        for (a, b) in self.slots.iter_mut().zip(other.slots) {
            *a = a.wrapping_add(b);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self
    }
}

/// The histogram slot of a wait of `ns` nanoseconds: the bit length of its whole
/// microseconds, capped at the last slot. Branches instead of a count of leading zeros,
/// which BPF has no instruction for.
#[expect(
    clippy::inline_always,
    reason = "called from eBPF programs, which have no calls to spare"
)]
#[inline(always)]
pub const fn latency_slot(ns: u64) -> usize {
    let mut us = ns / 1000;
    let mut bits = 0;
    if us >= 1 << 32 {
        return LATENCY_SLOTS - 1;
    }
    if us >= 1 << 16 {
        us >>= 16;
        bits += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        bits += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        bits += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        bits += 2;
    }
    if us >= 1 << 1 {
        us >>= 1;
        bits += 1;
    }
    if us != 0 {
        bits += 1;
    }
    if bits >= LATENCY_SLOTS {
        LATENCY_SLOTS - 1
    } else {
        bits
    }
}

/// One container's scheduling: how long its tasks waited runnable before they ran, and
/// its context switches (involuntary: preempted, or yielded while runnable).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    pub runqueue: Latency,
    pub voluntary: u64,
    pub involuntary: u64,
}

const _: () = assert!(core::mem::size_of::<SchedStats>() == 240);

impl SchedStats {
    #[must_use]
    pub fn plus(self, other: &Self) -> Self {
        Self {
            runqueue: self.runqueue.plus(&other.runqueue),
            voluntary: self.voluntary.wrapping_add(other.voluntary),
            involuntary: self.involuntary.wrapping_add(other.involuntary),
        }
    }
}

/// A container's thread, as the scheduler hooks remember it: its container's cgroup id and
/// slot, and since when it has been runnable without running (0: it is not waiting).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    pub container: u64,
    pub queued_at: u64,
    pub slot: u32,
    pub pad: u32,
}

const _: () = assert!(core::mem::size_of::<TaskState>() == 24);

/// A block request in flight (keyed by its address): when it started, for which container,
/// whether it writes (1) or reads (0), and its device (`dev_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoPending {
    pub start_ns: u64,
    pub container: u64,
    pub write: u32,
    pub dev: u32,
}

const _: () = assert!(core::mem::size_of::<IoPending>() == 24);

/// One container's requests to one device in one direction (`write` 1 or 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LatencyKey {
    pub cgroup_id: u64,
    pub dev: u32,
    pub write: u32,
}

const _: () = assert!(core::mem::size_of::<LatencyKey>() == 16);

/// What one container's sockets sent and received, whatever its network: bytes at the IP
/// layer, packets as wire segments. One copy per CPU, summed in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

const _: () = assert!(core::mem::size_of::<SocketCounters>() == 32);

impl SocketCounters {
    #[must_use]
    pub const fn plus(self, other: &Self) -> Self {
        Self {
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
        }
    }
}

// SAFETY: repr(C), only integer fields, no padding (sizes asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for SocketCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Latency {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SchedStats {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TaskState {}
#[cfg(feature = "user")]
#[cfg(feature = "user")]
unsafe impl aya::Pod for IoPending {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LatencyKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TrafficCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BlockKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BlockCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Caps {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TcCap {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LeaseRing {}

#[cfg(test)]
mod tests {
    use super::{BlockKey, TrafficCounters};

    #[test]
    fn dev_t_splits_like_the_kernel() {
        // 254:0 (virtio) and 8:17 (sdb1) as the tracepoint encodes them.
        let vda = BlockKey {
            cgroup_id: 1,
            dev: 254 << 20,
            pad: 0,
        };
        assert_eq!((vda.major(), vda.minor()), (254, 0));
        let sdb1 = BlockKey {
            cgroup_id: 1,
            dev: (8 << 20) | 0x11,
            pad: 0,
        };
        assert_eq!((sdb1.major(), sdb1.minor()), (8, 17));
    }

    #[test]
    fn plus_adds_each_field() {
        let a = TrafficCounters {
            rx_packets: 1,
            rx_bytes: 100,
            tx_packets: 2,
            tx_bytes: 200,
            rx_dropped_packets: 1,
            rx_dropped_bytes: 10,
            tx_dropped_packets: 2,
            tx_dropped_bytes: 20,
            rx_marked_packets: 5,
            tx_marked_packets: 6,
        };
        let b = TrafficCounters {
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 4,
            tx_bytes: 400,
            rx_dropped_packets: 3,
            rx_dropped_bytes: 30,
            tx_dropped_packets: 4,
            tx_dropped_bytes: 40,
            rx_marked_packets: 7,
            tx_marked_packets: 8,
        };
        assert_eq!(
            a.plus(b),
            TrafficCounters {
                rx_packets: 4,
                rx_bytes: 400,
                tx_packets: 6,
                tx_bytes: 600,
                rx_dropped_packets: 4,
                rx_dropped_bytes: 40,
                tx_dropped_packets: 6,
                tx_dropped_bytes: 60,
                rx_marked_packets: 12,
                tx_marked_packets: 14,
            }
        );
    }

    #[test]
    fn latency_slots_are_log2_microseconds() {
        use super::{LATENCY_SLOTS, Latency, latency_slot};
        assert_eq!(latency_slot(0), 0);
        assert_eq!(latency_slot(999), 0, "under 1 µs");
        assert_eq!(latency_slot(1_000), 1, "[1, 2) µs");
        assert_eq!(latency_slot(1_999), 1);
        assert_eq!(latency_slot(2_000), 2, "[2, 4) µs");
        assert_eq!(latency_slot(3_999), 2);
        assert_eq!(latency_slot(4_000), 3);
        assert_eq!(latency_slot(1_000_000), 10, "1 ms in [512, 1024) µs");
        for shift in 0..40 {
            let us: u64 = 1 << shift;
            let want = (shift + 1).min(LATENCY_SLOTS - 1);
            assert_eq!(latency_slot(us * 1000), want, "2^{shift} µs");
            assert_eq!(
                latency_slot(us * 1000 - 1),
                want.min(shift),
                "just under 2^{shift} µs"
            );
        }
        assert_eq!(latency_slot(u64::MAX), LATENCY_SLOTS - 1);
        let mut l = Latency::default();
        l.record(1_500);
        l.record(u64::MAX / 2);
        assert_eq!((l.slots[1], l.slots[LATENCY_SLOTS - 1]), (1, 1));
        assert_eq!(l.plus(&l).slots[1], 2);
    }

    #[test]
    fn tc_cap_keys_split_direction() {
        assert_eq!(super::tc_cap_key(7, false), 14);
        assert_eq!(super::tc_cap_key(7, true), 15);
    }
}
