//! `cargo xtask bench shaping`: dockops caps against tc tbf and against no cap, one run.

use std::{
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{Containers, run_labelled};
use crate::{docker::Engine, sh};

const RATES: [(u64, &str); 3] = [
    (10_000_000, "10mbit"),
    (100_000_000, "100mbit"),
    (1_000_000_000, "1gbit"),
];

/// Goodput and queueing of one iperf3 run, with a ping across the same path.
struct Run {
    goodput: f64,
    first_second: f64,
    retransmits: f64,
    segments: f64,
    ping_avg: f64,
    ping_max: f64,
    ping_loss: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    /// The client container sends.
    Egress,
    /// The client container receives (`iperf3 -R`).
    Ingress,
}

struct Bench<'a> {
    engine: &'a Engine,
    server_ip: String,
    client: String,
    /// The client's host-side veth.
    veth: String,
    client_pid: String,
    seconds: u64,
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let guard = Containers { engine: &engine };
    guard.remove();
    let bench = Bench::start(&engine, seconds)?;
    let dockops = |args: &[&str]| {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host)
            .args(args)
            .stdout(Stdio::null());
        sh::run(&mut cmd)
    };

    let mut table = String::from(
        "| direction | cap | shaper | goodput / cap | first second / cap | retransmits / segments | ping avg / max under load | ping loss |\n|---|---|---|---|---|---|---|---|\n",
    );
    // Overhead: uncapped, without and with the dockops programs attached.
    dockops(&["reset"])?;
    let bare = bench.iperf(Direction::Egress, 1)?;
    dockops(&["stats", "--sample", "0"])?;
    let attached = bench.iperf(Direction::Egress, 1)?;
    for direction in [Direction::Egress, Direction::Ingress] {
        let name = if direction == Direction::Egress {
            "egress"
        } else {
            "ingress"
        };
        for (bits, rate) in RATES {
            dockops(&["limit", &bench.client, &format!("--{name}"), rate])?;
            row(
                &mut table,
                name,
                rate,
                "dockops",
                &bench.iperf(direction, 1)?,
                bits,
            );
            if bits == 100_000_000 {
                row(
                    &mut table,
                    name,
                    rate,
                    "dockops, 4 flows",
                    &bench.iperf(direction, 4)?,
                    bits,
                );
            }
            dockops(&["unlimit", &bench.client])?;
            bench.tbf(direction, Some(rate))?;
            let tbf = bench.iperf(direction, 1);
            bench.tbf(direction, None)?;
            row(
                &mut table,
                name,
                rate,
                "tc tbf (burst 256kb, latency 25ms)",
                &tbf?,
                bits,
            );
        }
    }
    let per_packet = bpf_run_time(&bench)?;
    drop(guard);
    // Leave no attachments, pins or caps behind.
    dockops(&["reset"])?;
    let _ = writeln!(
        table,
        "\nUncapped throughput, one flow: {:.0} Mbit/s without dockops, {:.0} Mbit/s with its programs attached ({:.3}×).\n\
         Run time of the tc programs from kernel BPF stats: {per_packet}.",
        bare.goodput / 1e6,
        attached.goodput / 1e6,
        attached.goodput / bare.goodput
    );
    println!("{table}");
    super::record("shaping", &table)
}

fn row(table: &mut String, direction: &str, rate: &str, shaper: &str, r: &Run, bits: u64) {
    #[expect(clippy::cast_precision_loss, reason = "ratios")]
    let cap = bits as f64;
    let _ = writeln!(
        table,
        "| {direction} | {rate} | {shaper} | {:.3} | {:.3} | {:.0} / {:.0} ({:.3} %) | {:.2} / {:.2} ms | {:.0} % |",
        r.goodput / cap,
        r.first_second / cap,
        r.retransmits,
        r.segments,
        100.0 * r.retransmits / r.segments.max(1.0),
        r.ping_avg,
        r.ping_max,
        r.ping_loss,
    );
}

