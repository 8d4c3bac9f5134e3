//! `dockops-bpf watch`: a live view, refreshed in place on a terminal, or JSON lines.

use std::{
    collections::HashSet,
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;
use dockops::{collection, output};
use futures::StreamExt as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{Agent, TcAttach};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// Time between refreshes, e.g. 500ms, 1s, 2m.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// table: for people; json: one object per container per line, for log shippers.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 1s, 2m)"))?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".to_owned());
    }
    Ok(d)
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let mut agent = Agent::start(tc_attach).await?;
    agent.refresh(&HashSet::new()).await?;
    let mut events = Box::pin(agent.docker.events());
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let tty = std::io::stdout().is_terminal();
    let mut previous = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let snapshot = agent.snapshot(|_| true)?;
                let text = match args.format {
                    Format::Json => output::json_lines(&snapshot),
                    Format::Table => {
                        let rates = previous.as_ref().map(|p| collection::rates(p, &snapshot)).unwrap_or_default();
                        let table = output::watch_table(&snapshot, &rates);
                        // A terminal gets the view redrawn in place; a pipe gets a log.
                        if tty { format!("\x1b[H\x1b[2J{table}") } else { format!("{table}\n") }
                    }
                };
                let mut stdout = std::io::stdout().lock();
                // A closed pipe (`watch | head`) ends the view.
                if stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                    break;
                }
                previous = Some(snapshot);
            }
            event = events.next() => {
                let changed = match event {
                    Some(Ok(event)) => {
                        tracing::debug!(action = event.action, id = event.id, "docker event");
                        HashSet::from([event.id])
                    }
                    lost => {
                        if let Some(Err(error)) = lost {
                            tracing::warn!(%error, "lost the Docker event stream; resubscribing");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        events = Box::pin(agent.docker.events());
                        // Events may have been missed meanwhile: re-read every container.
                        agent.containers.iter().map(|c| c.id.clone()).collect()
                    }
                };
                // An engine restarting is no reason to stop watching: keep the last view.
                if let Err(error) = agent.refresh(&changed).await {
                    tracing::warn!("{error:#}");
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}
