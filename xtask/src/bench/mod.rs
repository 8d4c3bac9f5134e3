//! Benchmarks, each side by side with its baseline in one run; results go to
//! docs/BENCHMARKS.md.

mod agent;
mod events;
mod limits;
mod shaping;
mod stats;

use std::{fs, process::Command, thread};

use anyhow::bail;

use crate::{docker::Engine, sh};

/// Label of every container a benchmark starts.
/// Namespaced (`dockops.bench.*`), so the agent skips it rather than warning at every
/// reconcile that it is no limit it knows.
const LABEL: &str = "dockops.bench.run=1";

/// The benchmark's containers (found by [`LABEL`]), removed on drop, even on error.
struct Containers<'a> {
    engine: &'a Engine,
}

/// `docker run -d --name NAME --label LABEL OPTIONS... <test image> CMD...`, ready to run.
fn run_labelled(
    engine: &Engine,
    name: &str,
    options: &[&str],
    cmd: &[&str],
) -> std::process::Command {
    let mut docker = engine.docker();
    docker
        .args(["run", "-d", "--name", name, "--label", LABEL])
        .args(options)
        .arg(crate::docker::TEST_IMAGE)
        .args(cmd);
    docker
}

impl Containers<'_> {
    fn remove(&self) {
        self.engine.remove_labelled(LABEL);
    }
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Snapshot time vs `docker stats --no-stream`, and the agent's CPU and memory over a
    /// minute of `watch --interval 1s`, with N idle containers.
    Stats {
        /// Containers to run.
        #[arg(long, default_value_t = 100)]
        containers: usize,
        /// Seconds of `watch` to measure CPU and RSS over.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Applying CPU, memory, pids (and block IO) limits to 1, 10 and 100 containers: one
    /// `dockops-bpf limit` against one `docker update`.
    Limits {
        /// Containers to run (the largest row).
        #[arg(long, default_value_t = 100)]
        containers: usize,
    },
    /// The agent: from `docker run` of a labelled container to its cap in the kernel
    /// (median of 20), the agent's CPU and RSS with 100 and 500 labelled containers, and its
    /// first reconcile of them.
    Agent {
        /// Container counts to measure CPU, RSS and the first reconcile at.
        #[arg(long, value_delimiter = ',', default_value = "100,500")]
        containers: Vec<usize>,
        /// Seconds of the agent to measure CPU and RSS over, per count.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// What the CPU and IO hooks cost: `stress-ng --switch` and `fio` 4 KiB direct random
    /// writes in a watched container, with and without the programs; their run time per
    /// event; the Prometheus scrape time and the agent's CPU with a scrape every second.
    Events {
        /// Container counts to measure the scrape at.
        #[arg(long, value_delimiter = ',', default_value = "100,500")]
        containers: Vec<usize>,
        /// Seconds of the agent to measure CPU over, per count.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Bandwidth caps: dockops against tc tbf and no cap, egress and ingress, at 10, 100 and
    /// 1000 Mbit/s: goodput, first second, retransmits, ping under load, overhead; and HTTP
    /// (nginx and wrk, 4 KiB to 1 MiB objects, 8 to 256 connections, keep-alive or not):
    /// goodput, retransmits, request latency, ping under load; and what HTTP moves with no cap.
    Shaping {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Seconds per wrk run (288 of them, and 36 for the ceiling).
        #[arg(long, default_value_t = 4)]
        http_seconds: u64,
        /// Parts to measure (each is recorded on its own).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "flows,http,ceiling"
        )]
        parts: Vec<shaping::Part>,
    },
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    match args.which {
        Which::Stats {
            containers,
            seconds,
        } => stats::run(containers, seconds),
        Which::Shaping {
            seconds,
            http_seconds,
            ref parts,
        } => shaping::run(seconds, http_seconds, parts),
        Which::Limits { containers } => limits::run(containers),
        Which::Agent {
            ref containers,
            seconds,
        } => agent::run(containers, seconds),
        Which::Events {
            ref containers,
            seconds,
        } => events::run(containers, seconds),
    }
}

/// Replaces the `section` part of docs/BENCHMARKS.md with `table`.
fn record(section: &str, table: &str) -> anyhow::Result<()> {
    let path = crate::workspace().join("docs/BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let (begin, end) = (
        format!("<!-- bench:{section}:begin -->"),
        format!("<!-- bench:{section}:end -->"),
    );
    let Some((head, rest)) = text.split_once(begin.as_str()) else {
        bail!("{} has no {begin} marker", path.display());
    };
    let tail = rest.split_once(end.as_str()).map_or("", |(_, t)| t);
    let machine = sh::output(Command::new("uname").args(["-sr"])).unwrap_or_default();
    let date = sh::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    fs::write(
        &path,
        format!(
            "{head}{begin}\nMeasured {} on {} ({} cores):\n\n{table}{end}{tail}",
            date.trim(),
            machine.trim(),
            thread::available_parallelism().map_or(0, std::num::NonZero::get)
        ),
    )?;
    eprintln!("bench: recorded in {}", path.display());
    Ok(())
}
