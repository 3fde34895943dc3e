//! fanout: publishers into a fanout exchange (default `perf-fanout`) bound
//! to --queue-count queues (default 10), with one consumer per queue unless
//! --consumers says otherwise. The run itself is the throughput scenario's.

use crate::report::{Json, Table};
use crate::scenarios::throughput;
use crate::{Cli, Endpoints};
use anyhow::Result;

pub async fn run(cli: &Cli, ends: &Endpoints) -> Result<(Json, Table)> {
    let mut cli = cli.clone();
    let queue_count = *cli.queue_count.get_or_insert(10);
    cli.exchange.get_or_insert_with(|| "perf-fanout".into());
    cli.exchange_type = "fanout".into();
    cli.consumers.get_or_insert(queue_count);
    throughput::run(&cli, ends).await
}
