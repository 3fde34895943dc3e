//! backlog: publish --count messages into one queue with nobody consuming,
//! then drain them. On a stream (`--queue-type stream`) the drain reads the
//! log from --stream-offset and ends when the consumers have received
//! --count messages: acks do not remove anything from a stream.

use crate::monitor::Monitor;
use crate::plan::Plan;
use crate::report::{human_kb, thousands, Json, Table};
use crate::stats::Counters;
use crate::workers::{join_consumers, join_publishers, progress, spawn_consumers, wait_ready};
use crate::{publisher, Cli};
use amqp_perf::client::{AmqpUri, Conn};
use anyhow::{bail, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub async fn run(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
    let mut cli = cli.clone();
    cli.queue_count = Some(1);
    let cli = &cli;
    let plan = Plan::new(cli)?;
    if plan.stream && !matches!(cli.stream_offset.as_str(), "first" | "0") {
        bail!("backlog reads the whole stream: use --stream-offset first");
    }
    let monitor = Monitor::new(cli)?;
    let queue = plan.queues[0].clone();
    let mut control = Conn::connect(uri, "amqp-perf control").await?;
    plan.setup(cli, &mut control).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = monitor.broker_rss();
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut errors = Vec::new();

    // Phase 1: publish.
    let publishers = plan.publishers.max(1);
    let per = cli.count / publishers as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..publishers)
        .map(|i| {
            let n = per
                + if i == 0 {
                    cli.count % publishers as u64
                } else {
                    0
                };
            let mut spec = plan.publish_spec(cli, i, n);
            spec.has_consumers = false;
            spec.rate = 0.0;
            tokio::spawn(publisher::run(
                uri.clone(),
                spec,
                i,
                counters.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut prev = counters.snapshot();
    let mut prev_t = Instant::now();
    tick.tick().await;
    while !handles.iter().all(|h| h.is_finished()) {
        tokio::select! {
            _ = tick.tick() => {
                let now = counters.snapshot();
                progress(cli, start.elapsed().as_secs_f64(), &prev, &now, prev_t.elapsed().as_secs_f64());
                prev = now;
                prev_t = Instant::now();
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = stop_tx.send(true);
            errors.push("publishing took over 600 s".into());
            break;
        }
    }
    let sent = join_publishers(handles, &mut errors, Duration::from_secs(60)).await;
    // A stream's message count need not be exact (RabbitMQ reports its own
    // notion of it); with confirms every sent message is in the log, and
    // without them the readers follow the tail until they have them all.
    let depth = if plan.stream {
        sent
    } else {
        wait_depth(&mut control, &queue, sent, Duration::from_secs(120)).await?
    };
    let publish_secs = start.elapsed().as_secs_f64();
    if depth < sent {
        errors.push(format!("queue holds {depth} of {sent} published messages"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = monitor.broker_rss();

    // Phase 2: drain.
    let mut drain_plan = Plan::new(cli)?;
    drain_plan.consumers = plan.consumers.max(1);
    let (consumer_handles, mut ready) = spawn_consumers(cli, &drain_plan, uri, &counters, &stop_rx);
    let drain_start = Instant::now();
    wait_ready(&mut ready, drain_plan.consumers, &consumer_handles).await?;
    let mut prev = counters.snapshot();
    let mut prev_t = Instant::now();
    // Every reader of a stream reads the whole log.
    let target = if plan.stream {
        depth * drain_plan.consumers as u64
    } else {
        depth
    };
    let mut last_seen = (0, Instant::now());
    while counters.consumed.load(Ordering::Relaxed) < target {
        if consumer_handles.iter().any(|h| h.is_finished()) {
            errors.push("a consumer stopped during the drain".into());
            break;
        }
        if plan.stream {
            let now = counters.consumed.load(Ordering::Relaxed);
            if now != last_seen.0 {
                last_seen = (now, Instant::now());
            } else if last_seen.1.elapsed() > Duration::from_secs(30) {
                errors.push(format!(
                    "read stalled at {now} of {target} deliveries for 30 s"
                ));
                break;
            }
        }
        if drain_start.elapsed() > Duration::from_secs(600) {
            errors.push("drain took over 600 s".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if prev_t.elapsed() >= Duration::from_secs(1) {
            let now = counters.snapshot();
            progress(
                cli,
                start.elapsed().as_secs_f64(),
                &prev,
                &now,
                prev_t.elapsed().as_secs_f64(),
            );
            prev = now;
            prev_t = Instant::now();
        }
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let consumed = counters.consumed.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    join_consumers(consumer_handles, &mut errors).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss2 = monitor.broker_rss();
    control.close().await;
    plan.teardown(cli, uri).await;

    let publish_rate = sent as f64 / publish_secs;
    let drain_rate = consumed as f64 / drain_secs;
    let per_msg = match (rss0, rss1) {
        (Some(a), Some(b)) if depth > 0 => Some((b as f64 - a as f64) * 1024.0 / depth as f64),
        _ => None,
    };
    let json = Json::obj()
        .with("scenario", "backlog")
        .with("label", cli.label.clone())
        .with("broker", uri.addr.to_string())
        .with("config", plan.describe(cli))
        .with("count", sent)
        .with("queued", depth)
        .with("publish_seconds", publish_secs)
        .with("published_per_sec", publish_rate)
        .with("drain_seconds", drain_secs)
        .with("consumed", consumed)
        .with("drained_per_sec", drain_rate)
        .with("broker_rss_before_kb", rss0)
        .with("broker_rss_full_kb", rss1)
        .with("broker_rss_after_drain_kb", rss2)
        .with("rss_bytes_per_message", per_msg)
        .with("errors", errors.clone());
    let mut t = Table::default();
    t.row("setup", plan.summary(cli));
    t.row(
        "published",
        format!(
            "{} messages in {publish_secs:.2} s: {} msg/s",
            thousands(sent as f64),
            thousands(publish_rate)
        ),
    );
    t.row(
        if plan.stream { "read" } else { "drained" },
        format!(
            "{} messages in {drain_secs:.2} s: {} msg/s",
            thousands(consumed as f64),
            thousands(drain_rate)
        ),
    );
    if let (Some(a), Some(b), Some(c)) = (rss0, rss1, rss2) {
        t.row(
            "broker RSS",
            format!(
                "{} empty, {} with backlog, {} after drain",
                human_kb(a),
                human_kb(b),
                human_kb(c)
            ),
        );
    }
    if let Some(p) = per_msg {
        t.row(
            "RSS per message",
            format!(
                "{p:.0} B ({:.0} B over the {} B body)",
                p - cli.size as f64,
                cli.size
            ),
        );
    }
    for e in &errors {
        t.row("error", e.clone());
    }
    Ok((json, t))
}

/// Polls the queue depth until it reaches `count` (bounded).
async fn wait_depth(conn: &mut Conn, queue: &str, count: u64, limit: Duration) -> Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let depth = conn.queue_declare(queue, false, true).await? as u64;
        if depth >= count || Instant::now() > deadline {
            return Ok(depth);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
