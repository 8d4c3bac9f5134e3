//! `dockops-bpf stats`: one snapshot.

use std::collections::HashSet;

use dockops::{discovery::Container, output};

use super::{Agent, InputError, TcAttach, watch::Format};

#[derive(clap::Args)]
pub struct Args {
    /// Containers to show, by name or id (prefix); all running containers when omitted.
    containers: Vec<String>,
    /// table: for people; json: one object per container per line, for log shippers.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach).await?;
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
    let snapshot = agent.snapshot(wanted)?;
    let text = match args.format {
        Format::Table => output::stats_table(&snapshot),
        Format::Json => output::json_lines(&snapshot),
    };
    print!("{text}");
    Ok(())
}
