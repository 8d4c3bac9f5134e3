//! `dockops-bpf probe` against what the kernel does when asked directly.

use std::fs;

use dockops_integration::{dockops_ok, fq_works};
use serde_json::Value;

/// The filesystem type mounted at `target`, from the mount table.
fn fstype(target: &str) -> Option<String> {
    fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (at == target).then(|| kind.to_owned())
        })
}

#[test]
fn probe_reports_what_the_kernel_does() {
    let report: Value =
        serde_json::from_str(&dockops_ok(&["probe", "--format", "json"])).expect("probe JSON");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(report["kernel"], release.trim());

    let v2_only = fstype("/sys/fs/cgroup").as_deref() == Some("cgroup2");
    assert_eq!(report["cgroup"], if v2_only { "v2" } else { "v1" });
    let root = report["cgroup_v2_root"].as_str().expect("a v2 hierarchy");
    assert_eq!(fstype(root).as_deref(), Some("cgroup2"), "{root}");
    let controllers = fs::read_to_string(format!("{root}/cgroup.controllers")).unwrap();
    let listed: Vec<&str> = report["cgroup_v2_controllers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, controllers.split_whitespace().collect::<Vec<_>>());

    // Without the kernel's module lists (this host has no /lib/modules) fq is `unknown`:
    // `limit --edt` then tries, and a kernel without it refuses (the EDT test checks that).
    let fq = report["fq"].as_str().unwrap();
    if !fq.starts_with("unknown") {
        assert_eq!(fq != "absent", fq_works(), "probe says fq is {fq}");
    }

    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap(), numbers.next().unwrap());
    let tcx = version >= (6, 6);
    assert_eq!(report["tc_attach"], if tcx { "tcx" } else { "netlink" });

    // Every helper dockops needs was found (the programs test loads them all).
    for helper in report["helpers"].as_array().unwrap() {
        assert_eq!(helper["present"], true, "{helper}");
    }
    let tracepoints = report["tracepoints"].as_array().unwrap();
    assert!(
        tracepoints
            .iter()
            .any(|t| t[0] == "block:block_bio_queue" && t[1] == true),
        "{tracepoints:?}"
    );
    assert_eq!(
        report["psi"],
        fs::metadata("/proc/pressure/cpu").is_ok(),
        "psi"
    );
}
