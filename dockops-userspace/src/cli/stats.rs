//! `dockops-bpf stats`: one snapshot.

use dockops::output;

use super::{Agent, InputError, TcAttach};

#[derive(clap::Args)]
pub struct Args {
    /// Containers to show, by name or id (prefix); all running containers when omitted.
    containers: Vec<String>,
    /// table: for people; json: one object per container per line, for log shippers.
    #[arg(long, value_enum, default_value_t = super::watch::Format::Table)]
    format: super::watch::Format,
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach).await?;
    let mut containers = agent.refresh().await?;
    if !args.containers.is_empty() {
        if let Some(missing) = args
            .containers
            .iter()
            .find(|q| !containers.iter().any(|c| c.matches(q)))
        {
            return Err(InputError(format!(
                "no running container is named or has the id {missing:?}"
            ))
            .into());
        }
        containers.retain(|c| args.containers.iter().any(|q| c.matches(q)));
    }
    let snapshot = agent.snapshot(&containers)?;
    print!(
        "{}",
        match args.format {
            super::watch::Format::Table => output::stats_table(&snapshot),
            super::watch::Format::Json => output::json_lines(&snapshot),
        }
    );
    Ok(())
}
