//! One file per scenario (`--scenario NAME`); each takes the options and
//! the broker's address and returns its report as JSON and as a table.

pub mod backlog;
pub mod connections;
pub mod expiry;
pub mod fanout;
pub mod group;
pub mod latency;
pub mod ping;
pub mod throughput;
