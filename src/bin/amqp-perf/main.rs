//! amqp-perf: a PerfTest-style load generator for AMQP 0-9-1 brokers.
//!
//! It speaks the protocol itself over tokio sockets using the broker
//! crate's frame codec (no client library on the hot path): publishers copy
//! a pre-encoded message into a large buffer and write batches; consumers
//! parse whole reads at once and ack with multiple=true.
//!
//! Scenarios: throughput (default), latency, fanout, backlog, connections,
//! expiry, ping, group (consumer groups on a partitioned stream).
//! `--serve-null PORT` runs a null broker for measuring the tool itself.

mod client;
mod consumer;
mod group;
mod nullsink;
mod publisher;
mod report;
mod stats;

use amq_protocol::types::{AMQPValue, FieldTable};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use client::{AmqpUri, Conn};
use consumer::ConsumeSpec;
use publisher::PublishSpec;
use report::{human_kb, human_ns, thousands, Json, Table};
use stats::{clock_ticks, cpu_percent, sample_proc, Counters, Histogram, ProcSample, Snapshot};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Publishers and consumers at full speed (or --rate) for --duration.
    Throughput,
    /// One publisher at a fixed --rate, latency percentiles.
    Latency,
    /// One publisher into a fanout exchange bound to --queue-count queues.
    Fanout,
    /// Publish --count messages, then drain them: rates and RSS per message.
    Backlog,
    /// Open --connections idle connections: RSS per connection.
    Connections,
    /// Connect, open a channel and close (5 s limit): a health check.
    Ping,
    /// Publish --count messages with --expiration into a queue nobody
    /// reads; time and broker CPU until all have expired.
    Expiry,
    /// Consumer groups on a partitioned stream (x-super-stream): read
    /// throughput per member count, then failover time after a member's
    /// connection is dropped.
    Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum QueueType {
    /// No x-queue-type argument.
    Classic,
    /// x-queue-type=stream, durable: an append-only log read by offset.
    Stream,
}

