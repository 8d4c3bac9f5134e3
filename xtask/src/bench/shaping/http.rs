//! The HTTP rows of `bench shaping`: nginx in one container, wrk on the host (egress: the
//! server's container is capped) or in another container (ingress: the client's container
//! is capped), objects of 4 KiB to 1 MiB, 8 to 256 connections, with and without
//! keep-alive; dockops and tc tbf side by side in one run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{RATES, TBF, pair::Direction};
use crate::{bench::run_labelled, docker::Engine, sh};

const SIZES_KIB: [u64; 4] = [4, 64, 256, 1024];
const CONNECTIONS: [u32; 3] = [8, 32, 256];
const WEB: &str = "dockops-bench-web";
const CLIENT: &str = "dockops-bench-wrk";

/// One wrk run, with the sender's TCP counters and a ping across the capped path.
#[derive(Clone, Copy)]
struct Run {
    goodput_bits: f64,
    /// What the capped container's eth0 sent (egress) or received (ingress), bit/s, from
    /// its second second to its last but one: headers, handshakes and ACKs included.
    wire_bits: f64,
    /// Of all the sender's segments; NaN when it sent none.
    retransmitted: f64,
    /// Request latency, ms; NaN when no request completed.
    p50: f64,
    p99: f64,
    ping_avg: f64,
    ping_max: f64,
    ping_loss: f64,
}

struct Bench<'a> {
    engine: &'a Engine,
    _reuse: super::Sysctl,
    web_ip: String,
    web_pid: String,
    client_pid: String,
    client_veth: String,
    seconds: u64,
}

/// Runs the matrix; returns the table. The caller's guard removes the containers.
pub fn run(
    engine: &Engine,
    seconds: u64,
    dockops: &impl Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let bench = Bench::start(engine, seconds)?;
    let mut results = BTreeMap::new();
    for direction in [Direction::Egress, Direction::Ingress] {
        let capped = match direction {
            Direction::Egress => WEB,
            Direction::Ingress => CLIENT,
        };
        for (bits, rate) in RATES {
            for shaper in ["dockops", TBF] {
                if shaper == TBF {
                    bench.tbf(direction, Some(rate))?;
                } else {
                    dockops(&["limit", capped, &format!("--{}", direction.name()), rate])?;
                }
                for size in SIZES_KIB {
                    for connections in CONNECTIONS {
                        for keep_alive in [true, false] {
                            let key = (direction.name(), bits, size, connections, !keep_alive);
                            let run = bench.wrk(direction, size, connections, keep_alive);
                            results.insert((key, shaper == TBF), run);
                        }
                    }
                }
                if shaper == TBF {
                    bench.tbf(direction, None)?;
                } else {
                    dockops(&["unlimit", capped])?;
                }
            }
        }
    }
    Ok(table(&results))
}

/// Runs of each ceiling row.
const CEILING_RUNS: usize = 3;

/// The 4 KiB rows with no cap at all: what wrk and nginx move on this host, the ceiling of
/// the 1 Gbit/s 4 KiB rows (a cap above it cannot bind). Returns the table; the caller's
/// guard removes the containers.
pub fn ceiling(engine: &Engine, seconds: u64) -> anyhow::Result<String> {
    let bench = Bench::start(engine, seconds)?;
    let mut table = String::from(
        "| direction | object | connections | keep-alive | goodput, median of 3 | least – most |\n|---|---|---|---|---|---|\n",
    );
    for direction in [Direction::Egress, Direction::Ingress] {
        for connections in CONNECTIONS {
            for keep_alive in [true, false] {
                let mut gbits = Vec::with_capacity(CEILING_RUNS);
                for _ in 0..CEILING_RUNS {
                    let run = bench.wrk(direction, 4, connections, keep_alive)?;
                    gbits.push(run.goodput_bits / 1e9);
                }
                gbits.sort_by(f64::total_cmp);
                let _ = writeln!(
                    table,
                    "| {} | 4 KiB | {connections} | {} | {:.3} Gbit/s | {:.3} – {:.3} |",
                    direction.name(),
                    if keep_alive { "yes" } else { "no" },
                    gbits[CEILING_RUNS / 2],
                    gbits[0],
                    gbits[CEILING_RUNS - 1],
                );
            }
        }
    }
    Ok(table)
}

