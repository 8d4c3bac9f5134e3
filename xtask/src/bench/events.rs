//! `cargo xtask bench events`: what the CPU and IO hooks cost the workloads they watch
//! (a context-switch benchmark and small direct writes, in a watched container, with and
//! without dockops' programs attached), their run time per event from the kernel's BPF
//! statistics, and the Prometheus endpoint's scrape time and the agent's CPU with a scrape
//! every second.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    run_labelled,
    stats::{agent_usage, percentile, start_fleet},
};
use crate::{docker::Engine, sh};

/// Runs of each workload, alternating with and without the programs.
const ROUNDS: usize = 7;
/// The host-wide programs whose run time is reported, in the order of the table.
const PROGRAMS: [&str; 9] = [
    "sched_switch",
    "sched_wakeup",
    "sched_fork",
    "sched_exit",
    "block_bio_acct",
    "block_rq_start",
    "block_rq_done",
    "cg_skb_ingress",
    "cg_skb_egress",
];

pub fn run(counts: &[usize], seconds: u64) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::setup::ensure_packages(&["stress-ng", "fio"])?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let dockops = || {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host);
        cmd
    };
    let mut table = workloads(&engine, &dockops)?;
    for &count in counts {
        let fleet = start_fleet(&engine, count, &[])?;
        let (scrape_ms, cpu) = scraped(&dockops, seconds)?;
        writeln!(
            table,
            "| {count} containers, `watch --format none --interval 1s --metrics-addr` scraped \
             every second: scrape time, median (p95) | {:.1} ms ({:.1} ms) | – | – |\n\
             | the same: agent CPU over {seconds} s | {cpu:.2} % of a core | – | – |",
            percentile(&scrape_ms, 50),
            percentile(&scrape_ms, 95),
        )?;
        drop(fleet);
    }
    sh::run(dockops().arg("reset").stdout(Stdio::null()))?;
    println!("{table}");
    super::record("events", &table)
}

/// The workload rows: ops/s without and with the programs, and each program's run time.
fn workloads(engine: &Engine, dockops: &impl Fn() -> Command) -> anyhow::Result<String> {
    let fleet = super::Containers { engine };
    // A run stopped short leaves its container behind.
    fleet.remove();
    let id = sh::output(&mut run_labelled(
        engine,
        "dockops-bench-events",
        &[],
        &["sleep", "86400"],
    ))
    .context("docker run")?;
    let cgroup = cgroup_of(engine, id.trim())?;
    let mut per_event = HashMap::new();
    let file = crate::workspace().join("target/bench-fio");
    // By workload (as in `WORKLOADS`), without and with dockops.
    let mut runs: [[Vec<f64>; 2]; 4] = Default::default();
    sh::run(dockops().arg("reset").stdout(Stdio::null()))?;
    // The loss is measured with the kernel's BPF statistics off (they add two clock reads
    // to every run); one more round with them on gives the run time per event.
    for round in 0..=ROUNDS {
        let measuring = round == ROUNDS;
        for attached in [false, true] {
            if measuring && !attached {
                continue;
            }
            // With: the programs attached and the container watched (a one-shot command
            // does both; the pinned programs go on counting after it exits, so the agent's
            // own CPU is not in the figure); without: nothing of dockops is attached.
            if attached {
                sh::run(
                    dockops()
                        .args(["stats", "--sample", "0"])
                        .stdout(Stdio::null()),
                )?;
            }
            if measuring {
                fs::write(STATS_ENABLED, "1")?;
            }
            let results = [
                stress_switch(&cgroup, "")?,
                stress_switch(&cgroup, "--taskset 0")?,
                stress_switch("", "--taskset 0")?,
                fio_randwrite(&cgroup, &file)?,
            ];
            if measuring {
                per_event = program_stats()?;
                fs::write(STATS_ENABLED, "0")?;
            } else {
                for (workload, result) in runs.iter_mut().zip(results) {
                    workload[usize::from(attached)].push(result);
                }
            }
            if attached {
                sh::run(dockops().arg("reset").stdout(Stdio::null()))?;
            }
            eprintln!("bench: round {round} attached={attached}: {results:.0?}");
        }
    }
    let _ = fs::remove_file(&file);
    table(&runs, &per_event)
}

/// What `workloads` runs, in its order.
const WORKLOADS: [&str; 4] = [
    "`stress-ng --switch 1`, in a watched container, bogo ops/s",
    "the same on one CPU (`--taskset 0`: every message is two context switches on that CPU, \
     none idle), bogo ops/s",
    "the same on one CPU outside any container (what the host's other processes pay), bogo \
     ops/s",
    "`fio` 4 KiB random direct writes, in a watched container, IOPS",
];

