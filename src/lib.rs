//! An AMQP 0-9-1 message broker compatible with RabbitMQ clients.
//!
//! Layers, top to bottom (see README "Layout"): `protocol` (frames), `connection`
//! (one task per client), `broker` (vhosts, exchanges, queues), `store`
//! (persistence) and `mgmt` (HTTP API and metrics).

pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod mgmt;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::Server;
