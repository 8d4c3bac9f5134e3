//! dockops: per-container counters and limits for Docker hosts, on eBPF and cgroups.
//!
//! The pipeline, each stage a module with a plain data type between it and the next:
//! [`discovery`] (Docker API, network namespaces: [`discovery::Container`]) →
//! [`policy`] (pure: what was asked, checked: [`policy::resources::Resources`]) →
//! enforcement: [`datapath`] (load, attach, pin, adopt eBPF: keeps the kernel in line with the
//! containers) and [`limits`] (CPU, memory, pids, block IO through Docker and cgroup files) →
//! [`collection`] (read counters into a [`collection::Snapshot`]) → [`output`] (table, JSON).
//! [`agent`] holds the stages together for every command: it refreshes (discovery, then
//! enforcement) and snapshots (collection). [`capabilities`] is probed once at start-up and
//! read by the others; [`cgroupfs`],
//! [`btrfs`] and [`quota`] hold the kernel formats and calls the writers and readers share.

pub mod agent;
pub mod btrfs;
pub mod capabilities;
pub mod cgroupfs;
pub mod collection;
pub mod datapath;
pub mod discovery;
pub mod limits;
pub mod output;
pub mod policy;
pub mod quota;
pub mod state;
