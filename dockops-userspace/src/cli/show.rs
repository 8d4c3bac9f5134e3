//! `dockops-bpf show`: the limits in force on one container, read back from the kernel, and
//! where each came from.

use std::collections::HashSet;

use dockops::{
    capabilities::CgroupMode,
    cgroupfs::weight_from_shares,
    collection::Limits,
    output,
    policy::labels,
    policy::resources::{Host, IoKind},
    state::{StoredCaps, StoredLimits},
};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Agent, TcAttach, select, watch::Format};

#[derive(clap::Args)]
pub struct Args {
    /// The container, by name or id (prefix).
    container: String,
    /// table: for people; json: one object, for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One limit: its value as read back (`null`: none) and who set it.
#[derive(Serialize)]
struct Row {
    limit: String,
    value: Value,
    /// `dockops` (recorded by `limit`), `label` (a `dockops.*` label), `policy rule N` (the
    /// agent's policy file), `docker` (set at create, by `docker update`, or for the storage
    /// size `--storage-opt`), `cgroup` (written to the cgroup by someone else), `default`
    /// (the kernel's or Docker's default), `none` (no limit).
    source: String,
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach.mode()).await?;
    agent.refresh(&HashSet::new()).await?;
    let container = select::find(&agent.containers, &args.container)?.clone();
    let snapshot = agent.snapshot(|c| c.id == container.id)?;
    let limits = snapshot
        .containers
        .first()
        .map(|c| c.limits.clone())
        .unwrap_or_default();
    let desired = agent.datapath.desired()?;
    let mut limits = limits;
    if matches!(agent.caps.cgroup, CgroupMode::V2 { .. }) {
        let docker = agent
            .limiter
            .docker_resources(&container.id, &container.name)
            .await?;
        limits.resources.cpu_shares = limits
            .resources
            .cpu_shares
            .map(|read| shares_as_asked(read, docker.cpu_shares));
    }
    let (declared, label_errors) = labels::declared(&container.labels);
    let rows = rows(
        &limits,
        (
            desired.caps.get(&container.id),
            declared.egress_bits.or(declared.ingress_bits).is_some(),
        ),
        desired.limits.get(&container.id),
        &agent.caps.host,
    );
    let label_errors: Vec<String> = label_errors.iter().map(ToString::to_string).collect();
    match args.format {
        Format::Json => println!(
            "{}",
            json!({"id": container.id, "name": container.name, "limits": rows,
                   "label_errors": label_errors})
        ),
        Format::Table => {
            println!("{:<24} {:<20} SOURCE", "LIMIT", "VALUE");
            for row in rows {
                let value = match &row.value {
                    Value::Null => "-".to_owned(),
                    Value::String(s) => s.clone(),
                    Value::Number(n) if is_bytes(&row.limit) => {
                        output::short_bytes(n.as_f64().unwrap_or_default())
                    }
                    other => other.to_string(),
                };
                println!("{:<24} {value:<20} {}", row.limit, row.source);
            }
            for error in &label_errors {
                println!("refused: {error}");
            }
        }
    }
    Ok(())
}

/// On v2 the kernel keeps a weight, and runc's conversion from shares loses their last
/// digits (512 → weight 20 → read back as 501): what Docker holds, when it converts to the
/// weight the kernel has (Docker's 0 is the default, 1024).
fn shares_as_asked(read: u64, docker: i64) -> u64 {
    let asked = u64::try_from(docker)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(1024);
    if weight_from_shares(asked) == weight_from_shares(read) {
        asked
    } else {
        read
    }
}

/// Limits whose values are bytes (or bytes per second).
fn is_bytes(limit: &str) -> bool {
    limit.starts_with("memory") || limit.starts_with("storage") || limit.contains("-bps ")
}

