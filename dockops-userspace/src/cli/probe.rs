//! `dockops-bpf probe`: what this kernel offers dockops, as found at start-up.

use dockops::capabilities::Capabilities;

use super::{TcAttach, watch::Format};

#[derive(clap::Args)]
pub struct Args {
    /// table: for people; json: one object, for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub fn run(args: &Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let caps = Capabilities::probe(tc_attach.mode())?;
    let report = caps.report(dockops::datapath::tracefs()?);
    if matches!(args.format, Format::Json) {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let cgroup = match (&report.cgroup_v2_root, report.cgroup) {
        (Some(root), "v2") => format!("v2 only ({})", root.display()),
        (Some(root), _) => format!("v1 hybrid (v2 at {})", root.display()),
        (None, _) => "v1 only".to_owned(),
    };
    println!("{:<18}{}", "kernel", report.kernel);
    println!("{:<18}{cgroup}", "cgroup");
    println!(
        "{:<18}{}",
        "v2 controllers",
        report.cgroup_v2_controllers.join(" ")
    );
    println!(
        "{:<18}{} ({})",
        "tc attach", report.tc_attach, report.tc_attach_reason
    );
    println!(
        "{:<18}{}{}",
        "sch_fq",
        report.fq,
        if report.fq.usable() {
            ""
        } else {
            ": no EDT pacing in tc"
        }
    );
    println!(
        "{:<18}{}{}",
        "btf",
        yes(report.btf),
        if report.btf {
            ""
        } else {
            ": no block request latency"
        }
    );
    println!("{:<18}{}", "psi", yes(report.psi));
    println!("{:<18}{}", "kprobes", yes(report.kprobes));
    println!("{:<18}{}", "swap accounting", yes(report.swap_accounting));
    for program in ["tc", "sock_ops"] {
        let helpers: Vec<String> = report
            .helpers
            .iter()
            .filter(|h| h.program == program)
            .map(|h| {
                let state = h.present.map_or("unknown", yes);
                format!("{} {state}", h.name)
            })
            .collect();
        println!("{:<18}{}", format!("helpers {program}"), helpers.join(", "));
    }
    for (tracepoint, present) in &report.tracepoints {
        println!("{:<18}{tracepoint} {}", "tracepoint", yes(*present));
    }
    Ok(())
}
