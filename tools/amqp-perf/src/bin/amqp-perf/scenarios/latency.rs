//! latency: one publisher at a fixed --rate (default 1000 msg/s); each body
//! carries its send time, so the consumers report latency percentiles. The
//! run itself is the throughput scenario's.

use crate::report::{Json, Table};
use crate::scenarios::throughput;
use crate::{Cli, Endpoints};
use anyhow::Result;

pub async fn run(cli: &Cli, ends: &Endpoints) -> Result<(Json, Table)> {
    let mut cli = cli.clone();
    if cli.rate <= 0.0 {
        cli.rate = 1000.0;
    }
    // The send timestamp takes the body's first 8 bytes.
    if cli.size < 8 {
        cli.size = 8;
    }
    throughput::run(&cli, ends).await
}