type Key = (&'static str, u64, u64, u32, bool);

fn table(results: &BTreeMap<(Key, bool), anyhow::Result<Run>>) -> String {
    let mut table = String::from(
        "| direction | cap | object | connections | keep-alive | goodput / cap | wire / cap | retransmitted | p50 request | p99 request | ping avg / max, loss |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let cell = |key: &Key, tbf: bool| results.get(&(*key, tbf)).and_then(|r| r.as_ref().ok());
    for (key, _) in results.keys().filter(|(_, tbf)| !tbf) {
        let (direction, bits, size, connections, close) = *key;
        #[expect(clippy::cast_precision_loss, reason = "ratios")]
        let cap = bits as f64;
        let both = |f: &dyn Fn(&Run) -> String| {
            let show = |r: Option<&Run>| r.map_or_else(|| "failed".to_owned(), f);
            format!("{} / {}", show(cell(key, false)), show(cell(key, true)))
        };
        let _ = writeln!(
            table,
            "| {direction} | {} | {} | {connections} | {} | {} | {} | {} | {} | {} | {} |",
            rate_name(bits),
            size_name(size),
            if close { "no" } else { "yes" },
            both(&|r| format!("{:.3}", r.goodput_bits / cap)),
            both(&|r| format!("{:.3}", r.wire_bits / cap)),
            both(&|r| format!("{:.2} %", 100.0 * r.retransmitted)),
            both(&|r| ms(r.p50)),
            both(&|r| ms(r.p99)),
            both(&|r| format!(
                "{:.2} / {:.2} ms, {:.0} %",
                r.ping_avg, r.ping_max, r.ping_loss
            )),
        );
    }
    table
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "none done".to_owned()
    } else if value >= 1000.0 {
        format!("{:.2} s", value / 1000.0)
    } else {
        format!("{value:.1} ms")
    }
}

fn rate_name(bits: u64) -> &'static str {
    RATES
        .iter()
        .find(|(b, _)| *b == bits)
        .map_or("?", |(_, n)| n)
}

fn size_name(kib: u64) -> String {
    if kib >= 1024 {
        format!("{} MiB", kib / 1024)
    } else {
        format!("{kib} KiB")
    }
}

impl<'a> Bench<'a> {
    fn start(engine: &'a Engine, seconds: u64) -> anyhow::Result<Self> {
        let objects: Vec<String> = SIZES_KIB
            .iter()
            .map(|k| format!("head -c {} /dev/zero > /www/{k}", k << 10))
            .collect();
        let script = format!("mkdir -p /www && {} && exec nginx", objects.join(" && "));
        let reuse = super::Sysctl::set("/proc/sys/net/ipv4/tcp_tw_reuse", "1")?;
        let runs: [(&str, &[&str], &str); 2] = [
            (WEB, &[], script.as_str()),
            (CLIENT, &["--sysctl", TW_REUSE], "exec sleep 86400"),
        ];
        for (name, options, cmd) in runs {
            sh::output(&mut run_labelled(engine, name, options, &["sh", "-c", cmd]))
                .context("docker run")?;
        }
        let inspect = |fmt: &str, name: &str| {
            sh::output(engine.docker().args(["inspect", "-f", fmt, name]))
                .map(|s| s.trim().to_owned())
                .with_context(|| format!("docker inspect {name}"))
        };
        let iflink =
            sh::output(
                engine
                    .docker()
                    .args(["exec", CLIENT, "cat", "/sys/class/net/eth0/iflink"]),
            )
            .context("the client's iflink")?;
        let bench = Bench {
            engine,
            _reuse: reuse,
            web_ip: inspect("{{.NetworkSettings.IPAddress}}", WEB)?,
            web_pid: inspect("{{.State.Pid}}", WEB)?,
            client_pid: inspect("{{.State.Pid}}", CLIENT)?,
            client_veth: super::pair::veth_by_index(iflink.trim())?,
            seconds,
        };
        let url = format!("http://{}:80/4", bench.web_ip);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh::ok(Command::new("curl").args(["-sf", "-o", "/dev/null", &url])) {
            anyhow::ensure!(Instant::now() < deadline, "nginx in {WEB} does not answer");
            thread::sleep(Duration::from_millis(100));
        }
        Ok(bench)
    }