fn rows(
    limits: &Limits,
    (caps, labelled): (Option<&StoredCaps>, bool),
    recorded: Option<&StoredLimits>,
    host: &Host,
) -> Vec<Row> {
    let by_dockops = |name: &str| recorded.is_some_and(|r| r.held.contains(name));
    // What the agent applied from a label or a policy rule, by label name.
    let by_policy = |label: &str| recorded.and_then(|r| r.policy.get(label)).cloned();
    let r = &limits.resources;
    let all_cpus = host.cpus.to_string();
    let all_mems = host.mems.to_string();
    let mut rows = Vec::new();
    let mut push = |limit: &str, (value, source): (Value, String)| {
        rows.push(Row {
            limit: limit.to_owned(),
            value,
            source,
        });
    };
    for (limit, bits) in [
        ("egress", limits.egress_bps),
        ("ingress", limits.ingress_bps),
    ] {
        let source = match (bits, caps) {
            (None, _) => "none".to_owned(),
            (Some(_), Some(_)) => "dockops".to_owned(),
            (Some(_), None) => by_policy(limit).unwrap_or_else(|| {
                if labelled {
                    "label"
                } else {
                    "dockops (not recorded)"
                }
                .to_owned()
            }),
        };
        push(&format!("{limit}-bps"), (json!(bits), source));
    }
    // Limit (as `limit` and labels name it), name in the state file, value, is default.
    let held = [
        ("cpus", "cpus", json!(r.cpus), false),
        (
            "cpu-shares",
            "cpu_shares",
            json!(r.cpu_shares),
            r.cpu_shares == Some(1024),
        ),
        (
            "cpuset-cpus",
            "cpuset_cpus",
            json!(r.cpuset_cpus),
            r.cpuset_cpus.as_deref() == Some(&all_cpus),
        ),
        (
            "cpuset-mems",
            "cpuset_mems",
            json!(r.cpuset_mems),
            r.cpuset_mems.as_deref() == Some(&all_mems),
        ),
        ("memory", "memory", json!(r.memory_bytes), false),
        (
            "memory-swap",
            "memory_swap",
            json!(r.memory_swap_bytes),
            false,
        ),
        (
            "memory-reservation",
            "memory_reservation",
            json!(r.memory_reservation_bytes),
            false,
        ),
        ("pids-limit", "pids", json!(r.pids), false),
        ("storage-size", "storage", json!(r.storage_bytes), false),
    ];
    // Set (a value), by dockops, a label or rule, or else by Docker; a value equal to the
    // default is `default`.
    for (limit, name, value, default) in held {
        let source = if value.is_null() {
            "none".to_owned()
        } else if by_dockops(name) {
            "dockops".to_owned()
        } else {
            by_policy(limit)
                .unwrap_or_else(|| if default { "default" } else { "docker" }.to_owned())
        };
        push(limit, (value, source));
    }
    for device in &r.io {
        for kind in IoKind::ALL {
            let Some(value) = device.get(kind) else {
                continue;
            };
            let ours = recorded.is_some_and(|rec| {
                rec.io
                    .iter()
                    .any(|t| (t.major, t.minor, t.kind) == (device.major, device.minor, kind))
            });
            let source = if ours {
                "dockops".to_owned()
            } else {
                by_policy(kind.flag()).unwrap_or_else(|| "cgroup".to_owned())
            };
            push(
                &format!("{} {}:{}", kind.flag(), device.major, device.minor),
                (json!(value), source),
            );
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_read_back_as_docker_holds_them_when_the_weight_agrees() {
        // 512 → weight 20, which reads back as 501.
        assert_eq!(super::shares_as_asked(501, 512), 512);
        // Docker's default (0, or 1024) reads back as itself; 1000 has the same weight.
        assert_eq!(super::shares_as_asked(1024, 0), 1024);
        assert_eq!(super::shares_as_asked(1024, 1000), 1000);
        // Someone wrote another weight to the cgroup: what the kernel has.
        assert_eq!(super::shares_as_asked(5000, 512), 5000);
    }
}
