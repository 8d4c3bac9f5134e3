//! Tier 2: the tc programs run on crafted packets through `BPF_PROG_TEST_RUN`, without
//! attaching anything. Maps are pinned in a private bpffs directory, removed afterwards.

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use dockops_common::{
    ADMIT_PRIORITY, BULK_PRIORITY, FIRST_FLIGHT_BYTES, TcCap, TrafficCounters, names, tc_cap_key,
};
use dockops_integration::PinDir;

/// `TC_ACT_UNSPEC` (-1) as the test run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
/// The loopback device: `BPF_PROG_TEST_RUN` needs an existing ifindex for `skb->dev`.
const LO: u32 = 1;

/// A `struct __sk_buff` for `ctx_in` with `ifindex` and `gso_segs` set (offsets from the
/// kernel's BTF: `ifindex` at byte 40, `gso_segs` at 164; size 192).
fn skb_ctx(ifindex: u32, gso_segs: u32) -> [u8; 192] {
    let mut ctx = [0_u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx
}

/// An Ethernet frame of `len` bytes carrying IPv4 (contents beyond the header do not matter).
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0_u8; len];
    f[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    f
}

fn run(prog: &SchedClassifier, ifindex: u32, gso_segs: u32, len: usize) -> u32 {
    let data = frame(len);
    let ctx = skb_ctx(ifindex, gso_segs);
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&data);
    opts.ctx_in = Some(&ctx);
    prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value
}

/// Loads the object with its maps pinned in a private directory, and both tc programs.
fn load(test: &str) -> (PinDir, Ebpf) {
    let pins = PinDir::create(test);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .load(dockops::datapath::OBJECT)
        .unwrap();
    for name in [names::TC_INGRESS_ACCT, names::TC_EGRESS_ACCT] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
    }
    (pins, ebpf)
}

