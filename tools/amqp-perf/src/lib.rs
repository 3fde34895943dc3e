//! Code shared by the `amqp-perf` and `amqp-soak` binaries.
//!
//! `client` is a minimal AMQP 0-9-1 client over tokio sockets on the
//! broker crate's frame codec: connect, declare, bind, purge, delete and
//! close, then split into read and write halves for the load loops.

pub mod client;
