//! `cargo xtask bench stats`: dockops against `docker stats` with many containers.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{Containers, run_labelled};
use crate::{docker::Engine, sh};

pub fn run(containers: usize, seconds: u64) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let fleet = start_fleet(&engine, containers, &[])?;
    let dockops = |args: &[&str]| {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host).args(args);
        cmd
    };
    // Attach first: the measured runs adopt, as every run after the first does.
    sh::run(dockops(&["stats", "--sample", "0"]).stdout(Stdio::null()))?;

    let runs = 5;
    let cli = median(runs, || {
        time(dockops(&["stats", "--sample", "0", "--format", "json"]).stdout(Stdio::null()))
    })?;
    let docker = median(runs, || {
        time(
            engine
                .docker()
                .args(["stats", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}}"])
                .stdout(Stdio::null()),
        )
    })?;
    let snapshots = snapshot_times(&mut dockops(&[
        "--log-format",
        "json",
        "watch",
        "--format",
        "json",
        "--interval",
        "200ms",
        "--count",
        "25",
    ]))?;
    let (cpu, rss) = agent_usage(
        dockops(&["watch", "--interval", "1s"]),
        seconds,
        Duration::from_secs(3),
    )?;
    drop(fleet);
    // Leave no attachments or pins behind.
    sh::run(dockops(&["reset"]).stdout(Stdio::null()))?;

    let snap = percentile(&snapshots, 50);
    let table = format!(
        "| measure ({containers} idle containers) | dockops | docker stats --no-stream | ratio |\n\
         |---|---|---|---|\n\
         | one snapshot of all containers, in `watch` (median of {n}; p95 {p95:.1} ms) | {snap:.1} ms | {docker:.0} ms | {snap_ratio:.0}× faster |\n\
         | one-shot command, wall time (median of {runs}) | {cli:.0} ms (`stats --sample 0`) | {docker:.0} ms | {ratio:.1}× faster |\n\
         | agent CPU over {seconds} s of `watch --interval 1s` | {cpu:.2} % of a core | – | – |\n\
         | agent peak RSS over the same run | {rss:.1} MiB | – | – |\n",
        n = snapshots.len(),
        p95 = percentile(&snapshots, 95),
        ratio = docker / cli,
        snap_ratio = docker / snap,
    );
    println!("{table}");
    super::record("stats", &table)
}

/// Starts `count` idle containers; the returned guard removes them.
pub(super) fn start_fleet<'e>(
    engine: &'e Engine,
    count: usize,
    options: &[&str],
) -> anyhow::Result<Containers<'e>> {
    let fleet = Containers { engine };
    fleet.remove();
    eprintln!("bench: starting {count} containers");
    // Four `docker run`s at a time keep the 2-core machine busy without thrashing dockerd.
    let names: Vec<String> = (0..count).map(|i| format!("dockops-bench-{i}")).collect();
    for chunk in names.chunks(4) {
        let children: Vec<_> = chunk
            .iter()
            .map(|name| {
                run_labelled(engine, name, options, &["sleep", "86400"])
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut child in children {
            if !child.wait()?.success() {
                bail!("docker run failed");
            }
        }
    }
    Ok(fleet)
}

/// Wall time of `cmd` in milliseconds; fails if it fails.
pub(super) fn time(cmd: &mut Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = cmd.status()?;
    if !status.success() {
        bail!("{} failed: {status}", sh::show(cmd));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

pub(super) fn median(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<f64> {
    let mut samples = (0..runs).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

pub(super) fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Per-refresh snapshot times (ms, sorted) that `watch` logs at debug level.
fn snapshot_times(cmd: &mut Command) -> anyhow::Result<Vec<f64>> {
    let out = cmd
        .env("RUST_LOG", "dockops_bpf=debug")
        .stdout(Stdio::null())
        .output()?;
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| logged_ms(line, "snapshot_us"))
        .collect();
    if times.is_empty() {
        bail!(
            "watch logged no snapshot times: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// CPU (% of one core) and peak RSS (MiB) of `cmd` over `seconds`, from /proc.
pub(super) fn agent_usage(
    mut cmd: Command,
    seconds: u64,
    warmup: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let pid = child.id();
    // Start-up (attach, first discovery) is not the steady state being measured.
    thread::sleep(warmup);
    let ticks = |pid: u32| -> anyhow::Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    let start_ticks = ticks(pid)?;
    let start = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let used = ticks(pid)? - start_ticks;
    let elapsed = start.elapsed().as_secs_f64();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    child.wait()?;
    #[expect(clippy::cast_precision_loss, reason = "ticks")]
    let cpu = used as f64 / 100.0 / elapsed * 100.0;
    Ok((cpu, hwm_kib / 1024.0))
}

/// A microseconds field of a JSON log line, in ms. A u128 field: JSON logs write it as a
/// string.
pub(super) fn logged_ms(line: &str, field: &str) -> Option<f64> {
    let rest = line.split(&format!("\"{field}\":")).nth(1)?;
    let digits: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<f64>().ok().map(|us| us / 1000.0)
}
