//! dockops: per-container network counters (and later limits) for Docker hosts, on eBPF.
//!
//! The pipeline, each stage a module with a plain data type between it and the next:
//! [`discovery`] (Docker API, network namespaces: [`discovery::Container`]) →
//! [`datapath`] (load, attach, pin, adopt eBPF: keeps the kernel in line with the containers) →
//! [`collection`] (read counters into a [`collection::Snapshot`]) → [`output`] (table, JSON).
//! [`capabilities`] is probed once at start-up and read by the others.

pub mod capabilities;
pub mod collection;
pub mod datapath;
pub mod discovery;
pub mod output;
pub mod policy;
pub mod state;
