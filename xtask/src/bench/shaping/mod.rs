//! `cargo xtask bench shaping`: dockops caps against tc tbf and against no cap, one run.

mod cost;
mod http;
mod pair;

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use self::pair::{Direction, Pair, Run, Tcp};
use anyhow::Context as _;

use super::Containers;
use crate::{docker::Engine, sh};

const RATES: [(u64, &str); 3] = [
    (10_000_000, "10mbit"),
    (100_000_000, "100mbit"),
    (1_000_000_000, "1gbit"),
];
const TBF: &str = "tc tbf (burst 256kb, latency 25ms)";
/// Bare and attached runs for the overhead, alternated.
const OVERHEAD_ROUNDS: usize = 3;

/// A sysctl (its file under `/proc/sys`) set while this lives; the value it had comes back
/// on drop.
struct Sysctl {
    path: &'static str,
    before: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
        std::fs::write(path, value).with_context(|| path.to_owned())?;
        Ok(Self {
            path,
            before: before.trim().to_owned(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.before);
    }
}

/// Which rows to measure.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// iperf3 flows, senders beyond pacing, flows joining, overhead and run time.
    Flows,
    /// HTTP: nginx and wrk, objects of 4 KiB to 1 MiB, 8 to 256 connections.
    Http,
    /// HTTP with no cap, 4 KiB objects: what wrk and nginx alone move on this host.
    Ceiling,
}

pub fn run(seconds: u64, http_seconds: u64, parts: &[Part]) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let guard = Containers { engine: &engine };
    guard.remove();
    let dockops = |args: &[&str]| {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host)
            .args(args)
            .stdout(Stdio::null());
        sh::run(&mut cmd)
    };
    if parts.contains(&Part::Flows) {
        flows(&engine, seconds, &dockops)?;
        guard.remove();
    }
    if parts.contains(&Part::Http) {
        let table = http::run(&engine, http_seconds, &dockops)?;
        dockops(&["reset"])?;
        println!("{table}");
        super::record("shaping-http", &table)?;
        guard.remove();
    }
    if parts.contains(&Part::Ceiling) {
        let table = http::ceiling(&engine, http_seconds)?;
        println!("{table}");
        super::record("shaping-ceiling", &table)?;
    }
    Ok(())
}

fn flows(
    engine: &Engine,
    seconds: u64,
    dockops: &impl Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let pair = Pair::start(engine, seconds)?;

    let overhead = overhead(&pair, dockops)?;
    let mut caps = String::from(
        "| direction | cap | shaper | goodput / cap | first second / cap | retransmits / segments | ping avg / max under load | ping loss |\n|---|---|---|---|---|---|---|---|\n",
    );
    for direction in [Direction::Egress, Direction::Ingress] {
        let flag = format!("--{}", direction.name());
        for (bits, rate) in RATES {
            dockops(&["limit", &pair.client, &flag, rate])?;
            let mut dockops_row = |shaper, flows| -> anyhow::Result<()> {
                let r = pair.iperf(direction, flows, Tcp::Default)?;
                row(&mut caps, direction, rate, shaper, &r, bits);
                Ok(())
            };
            dockops_row("dockops", 1)?;
            if bits == 100_000_000 {
                dockops_row("dockops, 4 flows", 4)?;
            }
            dockops(&["unlimit", &pair.client])?;
            pair.tbf(direction, Some(rate))?;
            let tbf = pair.iperf(direction, 1, Tcp::Default);
            pair.tbf(direction, None)?;
            row(&mut caps, direction, rate, TBF, &tbf?, bits);
        }
    }

    // Ingress from a sender the pacing cannot reach: the tc bucket alone.
    let mut policed = caps.lines().take(2).collect::<Vec<_>>().join("\n") + "\n";
    for (bits, rate) in RATES {
        dockops(&["limit", &pair.client, "--ingress", rate, "--no-pacing"])?;
        for (shaper, flows, tcp) in [
            ("dockops tc only, cubic + ECN", 1, Tcp::CubicEcn),
            ("dockops tc only, cubic + ECN, 4 flows", 4, Tcp::CubicEcn),
            ("dockops tc only, cubic", 1, Tcp::Cubic),
        ] {
            if flows == 1 || bits == 100_000_000 {
                let r = pair.iperf(Direction::Ingress, flows, tcp)?;
                row(&mut policed, Direction::Ingress, rate, shaper, &r, bits);
            }
        }
        dockops(&[
            "limit",
            &pair.client,
            "--ingress",
            rate,
            "--no-pacing",
            "--queue",
        ])?;
        let r = pair.iperf(Direction::Ingress, 1, Tcp::Cubic)?;
        row(
            &mut policed,
            Direction::Ingress,
            rate,
            "dockops queue (HTB), cubic",
            &r,
            bits,
        );
        dockops(&["unlimit", &pair.client])?;
    }

    let join = joining(&pair, dockops)?;
    let tc_cost = {
        dockops(&["limit", &pair.client, "--egress", "100mbit"])?;
        let before = wire_packets(engine, &pair.client)?;
        let (run, capped) = cost::measure(|| pair.iperf(Direction::Egress, 1, Tcp::Default))?;
        run?;
        (capped, wire_packets(engine, &pair.client)? - before)
    };
    let isolated = cost::isolated()?;
    // Leave no attachments, pins or caps behind.
    dockops(&["reset"])?;

    let mut table = caps;
    let _ = write!(
        table,
        "\n**Senders the pacing cannot reach** (`limit --ingress RATE --no-pacing`, as for a sender \
         beyond the host; 7–20 µs RTT here; the queue rows add `--queue`):\n\n{policed}\n**Flows joining mid-run** (one flow, \
         three more on a second server after 3 s; a fair share for the three is 0.75):\n\n{join}\n\
         **Overhead, uncapped, one flow** ({OVERHEAD_ROUNDS} runs each, alternated, medians): {overhead}\n\n\
         **Run time of the tc programs.** Under traffic, from kernel BPF stats (they add two clock \
         reads per run): {:.0} ns per run over {:.0} runs, egress capped at 100 Mbit/s; a run \
         handles a whole GSO aggregate, so that is {:.0} ns per wire packet ({:.0} packets). \
         In isolation, from `BPF_PROG_TEST_RUN` on a \
         1514-byte frame (`cargo run -p dockops-integration --example tc_cost`):\n\n{isolated}",
        tc_cost.0.per_run(),
        tc_cost.0.runs,
        tc_cost.0.ns / tc_cost.1.max(1.0),
        tc_cost.1,
    );
    println!("{table}");
    super::record("shaping", &table)
}