/// A PerfTest-style load generator for AMQP 0-9-1 brokers.
#[derive(Parser, Debug, Clone)]
#[command(name = "amqp-perf", version)]
struct Cli {
    /// Broker URI (loopback only unless --allow-remote).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    #[arg(long, value_enum, default_value = "throughput")]
    scenario: Scenario,
    /// Publisher connections (default 1).
    #[arg(long, short = 'x')]
    publishers: Option<usize>,
    /// Consumer connections (default 1; fanout: one per queue).
    #[arg(long, short = 'y')]
    consumers: Option<usize>,
    /// Queue name pattern; `%d` is replaced by the queue index.
    #[arg(long, short = 'u', default_value = "perf-q-%d")]
    queues: String,
    /// Number of queues (default 1; fanout: 10; 0 declares none).
    #[arg(long)]
    queue_count: Option<usize>,
    /// Exchange to publish to ("" = default exchange; fanout: perf-fanout).
    #[arg(long, short = 'e')]
    exchange: Option<String>,
    /// Type of the exchange declared when --exchange is set.
    #[arg(long, short = 't', default_value = "direct")]
    exchange_type: String,
    /// Routing key (default: the queue's name); also the binding key.
    #[arg(long, short = 'k')]
    routing_key: Option<String>,
    /// Binding key, when it differs from the routing key (a topic pattern
    /// such as `stock.*.#`).
    #[arg(long)]
    binding_key: Option<String>,
    /// Message body size in bytes (latency needs at least 8).
    #[arg(long, short = 's', default_value_t = 16)]
    size: usize,
    /// Queue type. `stream` declares the queues durable with
    /// x-queue-type=stream (deleted and re-declared at setup, since streams
    /// cannot be purged); consumers pass --stream-offset and need
    /// --prefetch > 0 and manual acks.
    #[arg(long, value_enum, default_value = "classic")]
    queue_type: QueueType,
    /// Stream consumers' x-stream-offset: first, last, next, a number
    /// (sent as a long) or an interval such as 1h.
    #[arg(long, default_value = "first")]
    stream_offset: String,
    /// delivery_mode=2 messages on durable queues (and exchange).
    #[arg(long, short = 'f')]
    persistent: bool,
    /// Publisher confirms with at most N unconfirmed messages (0 = off).
    #[arg(long, short = 'c', default_value_t = 0)]
    confirm: u64,
    /// Consumers use no-ack (automatic acknowledgement).
    #[arg(long, short = 'a')]
    autoack: bool,
    /// basic.qos prefetch count for manual-ack consumers (0 = unlimited).
    #[arg(long, short = 'q', default_value_t = 0)]
    prefetch: u16,
    /// Ack every N messages with multiple=true (0 = once per read batch,
    /// 1 = one ack per message). Capped at --prefetch.
    #[arg(long, short = 'A', default_value_t = 0)]
    multi_ack: u64,
    /// Messages per second per publisher (0 = as fast as possible).
    #[arg(long, short = 'r', default_value_t = 0.0)]
    rate: f64,
    /// Measured seconds (after --warmup).
    #[arg(long, short = 'z', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Broker process to sample (CPU% and RSS from /proc).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// backlog: messages to publish before draining.
    #[arg(long, short = 'C', default_value_t = 100_000)]
    count: u64,
    /// Per-message TTL in ms (the `expiration` property); expiry scenario
    /// default 1000.
    #[arg(long)]
    expiration: Option<u64>,
    /// connections: idle connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Publishers pause while more than N messages per queue are waiting
    /// for consumers (0 = never): keeps brokers without flow control from
    /// growing without bound in a bounded run.
    #[arg(long, default_value_t = 1_000_000)]
    max_backlog: u64,
    /// Consumer frame parser: fast (hand-parsed deliveries) or codec
    /// (every frame through broker::protocol::FrameDecoder).
    #[arg(long, value_enum, default_value = "fast")]
    parser: consumer::Parser,
    /// Worker threads for the tool's runtime (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// A label copied into the report.
    #[arg(long)]
    label: Option<String>,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Leave queues and exchanges in place at the end.
    #[arg(long)]
    keep: bool,
    /// Allow a non-loopback broker address.
    #[arg(long)]
    allow_remote: bool,
    /// group: partitions of the super stream.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// group: member counts for the throughput phase, e.g. 1,2,3 (none =
    /// skip the phase).
    #[arg(long, default_value = "1,2,3")]
    members: String,
    /// group: members in the failover phase (at least 2).
    #[arg(long, default_value_t = 3)]
    failover_members: usize,
    /// group: failover repetitions (0 = skip the phase).
    #[arg(long, default_value_t = 5)]
    failover_runs: usize,
    /// Run a null broker on 127.0.0.1:PORT for --duration seconds instead
    /// (deliveries carry --size byte bodies).
    #[arg(long)]
    serve_null: Option<u16>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        if cli.json {
            let error = Json::obj()
                .with("scenario", scenario_name(cli.scenario))
                .with("label", cli.label.clone())
                .with("error", format!("{e:#}"));
            println!("{}", error.render());
        }
        eprintln!("amqp-perf: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    let cli = cli.clone();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.build()?;
    if let Some(port) = cli.serve_null {
        return runtime.block_on(nullsink::serve(port, cli.size, cli.duration));
    }
    let uri = AmqpUri::parse(&cli.uri)?;
    if !uri.is_loopback() && !cli.allow_remote {
        bail!(
            "{} is not a loopback address; pass --allow-remote to load a remote broker",
            uri.addr
        );
    }
    if cli.rate < 0.0 || !cli.rate.is_finite() {
        bail!("--rate must be >= 0");
    }
    let (json, table) = runtime.block_on(async {
        match cli.scenario {
            Scenario::Connections => connections(&cli, &uri).await,
            Scenario::Ping => ping(&cli, &uri).await,
            Scenario::Backlog => backlog(&cli, &uri).await,
            Scenario::Expiry => expiry(&cli, &uri).await,
            Scenario::Group => group::run(&group_spec(&cli)?, &uri).await,
            _ => load(&cli, &uri).await,
        }
    })?;
    // Tasks still running (e.g. a stuck connection) must not hold us up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if cli.json {
        println!("{}", json.render());
    } else {
        println!(
            "amqp-perf {} against {}",
            scenario_name(cli.scenario),
            uri.addr
        );
        print!("{}", table.render());
    }
    Ok(())
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Throughput => "throughput",
        Scenario::Latency => "latency",
        Scenario::Fanout => "fanout",
        Scenario::Backlog => "backlog",
        Scenario::Connections => "connections",
        Scenario::Ping => "ping",
        Scenario::Expiry => "expiry",
        Scenario::Group => "group",
    }
}

