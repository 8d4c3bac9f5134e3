//! One module per subcommand, and the start-up they share.

pub mod limit;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod reset;
pub mod select;
pub mod service;
pub mod show;
pub mod stats;
pub mod watch;

use clap::ValueEnum;
pub use dockops::agent::Agent;
use dockops::capabilities::TcMode;

/// A mistake in what the user asked for (exit status 2), as opposed to a failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

#[derive(Clone, Copy, ValueEnum)]
pub enum TcAttach {
    /// tcx where the kernel has it (>= 6.6), netlink otherwise.
    Auto,
    /// BPF links on the tcx hook: pinned, no qdisc.
    Tcx,
    /// BPF filters on a clsact qdisc (added, and removed again, if absent).
    Netlink,
}

impl TcAttach {
    /// The attach mode asked for; None: decide by kernel.
    pub fn mode(self) -> Option<TcMode> {
        match self {
            Self::Auto => None,
            Self::Tcx => Some(TcMode::Tcx),
            Self::Netlink => Some(TcMode::Netlink),
        }
    }
}