impl<'a> Bench<'a> {
    /// Starts the iperf3 server and the client container (the caller's guard removes them).
    fn start(engine: &'a Engine, seconds: u64) -> anyhow::Result<Self> {
        let run = |name: &str, cmd: &[&str]| -> anyhow::Result<String> {
            sh::output(&mut run_labelled(engine, name, cmd))
                .map(|s| s.trim().to_owned())
                .context("docker run")
        };
        run("dockops-bench-srv", &["iperf3", "-s"])?;
        run("dockops-bench-cli", &["sleep", "86400"])?;
        let inspect = |fmt: &str, name: &str| {
            sh::output(engine.docker().args(["inspect", "-f", fmt, name]))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let iflink = sh::output(engine.docker().args([
            "exec",
            "dockops-bench-cli",
            "cat",
            "/sys/class/net/eth0/iflink",
        ]))
        .unwrap_or_default();
        Ok(Bench {
            engine,
            server_ip: inspect("{{.NetworkSettings.IPAddress}}", "dockops-bench-srv"),
            client: "dockops-bench-cli".into(),
            veth: veth_by_index(iflink.trim())?,
            client_pid: inspect("{{.State.Pid}}", "dockops-bench-cli"),
            seconds,
        })
    }
}

impl Bench<'_> {
    /// One iperf3 run (client container → server, or back with `-R`) with a ping across.
    fn iperf(&self, direction: Direction, flows: u32) -> anyhow::Result<Run> {
        let ping = {
            let mut cmd = self.engine.docker();
            let count = (self.seconds.saturating_sub(2) * 5).to_string();
            cmd.args([
                "exec",
                &self.client,
                "sh",
                "-c",
                &format!("sleep 1; ping -c {count} -i 0.2 {}", self.server_ip),
            ]);
            cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?
        };
        let mut cmd = self.engine.docker();
        cmd.args([
            "exec",
            &self.client,
            "iperf3",
            "-c",
            &self.server_ip,
            "-J",
            "-i",
            "1",
        ])
        .args(["-t", &self.seconds.to_string(), "-P", &flows.to_string()]);
        if direction == Direction::Ingress {
            cmd.arg("-R");
        }
        let out = cmd.output()?;
        let ping = String::from_utf8_lossy(&ping.wait_with_output()?.stdout).into_owned();
        let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
        let end = &v["end"];
        let (ping_avg, ping_max, ping_loss) = parse_ping(&ping);
        Ok(Run {
            goodput: end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("goodput")?,
            first_second: v["intervals"][0]["sum"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
            segments: end["sum_sent"]["bytes"].as_f64().unwrap_or(0.0) / 1448.0,
            ping_avg,
            ping_max,
            ping_loss,
        })
    }

    /// Puts (or, with `None`, removes) a tbf where the direction queues: the container's
    /// eth0 for egress, the host veth for ingress.
    fn tbf(&self, direction: Direction, rate: Option<&str>) -> anyhow::Result<()> {
        let mut cmd = if direction == Direction::Egress {
            let mut c = Command::new("nsenter");
            c.args(["-t", &self.client_pid, "-n", "tc", "qdisc"]);
            c
        } else {
            let mut c = Command::new("tc");
            c.arg("qdisc");
            c
        };
        let dev = if direction == Direction::Egress {
            "eth0"
        } else {
            self.veth.as_str()
        };
        match rate {
            Some(rate) => cmd.args([
                "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency",
                "25ms",
            ]),
            None => cmd.args(["del", "dev", dev, "root"]),
        };
        sh::run(&mut cmd)
    }
}

/// busybox ping's summary: "x% packet loss" and "round-trip min/avg/max = a/b/c ms".
fn parse_ping(text: &str) -> (f64, f64, f64) {
    let loss = text
        .split_whitespace()
        .find(|w| w.ends_with('%'))
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .unwrap_or(f64::NAN);
    let times: Vec<f64> = text
        .lines()
        .find_map(|l| l.split_once(" = "))
        .map(|(_, t)| {
            t.trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (
        times.get(1).copied().unwrap_or(f64::NAN),
        times.get(2).copied().unwrap_or(f64::NAN),
        loss,
    )
}

fn veth_by_index(ifindex: &str) -> anyhow::Result<String> {
    for entry in fs::read_dir("/sys/class/net")? {
        let path = entry?.path();
        if fs::read_to_string(path.join("ifindex")).is_ok_and(|s| s.trim() == ifindex) {
            return Ok(path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned());
        }
    }
    bail!("no host interface with ifindex {ifindex}")
}

/// Average run time per packet of the tc programs over one capped 100 Mbit/s run, from
/// `kernel.bpf_stats_enabled` (switched on for the run only).
fn bpf_run_time(bench: &Bench<'_>) -> anyhow::Result<String> {
    let sysctl = |v: &str| {
        sh::run(Command::new("sysctl").args(["-q", &format!("kernel.bpf_stats_enabled={v}")]))
    };
    let stats = || -> anyhow::Result<(f64, f64)> {
        let out = sh::output(Command::new("bpftool").args(["--json", "prog", "show"]))
            .context("bpftool")?;
        let v: Value = serde_json::from_str(&out)?;
        let mut total = (0.0, 0.0);
        for p in v.as_array().into_iter().flatten() {
            if matches!(
                p["name"].as_str(),
                Some("tc_ingress_acct" | "tc_egress_acct")
            ) {
                total.0 += p["run_time_ns"].as_f64().unwrap_or(0.0);
                total.1 += p["run_cnt"].as_f64().unwrap_or(0.0);
            }
        }
        Ok(total)
    };
    sysctl("1")?;
    let before = stats()?;
    let mut cmd = Command::new(crate::binary());
    cmd.env("DOCKER_HOST", &bench.engine.host)
        .args(["limit", &bench.client, "--egress", "100mbit"])
        .stdout(Stdio::null());
    sh::run(&mut cmd)?;
    let run = bench.iperf(Direction::Egress, 1);
    let after = stats();
    sysctl("0")?;
    run?;
    let after = after?;
    let (ns, count) = (after.0 - before.0, after.1 - before.1);
    Ok(format!(
        "{:.0} ns per packet ({count:.0} runs, egress capped at 100 Mbit/s)",
        ns / count.max(1.0)
    ))
}