/// The rows of the workloads' medians without and with dockops, and of each program's run
/// time per event.
fn table(
    runs: &[[Vec<f64>; 2]; 4],
    per_event: &HashMap<String, (u64, u64)>,
) -> anyhow::Result<String> {
    // The median, and the range of the runs: how far apart runs of one arm fall says what
    // difference between the arms this machine can resolve.
    let summary = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (
            v[v.len() / 2],
            format!("{:.0} ({:.0}–{:.0})", v[v.len() / 2], v[0], v[v.len() - 1]),
        )
    };
    let mut table = String::from(
        "| measure | without dockops: median (range) | with dockops | loss |\n|---|---|---|---|\n",
    );
    for (what, runs) in WORKLOADS.iter().zip(runs) {
        let ((without, shown_without), (with, shown_with)) = (summary(&runs[0]), summary(&runs[1]));
        writeln!(
            table,
            "| {what}, {ROUNDS} alternating runs of each | {shown_without} | {shown_with} | \
             {:.1} % |",
            (without - with) / without * 100.0
        )?;
    }
    for program in PROGRAMS {
        let Some(&(ns, runs)) = per_event.get(program) else {
            continue;
        };
        #[expect(clippy::cast_precision_loss, reason = "a mean")]
        let mean = ns as f64 / runs.max(1) as f64;
        writeln!(
            table,
            "| `{program}`: run time per event (kernel BPF statistics, {runs} runs in one \
             more round of the workloads) | – | {mean:.0} ns | – |"
        )?;
    }
    Ok(table)
}

/// The container's cgroup v2 directory on this host.
fn cgroup_of(engine: &Engine, id: &str) -> anyhow::Result<String> {
    let pid = sh::output(
        engine
            .docker()
            .args(["inspect", "-f", "{{.State.Pid}}", id]),
    )
    .context("docker inspect")?;
    let text = fs::read_to_string(format!("/proc/{}/cgroup", pid.trim()))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 line")?;
    let root = if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    Ok(format!("{root}{path}"))
}

/// `sh -c` that moves itself into `cgroup` (v2: what the hooks classify by; "": stays in
/// xtask's) and execs `cmd`.
fn in_cgroup(cgroup: &str, cmd: &str) -> Command {
    let mut sh = Command::new("sh");
    let script = if cgroup.is_empty() {
        format!("exec {cmd}")
    } else {
        format!("echo $$ > {cgroup}/cgroup.procs && exec {cmd}")
    };
    sh.args(["-c", &script]);
    sh
}

/// `stress-ng --switch 1 OPTIONS` for 5 s: context switches through a pipe; bogo ops per
/// second.
fn stress_switch(cgroup: &str, options: &str) -> anyhow::Result<f64> {
    let yaml = crate::workspace().join("target/bench-stress.yaml");
    sh::run(
        in_cgroup(
            cgroup,
            &format!(
                "stress-ng --switch 1 {options} --timeout 5s --metrics-brief --yaml {}",
                yaml.display()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
    )?;
    let text = fs::read_to_string(&yaml)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("bogo-ops-per-second-real-time:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no bogo ops/s in {text}"))
}

/// `fio` 4 KiB random direct writes for 5 s; IOPS.
fn fio_randwrite(cgroup: &str, file: &std::path::Path) -> anyhow::Result<f64> {
    let out = sh::output(&mut in_cgroup(
        cgroup,
        &format!(
            "fio --name=randwrite --filename={} --size=256M --rw=randwrite --bs=4k \
             --direct=1 --ioengine=psync --runtime=5 --time_based --output-format=json",
            file.display()
        ),
    ))
    .context("fio failed")?;
    let json: Value = serde_json::from_str(&out).context("fio's JSON")?;
    json["jobs"][0]["write"]["iops"]
        .as_f64()
        .context("no write iops in fio's output")
}

const STATS_ENABLED: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run time (ns) and runs of every loaded program, by name, from `bpftool prog show`.
fn program_stats() -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let out =
        sh::output(Command::new("bpftool").args(["-j", "prog", "show"])).context("bpftool")?;
    let progs: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
    let mut stats: HashMap<String, (u64, u64)> = HashMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let (Some(name), Some(ns), Some(runs)) = (
            p["name"].as_str(),
            p["run_time_ns"].as_u64(),
            p["run_cnt"].as_u64(),
        ) else {
            continue;
        };
        let entry = stats.entry(name.to_owned()).or_default();
        entry.0 += ns;
        entry.1 += runs;
    }
    Ok(stats)
}

/// Scrape times (ms, sorted) of `/metrics` fetched every second while the agent runs for
/// `seconds`, and the agent's CPU (% of a core) over that time.
fn scraped(dockops: &impl Fn() -> Command, seconds: u64) -> anyhow::Result<(Vec<f64>, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent = dockops();
    agent.args([
        "watch",
        "--format",
        "none",
        "--interval",
        "1s",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            let mut times = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let start = Instant::now();
                if let Some(bytes) = scrape(port) {
                    // An empty body: the agent has no reading yet.
                    if bytes > 0 {
                        times.push(start.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                thread::sleep(Duration::from_secs(1).saturating_sub(start.elapsed()));
            }
            times
        })
    };
    let usage = agent_usage(agent, seconds, Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut times = scraper
        .join()
        .map_err(|_| anyhow::anyhow!("the scraper panicked"))?;
    let (cpu, _) = usage?;
    if times.is_empty() {
        bail!("no scrape of 127.0.0.1:{port}/metrics answered");
    }
    times.sort_by(f64::total_cmp);
    Ok((times, cpu))
}

/// GET /metrics over HTTP/1.0; the body's length, `None` if nothing answered.
fn scrape(port: u16) -> Option<usize> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let body = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(response.len() - body)
}
