//! `dockops-bpf watch`: a top-like live view on a terminal, a periodic table when piped, or
//! JSON lines; optionally `/metrics` for Prometheus.

use std::{
    collections::{HashMap, HashSet},
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use crossterm::{
    cursor,
    event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, terminal,
};
use dockops::{
    agent::AgentError,
    collection::{self, Rates, Snapshot},
    datapath::DatapathError,
    discovery::{DiscoveryError, Event as DockerEvent},
    output::{self, SortKey},
};
use futures::{FutureExt as _, StreamExt as _};
use tokio::signal::unix::{SignalKind, signal};

use super::{Agent, TcAttach, metrics::Metrics, policy::Followed};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What `watch` prints.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
    None,
}

#[derive(clap::Args)]
pub struct Args {
    /// Time between refreshes, e.g. 500ms, 1s, 2m.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// table: for people; json: one object per container per line, for log shippers; none:
    /// nothing on stdout (a service: the agent, and metrics with --metrics-addr).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    format: Output,
    /// Serve Prometheus metrics on ADDR at /metrics. PORT or :PORT listens on loopback only;
    /// give HOST:PORT (e.g. 0.0.0.0:9101) to listen elsewhere.
    #[arg(long, value_name = "ADDR", value_parser = super::metrics::parse_addr)]
    metrics_addr: Option<SocketAddr>,
    /// Exit after this many refreshes (like `top -n`); run until stopped when omitted.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Re-read every container and repair the datapath this often, besides following Docker
    /// events (a veth or link removed by hand, an event the engine lost).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    resync: Duration,
    /// On SIGTERM, SIGINT or q, remove everything dockops put in the kernel (as `reset`:
    /// caps, counters, programs, pins, qdiscs). Without it they stay, and the next start
    /// adopts them. What was asked stays recorded either way.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// The policy file (TOML rules giving containers limits; `dockops-bpf policy check`
    /// validates one). Re-read when it changes and on SIGHUP. Default:
    /// /etc/dockops/policy.toml when it exists.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 1s, 2m)"))?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".to_owned());
    }
    Ok(d)
}

