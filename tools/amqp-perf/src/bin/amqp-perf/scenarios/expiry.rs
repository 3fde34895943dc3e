//! expiry: publish --count messages with a per-message TTL into one queue
//! with no consumer, then wait until the broker has expired them all.
//! Reports the time from the last publish to an empty queue and the
//! broker's CPU time over the whole run.

use crate::monitor::Monitor;
use crate::plan::Plan;
use crate::report::{thousands, Json, Table};
use crate::stats::Counters;
use crate::workers::join_publishers;
use crate::{publisher, Cli};
use amqp_perf::client::{AmqpUri, Conn};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub async fn run(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
    let mut cli = cli.clone();
    cli.queue_count = Some(1);
    cli.consumers = Some(0);
    cli.expiration = Some(cli.expiration.unwrap_or(1000));
    let cli = &cli;
    let plan = Plan::new(cli)?;
    let monitor = Monitor::new(cli)?;
    let queue = plan.queues[0].clone();
    let mut control = Conn::connect(uri, "amqp-perf control").await?;
    plan.setup(cli, &mut control).await?;
    let counters = Arc::new(Counters::default());
    let (_stop_tx, stop_rx) = watch::channel(false);
    let mut errors = Vec::new();
    let before = monitor.sample();
    let start = Instant::now();
    let mut spec = plan.publish_spec(cli, 0, cli.count);
    spec.has_consumers = false;
    spec.rate = 0.0;
    spec.max_backlog = 0;
    let handle = tokio::spawn(publisher::run(
        uri.clone(),
        spec,
        0,
        counters.clone(),
        stop_rx.clone(),
    ));
    let sent = join_publishers(vec![handle], &mut errors, Duration::from_secs(600)).await;
    let published_at = Instant::now();
    let publish_secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut depth;
    loop {
        depth = control.queue_declare(&queue, false, true).await? as u64;
        if depth == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expire_secs = published_at.elapsed().as_secs_f64();
    let total_secs = start.elapsed().as_secs_f64();
    let after = monitor.sample();
    if depth > 0 {
        errors.push(format!("{depth} messages still queued after 600 s"));
    }
    control.close().await;
    plan.teardown(cli, uri).await;
    let cpu_secs = match (before.broker, after.broker) {
        (Some(a), Some(b)) => Some((b.ticks - a.ticks) as f64 / monitor.hz),
        _ => None,
    };
    let json = Json::obj()
        .with("scenario", "expiry")
        .with("label", cli.label.clone())
        .with("broker", uri.addr.to_string())
        .with("count", sent)
        .with("expiration_ms", cli.expiration.unwrap_or(0))
        .with("publish_seconds", publish_secs)
        .with("empty_after_last_publish_seconds", expire_secs)
        .with("total_seconds", total_secs)
        .with("broker_cpu_seconds", cpu_secs)
        .with("errors", errors.clone());
    let mut t = Table::default();
    t.row(
        "setup",
        format!(
            "{} messages, {} B, expiration {} ms, no consumer",
            thousands(sent as f64),
            cli.size,
            cli.expiration.unwrap_or(0)
        ),
    );
    t.row("published", format!("in {publish_secs:.2} s"));
    t.row(
        "expired",
        format!("queue empty {expire_secs:.2} s after the last publish ({total_secs:.2} s in all)"),
    );
    if let Some(cpu) = cpu_secs {
        t.row("broker CPU", format!("{cpu:.2} s"));
    }
    for e in &errors {
        t.row("error", e.clone());
    }
    Ok((json, t))
}
