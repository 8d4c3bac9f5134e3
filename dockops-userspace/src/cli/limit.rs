//! `dockops-bpf limit` and `unlimit`: bandwidth caps, set live in the pinned datapath.

use std::collections::HashSet;

use dockops::{
    datapath::{DatapathError, QueueError},
    discovery::{Container, gso_max_size},
    policy::{check_burst, check_burst_packet, default_burst, parse_burst, parse_rate},
};
use dockops_common::Caps;

use super::{Agent, InputError, TcAttach};

/// Linux's default `gso_max_size` (64 KiB), when sysfs does not say.
const GSO_MAX_SIZE: u64 = 65_536;

#[derive(clap::Args)]
pub struct LimitArgs {
    /// The container, by name or id (prefix).
    container: String,
    /// Cap on what the container sends, in tc units: 50mbit, 1.5gbit, 10mbps (bytes/s)...
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    egress: Option<u64>,
    /// Cap on what the container receives, in the same units.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    ingress: Option<u64>,
    /// Bucket of the tc hard cap behind the pacing (e.g. 256kb); default 200 ms at the
    /// larger cap, at least 128 KiB. At least one full-size packet, and what the cap sends in
    /// one kernel clock tick (1–10 ms).
    #[arg(long, value_name = "SIZE", value_parser = parse_burst)]
    burst: Option<u64>,
    /// Do not pace same-host TCP senders: only the tc hard cap (ECN marking, then drops)
    /// holds the rate, as it does for senders beyond this host. For tests and benchmarks.
    #[arg(long)]
    no_pacing: bool,
    /// Hold the ingress cap with a queue (HTB on the host veth) instead of the token bucket:
    /// packets wait rather than being marked or dropped. Smoother rates for senders that are
    /// not paced, at the cost of queueing delay: the queue holds 50 ms at the cap (at least
    /// 128 KiB, ~100 ms at 10 Mbit/s).
    #[arg(long)]
    queue: bool,
}

#[derive(clap::Args)]
pub struct UnlimitArgs {
    /// The container, by name or id (prefix).
    container: String,
    /// Remove only the egress cap.
    #[arg(long)]
    egress: bool,
    /// Remove only the ingress cap.
    #[arg(long)]
    ingress: bool,
}

pub async fn limit(args: LimitArgs, tc_attach: TcAttach) -> anyhow::Result<()> {
    if args.egress.is_none() && args.ingress.is_none() {
        return Err(InputError("give --egress RATE, --ingress RATE or both".into()).into());
    }
    if args.queue && args.ingress.is_none() {
        return Err(InputError(
            "--queue holds the ingress cap: give --ingress RATE with it".into(),
        )
        .into());
    }
    update(&args.container, tc_attach, |old, largest| {
        let egress_bits = args.egress.unwrap_or(old.egress_bits);
        let ingress_bits = args.ingress.unwrap_or(old.ingress_bits);
        let burst_bytes = args
            .burst
            .unwrap_or_else(|| default_burst(egress_bits.max(ingress_bits)).max(largest));
        Caps {
            egress_bits,
            ingress_bits,
            burst_bytes,
            flags: if args.no_pacing { Caps::NO_PACING } else { 0 }
                | if args.queue { Caps::QUEUE } else { 0 },
            ..old
        }
    })
    .await
}

pub async fn unlimit(args: UnlimitArgs, tc_attach: TcAttach) -> anyhow::Result<()> {
    let both = !args.egress && !args.ingress;
    update(&args.container, tc_attach, |old, _| Caps {
        egress_bits: if both || args.egress {
            0
        } else {
            old.egress_bits
        },
        ingress_bits: if both || args.ingress {
            0
        } else {
            old.ingress_bits
        },
        ..old
    })
    .await
}

/// Reads the container's caps, applies `change` (given them and the largest packet its veths
/// pass), writes them back and says the result.
async fn update(
    query: &str,
    tc_attach: TcAttach,
    change: impl FnOnce(Caps, u64) -> Caps,
) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach).await?;
    agent.refresh(&HashSet::new()).await?;
    let container = find(&agent.containers, query)?.clone();
    let old = container
        .addresses()
        .next()
        .and_then(|ip| agent.datapath.caps().ok()?.get(&ip).copied())
        .unwrap_or_default();
    let largest = container
        .interfaces
        .iter()
        .flatten()
        .filter_map(|i| gso_max_size(&i.name))
        .max()
        .unwrap_or(GSO_MAX_SIZE);
    let new = change(old, largest);
    let fastest = new.egress_bits.max(new.ingress_bits);
    if fastest != 0 {
        check_burst(new.burst_bytes, fastest, agent.caps.clock_tick_ns)
            .and_then(|()| check_burst_packet(new.burst_bytes, largest))
            .map_err(|e| InputError(e.to_string()))?;
    }
    match agent.datapath.set_caps(&container, new) {
        Err(DatapathError::Queue(e @ QueueError::Occupied { .. })) => {
            return Err(InputError(e.to_string()).into());
        }
        Err(DatapathError::NoAddress(name)) => {
            let why = container.notes.first().map_or(
                "it has no IP address of its own (--network host or none?)",
                String::as_str,
            );
            return Err(InputError(format!("container {name} cannot be capped: {why}")).into());
        }
        other => other?,
    }
    println!(
        "{}: egress {}, ingress {}",
        container.name,
        show(new.egress_bits),
        show(new.ingress_bits)
    );
    Ok(())
}

/// The one running container `query` names.
fn find<'a>(containers: &'a [Container], query: &str) -> Result<&'a Container, InputError> {
    let mut matches = containers.iter().filter(|c| c.matches(query));
    let first = matches.next().ok_or_else(|| {
        InputError(format!(
            "no running container is named or has the id {query:?}"
        ))
    })?;
    if matches.next().is_some() {
        return Err(InputError(format!(
            "{query:?} matches several containers: give more of the id"
        )));
    }
    Ok(first)
}

fn show(bits: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display")]
    let b = bits as f64;
    match bits {
        0 => "not capped".to_owned(),
        1..1_000 => format!("{bits} bit/s"),
        1_000..1_000_000 => format!("{} kbit/s", b / 1e3),
        1_000_000..1_000_000_000 => format!("{} Mbit/s", b / 1e6),
        _ => format!("{} Gbit/s", b / 1e9),
    }
}