/// The group scenario's settings; prefetch and confirm window default to
/// 1000 and the failover publish rate to 10,000 msg/s.
fn group_spec(cli: &Cli) -> Result<group::GroupSpec> {
    if cli.autoack {
        bail!("group members need manual acks");
    }
    Ok(group::GroupSpec {
        name: cli.exchange.clone().unwrap_or_else(|| "perf-super".into()),
        partitions: cli.partitions,
        members: group::parse_members(&cli.members)?,
        count: cli.count,
        size: cli.size,
        prefetch: if cli.prefetch == 0 {
            1000
        } else {
            cli.prefetch
        },
        confirm: if cli.confirm == 0 { 1000 } else { cli.confirm },
        failover_members: cli.failover_members,
        failover_runs: cli.failover_runs,
        rate: if cli.rate > 0.0 { cli.rate } else { 10_000.0 },
        quiet: cli.quiet,
        keep: cli.keep,
        broker_pid: cli.broker_pid,
    })
}

/// Names, routing and counts resolved from the options and scenario.
struct Plan {
    queues: Vec<String>,
    exchange: String,
    exchange_type: String,
    publishers: usize,
    consumers: usize,
    durable: bool,
    /// Stream queues (x-queue-type=stream).
    stream: bool,
    /// x-stream-offset for stream consumers.
    stream_offset: AMQPValue,
    /// Deliveries per published message.
    fanout: u64,
}

impl Plan {
    fn new(cli: &Cli) -> Result<Plan> {
        let fanout_scenario = cli.scenario == Scenario::Fanout;
        let queue_count = cli
            .queue_count
            .unwrap_or(if fanout_scenario { 10 } else { 1 });
        let queues: Vec<String> = (0..queue_count)
            .map(|i| {
                if cli.queues.contains("%d") {
                    cli.queues.replace("%d", &i.to_string())
                } else if queue_count == 1 {
                    cli.queues.clone()
                } else {
                    format!("{}-{i}", cli.queues)
                }
            })
            .collect();
        let exchange = cli.exchange.clone().unwrap_or_else(|| {
            if fanout_scenario {
                "perf-fanout".into()
            } else {
                String::new()
            }
        });
        let exchange_type = if fanout_scenario {
            "fanout".to_string()
        } else {
            cli.exchange_type.clone()
        };
        let consumers = cli
            .consumers
            .unwrap_or(if fanout_scenario { queue_count } else { 1 });
        let publishers = cli.publishers.unwrap_or(1);
        if consumers > 0 && queues.is_empty() {
            bail!("consumers need at least one queue (--queue-count)");
        }
        if exchange.is_empty() && queues.is_empty() && cli.routing_key.is_none() {
            bail!("with no queues, give --exchange or --routing-key");
        }
        let stream = cli.queue_type == QueueType::Stream;
        let drains = consumers > 0 || cli.scenario == Scenario::Backlog;
        if stream && drains && (cli.autoack || cli.prefetch == 0) {
            bail!("stream consumers need manual acks and --prefetch > 0");
        }
        if stream && cli.scenario == Scenario::Expiry {
            bail!("the expiry scenario needs a classic queue");
        }
        let fanout = if exchange_type == "fanout" && !exchange.is_empty() {
            queues.len().max(1) as u64
        } else {
            1
        };
        Ok(Plan {
            queues,
            exchange,
            exchange_type,
            publishers,
            consumers,
            durable: cli.persistent || stream,
            stream,
            stream_offset: stream_offset_value(&cli.stream_offset),
            fanout,
        })
    }

    fn routing_key(&self, cli: &Cli, publisher: usize) -> String {
        if let Some(k) = &cli.routing_key {
            return k.clone();
        }
        if self.queues.is_empty() {
            return String::new();
        }
        self.queues[publisher % self.queues.len()].clone()
    }