    /// One wrk run: from the host for egress (the server's container is capped), from the
    /// client container for ingress.
    fn wrk(
        &self,
        direction: Direction,
        size_kib: u64,
        connections: u32,
        keep_alive: bool,
    ) -> anyhow::Result<Run> {
        self.drain();
        let mut cmd = match direction {
            Direction::Egress => Command::new("wrk"),
            Direction::Ingress => {
                let mut c = self.engine.docker();
                c.args(["exec", CLIENT, "wrk"]);
                c
            }
        };
        cmd.args(["-t2", "--latency", "--timeout", "30s"])
            .args(["-c", &connections.to_string()])
            .args(["-d", &format!("{}s", self.seconds)]);
        if !keep_alive {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{}:80/{size_kib}", self.web_ip));
        let ping = self.ping()?;
        let before = segments(&self.web_pid)?;
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("wrk")?;
        // The steady state only: not the first second's handshakes, nor the last's backlog.
        thread::sleep(Duration::from_secs(1));
        let (wire_before, started) = (self.wire(direction)?, Instant::now());
        thread::sleep(Duration::from_secs(self.seconds.saturating_sub(2).max(1)));
        let wire = self.wire(direction)? - wire_before;
        let wire_seconds = started.elapsed().as_secs_f64();
        let out = child.wait_with_output().context("wrk")?;
        let after = segments(&self.web_pid)?;
        let ping = String::from_utf8_lossy(&ping.wait_with_output()?.stdout).into_owned();
        let text = String::from_utf8_lossy(&out.stdout);
        let (bytes, seconds) = summary(&text).with_context(|| format!("wrk printed: {text}"))?;
        let (ping_avg, ping_max, ping_loss) = super::pair::parse_ping(&ping);
        #[expect(clippy::cast_precision_loss, reason = "ratios")]
        Ok(Run {
            goodput_bits: bytes * 8.0 / seconds,
            wire_bits: wire as f64 * 8.0 / wire_seconds,
            retransmitted: (after.1 - before.1) as f64 / (after.0 - before.0) as f64,
            p50: latency(&text, "50%"),
            p99: latency(&text, "99%"),
            ping_avg,
            ping_max,
            ping_loss,
        })
    }

    /// Bytes the capped container's eth0 has sent (egress) or received (ingress), Ethernet
    /// headers included, as `/proc/PID/net/dev` counts them.
    fn wire(&self, direction: Direction) -> anyhow::Result<u64> {
        let (pid, column) = match direction {
            Direction::Egress => (&self.web_pid, 8),
            Direction::Ingress => (&self.client_pid, 0),
        };
        let dev = fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
        let line = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .context("no eth0 in /proc/PID/net/dev")?;
        let value = line
            .split_whitespace()
            .nth(column)
            .context("eth0 counters")?;
        Ok(value.parse()?)
    }

    /// Waits (up to 15 s) until the last run's connections are gone from the server (all
    /// listening or in `TIME_WAIT`) and the queues of both capped paths are empty, so that
    /// its leftovers do not share the next run's cap: 256 connections leave up to 4 MiB in
    /// a 10 Mbit/s backlog when wrk stops, 3 s of the next run's cap.
    fn drain(&self) {
        let busy = |l: &str| !matches!(l.split_whitespace().nth(3), Some("0A" | "06"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline
            && (fs::read_to_string(format!("/proc/{}/net/tcp", self.web_pid))
                .is_ok_and(|t| t.lines().skip(1).any(busy))
                || self.queued() > 0)
        {
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Bytes waiting in the qdiscs of the server's eth0 (egress) and the client's host veth
    /// (ingress); 0 if `tc` fails.
    fn queued(&self) -> u64 {
        let mut inside = Command::new("nsenter");
        inside.args(["-t", &self.web_pid, "-n", "tc", "-s", "-j", "qdisc", "show"]);
        inside.args(["dev", "eth0"]);
        let mut host = Command::new("tc");
        host.args(["-s", "-j", "qdisc", "show", "dev", &self.client_veth]);
        [inside, host]
            .iter_mut()
            .filter_map(sh::output)
            .filter_map(|json| serde_json::from_str::<Vec<serde_json::Value>>(&json).ok())
            .flatten()
            .filter_map(|q| q["backlog"].as_u64())
            .sum()
    }

    /// Pings the server from the client container 5 times a second during the run (its
    /// replies cross the egress cap, its requests' replies the ingress cap).
    fn ping(&self) -> anyhow::Result<std::process::Child> {
        let count = (self.seconds.saturating_sub(1) * 5).max(1);
        let mut cmd = self.engine.docker();
        cmd.args([
            "exec",
            CLIENT,
            "sh",
            "-c",
            &format!("sleep 0.5; ping -c {count} -i 0.2 {}", self.web_ip),
        ]);
        Ok(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?)
    }

    /// Puts (or, with `None`, removes) a tbf where the direction queues: the server's eth0
    /// for egress, the client's host veth for ingress.
    fn tbf(&self, direction: Direction, rate: Option<&str>) -> anyhow::Result<()> {
        let mut cmd = match direction {
            Direction::Egress => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &self.web_pid, "-n", "tc", "qdisc"]);
                c
            }
            Direction::Ingress => {
                let mut c = Command::new("tc");
                c.arg("qdisc");
                c
            }
        };
        let dev = match direction {
            Direction::Egress => "eth0",
            Direction::Ingress => self.client_veth.as_str(),
        };
        match rate {
            Some(rate) => cmd
                .args(["replace", "dev", dev, "root", "tbf", "rate", rate])
                .args(["burst", "256kb", "latency", "25ms"]),
            None => cmd.args(["del", "dev", dev, "root"]),
        };
        sh::run(&mut cmd)
    }
}

/// The load generator's `sysctl`: a new connection may take the port of one in `TIME_WAIT`
/// (timestamps keep it safe). Without it, wrk's connections one per request from one address
/// to one server used up the ephemeral ports within a run or two; its `connect` then spent
/// the CPU searching for a free one (by hand, 4 KiB uncapped over 8 connections: 13 800
/// requests a second, then 700-950 in the next runs, 96 % of both CPUs in the kernel,
/// `__inet_hash_connect` on top). With it, 256 connections ran 15 900 a second in each of 4
/// runs back to back, and the ceiling's 8 connections 0.477-0.488 Gbit/s in each of 3. Set in
/// the client container, and on the host (wrk's side for egress) while a [`Bench`] lives.
const TW_REUSE: &str = "net.ipv4.tcp_tw_reuse=1";

/// "  1234 requests in 8.01s, 39.01MB read" → (bytes, seconds).
fn summary(text: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let seconds = words
        .get(3)?
        .trim_end_matches(',')
        .strip_suffix('s')?
        .parse()
        .ok()?;
    let size = words.get(4)?;
    let (number, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic())?);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((number.parse::<f64>().ok()? * scale, seconds))
}

/// A latency percentile line of `wrk --latency` ("     99%    1.94s"), in ms; NaN if absent
/// or zero (no request completed).
fn latency(text: &str, percentile: &str) -> f64 {
    let value = text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(percentile))
            .then(|| words.next())
            .flatten()
    });
    let Some(value) = value else {
        return f64::NAN;
    };
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => f64::NAN,
    };
    let ms = number.parse::<f64>().unwrap_or(f64::NAN) * scale;
    if ms > 0.0 { ms } else { f64::NAN }
}

