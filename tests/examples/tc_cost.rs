//! Per-packet cost of the tc programs, from `BPF_PROG_TEST_RUN` with many repeats (the kernel
//! reports the mean time per run). Run by `cargo xtask bench tc`; prints one JSON line per case.
//! Maps are pinned in a private bpffs directory, removed afterwards.

use std::{fs, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::{HashMap, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    util::nr_cpus,
};
use dockops_common::{TcCap, TrafficCounters, names, tc_cap_key};

const LO: u32 = 1;
const ROUNDS: usize = 9;

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let repeat: u32 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let pins = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/dockops-cost-{}",
        std::process::id()
    )));
    fs::create_dir_all(&pins.0)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .load(dockops::datapath::OBJECT)?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(names::TC_EGRESS_ACCT)
        .unwrap()
        .try_into()?;
    prog.load()?;
    let mut traffic: PerCpuHashMap<_, u32, TrafficCounters> =
        PerCpuHashMap::try_from(ebpf.take_map(names::TRAFFIC).unwrap())?;
    let mut caps: HashMap<_, u64, TcCap> =
        HashMap::try_from(ebpf.take_map(names::TC_CAPS).unwrap())?;
    let prog: &SchedClassifier = ebpf.program(names::TC_EGRESS_ACCT).unwrap().try_into()?;

    let mut frame = vec![0_u8; 1514];
    frame[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let mut ctx = [0_u8; 192];
    ctx[40..44].copy_from_slice(&LO.to_ne_bytes());
    let time = |what: &str| -> anyhow::Result<()> {
        let round = || -> anyhow::Result<u128> {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = repeat;
            Ok(prog.test_run(opts)?.duration.as_nanos())
        };
        // The median of several rounds: a round that a busy neighbour slowed down is dropped.
        let mut rounds = (0..ROUNDS)
            .map(|_| round())
            .collect::<anyhow::Result<Vec<_>>>()?;
        rounds.sort_unstable();
        println!(
            "{{\"case\":\"{what}\",\"ns_per_packet\":{},\"min\":{},\"max\":{},\"repeat\":{repeat},\"rounds\":{ROUNDS}}}",
            rounds[ROUNDS / 2],
            rounds[0],
            rounds[ROUNDS - 1]
        );
        Ok(())
    };

    time("unmanaged interface")?;
    let zeros = PerCpuValues::try_from(vec![
        TrafficCounters::default();
        nr_cpus().map_err(|(_, e)| e)?
    ])?;
    traffic.insert(LO, zeros, 0)?;
    time("counted, no cap")?;
    let open = TcCap {
        rate_bytes: u64::from(u32::MAX),
        burst_bytes: u64::MAX / 4,
        tokens: i64::MAX / 4,
        ..TcCap::default()
    };
    caps.insert(tc_cap_key(LO, true), open, 0)?;
    time("counted, capped, admitted")?;
    let closed = TcCap {
        rate_bytes: 1,
        burst_bytes: 1,
        ..TcCap::default()
    };
    caps.insert(tc_cap_key(LO, true), closed, 0)?;
    time("counted, capped, dropped")?;
    Ok(())
}
