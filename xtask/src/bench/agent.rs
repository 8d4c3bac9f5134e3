//! `cargo xtask bench agent`: how fast the agent caps a labelled container, and what it costs
//! with many of them.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    LABEL,
    stats::{agent_usage, logged_ms, percentile, start_fleet},
};
use crate::{docker::Engine, sh};

/// Labelled containers started one after another for the latency rows.
const STARTS: usize = 20;
/// Every fleet container declares these.
const LABELS: [&str; 4] = [
    "--label",
    "dockops.egress=20mbit",
    "--label",
    "dockops.pids-limit=100",
];

pub fn run(counts: &[usize], seconds: u64) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let dockops = || {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host);
        cmd
    };
    let (from_run, from_started) = cap_latency(&engine, dockops())?;
    let mut table = format!(
        "| measure | dockops | goal |\n|---|---|---|\n\
         | labelled container: `docker run -d` returned (it has started) → its cap in the kernel, median of {STARTS} (p95) | {:.0} ms ({:.0} ms) | ≤ 1 s after the start event |\n\
         | the same from `docker run -d` invoked | {:.0} ms ({:.0} ms) | – |\n",
        percentile(&from_started, 50),
        percentile(&from_started, 95),
        percentile(&from_run, 50),
        percentile(&from_run, 95),
    );
    for &count in counts {
        let fleet = start_fleet(&engine, count, &LABELS)?;
        let first = first_refresh(dockops())?;
        let port = free_port()?;
        let mut service = dockops();
        service.args([
            "watch",
            "--format",
            "none",
            "--interval",
            "1s",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ]);
        // Steady state: after its first reconcile and the events its own updates raise.
        let warmup = Duration::from_secs_f64(2.0 * first / 1000.0) + Duration::from_secs(5);
        let (cpu, rss) = agent_usage(service, seconds, warmup)?;
        let (cpu_goal, rss_goal) = if count <= 100 { (1, 50) } else { (3, 100) };
        writeln!(
            table,
            "| {count} labelled containers: the agent's first reconcile (start, adopt, every \
             label applied) | {first:.0} ms | – |\n\
             | {count} labelled containers: agent CPU over {seconds} s, the service's command \
             (`watch --format none --interval 1s --metrics-addr`, not scraped) | {cpu:.2} % of a \
             core | ≤ {cpu_goal} % |\n\
             | {count} labelled containers: agent peak RSS over the same run | {rss:.1} MiB | \
             ≤ {rss_goal} MiB |"
        )?;
        drop(fleet);
    }
    sh::run(dockops().arg("reset").stdout(Stdio::null()))?;
    println!("{table}");
    super::record("agent", &table)
}

/// Starts [`STARTS`] labelled containers one at a time under a running agent; for each, ms
/// from `docker run` invoked and from its return to the container's address in `CAPS`.
fn cap_latency(engine: &Engine, mut agent: Command) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut agent = agent
        .args(["watch", "--format", "none", "--interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let caps = format!("{}/maps/CAPS", "/sys/fs/bpf/dockops");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&caps).exists() {
        if Instant::now() > deadline {
            bail!("the agent did not start");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (mut from_run, mut from_started) = (Vec::new(), Vec::new());
    let result = (|| -> anyhow::Result<()> {
        for i in 0..STARTS {
            let name = format!("dockops-bench-start-{i}");
            let invoked = Instant::now();
            let id = sh::output(&mut super::run_labelled(
                engine,
                &name,
                &LABELS,
                &["sleep", "3600"],
            ))
            .context("docker run")?;
            let started = Instant::now();
            let ip = sh::output(engine.docker().args([
                "inspect",
                "-f",
                "{{.NetworkSettings.IPAddress}}",
                id.trim(),
            ]))
            .context("inspect")?;
            let key: Vec<String> = ip.trim().split('.').map(str::to_owned).collect();
            let capped = || {
                Command::new("bpftool")
                    .args(["map", "lookup", "pinned", &caps, "key"])
                    .args(&key)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            while !capped() {
                if started.elapsed() > Duration::from_secs(10) {
                    bail!("{name} was not capped within 10 s");
                }
                thread::sleep(Duration::from_millis(2));
            }
            from_run.push(invoked.elapsed().as_secs_f64() * 1000.0);
            from_started.push(started.elapsed().as_secs_f64() * 1000.0);
            engine.remove_labelled(LABEL);
        }
        Ok(())
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    engine.remove_labelled(LABEL);
    result?;
    from_run.sort_by(f64::total_cmp);
    from_started.sort_by(f64::total_cmp);
    Ok((from_run, from_started))
}

/// The agent's first refresh (ms), from its debug log: start-up with every container new.
fn first_refresh(mut agent: Command) -> anyhow::Result<f64> {
    sh::run(&mut agent_reset(&agent))?;
    let out = agent
        .env("RUST_LOG", "dockops=debug")
        .args([
            "--log-format",
            "json",
            "watch",
            "--format",
            "none",
            "--count",
            "1",
        ])
        .stdout(Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|line| logged_ms(line, "refresh_us"))
        .with_context(|| format!("the agent logged no refresh time: {log}"))
}

/// `dockops-bpf reset` with the same environment: the first refresh then attaches anew.
fn agent_reset(agent: &Command) -> Command {
    let mut reset = Command::new(agent.get_program());
    reset.envs(agent.get_envs().filter_map(|(k, v)| Some((k, v?))));
    reset.arg("reset").stdout(Stdio::null());
    reset
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
