//! amqp-soak: a long churn against a running broker, run by hand, to find
//! leaks. Thousands of connections each loop: connect, declare a queue,
//! publish, consume (no-ack or acked), then close politely or drop the
//! socket abruptly (every fourth cycle, with unacked messages in flight).
//! Every `--sample-secs` it prints the broker's RSS and open file
//! descriptors (from /proc/PID), the connections open and the cycles done;
//! at the end, the figures at start, after warm-up and at the end.
//!
//! Bounded: at most 5000 connections and 4 hours, loopback only.
//!
//!   amqp-soak --pid $(pgrep -n broker) --connections 1000 --duration-secs 1800

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::FieldTable;
use amqp_perf::client::{self, AmqpUri, Conn};
use anyhow::{bail, Result};
use broker::protocol::{encode, Frame};
use bytes::BytesMut;
use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// The broker's process id, for RSS and file descriptors.
    #[arg(long)]
    pid: u32,
    /// Workers, each with at most one connection open at a time.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    #[arg(long, default_value_t = 1800)]
    duration_secs: u64,
    #[arg(long, default_value_t = 30)]
    sample_secs: u64,
    /// The sample after this is the baseline that growth is measured from.
    #[arg(long, default_value_t = 180)]
    warmup_secs: u64,
    /// Messages published and consumed per cycle.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Pause between a worker's cycles (randomised 0.5x–1.5x).
    #[arg(long, default_value_t = 1000)]
    pause_ms: u64,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    cycles: AtomicU64,
    drops: AtomicU64,
    errors: AtomicU64,
}

#[derive(Clone, Copy)]
struct Sample {
    secs: u64,
    rss_kb: u64,
    fds: u64,
    open: u64,
    cycles: u64,
    errors: u64,
}

fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss_kb, fds))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let uri = AmqpUri::parse(&cli.uri)?;
    if !uri.is_loopback() {
        bail!("amqp-soak only runs against a broker on loopback");
    }
    if cli.connections == 0 || cli.connections > 5000 {
        bail!("--connections must be 1..=5000");
    }
    if cli.duration_secs > 4 * 3600 {
        bail!("--duration-secs is at most 4 hours");
    }
    if proc_sample(cli.pid).is_none() {
        bail!("cannot read /proc/{}/status and fd", cli.pid);
    }
    let counters = Arc::new(Counters::default());
    let deadline = Instant::now() + Duration::from_secs(cli.duration_secs);
    let settings = Arc::new((uri, cli.messages, cli.pause_ms));
    let workers: Vec<_> = (0..cli.connections)
        .map(|i| {
            let counters = counters.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                // Spread the first connects over a few seconds.
                tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 5000)).await;
                let mut cycle = 0u64;
                while Instant::now() < deadline {
                    let (uri, messages, pause_ms) = &*settings;
                    let outcome = tokio::time::timeout(
                        Duration::from_secs(60),
                        one_cycle(uri, i, cycle, *messages, &counters),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(())) => counters.cycles.fetch_add(1, Ordering::Relaxed),
                        _ => counters.errors.fetch_add(1, Ordering::Relaxed),
                    };
                    cycle += 1;
                    let jitter = pause_ms / 2 + rand::random::<u64>() % (pause_ms + 1);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
            })
        })
        .collect();

    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    println!("t_s\trss_kb\tfds\topen\tcycles\terrors");
    loop {
        let Some((rss_kb, fds)) = proc_sample(cli.pid) else {
            bail!("broker process {} is gone", cli.pid);
        };
        let sample = Sample {
            secs: start.elapsed().as_secs(),
            rss_kb,
            fds,
            open: counters.open.load(Ordering::Relaxed),
            cycles: counters.cycles.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            sample.secs, sample.rss_kb, sample.fds, sample.open, sample.cycles, sample.errors
        );
        samples.push(sample);
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(cli.sample_secs)).await;
    }
    for w in workers {
        let _ = w.await;
    }
    // Let the broker notice the last closes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = proc_sample(cli.pid);
    let first = samples[0];
    let warm = samples
        .iter()
        .find(|s| s.secs >= cli.warmup_secs)
        .copied()
        .unwrap_or(first);
    let end = samples[samples.len() - 1];
    println!(
        "\nsummary: {} cycles ({} abrupt drops), {} errors",
        end.cycles,
        counters.drops.load(Ordering::Relaxed),
        end.errors
    );
    println!(
        "  start     t={:>5}s rss {} kB, fds {}",
        first.secs, first.rss_kb, first.fds
    );
    println!(
        "  warm-up   t={:>5}s rss {} kB, fds {}",
        warm.secs, warm.rss_kb, warm.fds
    );
    println!(
        "  end       t={:>5}s rss {} kB, fds {}",
        end.secs, end.rss_kb, end.fds
    );
    if let Some((rss_kb, fds)) = settled {
        println!("  idle after the run: rss {rss_kb} kB, fds {fds}");
    }
    println!(
        "  growth after warm-up: rss {:+} kB, fds {:+}",
        end.rss_kb as i64 - warm.rss_kb as i64,
        end.fds as i64 - warm.fds as i64
    );
    Ok(())
}

