//! throughput: publishers and consumers at full speed (or --rate) for
//! --warmup + --duration seconds; rates, latency percentiles (when the
//! bodies carry a timestamp) and the broker's CPU and RSS are measured over
//! the last --duration seconds. The latency and fanout scenarios are this
//! run with their own defaults (`latency.rs`, `fanout.rs`). Setup and
//! teardown go through --uri, publishers and consumers through
//! --publisher-uri and --consumer-uri when given (other cluster nodes).

use crate::monitor::{Monitor, Samples};
use crate::plan::Plan;
use crate::report::{human_kb, human_ns, thousands, Json, Table};
use crate::stats::{cpu_percent, Counters, Histogram, Snapshot};
use crate::workers::{
    join_consumers, join_publishers, progress, rate, spawn_consumers, wait_ready,
};
use crate::{publisher, scenario_name, Cli, Endpoints};
use amqp_perf::client::Conn;
use anyhow::{anyhow, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Runs for --warmup + --duration seconds and measures the last --duration.
pub async fn run(cli: &Cli, ends: &Endpoints) -> Result<(Json, Table)> {
    let uri = &ends.setup;
    let plan = Plan::new(cli)?;
    let monitor = Monitor::new(cli)?;
    let mut control = Conn::connect(uri, "amqp-perf control").await?;
    plan.setup(cli, &mut control).await?;

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut errors = Vec::new();
    let (consumer_handles, mut ready) =
        spawn_consumers(cli, &plan, &ends.consumer, &counters, &stop_rx);
    if let Err(e) = wait_ready(&mut ready, plan.consumers, &consumer_handles).await {
        let _ = stop_tx.send(true);
        join_consumers(consumer_handles, &mut errors).await;
        plan.teardown(cli, uri).await;
        return Err(anyhow!("{e}: {}", errors.join("; ")));
    }
    let publisher_handles: Vec<_> = (0..plan.publishers)
        .map(|i| {
            tokio::spawn(publisher::run(
                ends.publisher.clone(),
                plan.publish_spec(cli, i, 0),
                i,
                counters.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let warmup = Duration::from_secs_f64(cli.warmup.max(0.0));
    let total = warmup + Duration::from_secs_f64(cli.duration.max(0.1));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev = counters.snapshot();
    let mut prev_t = Instant::now();
    let mut begin: Option<(Instant, Snapshot, Samples)> = None;
    let mut rss_peak_kb = 0;
    if warmup.is_zero() {
        counters.measuring.store(true, Ordering::Relaxed);
        begin = Some((Instant::now(), counters.snapshot(), monitor.sample()));
    }
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        let next_boundary = if begin.is_none() { warmup } else { total };
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(next_boundary.saturating_sub(elapsed)) => {}
        }
        if begin.is_none() && start.elapsed() >= warmup {
            counters.measuring.store(true, Ordering::Relaxed);
            begin = Some((Instant::now(), counters.snapshot(), monitor.sample()));
        }
        if begin.is_some() {
            if let Some(rss) = monitor.broker_rss() {
                rss_peak_kb = rss_peak_kb.max(rss);
            }
        }
        let now = counters.snapshot();
        let dt = prev_t.elapsed().as_secs_f64();
        if dt >= 0.5 {
            progress(cli, start.elapsed().as_secs_f64(), &prev, &now, dt);
            prev = now;
            prev_t = Instant::now();
        }
        if publisher_handles.iter().all(|h| h.is_finished()) && plan.publishers > 0 {
            errors.push("all publishers stopped early".into());
            break;
        }
    }
    let end = (Instant::now(), counters.snapshot(), monitor.sample());
    counters.measuring.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let (t0, s0, p0) = begin.unwrap_or((start, Snapshot::default(), Samples::default()));
    let (t1, s1, p1) = end;
    let secs = t1.duration_since(t0).as_secs_f64();

    join_publishers(publisher_handles, &mut errors, Duration::from_secs(10)).await;
    let hist = join_consumers(consumer_handles, &mut errors).await;
    control.close().await;
    plan.teardown(cli, uri).await;

    let published = rate(s0.published, s1.published, secs);
    let confirmed = rate(s0.confirmed, s1.confirmed, secs);
    let consumed = rate(s0.consumed, s1.consumed, secs);
    let broker_cpu = match (p0.broker, p1.broker) {
        (Some(a), Some(b)) => Some(cpu_percent(&a, &b, secs, monitor.hz)),
        _ => None,
    };
    let tool_cpu = match (p0.tool, p1.tool) {
        (Some(a), Some(b)) => Some(cpu_percent(&a, &b, secs, monitor.hz)),
        _ => None,
    };
    let paused_s = counters.backlog_paused_us.load(Ordering::Relaxed) as f64 / 1e6;

    let mut json = Json::obj()
        .with("scenario", scenario_name(cli.scenario))
        .with("label", cli.label.clone())
        .with("broker", uri.addr.to_string())
        .with("publisher_broker", ends.publisher.addr.to_string())
        .with("consumer_broker", ends.consumer.addr.to_string())
        .with("config", plan.describe(cli))
        .with("seconds", secs)
        .with("published_per_sec", published)
        .with("confirmed_per_sec", confirmed)
        .with("nacked", s1.nacked - s0.nacked)
        .with("consumed_per_sec", consumed)
        .with("latency_us", latency_json(&hist));
    json.set(
        "broker_process",
        match p1.broker {
            Some(b) => Json::obj()
                .with("pid", cli.broker_pid.map(|p| p as u64))
                .with("cpu_percent", broker_cpu)
                .with("rss_kb", b.rss_kb)
                .with("rss_peak_kb", rss_peak_kb.max(b.rss_kb))
                .with("vm_hwm_kb", b.hwm_kb),
            None => Json::Null,
        },
    );
    json.set("tool_cpu_percent", tool_cpu);
    json.set("backlog_guard_paused_sec", paused_s);
    json.set("errors", errors.clone());

    let mut t = Table::default();
    t.row("setup", plan.summary(cli));
    t.row(
        "measured",
        format!("{secs:.1} s after {:.1} s warm-up", cli.warmup),
    );
    t.row("published", format!("{} msg/s", thousands(published)));
    if cli.confirm > 0 {
        t.row("confirmed", format!("{} msg/s", thousands(confirmed)));
        if s1.nacked > s0.nacked {
            t.row("nacked", thousands((s1.nacked - s0.nacked) as f64));
        }
    }
    t.row("consumed", format!("{} msg/s", thousands(consumed)));
    if hist.count() > 0 {
        t.row(
            "latency",
            format!(
                "p50 {}  p95 {}  p99 {}  max {}  ({} samples)",
                human_ns(hist.quantile(0.5)),
                human_ns(hist.quantile(0.95)),
                human_ns(hist.quantile(0.99)),
                human_ns(hist.max()),
                thousands(hist.count() as f64)
            ),
        );
    }
    if let Some(b) = p1.broker {
        t.row(
            "broker",
            format!(
                "CPU {:.0}%  RSS {} (peak {})",
                broker_cpu.unwrap_or(0.0),
                human_kb(b.rss_kb),
                human_kb(rss_peak_kb.max(b.rss_kb))
            ),
        );
    }
    if let Some(c) = tool_cpu {
        t.row("amqp-perf", format!("CPU {c:.0}%"));
    }
    if paused_s > 0.05 {
        t.row(
            "backlog guard",
            format!("publishers paused {paused_s:.1} s (--max-backlog)"),
        );
    }
    for e in &errors {
        t.row("error", e.clone());
    }
    Ok((json, t))
}

fn latency_json(h: &Histogram) -> Json {
    if h.count() == 0 {
        return Json::Null;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Json::obj()
        .with("count", h.count())
        .with("min", us(h.min()))
        .with("mean", us(h.mean()))
        .with("p50", us(h.quantile(0.5)))
        .with("p75", us(h.quantile(0.75)))
        .with("p95", us(h.quantile(0.95)))
        .with("p99", us(h.quantile(0.99)))
        .with("p999", us(h.quantile(0.999)))
        .with("max", us(h.max()))
}
