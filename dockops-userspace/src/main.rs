//! `dockops-bpf`: the command line. Parses arguments and wires the library's stages.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "dockops-bpf",
    version,
    about = "Per-container monitoring and limits for Docker hosts, on eBPF and cgroups",
    long_about = "Per-container monitoring and limits for Docker hosts, on eBPF and cgroups.\n\n\
        The first command attaches counting programs to every running container's host-side \
        veth and pins them under /sys/fs/bpf/dockops, so counting goes on between commands. \
        Caps and limits asked for are recorded in /var/lib/dockops/state.json and re-applied \
        after reboots, upgrades and container restarts. `reset` removes everything dockops attached or pinned; \
        `reset --all` also forgets the caps. Needs root."
)]
struct Cli {
    /// Diagnostics format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log what is attached and removed (info level); `RUST_LOG` overrides.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// How to attach tc programs: tcx links (Linux >= 6.6) or netlink clsact filters.
    #[arg(long, global = true, value_enum, default_value_t = cli::TcAttach::Auto)]
    tc_attach: cli::TcAttach,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print one snapshot of per-container counters.
    Stats(cli::stats::Args),
    /// Live view: refresh every interval; picks up containers as they start and stop.
    Watch(cli::watch::Args),
    /// Limit running containers, live, all or nothing: network bandwidth, CPU, memory, pids,
    /// block IO per device.
    ///
    /// Bandwidth: egress (what it sends) and ingress (what it receives). TCP connections made
    /// from now on on this host are paced to the cap at the sender; a token bucket in tc holds
    /// the rest (ECN marks, then drops). Each call sets the mode (default, --no-pacing,
    /// --queue). CPU, memory and pids go through Docker's update API (`docker inspect` shows
    /// them); block IO throttles are written to the container's cgroup. Limits stay with the
    /// container, across restarts, until it is removed. Everything is checked before anything
    /// changes; if one container fails, the others are put back.
    Limit(Box<cli::limit::LimitArgs>),
    /// Remove limits: with no flag, both bandwidth caps; --all removes every limit; or name
    /// each one.
    Unlimit(cli::limit::UnlimitArgs),
    /// Show the limits in force on a container, read back from the kernel, and who set each.
    Show(cli::show::Args),
    /// Remove every program, link, filter, qdisc and pin dockops created. The caps asked
    /// for stay recorded in /var/lib/dockops/state.json, and the next command applies them
    /// again (as after a reboot), unless --all.
    Reset(cli::reset::Args),
    /// Say what this kernel offers dockops: cgroup mode, tc attach mode, fq, BTF, PSI, the
    /// BPF helpers and tracepoints dockops uses.
    Probe(cli::probe::Args),
    /// Policy files (TOML rules that give containers limits by name, image, label or compose
    /// project, and caps shared by a group): `policy check FILE` validates one offline.
    #[command(subcommand)]
    Policy(cli::policy::Command),
    /// Install the agent as a systemd service: this binary to /usr/local/bin/dockops-bpf,
    /// the unit (`watch --format none --metrics-addr 127.0.0.1:9101`) to
    /// /etc/systemd/system/dockops.service; then enable and (re)start it. Re-run it to
    /// upgrade: the restarted agent adopts what is attached, no limit is lifted.
    InstallService(cli::service::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Stats(args) => cli::stats::run(args, cli.tc_attach).await,
            Command::Watch(args) => cli::watch::run(args, cli.tc_attach).await,
            Command::Limit(args) => cli::limit::limit(*args, cli.tc_attach).await,
            Command::Unlimit(args) => cli::limit::unlimit(args, cli.tc_attach).await,
            Command::Show(args) => cli::show::run(args, cli.tc_attach).await,
            Command::Reset(args) => cli::reset::run(&args),
            Command::Probe(args) => cli::probe::run(&args, cli.tc_attach),
            Command::Policy(command) => cli::policy::run(&command),
            Command::InstallService(args) => cli::service::run(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<cli::InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(format: LogFormat, verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