/// One connection's life: declare, publish `messages`, consume them
/// (acking on odd cycles), then close or, every fourth cycle, drop the
/// socket with whatever is unacked.
async fn one_cycle(
    uri: &AmqpUri,
    worker: usize,
    cycle: u64,
    messages: usize,
    counters: &Counters,
) -> Result<()> {
    let mut conn = Conn::connect(uri, &format!("soak {worker}")).await?;
    let _open = OpenGuard::new(counters);
    async {
        let queue = format!("soak-{worker}");
        conn.queue_declare(&queue, false, false).await?;
        let manual_ack = cycle % 2 == 1;
        conn.consume(&queue, "soak", !manual_ack, FieldTable::default())
            .await?;
        let (mut read, mut write, frame_max) = conn.into_split();
        let mut buf = BytesMut::new();
        for n in 0..messages {
            encode::method(
                &mut buf,
                1,
                &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: "".into(),
                    routing_key: queue.as_str().into(),
                    mandatory: false,
                    immediate: false,
                })),
            );
            let props = encode::properties(&Default::default());
            let body = format!("soak {worker} {cycle} {n}");
            encode::content(&mut buf, 1, &props, body.as_bytes(), frame_max);
        }
        write.write_all(&buf).await?;
        // Earlier abrupt drops may have left messages to be redelivered:
        // read until at least this cycle's count arrived.
        let mut delivered = 0usize;
        let mut last_tag = 0u64;
        while delivered < messages {
            match read.decode()? {
                Some(Frame::Method { method, .. }) => {
                    if let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = *method {
                        delivered += 1;
                        last_tag = d.delivery_tag;
                    }
                }
                Some(_) => {}
                None => {
                    if read.fill(16 * 1024).await? == 0 {
                        bail!("broker closed the connection");
                    }
                }
            }
        }
        if cycle % 4 == 3 {
            // Abrupt: no close, unacked messages go back to the queue.
            counters.drops.fetch_add(1, Ordering::Relaxed);
            drop(read.reunite(write)?);
            return Ok(());
        }
        if manual_ack {
            let mut ack = BytesMut::new();
            encode::method(
                &mut ack,
                1,
                &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: last_tag,
                    multiple: true,
                })),
            );
            write.write_all(&ack).await?;
        }
        client::send_close(&mut write).await;
        // Wait for close-ok (or the socket to close) before dropping it.
        loop {
            match read.decode()? {
                Some(Frame::Method { method, .. })
                    if matches!(
                        *method,
                        AMQPClass::Connection(
                            amq_protocol::protocol::connection::AMQPMethod::CloseOk(_)
                        )
                    ) =>
                {
                    return Ok(())
                }
                Some(_) => {}
                None => {
                    if read.fill(16 * 1024).await? == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await
}

/// Counts a connection as open while alive, also when a timeout cancels
/// the cycle midway.
struct OpenGuard<'a>(&'a Counters);

impl<'a> OpenGuard<'a> {
    fn new(counters: &'a Counters) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(counters)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
