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
//!
//! Layout: `scenarios/` has one file per scenario; `plan.rs` resolves the
//! queues, exchange and keys a load scenario uses; `publisher.rs` and
//! `consumer.rs` are the connections that make the load, `workers.rs`
//! starts and joins them; `stats.rs`, `monitor.rs` and `report.rs` measure
//! and print. The AMQP client (`amqp_perf::client`, in the crate's
//! library) is shared with amqp-soak.

mod consumer;
mod monitor;
mod nullsink;
mod plan;
mod publisher;
mod report;
mod scenarios;
mod stats;
mod workers;

use amqp_perf::client::AmqpUri;
use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use report::Json;
use std::time::Duration;

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
    /// Broker URI (loopback only unless --allow-remote). Queues and
    /// exchanges are declared and deleted through it.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Publishers connect here instead of --uri (e.g. another cluster
    /// node; the queues must then be durable: --durable or --persistent).
    /// throughput, latency and fanout only; other scenarios use --uri.
    #[arg(long)]
    publisher_uri: Option<String>,
    /// Consumers connect here instead of --uri. throughput, latency and
    /// fanout only; other scenarios use --uri.
    #[arg(long)]
    consumer_uri: Option<String>,
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
    /// Durable queues (and exchange) without --persistent: transient
    /// messages. Needed for a queue other cluster nodes can reach.
    #[arg(long)]
    durable: bool,
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
    let ends = Endpoints::new(&cli)?;
    let uri = ends.setup.clone();
    if cli.rate < 0.0 || !cli.rate.is_finite() {
        bail!("--rate must be >= 0");
    }
    let (json, table) = runtime.block_on(async {
        match cli.scenario {
            Scenario::Throughput => scenarios::throughput::run(&cli, &ends).await,
            Scenario::Latency => scenarios::latency::run(&cli, &ends).await,
            Scenario::Fanout => scenarios::fanout::run(&cli, &ends).await,
            Scenario::Backlog => scenarios::backlog::run(&cli, &uri).await,
            Scenario::Connections => scenarios::connections::run(&cli, &uri).await,
            Scenario::Ping => scenarios::ping::run(&cli, &uri).await,
            Scenario::Expiry => scenarios::expiry::run(&cli, &uri).await,
            Scenario::Group => scenarios::group::run(&scenarios::group::spec(&cli)?, &uri).await,
        }
    })?;
    // Tasks still running (e.g. a stuck connection) must not hold us up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if cli.json {
        println!("{}", json.render());
    } else {
        println!(
            "amqp-perf {} against {}{}",
            scenario_name(cli.scenario),
            uri.addr,
            ends.describe_split()
        );
        print!("{}", table.render());
    }
    Ok(())
}

/// Where a load scenario connects: the control connection (setup and
/// teardown) to --uri, publishers to --publisher-uri and consumers to
/// --consumer-uri (both default to --uri).
#[derive(Clone, Debug)]
struct Endpoints {
    setup: AmqpUri,
    publisher: AmqpUri,
    consumer: AmqpUri,
}

impl Endpoints {
    fn new(cli: &Cli) -> Result<Endpoints> {
        let parse = |flag: &str, s: &str| -> Result<AmqpUri> {
            let uri = AmqpUri::parse(s)?;
            if !uri.is_loopback() && !cli.allow_remote {
                bail!(
                    "{flag}: {} is not a loopback address; pass --allow-remote to load a remote broker",
                    uri.addr
                );
            }
            Ok(uri)
        };
        let setup = parse("--uri", &cli.uri)?;
        let split = cli.publisher_uri.is_some() || cli.consumer_uri.is_some();
        let load = matches!(
            cli.scenario,
            Scenario::Throughput | Scenario::Latency | Scenario::Fanout
        );
        if split && !load {
            bail!(
                "--publisher-uri and --consumer-uri apply to throughput, latency and fanout only"
            );
        }
        let or_setup = |flag: &str, s: &Option<String>| match s {
            Some(s) => parse(flag, s),
            None => Ok(setup.clone()),
        };
        Ok(Endpoints {
            publisher: or_setup("--publisher-uri", &cli.publisher_uri)?,
            consumer: or_setup("--consumer-uri", &cli.consumer_uri)?,
            setup,
        })
    }

    /// " (publishers via A, consumers via B)" when they differ from --uri.
    fn describe_split(&self) -> String {
        let mut parts = Vec::new();
        if self.publisher.addr != self.setup.addr {
            parts.push(format!("publishers via {}", self.publisher.addr));
        }
        if self.consumer.addr != self.setup.addr {
            parts.push(format!("consumers via {}", self.consumer.addr));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
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
