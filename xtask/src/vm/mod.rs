//! `cargo xtask vm-test`: the integration tests that matter for portability, run in a QEMU
//! guest with Debian's 6.1 kernel and cgroup v2 only (no tcx: the netlink attach is the one
//! exercised; `sch_fq` present), where most users run dockops.

mod hang;
mod image;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sh;

#[derive(clap::Args)]
pub struct Args {
    /// Only the guest's tests whose names contain this.
    pub filter: Option<String>,
    /// Give up on the guest after this many minutes.
    #[arg(long, default_value_t = TIMEOUT_MINUTES)]
    pub timeout_minutes: u64,
}

pub const TIMEOUT_MINUTES: u64 = 30;

/// The tests the guest runs: (test binary, test names; empty: all of them). What differs
/// on a cgroup v2-only host without tcx: loading and the netlink attach, the v2 readers
/// (cpu.stat, memory.current, io.stat), pacing from the v2 root and the tc bucket, EDT
/// caps with fq, the v2 limit files (cpu.max, memory.max, io.max, pids.max), and cleaning
/// up.
const SUITE: &[(&str, &[&str])] = &[
    ("programs", &[]),
    ("prog_test_run", &[]),
    ("probe", &[]),
    (
        "monitoring",
        &[
            "direct_writes_are_counted_as_block_io",
            "memory_usage_agrees_with_the_docker_stats_api",
            "cpu_time_of_a_two_second_spin",
        ],
    ),
    ("traffic", &["download_is_counted_in_the_right_direction"]),
    // The cgroup_skb program writes the handshakes' priority.
    ("http", &["handshakes_wait_with_the_data"]),
    (
        "caps",
        &[
            "egress_cap_holds_for_one_and_four_flows_and_unlimit_lifts_it",
            "ingress_cap_paces_the_sender_even_a_server_on_an_ipv6_socket",
            "udp_flood_is_held_by_the_hard_cap_and_its_drops_counted",
            "edt_mode_holds_ingress_with_fq_where_the_kernel_has_it",
        ],
    ),
    (
        "limits",
        &[
            "half_a_cpu_holds_and_survives_a_restart",
            "memory_limit_kills_what_goes_over_it",
            "write_bandwidth_per_device_bites_and_comes_back_after_a_restart",
            "write_iops_per_device_bites",
            "pids_limit_stops_a_fork_loop",
            "show_reads_back_what_was_set_and_unlimit_all_takes_it_away",
        ],
    ),
    (
        "lifecycle",
        &[
            "reset_leaves_nothing_behind",
            "netlink_mode_attaches_counts_and_cleans_up",
        ],
    ),
    (
        "events",
        &[
            "block_latency_counts_each_direct_write_and_nested_cgroups",
            "socket_bytes_are_counted_for_a_host_network_container",
        ],
    ),
    (
        "agent",
        &[
            "labels_and_the_policy_file_set_every_limit_cli_over_label_over_file",
            "caps_hold_while_the_agent_is_killed_and_its_restart_adopts_them",
            "after_a_reboot_the_agent_puts_every_limit_back",
            "a_group_cap_holds_two_containers_together_and_goes_with_its_rule",
        ],
    ),
];

/// Where the guest's share (binaries in, results out) and its console log go.
fn work() -> PathBuf {
    crate::workspace().join("target/vm")
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let guest = image::ensure()?;
    crate::build()?;
    let tests = build_tests()?;
    let share = work().join("share");
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(share.join("tests"))?;
    fs::copy(crate::binary(), share.join("dockops-bpf"))?;
    let mut script = String::from(RUN_HEADER);
    for &(binary, names) in SUITE {
        let path = tests
            .iter()
            .find(|(name, _)| name == binary)
            .map(|(_, path)| path)
            .with_context(|| format!("cargo built no test binary named {binary}"))?;
        let selected: Vec<&str> = match (&args.filter, names.is_empty()) {
            (Some(f), true) => vec![f.as_str()],
            (Some(f), false) => names
                .iter()
                .copied()
                .filter(|n| n.contains(f.as_str()))
                .collect(),
            (None, _) => names.to_vec(),
        };
        if args.filter.is_some() && selected.is_empty() {
            continue;
        }
        fs::copy(path, share.join("tests").join(binary))?;
        writeln!(script, "run {binary} {}", selected.join(" "))?;
    }
    script.push_str(RUN_FOOTER);
    image::install_script(&share.join("run.sh"), &script)?;
    crate::docker::busybox_tar(&share.join("busybox.tar"))?;
    let prepared = started.elapsed();
    let status = boot(
        &guest,
        &share,
        Duration::from_secs(args.timeout_minutes * 60),
    )?;
    eprintln!(
        "vm: guest tier took {:.0} s ({:.0} s preparing, {:.0} s in the guest)",
        started.elapsed().as_secs_f64(),
        prepared.as_secs_f64(),
        started.elapsed().saturating_sub(prepared).as_secs_f64()
    );
    if status != 0 {
        bail!(
            "tests in the guest failed (exit {status}; its dockerd log: {})",
            share.join("dockerd.log").display()
        );
    }
    Ok(())
}