    fn binding_key(&self, cli: &Cli, queue: &str) -> String {
        if self.exchange_type == "fanout" {
            return String::new();
        }
        cli.binding_key
            .clone()
            .or_else(|| cli.routing_key.clone())
            .unwrap_or_else(|| queue.to_string())
    }

    fn declares_exchange(&self) -> bool {
        !self.exchange.is_empty() && !self.exchange.starts_with("amq.")
    }

    async fn setup(&self, cli: &Cli, conn: &mut Conn) -> Result<()> {
        if self.declares_exchange() {
            conn.exchange_declare(&self.exchange, &self.exchange_type, self.durable)
                .await
                .context("exchange.declare")?;
        }
        for q in &self.queues {
            if self.stream {
                // Streams cannot be purged: start from an empty log.
                conn.queue_delete(q).await.context("queue.delete")?;
                let mut args = FieldTable::default();
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("stream".into()),
                );
                conn.queue_declare_with(q, true, false, args)
                    .await
                    .with_context(|| format!("queue.declare {q} (stream)"))?;
            } else {
                conn.queue_declare(q, self.durable, false)
                    .await
                    .with_context(|| format!("queue.declare {q}"))?;
                conn.queue_purge(q).await.context("queue.purge")?;
            }
            if !self.exchange.is_empty() {
                conn.queue_bind(q, &self.exchange, &self.binding_key(cli, q))
                    .await
                    .context("queue.bind")?;
            }
        }
        Ok(())
    }

    async fn teardown(&self, cli: &Cli, uri: &AmqpUri) {
        if cli.keep {
            return;
        }
        let Ok(mut conn) = Conn::connect(uri, "amqp-perf teardown").await else {
            return;
        };
        for q in &self.queues {
            let _ = conn.queue_delete(q).await;
        }
        if self.declares_exchange() {
            let _ = conn.exchange_delete(&self.exchange).await;
        }
        conn.close().await;
    }

    fn publish_spec(&self, cli: &Cli, i: usize, count: u64) -> PublishSpec {
        PublishSpec {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key(cli, i),
            size: cli.size,
            persistent: cli.persistent,
            confirm: cli.confirm,
            rate: cli.rate,
            count,
            expiration: cli.expiration,
            max_backlog: cli.max_backlog,
            fanout: self.fanout,
            has_consumers: self.consumers > 0,
        }
    }

    fn consume_spec(&self, cli: &Cli, i: usize) -> ConsumeSpec {
        ConsumeSpec {
            queue: self.queues[i % self.queues.len()].clone(),
            autoack: cli.autoack,
            prefetch: cli.prefetch,
            multi_ack: cli.multi_ack,
            parser: cli.parser,
            arguments: self.consume_arguments(),
        }
    }

    fn consume_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.stream {
            args.insert("x-stream-offset".into(), self.stream_offset.clone());
        }
        args
    }

    fn describe(&self, cli: &Cli) -> Json {
        Json::obj()
            .with("publishers", self.publishers)
            .with("consumers", self.consumers)
            .with("queues", self.queues.len())
            .with("exchange", self.exchange.as_str())
            .with("exchange_type", self.exchange_type.as_str())
            .with("size", cli.size)
            .with("persistent", cli.persistent)
            .with("queue_type", if self.stream { "stream" } else { "classic" })
            .with(
                "stream_offset",
                if self.stream {
                    Some(cli.stream_offset.clone())
                } else {
                    None
                },
            )
            .with("confirm", cli.confirm)
            .with("autoack", cli.autoack)
            .with("prefetch", cli.prefetch)
            .with("multi_ack", cli.multi_ack)
            .with("rate", cli.rate)
            .with("parser", format!("{:?}", cli.parser).to_lowercase())
    }

    fn summary(&self, cli: &Cli) -> String {
        let mut s = format!(
            "{}p/{}c, {} queue(s), {} B",
            self.publishers,
            self.consumers,
            self.queues.len(),
            cli.size
        );
        if !self.exchange.is_empty() {
            s += &format!(", exchange {} ({})", self.exchange, self.exchange_type);
        }
        if cli.persistent {
            s += ", persistent";
        }
        if self.stream {
            s += &format!(", stream (read from {})", cli.stream_offset);
        }
        if cli.confirm > 0 {
            s += &format!(", confirms (window {})", cli.confirm);
        }
        if self.consumers > 0 {
            if cli.autoack {
                s += ", autoack";
            } else {
                s += &format!(", manual ack (prefetch {})", cli.prefetch);
            }
        }
        if cli.rate > 0.0 {
            s += &format!(", rate {}/s per publisher", thousands(cli.rate));
        }
        s
    }
}

