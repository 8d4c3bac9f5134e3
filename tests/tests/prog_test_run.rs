//! Tier 2: the tc programs run on crafted packets through `BPF_PROG_TEST_RUN`, without
//! attaching anything. Maps are pinned in a private bpffs directory, removed afterwards.

use std::{fs, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::{PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use dockops_common::{TcCap, TrafficCounters, names, tc_cap_key};

/// `TC_ACT_UNSPEC` (-1) as the test run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
/// The loopback device: `BPF_PROG_TEST_RUN` needs an existing ifindex for `skb->dev`.
const LO: u32 = 1;

/// A private pin directory, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

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

#[test]
fn tc_programs_count_and_enforce_the_hard_cap() {
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dockops-test-{}",
        std::process::id()
    )));
    fs::create_dir_all(&pins.0).expect("bpffs (run through cargo xtask test, as root)");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .load(dockops::datapath::OBJECT)
        .unwrap();
    for name in [names::TC_INGRESS_ACCT, names::TC_EGRESS_ACCT] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
    }
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
