//! Turning snapshots into text: tables for people, JSON lines for log shippers.

mod json;
pub mod prometheus;
mod table;

pub use json::json_lines;
pub use table::{SortKey, short as short_bytes, stats_table, watch_table, window};
