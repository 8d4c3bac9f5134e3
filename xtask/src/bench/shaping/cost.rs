//! What the tc programs cost: per packet in isolation (`BPF_PROG_TEST_RUN`, warm caches), and
//! per run under real traffic (`kernel.bpf_stats_enabled`, which adds two clock reads per run).

use std::{fmt::Write as _, process::Command};

use anyhow::Context as _;
use serde_json::Value;

use crate::sh;

/// Mean run time and run count of both tc programs, since the stats were switched on.
#[derive(Clone, Copy, Default)]
pub struct RunTime {
    pub ns: f64,
    pub runs: f64,
}

impl RunTime {
    pub fn per_run(self) -> f64 {
        self.ns / self.runs.max(1.0)
    }

    fn minus(self, before: Self) -> Self {
        Self {
            ns: self.ns - before.ns,
            runs: self.runs - before.runs,
        }
    }
}

/// What the tc programs spent while `f` ran, with kernel BPF statistics switched on for it
/// (they cost two clock reads per program run).
pub fn measure<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, RunTime)> {
    let _on = super::Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let before = totals()?;
    let out = f();
    Ok((out, totals()?.minus(before)))
}

fn totals() -> anyhow::Result<RunTime> {
    let out =
        sh::output(Command::new("bpftool").args(["--json", "prog", "show"])).context("bpftool")?;
    let v: Value = serde_json::from_str(&out)?;
    let mut total = RunTime::default();
    for p in v.as_array().into_iter().flatten() {
        if matches!(
            p["name"].as_str(),
            Some("tc_ingress_acct" | "tc_egress_acct")
        ) {
            total.ns += p["run_time_ns"].as_f64().unwrap_or(0.0);
            total.runs += p["run_cnt"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// The `tc_cost` example's table: ns per packet for each path through the program.
pub fn isolated() -> anyhow::Result<String> {
    let out = sh::output(sh::cargo().args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "dockops-integration",
        "--example",
        "tc_cost",
    ]))
    .context("the tc_cost example failed")?;
    let mut table = String::from(
        "| path through the tc program | ns per packet (median of 9 × 1M runs) | min | max |\n|---|---|---|---|\n",
    );
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)?;
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} |",
            v["case"].as_str().unwrap_or("?"),
            v["ns_per_packet"],
            v["min"],
            v["max"]
        );
    }
    Ok(table)
}
