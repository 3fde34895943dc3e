//! Starting, waiting for and joining the publisher and consumer tasks of a
//! scenario, and the per-second progress line.

use crate::plan::Plan;
use crate::report::thousands;
use crate::stats::{Counters, Histogram, Snapshot};
use crate::{consumer, publisher, Cli};
use amqp_perf::client::AmqpUri;
use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub fn spawn_consumers(
    cli: &Cli,
    plan: &Plan,
    uri: &AmqpUri,
    counters: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> (Vec<JoinHandle<Result<Histogram>>>, mpsc::Receiver<()>) {
    let (ready_tx, ready_rx) = mpsc::channel(plan.consumers.max(1));
    let handles = (0..plan.consumers)
        .map(|i| {
            tokio::spawn(consumer::run(
                uri.clone(),
                plan.consume_spec(cli, i),
                i,
                counters.clone(),
                ready_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    (handles, ready_rx)
}

/// Waits until `n` consumers said they are ready (or one failed).
pub async fn wait_ready(
    ready: &mut mpsc::Receiver<()>,
    n: usize,
    handles: &[JoinHandle<Result<Histogram>>],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < n {
        if Instant::now() > deadline {
            bail!("consumers not ready after 30 s");
        }
        if handles.iter().any(|h| h.is_finished()) {
            bail!("a consumer failed to start");
        }
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(100), ready.recv()).await {
            got += 1;
        }
    }
    Ok(())
}

pub async fn join_consumers(
    handles: Vec<JoinHandle<Result<Histogram>>>,
    errors: &mut Vec<String>,
) -> Histogram {
    let mut hist = Histogram::default();
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(Ok(part))) => hist.merge(&part),
            Ok(Ok(Err(e))) => errors.push(format!("consumer: {e:#}")),
            Ok(Err(e)) => errors.push(format!("consumer task: {e}")),
            Err(_) => errors.push("consumer did not stop in 10 s".into()),
        }
    }
    hist
}

pub async fn join_publishers(
    handles: Vec<JoinHandle<Result<publisher::PublisherResult>>>,
    errors: &mut Vec<String>,
    wait: Duration,
) -> u64 {
    let mut sent = 0;
    for h in handles {
        match tokio::time::timeout(wait, h).await {
            Ok(Ok(Ok(r))) => {
                sent += r.sent;
                if let Some(e) = r.error {
                    errors.push(format!("publisher: {e}"));
                }
            }
            Ok(Ok(Err(e))) => errors.push(format!("publisher: {e:#}")),
            Ok(Err(e)) => errors.push(format!("publisher task: {e}")),
            Err(_) => errors.push("publisher did not stop in time".into()),
        }
    }
    sent
}

/// The per-second progress line on stderr (unless --quiet).
pub fn progress(cli: &Cli, t: f64, prev: &Snapshot, now: &Snapshot, dt: f64) {
    if cli.quiet {
        return;
    }
    eprintln!(
        "  t={t:5.1}s  published {:>10}/s  confirmed {:>10}/s  consumed {:>10}/s",
        thousands(rate(prev.published, now.published, dt)),
        thousands(rate(prev.confirmed, now.confirmed, dt)),
        thousands(rate(prev.consumed, now.consumed, dt)),
    );
}

/// Messages per second between two counter readings.
pub fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        b.saturating_sub(a) as f64 / secs
    }
}
