//! The benchmark's container pair: an iperf3 server and a client container, iperf3 runs with
//! a ping across the same path, and the tc tbf baseline.

use std::{
    fs,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::super::run_labelled;
use crate::{docker::Engine, sh};

/// The second iperf3 server's port, for flows joining a run.
const JOIN_PORT: &str = "5202";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The client container sends.
    Egress,
    /// The client container receives (`iperf3 -R`).
    Ingress,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

/// The sender's TCP: the containers' default (bbr), or cubic with or without ECN (the
/// client asks for ECN, `net.ipv4.tcp_ecn=1`; the server accepts it by default).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tcp {
    Default,
    Cubic,
    CubicEcn,
}

/// One iperf3 run, receiver side, with a ping across the path.
pub struct Run {
    pub goodput: f64,
    /// Received bit/s per second.
    pub intervals: Vec<f64>,
    pub retransmits: f64,
    pub segments: f64,
    pub ping_avg: f64,
    pub ping_max: f64,
    pub ping_loss: f64,
}

pub struct Pair<'a> {
    engine: &'a Engine,
    server_ip: String,
    pub client: String,
    /// The client's host-side veth.
    veth: String,
    client_pid: String,
    pub seconds: u64,
}

impl<'a> Pair<'a> {
    /// Starts two iperf3 servers in one container (JSON output, which `--get-server-output`
    /// passes on) and the client container (the caller's
    /// guard removes them). `NET_ADMIN` lets iperf3 choose cubic, which containers here may
    /// not otherwise use.
    pub fn start(engine: &'a Engine, seconds: u64) -> anyhow::Result<Self> {
        let run = |name: &str, cmd: &[&str]| -> anyhow::Result<String> {
            sh::output(&mut run_labelled(
                engine,
                name,
                &["--cap-add", "NET_ADMIN"],
                cmd,
            ))
            .map(|s| s.trim().to_owned())
            .context("docker run")
        };
        run(
            "dockops-bench-srv",
            &[
                "sh",
                "-c",
                &format!("iperf3 -s -J -D -p {JOIN_PORT}; exec iperf3 -s -J"),
            ],
        )?;
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
        Ok(Pair {
            engine,
            server_ip: inspect("{{.NetworkSettings.IPAddress}}", "dockops-bench-srv"),
            client: "dockops-bench-cli".into(),
            veth: veth_by_index(iflink.trim())?,
            client_pid: inspect("{{.State.Pid}}", "dockops-bench-cli"),
            seconds,
        })
    }

    /// One iperf3 run of `flows` flows with a ping across.
    pub fn iperf(&self, direction: Direction, flows: u32, tcp: Tcp) -> anyhow::Result<Run> {
        if tcp == Tcp::CubicEcn {
            self.ecn(true)?;
        }
        let ping = self.ping(self.seconds.saturating_sub(2))?;
        let out = self.iperf_cmd(direction, flows, tcp, self.seconds).output();
        let ping = String::from_utf8_lossy(&ping.wait_with_output()?.stdout).into_owned();
        if tcp == Tcp::CubicEcn {
            self.ecn(false)?;
        }
        let mut run = parse_iperf(&out?.stdout, direction)?;
        (run.ping_avg, run.ping_max, run.ping_loss) = parse_ping(&ping);
        Ok(run)
    }

    /// One flow for the whole run, three more joining after `join_after` seconds: returns
    /// both runs (the joiners' on the second server).
    pub fn join(&self, direction: Direction, join_after: u64) -> anyhow::Result<(Run, Run)> {
        let ping = self.ping(self.seconds.saturating_sub(2))?;
        let first = self
            .iperf_cmd(direction, 1, Tcp::Default, self.seconds)
            .stdout(Stdio::piped())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_secs(join_after));
        let mut joining = self.iperf_cmd(direction, 3, Tcp::Default, self.seconds - join_after);
        joining.args(["-p", JOIN_PORT]);
        let joined = joining.output()?;
        let first = first.wait_with_output()?;
        let ping = String::from_utf8_lossy(&ping.wait_with_output()?.stdout).into_owned();
        let mut first = parse_iperf(&first.stdout, direction)?;
        (first.ping_avg, first.ping_max, first.ping_loss) = parse_ping(&ping);
        Ok((first, parse_iperf(&joined.stdout, direction)?))
    }

    fn iperf_cmd(&self, direction: Direction, flows: u32, tcp: Tcp, seconds: u64) -> Command {
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
        .args(["-t", &seconds.to_string(), "-P", &flows.to_string()]);
        match direction {
            Direction::Ingress => cmd.arg("-R"),
            // The server's report: per-second rates at the receiver.
            Direction::Egress => cmd.arg("--get-server-output"),
        };
        if tcp != Tcp::Default {
            cmd.args(["-C", "cubic"]);
        }
        cmd
    }

    /// Pings the server from the client 5 times a second for `seconds`, starting in 1 s.
    fn ping(&self, seconds: u64) -> anyhow::Result<Child> {
        let mut cmd = self.engine.docker();
        cmd.args([
            "exec",
            &self.client,
            "sh",
            "-c",
            &format!("sleep 1; ping -c {} -i 0.2 {}", seconds * 5, self.server_ip),
        ]);
        Ok(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?)
    }

    /// Whether the client asks for ECN on its connections (`net.ipv4.tcp_ecn` 1, or the
    /// default 2: only when asked).
    fn ecn(&self, on: bool) -> anyhow::Result<()> {
        let value = if on { "1" } else { "2" };
        sh::run(Command::new("nsenter").args([
            "-t",
            &self.client_pid,
            "-n",
            "sysctl",
            "-q",
            &format!("net.ipv4.tcp_ecn={value}"),
        ]))
    }

    /// Puts (or, with `None`, removes) a tbf where the direction queues: the container's
    /// eth0 for egress, the host veth for ingress.
    pub fn tbf(&self, direction: Direction, rate: Option<&str>) -> anyhow::Result<()> {
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

/// Goodput, receiver-side intervals and retransmits from `iperf3 -J` output.
fn parse_iperf(stdout: &[u8], direction: Direction) -> anyhow::Result<Run> {
    let v: Value = serde_json::from_slice(stdout).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let receiver = match direction {
        Direction::Ingress => &v,
        Direction::Egress => &v["server_output_json"],
    };
    Ok(Run {
        goodput: end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("goodput")?,
        intervals: receiver["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
            .collect(),
        retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
        segments: end["sum_sent"]["bytes"].as_f64().unwrap_or(0.0) / 1448.0,
        ping_avg: f64::NAN,
        ping_max: f64::NAN,
        ping_loss: f64::NAN,
    })
}

/// busybox ping's summary: "x% packet loss" and "round-trip min/avg/max = a/b/c ms".
pub(super) fn parse_ping(text: &str) -> (f64, f64, f64) {
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

pub(super) fn veth_by_index(ifindex: &str) -> anyhow::Result<String> {
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
