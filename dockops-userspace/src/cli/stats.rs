//! `dockops-bpf stats`: one snapshot.

use std::{collections::HashSet, time::Duration};

use dockops::{collection, discovery::Container, output};

use super::{Agent, InputError, TcAttach, watch::Format};

#[derive(clap::Args)]
pub struct Args {
    /// Containers to show, by name or id (prefix); all running containers when omitted.
    containers: Vec<String>,
    /// table: for people; json: one object per container per line, for log shippers.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Time between the two readings that CPU percent and per-second rates come from;
    /// 0 for a single reading (those fields are then null).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    sample: Duration,
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach.mode()).await?;
    agent.refresh(&HashSet::new()).await?;
    let wanted =
        |c: &Container| args.containers.is_empty() || args.containers.iter().any(|q| c.matches(q));
    if let Some(missing) = args
        .containers
        .iter()
        .find(|q| !agent.containers.iter().any(|c| c.matches(q)))
    {
        return Err(InputError(format!(
            "no running container is named or has the id {missing:?}"
        ))
        .into());
    }
    let mut snapshot = agent.snapshot(wanted)?;
    if !args.sample.is_zero() {
        // Percentages and per-second rates need a second reading.
        let first = snapshot;
        tokio::time::sleep(args.sample).await;
        snapshot = agent.snapshot(wanted)?;
        snapshot.apply(&collection::rates(&first, &snapshot));
    }
    // `stats -v` shows them; a count that grows is warned about in any case.
    for (map, count) in &snapshot.insert_failures {
        tracing::info!("map {map}: {count} failed insert(s)");
    }
    let text = match args.format {
        Format::Table => output::stats_table(&snapshot),
        Format::Json => output::json_lines(&snapshot),
    };
    print!("{text}");
    Ok(())
}
