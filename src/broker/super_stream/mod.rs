//! Super streams (partitioned streams): their partitions, and consumer
//! groups reading them. Routing into the partitions is the
//! `x-super-stream` exchange's (`exchange/super_stream.rs`); the vhost
//! creates the partitions and holds the groups.

pub mod group;
pub mod partitions;
