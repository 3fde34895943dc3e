//! connections: open N idle connections (each with one channel), measure
//! the broker's RSS growth, then close them.

use crate::monitor::{Monitor, Samples};
use crate::report::{human_kb, thousands, Json, Table};
use crate::stats::cpu_percent;
use crate::Cli;
use amqp_perf::client::{AmqpUri, Conn};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub async fn run(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
    let monitor = Monitor::new(cli)?;
    let n = cli.connections;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = monitor.sample();
    let sem = Arc::new(Semaphore::new(50));
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let sem = sem.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                Conn::connect(&uri, &format!("amqp-perf idle {i}")).await
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(n);
    let mut errors: Vec<String> = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let open_secs = start.elapsed().as_secs_f64();
    let opened = conns.len();
    if !cli.quiet {
        eprintln!("  opened {opened} connections in {open_secs:.2} s; holding 3 s");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held0 = monitor.sample();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held1 = monitor.sample();
    let idle_cpu = match (held0.broker, held1.broker) {
        (Some(a), Some(b)) => Some(cpu_percent(&a, &b, 2.0, monitor.hz)),
        _ => None,
    };
    let close_start = Instant::now();
    let closers: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                c.close().await;
            })
        })
        .collect();
    for c in closers {
        let _ = c.await;
    }
    let close_secs = close_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = monitor.sample();
    let rss = |s: &Samples| s.broker.map(|b| b.rss_kb);
    let per_conn = match (rss(&before), rss(&held1)) {
        (Some(a), Some(b)) if opened > 0 => Some((b as f64 - a as f64) * 1024.0 / opened as f64),
        _ => None,
    };
    let json = Json::obj()
        .with("scenario", "connections")
        .with("label", cli.label.clone())
        .with("broker", uri.addr.to_string())
        .with("requested", n)
        .with("opened", opened)
        .with("open_seconds", open_secs)
        .with("opened_per_sec", opened as f64 / open_secs)
        .with("close_seconds", close_secs)
        .with("broker_rss_before_kb", rss(&before))
        .with("broker_rss_open_kb", rss(&held1))
        .with("broker_rss_after_close_kb", rss(&after))
        .with("rss_bytes_per_connection", per_conn)
        .with("broker_idle_cpu_percent", idle_cpu)
        .with("errors", errors.clone());
    let mut t = Table::default();
    t.row(
        "opened",
        format!(
            "{opened} of {n} connections in {open_secs:.2} s ({} conn/s)",
            thousands(opened as f64 / open_secs)
        ),
    );
    if let (Some(a), Some(b), Some(c)) = (rss(&before), rss(&held1), rss(&after)) {
        t.row(
            "broker RSS",
            format!(
                "{} before, {} with connections open, {} after close",
                human_kb(a),
                human_kb(b),
                human_kb(c)
            ),
        );
    }
    if let Some(p) = per_conn {
        t.row("RSS per connection", format!("{:.1} KiB", p / 1024.0));
    }
    if let Some(c) = idle_cpu {
        t.row(
            "broker idle CPU",
            format!("{c:.1}% with all connections open"),
        );
    }
    t.row("closed", format!("in {close_secs:.2} s"));
    for e in &errors {
        t.row("error", e.clone());
    }
    Ok((json, t))
}