#[test]
fn tc_programs_count_and_enforce_the_hard_cap() {
    let (_pins, mut ebpf) = load("cap");
    let mut traffic: PerCpuHashMap<_, u32, TrafficCounters> =
        PerCpuHashMap::try_from(ebpf.take_map(names::TRAFFIC).unwrap()).unwrap();
    let ingress: &SchedClassifier = ebpf
        .program(names::TC_INGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();
    let egress: &SchedClassifier = ebpf
        .program(names::TC_EGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();

    // Not a managed interface: passed on, nothing counted, no entry created.
    assert_eq!(run(ingress, LO, 1, 100), TC_ACT_UNSPEC);
    assert!(
        traffic.keys().next().is_none(),
        "the program created an entry"
    );

    let zeros =
        PerCpuValues::try_from(vec![TrafficCounters::default(); nr_cpus().unwrap()]).unwrap();
    traffic.insert(LO, zeros, 0).unwrap();
    let total = |map: &PerCpuHashMap<_, u32, TrafficCounters>| {
        map.get(&LO, 0)
            .unwrap()
            .iter()
            .fold(TrafficCounters::default(), |a, c| a.plus(*c))
    };

    // A GSO aggregate of 3 segments counts 3 packets; a plain skb (gso_segs 0) counts 1.
    // (Test runs take at most about a page of packet data.)
    assert_eq!(run(ingress, LO, 3, 3000), TC_ACT_UNSPEC);
    assert_eq!(run(ingress, LO, 0, 100), TC_ACT_UNSPEC);
    assert_eq!(
        total(&traffic),
        TrafficCounters {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 4,
            tx_bytes: 3100,
            ..TrafficCounters::default()
        }
    );

    // Host-veth egress is what the container receives.
    assert_eq!(run(egress, LO, 1, 1500), TC_ACT_UNSPEC);
    assert_eq!(
        total(&traffic),
        TrafficCounters {
            rx_packets: 1,
            rx_bytes: 1500,
            tx_packets: 4,
            tx_bytes: 3100,
            ..TrafficCounters::default()
        }
    );

    // A hard cap on the container's egress: a 2000-byte bucket that refills at 1 byte/s
    // admits one 1500-byte packet, then drops, and counts the drop.
    let mut caps: aya::maps::HashMap<_, u64, TcCap> =
        aya::maps::HashMap::try_from(ebpf.take_map(names::TC_CAPS).unwrap()).unwrap();
    let bucket = TcCap {
        rate_bytes: 1,
        burst_bytes: 2000,
        tokens: 2000,
        ..TcCap::default()
    };
    caps.insert(tc_cap_key(LO, false), bucket, 0).unwrap();
    let ingress: &SchedClassifier = ebpf
        .program(names::TC_INGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();
    let before = total(&traffic);
    assert_eq!(
        run(ingress, LO, 1, 1500),
        TC_ACT_UNSPEC,
        "within the bucket"
    );
    assert_eq!(run(ingress, LO, 1, 1500), TC_ACT_SHOT, "over the bucket");
    let after = total(&traffic);
    assert_eq!(after.tx_packets - before.tx_packets, 1);
    assert_eq!(
        (after.tx_dropped_packets, after.tx_dropped_bytes),
        (1, 1500)
    );
    // The container's ingress has no cap: still passed.
    let egress: &SchedClassifier = ebpf
        .program(names::TC_EGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(run(egress, LO, 1, 1500), TC_ACT_UNSPEC);
}

/// An Ethernet + IPv4 + TCP frame (10.0.0.1:1000 → 10.0.0.2:2000) with the given ECN field,
/// a valid IPv4 header checksum and `payload` bytes of data.
fn tcp_frame(ecn: u8, payload: usize) -> Vec<u8> {
    let mut f = vec![0_u8; 14 + 20 + 20 + payload];
    f[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = ecn;
    ip[2..4].copy_from_slice(&u16::try_from(40 + payload).unwrap().to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let sum = !ip_sum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    tcp_header(&mut f[34..54]);
    f
}

/// A TCP header from port 1000 to 2000 with PSH and ACK set.
fn tcp_header(tcp: &mut [u8]) {
    tcp[0..2].copy_from_slice(&1000_u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&2000_u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
}

/// `tcp_frame` over IPv6 (`[fd00::1]:1000` → `[fd00::2]:2000`).
fn tcp6_frame(ecn: u8, payload: usize) -> Vec<u8> {
    let mut f = vec![0_u8; 14 + 40 + 20 + payload];
    f[12..14].copy_from_slice(&0x86dd_u16.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[1] = ecn << 4;
    ip[4..6].copy_from_slice(&u16::try_from(20 + payload).unwrap().to_be_bytes());
    ip[6] = 6;
    ip[7] = 64;
    ip[8..10].copy_from_slice(&[0xfd, 0x00]);
    ip[23] = 1;
    ip[24..26].copy_from_slice(&[0xfd, 0x00]);
    ip[39] = 2;
    tcp_header(&mut f[54..74]);
    f
}

/// The ones' complement sum of an IPv4 header (0xffff when its checksum is right).
fn ip_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap()
}

/// A bucket of 10 000 bytes at 1 byte/s (refills nothing that matters) holding `tokens`.
fn bucket(tokens: i64) -> TcCap {
    TcCap {
        ecn_slot: 1,
        rate_bytes: 1,
        burst_bytes: 10_000,
        tokens,
        ..TcCap::default()
    }
}

/// Runs the program on `frame`; returns the verdict, the frame as it left and its
/// `skb->priority` (at byte 32 of `struct __sk_buff`).
fn run_frame(prog: &SchedClassifier, frame: &[u8]) -> (u32, Vec<u8>, u32) {
    let ctx = skb_ctx(LO, 1);
    let mut ctx_out = [0_u8; 192];
    let mut out = vec![0_u8; frame.len()];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.ctx_out = Some(&mut ctx_out);
    let verdict = prog.test_run(opts).expect("BPF_PROG_TEST_RUN").return_value;
    let priority = u32::from_ne_bytes(ctx_out[32..36].try_into().unwrap());
    (verdict, out, priority)
}

#[test]
fn a_low_bucket_marks_ecn_and_an_empty_one_spares_retransmissions_and_small_packets() {
    const ECT0: u8 = 2;
    const CE: u8 = 3;
    let (_pins, mut ebpf) = load("ecn");
    let mut traffic: PerCpuHashMap<_, u32, TrafficCounters> =
        PerCpuHashMap::try_from(ebpf.take_map(names::TRAFFIC).unwrap()).unwrap();
    let zeros =
        PerCpuValues::try_from(vec![TrafficCounters::default(); nr_cpus().unwrap()]).unwrap();
    traffic.insert(LO, zeros, 0).unwrap();
    let mut caps: aya::maps::HashMap<_, u64, TcCap> =
        aya::maps::HashMap::try_from(ebpf.take_map(names::TC_CAPS).unwrap()).unwrap();
    let egress: &SchedClassifier = ebpf
        .program(names::TC_EGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();
    let key = tc_cap_key(LO, true);
    let ect = tcp_frame(ECT0, 1000);
    let not_ect = tcp_frame(0, 1000);

    // Plenty of tokens: passed untouched.
    caps.insert(key, bucket(10_000), 0).unwrap();
    let (verdict, out, _) = run_frame(egress, &ect);
    assert_eq!((verdict, out[15] & 3), (TC_ACT_UNSPEC, ECT0));

    // Below half the bucket: an ECN-capable packet passes marked CE, with a valid checksum;
    // a packet that is not ECN-capable passes as it is.
    caps.insert(key, bucket(4000), 0).unwrap();
    let (verdict, out, _) = run_frame(egress, &ect);
    assert_eq!((verdict, out[15] & 3), (TC_ACT_UNSPEC, CE));
    assert_eq!(ip_sum(&out[14..34]), 0xffff, "IPv4 checksum after marking");
    let (verdict, out, _) = run_frame(egress, &not_ect);
    assert_eq!((verdict, out[15] & 3), (TC_ACT_UNSPEC, 0));

    // Empty: an ECN-capable packet is dropped; the flow's next non-ECT packet (how Linux
    // retransmits) passes on credit, and the bucket owes its bytes.
    caps.insert(key, bucket(0), 0).unwrap();
    assert_eq!(run_frame(egress, &ect).0, TC_ACT_SHOT);
    assert_eq!(run_frame(egress, &not_ect).0, TC_ACT_UNSPEC);
    let owed = caps.get(&key, 0).unwrap().tokens;
    assert!(owed < 0, "tokens {owed} after a packet passed on credit");
    // Another hook's flows, however many, are remembered in its own slots: this flow keeps
    // its credit.
    let ingress: &SchedClassifier = ebpf
        .program(names::TC_INGRESS_ACCT)
        .unwrap()
        .try_into()
        .unwrap();
    caps.insert(
        tc_cap_key(LO, false),
        TcCap {
            ecn_slot: 2,
            ..bucket(0)
        },
        0,
    )
    .unwrap();
    for port in 2000_u16..2256 {
        let mut flow = tcp_frame(ECT0, 1000);
        flow[34..36].copy_from_slice(&port.to_be_bytes());
        assert_eq!(run_frame(ingress, &flow).0, TC_ACT_SHOT);
    }
    caps.insert(key, bucket(0), 0).unwrap();
    assert_eq!(run_frame(egress, &not_ect).0, TC_ACT_UNSPEC);
    // At most one burst of debt: then retransmissions are dropped too.
    caps.insert(key, bucket(-9_500), 0).unwrap();
    assert_eq!(run_frame(egress, &not_ect).0, TC_ACT_SHOT);
    // Another flow's non-ECT packet gets no credit.
    caps.insert(key, bucket(0), 0).unwrap();
    let mut other = tcp_frame(0, 1000);
    other[34..36].copy_from_slice(&1001_u16.to_be_bytes());
    assert_eq!(run_frame(egress, &other).0, TC_ACT_SHOT);
    // A small packet (an ACK, a ping) passes on credit, up to the same debt limit.
    let mut ack = tcp_frame(0, 0);
    ack[34..36].copy_from_slice(&1001_u16.to_be_bytes());
    assert_eq!(run_frame(egress, &ack).0, TC_ACT_UNSPEC);
    caps.insert(key, bucket(-10_000), 0).unwrap();
    assert_eq!(run_frame(egress, &ack).0, TC_ACT_SHOT);

    let total = traffic
        .get(&LO, 0)
        .unwrap()
        .iter()
        .fold(TrafficCounters::default(), |a, c| a.plus(*c));
    assert_eq!(
        (
            total.rx_packets,
            total.rx_marked_packets,
            total.rx_dropped_packets
        ),
        (6, 1, 4)
    );
}

#[test]
fn a_paced_flow_into_an_empty_bucket_passes_on_credit_into_the_backlog() {
    const ECT0: u8 = 2;
    let (_pins, mut ebpf) = load("paced");
    let mut caps: aya::maps::HashMap<_, u64, TcCap> =
        aya::maps::HashMap::try_from(ebpf.take_map(names::TC_CAPS).unwrap()).unwrap();
    let mut flows: aya::maps::HashMap<_, [u32; 3], u8> =
        aya::maps::HashMap::try_from(ebpf.take_map("PACED_FLOWS").unwrap()).unwrap();
    let mut v6_flows: aya::maps::HashMap<_, [u32; 9], u8> =
        aya::maps::HashMap::try_from(ebpf.take_map("PACED_FLOWS6").unwrap()).unwrap();
    let prog = |name| -> &SchedClassifier { ebpf.program(name).unwrap().try_into().unwrap() };
    let (into, out_of) = (prog(names::TC_EGRESS_ACCT), prog(names::TC_INGRESS_ACCT));
    // tcp_frame's flow as its packets carry it: 10.0.0.1:1000 → 10.0.0.2:2000.
    let flow = [
        u32::from_ne_bytes([10, 0, 0, 1]),
        u32::from_ne_bytes([10, 0, 0, 2]),
        u32::from_ne_bytes([0x03, 0xe8, 0x07, 0xd0]),
    ];
    let packet = tcp_frame(ECT0, 1000);
    for ingress in [true, false] {
        caps.insert(tc_cap_key(LO, ingress), bucket(0), 0).unwrap();
    }
    // Not a paced flow: dropped either way.
    assert_eq!(run_frame(into, &packet).0, TC_ACT_SHOT);
    flows.insert(flow, 1, 0).unwrap();
    // Paced into the container: passes, and the bucket owes its bytes.
    assert_eq!(run_frame(into, &packet).0, TC_ACT_UNSPEC);
    let owed = caps.get(&tc_cap_key(LO, true), 0).unwrap().tokens;
    assert!(
        owed < 0,
        "tokens {owed} after a paced packet passed on credit"
    );
    // Out of the container, the egress backlog holds it before the bucket: no credit here.
    assert_eq!(run_frame(out_of, &packet).0, TC_ACT_SHOT);
    // At most a burst and 4 s of the rate in debt.
    caps.insert(tc_cap_key(LO, true), bucket(-10_004), 0)
        .unwrap();
    assert_eq!(run_frame(into, &packet).0, TC_ACT_SHOT);

    // The same over IPv6, from PACED_FLOWS6: addresses word by word, then the ports.
    let word = |b: [u8; 4]| u32::from_ne_bytes(b);
    let v6_flow = [
        word([0xfd, 0, 0, 0]),
        0,
        0,
        word([0, 0, 0, 1]),
        word([0xfd, 0, 0, 0]),
        0,
        0,
        word([0, 0, 0, 2]),
        word([0x03, 0xe8, 0x07, 0xd0]),
    ];
    let v6_packet = tcp6_frame(ECT0, 1000);
    caps.insert(tc_cap_key(LO, true), bucket(0), 0).unwrap();
    assert_eq!(run_frame(into, &v6_packet).0, TC_ACT_SHOT);
    v6_flows.insert(v6_flow, 1, 0).unwrap();
    assert_eq!(run_frame(into, &v6_packet).0, TC_ACT_UNSPEC);
    assert!(caps.get(&tc_cap_key(LO, true), 0).unwrap().tokens < 0);
    assert_eq!(run_frame(out_of, &v6_packet).0, TC_ACT_SHOT);
}

#[test]
fn data_and_handshakes_into_a_capped_container_go_to_the_backlogs_bulk_or_admission_class() {
    let (_pins, mut ebpf) = load("classes");
    let mut caps: aya::maps::HashMap<_, u64, TcCap> =
        aya::maps::HashMap::try_from(ebpf.take_map(names::TC_CAPS).unwrap()).unwrap();
    let prog = |name| -> &SchedClassifier { ebpf.program(name).unwrap().try_into().unwrap() };
    let (into, out_of) = (prog(names::TC_EGRESS_ACCT), prog(names::TC_INGRESS_ACCT));
    let (data, ack) = (tcp_frame(0, 1000), tcp_frame(0, 0));
    let mut syn_ack = tcp_frame(0, 0);
    syn_ack[14 + 20 + 13] = 0x12;
    let priority = |prog, frame: &[u8]| {
        let (verdict, _, priority) = run_frame(prog, frame);
        assert_eq!(verdict, TC_ACT_UNSPEC);
        priority
    };
    // No cap: nothing is classified.
    assert_eq!(priority(into, &data), 0);
    for ingress in [true, false] {
        caps.insert(tc_cap_key(LO, ingress), bucket(10_000), 0)
            .unwrap();
    }
    assert_eq!(priority(into, &data), BULK_PRIORITY, "data");
    assert_eq!(priority(into, &ack), 0, "an acknowledgement");
    // Out of the container, the socket's own priority (set by sock_ops) decides.
    assert_eq!(priority(out_of, &data), 0);

    // A SYN-ACK takes credit for its connection's first flight (the bucket refills 1 byte
    // a second: nothing that matters here); without it, it waits in the admission class.
    let mut admission = |credit: i64, window: (u64, u64, u64)| {
        let (window_ns, window_bytes, window_syn_acks) = window;
        let cap = TcCap {
            admit_tokens: credit,
            admit_ns: u64::MAX / 2,
            window_ns,
            window_bytes,
            window_syn_acks,
            ..bucket(10_000)
        };
        caps.insert(tc_cap_key(LO, true), cap, 0).unwrap();
        (priority(into, &syn_ack), priority(into, &syn_ack))
    };
    let flight = i64::try_from(FIRST_FLIGHT_BYTES).unwrap();
    // A window still open (it started in the future): a first flight counts in full.
    let open = (u64::MAX / 2, 0, 0);
    assert_eq!(
        admission(flight, open),
        (BULK_PRIORITY, ADMIT_PRIORITY),
        "credit for one first flight admits one SYN-ACK"
    );
    assert_eq!(admission(flight - 1, open).0, ADMIT_PRIORITY);
    // A window past: 10 SYN-ACKs with 5000 bytes delivered (and this SYN-ACK's 54), so a
    // first flight counts 505.
    assert_eq!(
        admission(600, (0, 5000, 10)),
        (BULK_PRIORITY, ADMIT_PRIORITY),
        "connections that carried little take little credit"
    );
}