/// Uncapped throughput without and with the programs attached, alternated; then the run
/// time per program run of one more attached run (the stats slow the programs down, so they
/// stay off for the throughput runs).
fn overhead(
    pair: &Pair<'_>,
    dockops: &impl Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let (mut bare, mut attached) = (Vec::new(), Vec::new());
    for _ in 0..OVERHEAD_ROUNDS {
        dockops(&["reset"])?;
        bare.push(pair.iperf(Direction::Egress, 1, Tcp::Default)?.goodput);
        dockops(&["stats", "--sample", "0"])?;
        attached.push(pair.iperf(Direction::Egress, 1, Tcp::Default)?.goodput);
    }
    let (run, spent) = cost::measure(|| pair.iperf(Direction::Egress, 1, Tcp::Default))?;
    run?;
    let (bare, attached) = (median(&mut bare), median(&mut attached));
    Ok(format!(
        "{:.0} Mbit/s without dockops, {:.0} Mbit/s with its programs attached ({:.3}×). \
         Under this traffic the programs took {:.0} ns per run over {:.0} runs.",
        bare / 1e6,
        attached / 1e6,
        attached / bare,
        spent.per_run(),
        spent.runs
    ))
}

/// Three flows joining one, at 100 Mbit/s, dockops and tbf, both directions.
fn joining(
    pair: &Pair<'_>,
    dockops: &impl Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    const JOIN_AFTER: u64 = 3;
    const JOINED_AT: usize = 3;
    let (bits, rate) = RATES[1];
    let mut table = String::from(
        "| direction | cap | shaper | goodput / cap, all flows | joiners' share while joined | retransmits / segments | ping avg / max under load |\n|---|---|---|---|---|---|---|\n",
    );
    for direction in [Direction::Egress, Direction::Ingress] {
        for shaper in ["dockops", TBF] {
            if shaper == TBF {
                pair.tbf(direction, Some(rate))?;
            } else {
                dockops(&[
                    "limit",
                    &pair.client,
                    &format!("--{}", direction.name()),
                    rate,
                ])?;
            }
            let result = pair.join(direction, JOIN_AFTER);
            if shaper == TBF {
                pair.tbf(direction, None)?;
            } else {
                dockops(&["unlimit", &pair.client])?;
            }
            let (first, joined) = result?;
            #[expect(clippy::cast_precision_loss, reason = "seconds")]
            let (all, overlap) = (pair.seconds as f64, (pair.seconds - JOIN_AFTER) as f64);
            let joined_bits = joined.goodput * overlap;
            let first_overlap: f64 = first.intervals.iter().skip(JOINED_AT).sum();
            #[expect(clippy::cast_precision_loss, reason = "ratios")]
            let cap = bits as f64;
            let _ = writeln!(
                table,
                "| {} | {rate} | {shaper} | {:.3} | {:.2} | {:.0} / {:.0} | {:.2} / {:.2} ms |",
                direction.name(),
                (first.goodput * all + joined_bits) / all / cap,
                joined_bits / (joined_bits + first_overlap).max(1.0),
                first.retransmits + joined.retransmits,
                first.segments + joined.segments,
                first.ping_avg,
                first.ping_max,
            );
        }
    }
    Ok(table)
}

/// Wire packets the client sent and received since dockops attached, from `stats`.
fn wire_packets(engine: &Engine, container: &str) -> anyhow::Result<f64> {
    let out = sh::output(
        Command::new(crate::binary())
            .env("DOCKER_HOST", &engine.host)
            .args(["stats", "--sample", "0", "--format", "json", container]),
    )
    .context("dockops-bpf stats")?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    let count = |field: &str| v["network"][field].as_f64().unwrap_or(0.0);
    Ok(count("rx_packets_total") + count("tx_packets_total"))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn row(table: &mut String, direction: Direction, rate: &str, shaper: &str, r: &Run, bits: u64) {
    #[expect(clippy::cast_precision_loss, reason = "ratios")]
    let cap = bits as f64;
    let _ = writeln!(
        table,
        "| {} | {rate} | {shaper} | {:.3} | {:.3} | {:.0} / {:.0} ({:.3} %) | {:.2} / {:.2} ms | {:.0} % |",
        direction.name(),
        r.goodput / cap,
        r.intervals.first().copied().unwrap_or(f64::NAN) / cap,
        r.retransmits,
        r.segments,
        100.0 * r.retransmits / r.segments.max(1.0),
        r.ping_avg,
        r.ping_max,
        r.ping_loss,
    );
}