/// The `Tcp:` `OutSegs` and `RetransSegs` of a process's network namespace.
fn segments(pid: &str) -> anyhow::Result<(u64, u64)> {
    let snmp = fs::read_to_string(format!("/proc/{pid}/net/snmp"))?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp
        .next()
        .context("Tcp header")?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = tcp
        .next()
        .context("Tcp values")?
        .split_whitespace()
        .collect();
    let get = |name: &str| -> anyhow::Result<u64> {
        let i = names
            .iter()
            .position(|n| *n == name)
            .context("Tcp counter")?;
        Ok(values.get(i).context("Tcp value")?.parse()?)
    };
    Ok((get("OutSegs")?, get("RetransSegs")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let text = "  128 requests in 8.01s, 39.01MB read\n  Latency Distribution\n     50%    1.71s \n     99%  435.24ms\n";
        let (bytes, seconds) = summary(text).expect("summary");
        assert!((bytes - 39.01 * 1_048_576.0).abs() < 1.0);
        assert!((seconds - 8.01).abs() < 1e-9);
        assert!((latency(text, "50%") - 1710.0).abs() < 1e-6);
        assert!((latency(text, "99%") - 435.24).abs() < 1e-6);
        assert!(latency("     50%    0.00us\n", "50%").is_nan());
        assert!(latency("", "99%").is_nan());
    }
}