/// The guest side: import the test image, run each selected test binary, clean up.
const RUN_HEADER: &str = r#"#!/bin/sh
# DOCKOPS_TEST_EMULATED: the guest runs under software emulation, where tests leave out
# load that only makes a point on real hardware.
export DOCKER_HOST=unix:///var/run/docker.sock DOCKOPS_BIN=/share/dockops-bpf \
    DOCKOPS_TEST_IMAGE=dockops-test/busybox:latest RUST_BACKTRACE=1 DOCKOPS_TEST_EMULATED=1
# A test binary that hangs is killed with what shows why, and the others still run (the
# longest takes about 4 minutes here).
BINARY_TIMEOUT=600
docker import --change "LABEL dockops.image.version=guest" /share/busybox.tar \
    "$DOCKOPS_TEST_IMAGE" > /dev/null || exit 1
/share/dockops-bpf probe
failed=""
run() {
    binary=$1; shift
    echo "guest: test binary $binary $*"
    # Where the kernel's code is (modules loaded so far included), for a hang's report:
    # the guest runs without KASLR.
    cat /proc/kallsyms > /share/kallsyms
    timeout -k 10 "$BINARY_TIMEOUT" /share/tests/$binary --test-threads=1 "$@"
    status=$?
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        echo "guest: $binary did not finish within $BINARY_TIMEOUT s; blocked tasks, the kernel's last lines, dockerd's:"
        echo w > /proc/sysrq-trigger
        dmesg | tail -n 100
        tail -n 40 /var/log/dockerd.log
    fi
    [ $status -eq 0 ] || failed="$failed $binary"
}
"#;
const RUN_FOOTER: &str = r#"/share/dockops-bpf reset --all || failed="$failed reset"
if [ -n "$failed" ]; then echo "guest: FAILED:$failed"; exit 1; fi
echo "guest: every test passed"
"#;

/// Builds the integration test binaries; returns (target name, executable).
fn build_tests() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = sh::cargo()
        .args([
            "test",
            "--no-run",
            "--package",
            "dockops-integration",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            Some((name, PathBuf::from(m["executable"].as_str()?)))
        })
        .collect())
}

/// Boots the guest with `share` as its 9p share, the console on stdout (and in
/// target/vm/console.log); returns the exit status run.sh left in the share.
fn boot(guest: &image::Guest, share: &Path, timeout: Duration) -> anyhow::Result<i32> {
    let console = work().join("console.log");
    let monitor = work().join("monitor.sock");
    let mut cmd = guest.qemu();
    cmd.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "4G",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-chardev")
    .arg(format!("stdio,id=console,logfile={}", console.display()))
    .args(["-serial", "chardev:console", "-kernel"])
    .arg(guest.kernel())
    .arg("-initrd")
    .arg(guest.initrd())
    // A soft lockup prints the stuck CPU's stack (warnings reach the console) and the guest
    // goes on: under emulation a vCPU the host starves trips the watchdog with nothing
    // wrong in the guest (twice in CI: in runc's cgroup mkdir, and beside two dd loops),
    // so it must not panic. A guest really stuck runs into the timeout, where its CPUs are
    // read through the monitor; without address randomization those addresses are looked
    // up in the kallsyms the guest copies out before each test binary.
    .args(["-append", "console=ttyS0 quiet loglevel=5 panic=-1 nokaslr"])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on",
        guest.disk().display()
    ))
    .arg("-monitor")
    .arg(format!("unix:{},server=on,wait=off", monitor.display()))
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=share,security_model=none,id=share",
        share.display()
    ))
    .stdin(Stdio::null());
    eprintln!("vm: booting {} (cgroup v2 only, TCG)", image::KERNEL);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", sh::show(&cmd)))?;
    let deadline = Instant::now() + timeout;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // A guest hung with interrupts off prints nothing: where its CPUs are says why.
            match hang::where_cpus_are(&monitor, &share.join("kallsyms")) {
                Ok(report) => eprintln!("vm: the guest's CPUs, sampled:\n{report}"),
                Err(e) => eprintln!("vm: could not sample the guest's CPUs: {e:#}"),
            }
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest did not finish within {} minutes (console: {})",
                timeout.as_secs() / 60,
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let status = fs::read_to_string(share.join("status")).ok();
    if let Some(Ok(code)) = status.as_deref().map(str::trim).map(str::parse::<i32>) {
        return Ok(code);
    }
    let log = fs::read_to_string(&console).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(80).collect();
    bail!(
        "the guest stopped ({exit}) without reporting a result: it did not boot or crashed. \
         Last console lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}