/// `--stream-offset` as sent: a number is a long, anything else (first,
/// last, next, an interval) a string.
fn stream_offset_value(spec: &str) -> AMQPValue {
    match spec.parse::<i64>() {
        Ok(n) => AMQPValue::LongLongInt(n),
        Err(_) => AMQPValue::LongString(spec.into()),
    }
}

/// Samples the broker process (if given) and this process.
struct Monitor {
    broker: Option<String>,
    hz: f64,
}

#[derive(Clone, Copy, Default)]
struct Samples {
    broker: Option<ProcSample>,
    tool: Option<ProcSample>,
}

impl Monitor {
    fn new(cli: &Cli) -> Result<Monitor> {
        let broker = cli.broker_pid.map(|p| p.to_string());
        if let Some(pid) = &broker {
            sample_proc(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}"))?;
        }
        Ok(Monitor {
            broker,
            hz: clock_ticks(),
        })
    }

    fn sample(&self) -> Samples {
        Samples {
            broker: self.broker.as_deref().and_then(sample_proc),
            tool: sample_proc("self"),
        }
    }

    fn broker_rss(&self) -> Option<u64> {
        self.broker
            .as_deref()
            .and_then(sample_proc)
            .map(|s| s.rss_kb)
    }
}

fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        b.saturating_sub(a) as f64 / secs
    }
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

fn spawn_consumers(
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
async fn wait_ready(
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

async fn join_consumers(
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

async fn join_publishers(
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

fn progress(cli: &Cli, t: f64, prev: &Snapshot, now: &Snapshot, dt: f64) {
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

/// throughput, latency and fanout: run for warmup + duration, measure the
/// last `duration` seconds.
async fn load(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
    let mut cli = cli.clone();
    if cli.scenario == Scenario::Latency {
        if cli.rate <= 0.0 {
            cli.rate = 1000.0;
        }
        if cli.size < 8 {
            cli.size = 8;
        }
    }
    let cli = &cli;
    let plan = Plan::new(cli)?;
    let monitor = Monitor::new(cli)?;
    let mut control = Conn::connect(uri, "amqp-perf control").await?;
    plan.setup(cli, &mut control).await?;

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut errors = Vec::new();
    let (consumer_handles, mut ready) = spawn_consumers(cli, &plan, uri, &counters, &stop_rx);
    if let Err(e) = wait_ready(&mut ready, plan.consumers, &consumer_handles).await {
        let _ = stop_tx.send(true);
        join_consumers(consumer_handles, &mut errors).await;
        plan.teardown(cli, uri).await;
        return Err(anyhow!("{e}: {}", errors.join("; ")));
    }
    let publisher_handles: Vec<_> = (0..plan.publishers)
        .map(|i| {
            tokio::spawn(publisher::run(
                uri.clone(),
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

/// backlog: publish --count messages into one queue with nobody consuming,
/// then drain them. On a stream (`--queue-type stream`) the drain reads the
/// log from --stream-offset and ends when the consumers have received
/// --count messages: acks do not remove anything from a stream.
async fn backlog(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
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

/// expiry: publish --count messages with a per-message TTL into one queue
/// with no consumer, then wait until the broker has expired them all.
/// Reports the time from the last publish to an empty queue and the
/// broker's CPU time over the whole run.
async fn expiry(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
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

/// connections: open N idle connections (each with one channel), measure
/// the broker's RSS growth, then close them.
async fn connections(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
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

/// ping: connect, open a channel, close; fails after 5 s.
async fn ping(cli: &Cli, uri: &AmqpUri) -> Result<(Json, Table)> {
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
