//! The integration tests, as one crate: one binary to link after a change
//! to the broker instead of one per file. Each `tests/it/NAME.rs` is the
//! module `NAME`, so its tests are named `NAME::test_name`: run one file
//! with `cargo nextest run -E 'test(/^NAME::/)'`. (`cargo test --test it
//! NAME::` matches substrings: `queues::` also runs `quorum_queues::`.)
//!
//! Under `cargo test` (tests/run.sh without nextest) every test shares this
//! one process: nothing here may change process-wide state (environment
//! variables, the working directory); per-broker settings go to the broker
//! binary's own environment (`BrokerProcess::start_with_env`).
//!
//! `common`, `mgmt_support`, `pki` and `sync_gate` are the shared support
//! modules (`use crate::common::...`).

mod common;
mod mgmt_support;
mod netns;
mod pki;
mod sync_gate;

mod alarms;
mod broker_layers;
mod catalog_durability;
mod cli;
mod cluster;
mod compaction;
mod config_startup;
mod confirms;
mod connection;
mod consume_ack;
mod consumer_groups;
mod disk_full;
mod durability;
mod examples;
mod exchanges;
mod flow;
mod fuzz_regressions;
mod lifecycle;
mod limits;
mod mgmt_api;
mod mgmt_browse;
mod mgmt_channels;
mod mgmt_connections_tls;
mod mgmt_definitions;
mod mgmt_https;
mod mgmt_input_limits;
mod mgmt_message_stats;
mod mgmt_metrics;
mod mgmt_permissions;
mod mgmt_policies;
mod mgmt_queue_stats;
mod mgmt_rabbitmqadmin;
mod mgmt_rabbitmqadmin_v2;
mod mgmt_rates;
mod mgmt_ui;
mod mgmt_users;
mod name_limits;
mod paging;
mod permissions;
mod plugins;
mod policies;
mod protocol_errors;
mod protocol_races;
mod queues;
mod quorum_queues;
mod redeclare;
mod removal_paths;
mod streams;
mod tls;
mod tx_durability;
