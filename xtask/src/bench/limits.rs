//! `cargo xtask bench limits`: applying a full set of limits to 1, 10 and 100 running
//! containers with one `dockops-bpf limit`, against one `docker update` of the same
//! containers, in one run.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use super::stats::{median, start_fleet, time};
use crate::{docker::Engine, sh};

/// Runs per measurement; the values alternate so every run changes something.
const RUNS: usize = 5;

pub fn run(max: usize) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build()?;
    let engine = Engine::ensure(Some(&crate::workspace().join("target/dockerd")))?;
    engine.ensure_test_image()?;
    let fleet = start_fleet(&engine, max, &[])?;
    let root = sh::output(engine.docker().args(["info", "-f", "{{.DockerRootDir}}"]))
        .map_or_else(|| "/var/lib/docker".to_owned(), |s| s.trim().to_owned());
    let dockops = |args: &[String]| {
        let mut cmd = Command::new(crate::binary());
        cmd.env("DOCKER_HOST", &engine.host)
            .args(args)
            .stdout(Stdio::null());
        cmd
    };
    // Attach first: the measured runs adopt, as every run after the first does.
    sh::run(&mut dockops(&[
        "stats".into(),
        "--sample".into(),
        "0".into(),
    ]))?;
    let mut rows = String::new();
    for count in [1, 10, 100].into_iter().filter(|&n| n <= max) {
        let names: Vec<String> = (0..count).map(|i| format!("dockops-bench-{i}")).collect();
        // The same CPU, memory and pids values for both; dockops also throttles the disk,
        // which `docker update` cannot do on a running container.
        let values = |run: usize| {
            if run.is_multiple_of(2) {
                ("0.5", "64m")
            } else {
                ("0.6", "96m")
            }
        };
        let mut run = 0;
        let ours = median(RUNS, || {
            run += 1;
            let (cpus, memory) = values(run);
            let mut args: Vec<String> = vec!["limit".into()];
            args.extend(names.iter().cloned());
            for flag in [
                "--cpus",
                cpus,
                "--cpu-shares",
                "512",
                "--memory",
                memory,
                "--pids-limit",
                "200",
                "--device-write-bps",
            ] {
                args.push(flag.into());
            }
            args.push(format!("{root}:50mb"));
            time(&mut dockops(&args))
        })?;
        let mut run = 0;
        let theirs = median(RUNS, || {
            run += 1;
            let (cpus, memory) = values(run);
            let mut cmd = engine.docker();
            cmd.args([
                "update",
                "--cpus",
                cpus,
                "--cpu-shares",
                "512",
                "--memory",
                memory,
            ])
            .args(["--memory-swap", "-1", "--pids-limit", "200"])
            .args(&names)
            .stdout(Stdio::null());
            time(&mut cmd)
        })?;
        let _ = writeln!(
            rows,
            "| {count} | {ours:.0} ms | {theirs:.0} ms | {:.2}× |",
            ours / theirs
        );
    }
    drop(fleet);
    sh::run(&mut dockops(&["reset".into()]))?;
    let table = format!(
        "| containers | `dockops-bpf limit` (CPU, shares, memory, pids, write bps), median of \
         {RUNS} | `docker update` (CPU, shares, memory, pids), median of {RUNS} | dockops / \
         docker |\n|---|---|---|---|\n{rows}"
    );
    println!("{table}");
    super::record("limits", &table)
}
