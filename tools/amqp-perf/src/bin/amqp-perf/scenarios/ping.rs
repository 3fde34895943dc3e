//! ping: connect, open a channel, close; fails after 5 s.

use crate::report::{Json, Table};
use crate::Cli;
use amqp_perf::client::{AmqpUri, Conn};
use anyhow::{anyhow, Result};
use std::time::{Duration, Instant};

pub async fn run(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
    let start = Instant::now();
    let conn = tokio::time::timeout(Duration::from_secs(5), Conn::connect(uri, "amqp-perf ping"))
        .await
        .map_err(|_| anyhow!("no answer from {} within 5 s", uri.addr))??;
    let connect_ms = start.elapsed().as_secs_f64() * 1000.0;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
    let json = Json::obj()
        .with("scenario", "ping")
        .with("label", cli.label.clone())
        .with("broker", uri.addr.to_string())
        .with("ok", true)
        .with("connect_ms", connect_ms);
    let mut t = Table::default();
    t.row(
        "ok",
        format!("handshake and channel.open in {connect_ms:.1} ms"),
    );
    Ok((json, t))
}