pub async fn run(args: Args, tc_attach: TcAttach) -> anyhow::Result<()> {
    let (mut policy_file, policy) = Followed::open(args.policy)?;
    let mut agent = Agent::start(tc_attach.mode()).await?;
    agent.enforce(policy);
    // Subscribed from before the listing: a container starting in between is replayed.
    let mut since = now();
    let mut events = Box::pin(agent.docker.events(Some(since)));
    agent.refresh(&HashSet::new()).await?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(Metrics::serve(addr).await?),
        None => None,
    };
    let mut resync = every(args.resync);
    resync.reset();
    let mut ticker = every(args.interval);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let interactive = args.format == Output::Table
        && std::io::stdout().is_terminal()
        && std::io::stdin().is_terminal();
    let screen = if interactive {
        Some(Screen::enter()?)
    } else {
        None
    };
    let mut keys = screen.as_ref().map(|_| EventStream::new());
    let mut view = View {
        sort: SortKey::default(),
        screen: screen.is_some(),
        offset: 0,
    };
    // The last reading and its rates: the base of the next rates, and what a key redraws.
    let mut previous: Option<(Arc<Snapshot>, HashMap<String, Rates>)> = None;
    let mut refreshes = 0;
    while args.count.is_none_or(|n| refreshes < n) {
        tokio::select! {
            _ = ticker.tick() => {
                follow(&mut agent, &mut policy_file, false).await?;
                refreshes += 1;
                // Nobody to read a snapshot: the agent only.
                if args.format == Output::None && metrics.is_none() {
                    continue;
                }
                let (snapshot, rates) = read(&mut agent, previous.as_ref())?;
                if let Some(metrics) = &metrics {
                    metrics.publish(Arc::clone(&snapshot));
                }
                let text = match args.format {
                    Output::Json => output::json_lines(&snapshot),
                    Output::Table => view.render(&snapshot, &rates),
                    Output::None => String::new(),
                };
                // A closed pipe (`watch | head`) ends the view.
                if args.format != Output::None && !emit(&text) {
                    break;
                }
                previous = Some((snapshot, rates));
            }
            key = next_key(&mut keys) => match key {
                Some(Key::Quit) => break,
                Some(Key::Char(c)) => {
                    if let Some(sort) = SortKey::from_key(c) {
                        view.sort = sort;
                        if let Some((snapshot, rates)) = &previous {
                            emit(&view.render(snapshot, rates));
                        }
                    }
                }
                Some(Key::Scroll(by)) => {
                    view.scroll(by);
                    if let Some((snapshot, rates)) = &previous {
                        emit(&view.render(snapshot, rates));
                    }
                }
                None => keys = None,
            },
            event = events.next() => {
                let (mut changed, lost) = changes(drain(event, &mut events), &mut since);
                if lost {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    events = Box::pin(agent.docker.events(Some(since)));
                    // Events may have been missed meanwhile: re-read every container.
                    changed.extend(agent.containers.iter().map(|c| c.id.clone()));
                }
                refresh(&mut agent, &changed).await?;
            }
            _ = resync.tick() => {
                let all = agent.containers.iter().map(|c| c.id.clone()).collect();
                refresh(&mut agent, &all).await?;
            }
            _ = sighup.recv() => follow(&mut agent, &mut policy_file, true).await?,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    drop(screen);
    if args.cleanup_on_exit {
        drop(agent);
        cleanup()?;
    }
    Ok(())
}

/// `--cleanup-on-exit`: what `reset` removes.
fn cleanup() -> anyhow::Result<()> {
    let cleared = dockops::datapath::reset()?;
    tracing::info!(removed = cleared.removed.len(), "cleaned up on exit");
    for error in &cleared.failed {
        tracing::error!("cleaning up on exit: {error}");
    }
    anyhow::ensure!(
        cleared.failed.is_empty(),
        "{} removal(s) failed on exit (see above)",
        cleared.failed.len()
    );
    Ok(())
}

/// How the table is drawn.
struct View {
    sort: SortKey,
    /// On the alternate screen in raw mode: redraw in place, `\r\n` line ends, rows
    /// beyond the terminal's height scrolled to.
    screen: bool,
    /// The first row shown.
    offset: usize,
}

impl View {
    fn render(&mut self, snapshot: &Snapshot, rates: &HashMap<String, Rates>) -> String {
        let table = output::watch_table(snapshot, rates, self.sort);
        if self.screen {
            let height = terminal::size().map_or(24, |(_, rows)| usize::from(rows));
            let (shown, offset) = output::window(&table, height, self.offset);
            self.offset = offset;
            format!("\x1b[H\x1b[2J{}", shown.replace('\n', "\r\n"))
        } else {
            format!("{table}\n")
        }
    }

    /// Moves the rows shown by `by` (a page is the terminal's height less the header).
    fn scroll(&mut self, by: Scroll) {
        let page = terminal::size().map_or(20, |(_, rows)| usize::from(rows).saturating_sub(4));
        self.offset = match by {
            Scroll::Down => self.offset + 1,
            Scroll::Up => self.offset.saturating_sub(1),
            Scroll::PageDown => self.offset + page.max(1),
            Scroll::PageUp => self.offset.saturating_sub(page.max(1)),
        };
    }
}

#[derive(Clone, Copy)]
enum Scroll {
    Down,
    Up,
    PageDown,
    PageUp,
}

/// Refreshes; a failure (an engine restarting...) is warned about and retried at the next
/// event or resync, with the last view kept, except when another build took the datapath
/// over: then this process must stop.
async fn refresh(agent: &mut Agent, changed: &HashSet<String>) -> anyhow::Result<()> {
    match agent.refresh(changed).await {
        Err(error @ AgentError::Datapath(DatapathError::Superseded)) => Err(error.into()),
        Err(error) => {
            tracing::warn!("{:#}", anyhow::Error::from(error));
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// `first` and the events already waiting behind it: a burst (compose up, the agent's own
/// `docker update`s) makes one refresh. Stops after the end of the stream or an error.
fn drain(
    first: Option<EventItem>,
    events: &mut (impl futures::Stream<Item = EventItem> + Unpin),
) -> Vec<Option<EventItem>> {
    let mut batch = vec![first];
    while matches!(batch.last(), Some(Some(Ok(_)))) {
        match events.next().now_or_never() {
            Some(next) => batch.push(next),
            None => break,
        }
    }
    batch
}

type EventItem = Result<DockerEvent, DiscoveryError>;

/// The containers a batch of events names, and whether the stream was lost (ended or
/// failed) at its end.
fn changes(batch: Vec<Option<EventItem>>, since: &mut i64) -> (HashSet<String>, bool) {
    let mut changed = HashSet::new();
    for item in batch {
        match item {
            Some(Ok(event)) => {
                tracing::debug!(action = event.action, id = event.id, "docker event");
                *since = (*since).max(event.time);
                changed.insert(event.id);
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "lost the Docker event stream; resubscribing");
                return (changed, true);
            }
            None => return (changed, true),
        }
    }
    (changed, false)
}

/// Ticks every `period`, skipping those missed (a slow refresh does not queue up more).
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    interval
}

/// A snapshot, and the rates since `previous`.
fn read(
    agent: &mut Agent,
    previous: Option<&(Arc<Snapshot>, HashMap<String, Rates>)>,
) -> anyhow::Result<(Arc<Snapshot>, HashMap<String, Rates>)> {
    let started = std::time::Instant::now();
    let mut snapshot = agent.snapshot(|_| true)?;
    tracing::debug!(
        snapshot_us = started.elapsed().as_micros(),
        containers = snapshot.containers.len(),
        "snapshot"
    );
    let rates = previous
        .map(|(p, _)| collection::rates(p, &snapshot))
        .unwrap_or_default();
    snapshot.apply(&rates);
    Ok((Arc::new(snapshot), rates))
}

/// Re-reads the policy file (`force`: even unchanged) and applies it if it changed.
async fn follow(agent: &mut Agent, file: &mut Followed, force: bool) -> anyhow::Result<()> {
    if let Some(policy) = file.reload(force) {
        agent.enforce(policy);
        refresh(agent, &HashSet::new()).await?;
    }
    Ok(())
}

/// Seconds since the epoch, as Docker stamps events.
fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn emit(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

enum Key {
    Quit,
    Char(char),
    Scroll(Scroll),
}

/// The next key press; pending forever without a terminal, `None` when input ends.
async fn next_key(keys: &mut Option<EventStream>) -> Option<Key> {
    let Some(stream) = keys else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(Event::Key(KeyEvent {
                code,
                modifiers,
                kind: KeyEventKind::Press,
                ..
            })) => {
                return Some(match code {
                    // Raw mode turns Ctrl-C into a key press instead of SIGINT.
                    KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
                    KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
                    KeyCode::Char('j') | KeyCode::Down => Key::Scroll(Scroll::Down),
                    KeyCode::Char('k') | KeyCode::Up => Key::Scroll(Scroll::Up),
                    KeyCode::PageDown => Key::Scroll(Scroll::PageDown),
                    KeyCode::PageUp => Key::Scroll(Scroll::PageUp),
                    KeyCode::Char(c) => Key::Char(c),
                    _ => continue,
                });
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The terminal in raw mode on the alternate screen, restored on drop (also on error paths).
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        let screen = Self;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}
