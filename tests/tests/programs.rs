//! Tier 0, run first by `cargo xtask test`: every program in the embedded object loads and
//! passes the verifier on the running kernel. A rejection fails here, by program name and
//! with the verifier's log, instead of as a missing feature in the tests after it.

use aya::{EbpfLoader, programs::Program};
use dockops_common::names;
use dockops_integration::PinDir;

/// Loads one program; an error names its type when this test does not know how (so a new
/// program type cannot slip through unverified).
fn load(program: &mut Program) -> Result<(), String> {
    let result = match program {
        Program::SchedClassifier(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::TracePoint(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        // tp_btf, fentry and others need their target named: add them when the object has them.
        other => {
            return Err(format!(
                "{:?} programs are not loaded by this test yet: add them here",
                other.prog_type()
            ));
        }
    };
    result.map_err(|error| format!("{error}"))
}

#[test]
fn every_program_in_the_object_loads_and_verifies() {
    let pins = PinDir::create("verify");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .load(dockops::datapath::OBJECT)
        .expect("the object and its maps load");
    let mut loaded = Vec::new();
    let mut failures = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        match load(program) {
            Ok(()) => loaded.push(name.to_owned()),
            Err(error) => failures.push(format!("{name}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} programs failed to load:\n\n{}",
        failures.len(),
        failures.len() + loaded.len(),
        failures.join("\n\n")
    );
    loaded.sort();
    // The programs the datapath attaches by name are all in the object.
    let mut expected = vec![
        names::BLOCK_BIO_ACCT,
        names::BLOCK_RQ_DONE,
        names::BLOCK_RQ_START,
        names::CG_SKB_EGRESS,
        names::CG_SKB_INGRESS,
        names::SCHED_EXIT,
        names::SCHED_FORK,
        names::SCHED_SWITCH,
        names::SCHED_WAKEUP,
        names::SOCK_PACE,
        names::TC_EGRESS_ACCT,
        names::TC_INGRESS_ACCT,
    ];
    expected.sort_unstable();
    assert_eq!(loaded, expected);
}
