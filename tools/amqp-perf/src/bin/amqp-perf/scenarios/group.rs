//! The `group` scenario: consumer groups over a partitioned stream (an
//! exchange of type `x-super-stream`).
//!
//! 1. Throughput: publish `--count` messages with confirms into a fresh
//!    super stream (routing key = the message's index, so murmur3 spreads
//!    them over the partitions), then for each member count M in
//!    `--members` start M members of a fresh group (each on its own
//!    connection, `x-stream-offset: first`) and time from the moment the
//!    basic.consume calls go out until the group has received every
//!    message at least once.
//! 2. Failover: a publisher sends at `--rate` msg/s; `--failover-members`
//!    members of a fresh group (offset `next`) consume until the
//!    assignment is balanced and every member is receiving from each of its
//!    partitions; then one member's socket is dropped (SO_LINGER 0, so the
//!    broker gets an RST, with no connection.close). For each partition the
//!    victim owned, the time from just before the `close(2)` of the socket
//!    to the moment another member's read returned the first delivery of
//!    that partition is recorded. Repeated `--failover-runs` times.
//!
//! Members parse the content header's table for `x-stream-partition`,
//! `x-stream-offset` and `x-consumer-group-partitions`, and ack once per
//! read batch with multiple=true.

use crate::publisher::Tracker;
use crate::report::{thousands, Json, Table};
use crate::stats::{clock_ticks, cpu_percent, now_nanos, sample_proc};
use crate::Cli;
use amq_protocol::protocol::{basic, channel, connection, AMQPClass, BasicProperties};
use amq_protocol::types::{AMQPValue, FieldTable};
use amqp_perf::client::{deliver_tag, send_close, AmqpUri, Conn, ReadSide};
use anyhow::{anyhow, bail, Context, Result};
use broker::protocol::{encode, Frame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// The super stream (exchange) name.
    pub name: String,
    pub partitions: u32,
    /// Member counts for the throughput phase (empty: skip it).
    pub members: Vec<usize>,
    pub count: u64,
    pub size: usize,
    pub prefetch: u16,
    /// Publisher confirm window.
    pub confirm: u64,
    /// Members in the failover phase.
    pub failover_members: usize,
    /// Failover repetitions (0: skip the phase).
    pub failover_runs: usize,
    /// Publish rate during the failover phase (msg/s).
    pub rate: f64,
    pub quiet: bool,
    pub keep: bool,
    /// Broker process to sample (CPU % over each read phase).
    pub broker_pid: Option<u32>,
}

/// Member commands.
const RUN: u8 = 0;
const STOP: u8 = 1;
const KILL: u8 = 2;

/// A failover in progress: which member was killed, when, and what it
/// owned; filled in by the other members as the partitions come back.
struct Failover {
    victim: usize,
    killed_at: Option<Instant>,
    partitions: Vec<u32>,
    /// Highest offset received per partition (by any member) just before
    /// the victim's socket was closed.
    hwm_at_kill: Vec<i64>,
    /// Partition -> (time from the kill, member that got it, its offset).
    resumed: BTreeMap<u32, (Duration, usize, i64)>,
    /// Deliveries of the survivors' own partitions after the kill and
    /// before the last moved partition resumed: shows whether the stream
    /// as a whole kept flowing while the moved partitions waited.
    others_meanwhile: u64,
}

/// State shared by the members of one group run.
struct Shared {
    /// Highest offset received per partition (-1: none).
    hwm: Vec<AtomicI64>,
    /// Deliveries of an offset above the partition's previous high-water
    /// mark: each message counted once.
    unique: AtomicU64,
    delivered: AtomicU64,
    armed: AtomicBool,
    failover: Mutex<Option<Failover>>,
}

impl Shared {
    fn new(partitions: u32) -> Arc<Shared> {
        Arc::new(Shared {
            hwm: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
            unique: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            failover: Mutex::new(None),
        })
    }
}

/// One member's counters and its latest assignment (from the header).
struct MemberStats {
    delivered: AtomicU64,
    per_partition: Vec<AtomicU64>,
    assignment: Mutex<Vec<u32>>,
}

impl MemberStats {
    fn new(partitions: u32) -> Arc<MemberStats> {
        Arc::new(MemberStats {
            delivered: AtomicU64::new(0),
            per_partition: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            assignment: Mutex::new(Vec::new()),
        })
    }

    fn partition_counts(&self) -> Vec<u64> {
        self.per_partition
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

struct Member {
    stats: Arc<MemberStats>,
    cmd: watch::Sender<u8>,
    handle: JoinHandle<Result<()>>,
}

/// Header fields the members read.
#[derive(Default, Debug, PartialEq)]
struct GroupHeaders {
    partition: Option<u32>,
    offset: Option<i64>,
    assignment: Option<Vec<u32>>,
}

/// The group scenario's settings; prefetch and confirm window default to
/// 1000 and the failover publish rate to 10,000 msg/s.
pub fn spec(cli: &Cli) -> Result<GroupSpec> {
    if cli.autoack {
        bail!("group members need manual acks");
    }
    Ok(GroupSpec {
        name: cli.exchange.clone().unwrap_or_else(|| "perf-super".into()),
        partitions: cli.partitions,
        members: parse_members(&cli.members)?,
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

pub async fn run(spec: &GroupSpec, uri: &AmqpUri) -> Result<(Json, Table)> {
    if spec.prefetch == 0 {
        bail!("group members need --prefetch > 0");
    }
    if spec.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let mut errors: Vec<String> = Vec::new();
    setup(spec, uri).await?;
    let run_id = now_nanos() % 1_000_000_000;

    // Phase 1: throughput.
    let mut tp_json = Vec::new();
    let mut tp_rows = Vec::new();
    let mut publish_row = None;
    if !spec.members.is_empty() && spec.count > 0 {
        let (_stop_tx, stop_rx) = watch::channel(false);
        let published = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let (sent, confirmed) = publish(
            uri.clone(),
            spec.clone(),
            spec.count,
            0.0,
            0,
            stop_rx,
            published,
        )
        .await
        .context("publishing the backlog")?;
        let secs = t.elapsed().as_secs_f64();
        if confirmed < sent {
            errors.push(format!("only {confirmed} of {sent} publishes confirmed"));
        }
        if !spec.quiet {
            eprintln!(
                "  published {} messages in {secs:.2} s ({} msg/s)",
                thousands(sent as f64),
                thousands(sent as f64 / secs)
            );
        }
        publish_row = Some(format!(
            "{} messages x {} B with confirms (window {}) in {secs:.2} s: {} msg/s",
            thousands(sent as f64),
            spec.size,
            spec.confirm,
            thousands(sent as f64 / secs)
        ));
        for &m in &spec.members {
            let group = format!("perf-group-{run_id}-m{m}");
            match throughput(spec, uri, &group, m, sent).await {
                Ok((j, row)) => {
                    tp_json.push(j);
                    tp_rows.push(row);
                }
                Err(e) => errors.push(format!("throughput with {m} members: {e:#}")),
            }
        }
    }

    // Phase 2: failover.
    let mut fo_json = Json::Null;
    let mut fo_rows = Vec::new();
    if spec.failover_runs > 0 && spec.failover_members >= 2 {
        match failover(spec, uri, run_id).await {
            Ok((j, rows, errs)) => {
                fo_json = j;
                fo_rows = rows;
                errors.extend(errs);
            }
            Err(e) => errors.push(format!("failover: {e:#}")),
        }
    }

    if !spec.keep {
        if let Ok(mut c) = Conn::connect(uri, "amqp-perf teardown").await {
            let _ = c.exchange_delete(&spec.name).await;
            c.close().await;
        }
    }

    let json = Json::obj()
        .with("scenario", "group")
        .with("broker", uri.addr.to_string())
        .with(
            "config",
            Json::obj()
                .with("super_stream", spec.name.as_str())
                .with("partitions", spec.partitions as u64)
                .with("count", spec.count)
                .with("size", spec.size)
                .with("prefetch", spec.prefetch)
                .with("confirm", spec.confirm)
                .with("failover_members", spec.failover_members)
                .with("failover_runs", spec.failover_runs)
                .with("failover_rate", spec.rate),
        )
        .with("throughput", tp_json)
        .with("failover", fo_json)
        .with("errors", errors.clone());
    let mut t = Table::default();
    t.row(
        "setup",
        format!(
            "super stream {} with {} partitions, {} B bodies, prefetch {}, ack per read batch (multiple)",
            spec.name, spec.partitions, spec.size, spec.prefetch
        ),
    );
    if let Some(p) = publish_row {
        t.row("published", p);
    }
    for (label, row) in tp_rows {
        t.row(&label, row);
    }
    for (label, row) in fo_rows {
        t.row(&label, row);
    }
    for e in &errors {
        t.row("error", e.clone());
    }
    Ok((json, t))
}

/// Deletes the super stream (and with it its partitions) and declares it
/// again, so every run starts from empty logs.
async fn setup(spec: &GroupSpec, uri: &AmqpUri) -> Result<()> {
    let mut c = Conn::connect(uri, "amqp-perf control").await?;
    if c.exchange_delete(&spec.name).await.is_err() {
        // A failed delete closes the channel; start over.
        c = Conn::connect(uri, "amqp-perf control").await?;
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-partitions".into(),
        AMQPValue::LongInt(spec.partitions as i32),
    );
    c.exchange_declare_with(&spec.name, "x-super-stream", true, args)
        .await
        .with_context(|| format!("exchange.declare {} (x-super-stream)", spec.name))?;
    c.close().await;
    Ok(())
}

/// Starts `n` members of `group` (connected, qos set), waiting for them.
async fn start_members(
    spec: &GroupSpec,
    uri: &AmqpUri,
    group: &str,
    offset: &str,
    n: usize,
    shared: &Arc<Shared>,
    go: &watch::Receiver<bool>,
) -> Result<Vec<Member>> {
    let (ready_tx, mut ready_rx) = mpsc::channel(n.max(1));
    let members: Vec<Member> = (0..n)
        .map(|i| {
            let stats = MemberStats::new(spec.partitions);
            let (cmd, cmd_rx) = watch::channel(RUN);
            let handle = tokio::spawn(member(
                uri.clone(),
                spec.name.clone(),
                group.to_string(),
                offset.to_string(),
                spec.prefetch,
                i,
                stats.clone(),
                shared.clone(),
                ready_tx.clone(),
                go.clone(),
                cmd_rx,
            ));
            Member { stats, cmd, handle }
        })
        .collect();
    drop(ready_tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < n {
        if Instant::now() > deadline {
            bail!("members not connected after 30 s");
        }
        if let Some(i) = members.iter().position(|m| m.handle.is_finished()) {
            let m = members.into_iter().nth(i).unwrap();
            return Err(match m.handle.await {
                Ok(Err(e)) => e.context(format!("member {i}")),
                _ => anyhow!("member {i} failed to start"),
            });
        }
        if let Ok(Some(())) =
            tokio::time::timeout(Duration::from_millis(100), ready_rx.recv()).await
        {
            got += 1;
        }
    }
    Ok(members)
}

/// Stops members politely and collects their errors.
async fn stop_members(members: Vec<Member>, skip: Option<usize>, errors: &mut Vec<String>) {
    for m in &members {
        let _ = m.cmd.send(STOP);
    }
    for (i, m) in members.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), m.handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if Some(i) != skip => errors.push(format!("member {i}: {e:#}")),
            Ok(Ok(Err(_))) => {}
            Ok(Err(e)) => errors.push(format!("member {i} task: {e}")),
            Err(_) => errors.push(format!("member {i} did not stop in 10 s")),
        }
    }
}

/// One throughput run: `m` members of a fresh group read all `count`
/// messages from `first`.
async fn throughput(
    spec: &GroupSpec,
    uri: &AmqpUri,
    group: &str,
    m: usize,
    count: u64,
) -> Result<(Json, (String, String))> {
    let shared = Shared::new(spec.partitions);
    let (go_tx, go_rx) = watch::channel(false);
    let members = start_members(spec, uri, group, "first", m, &shared, &go_rx).await?;
    let mut errors = Vec::new();
    let pid = spec.broker_pid.map(|p| p.to_string());
    let cpu0 = pid.as_deref().and_then(sample_proc);
    let tool0 = sample_proc("self");
    let start = Instant::now();
    let _ = go_tx.send(true);
    let mut last = (0, Instant::now());
    let mut prev = (0, Instant::now());
    let mut done_at = None;
    loop {
        let unique = shared.unique.load(Ordering::Relaxed);
        if unique >= count {
            done_at = Some(Instant::now());
            break;
        }
        if unique != last.0 {
            last = (unique, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            errors.push(format!("stalled at {unique} of {count} messages for 30 s"));
            break;
        }
        if members.iter().any(|m| m.handle.is_finished()) {
            errors.push("a member stopped during the read".into());
            break;
        }
        if !spec.quiet && prev.1.elapsed() >= Duration::from_secs(1) {
            let dt = prev.1.elapsed().as_secs_f64();
            let assignments: Vec<String> = members
                .iter()
                .map(|m| format!("{:?}", m.stats.assignment.lock()))
                .collect();
            eprintln!(
                "  {m} member(s) t={:5.1}s  {:>10} msg/s  {}/{} read  assignments {}",
                start.elapsed().as_secs_f64(),
                thousands((unique - prev.0) as f64 / dt),
                unique,
                count,
                assignments.join(" ")
            );
            prev = (unique, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = done_at.unwrap_or_else(Instant::now).duration_since(start);
    let secs = secs.as_secs_f64();
    let hz = clock_ticks();
    let broker_cpu = match (cpu0, pid.as_deref().and_then(sample_proc)) {
        (Some(a), Some(b)) => Some(cpu_percent(&a, &b, secs, hz)),
        _ => None,
    };
    let tool_cpu = match (tool0, sample_proc("self")) {
        (Some(a), Some(b)) => Some(cpu_percent(&a, &b, secs, hz)),
        _ => None,
    };
    let unique = shared.unique.load(Ordering::Relaxed);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let per_member: Vec<(u64, Vec<u32>, Vec<u64>)> = members
        .iter()
        .map(|m| {
            (
                m.stats.delivered.load(Ordering::Relaxed),
                m.stats.assignment.lock().clone(),
                m.stats.partition_counts(),
            )
        })
        .collect();
    stop_members(members, None, &mut errors).await;
    if let Some(e) = errors.first() {
        if done_at.is_none() {
            bail!("{e}");
        }
    }
    let rate = unique as f64 / secs;
    let json = Json::obj()
        .with("members", m)
        .with("group", group)
        .with("seconds", secs)
        .with("messages", unique)
        .with("deliveries", delivered)
        .with("redelivered", delivered - unique)
        .with("msg_per_sec", rate)
        .with("broker_cpu_percent", broker_cpu)
        .with("tool_cpu_percent", tool_cpu)
        .with(
            "per_member",
            per_member
                .iter()
                .enumerate()
                .map(|(i, (d, a, pp))| {
                    Json::obj()
                        .with("member", i)
                        .with("delivered", *d)
                        .with(
                            "partitions",
                            a.iter().map(|&p| p as u64).collect::<Vec<u64>>(),
                        )
                        .with("per_partition", pp.clone())
                })
                .collect::<Vec<Json>>(),
        )
        .with("errors", errors.clone());
    let split: Vec<String> = per_member
        .iter()
        .map(|(d, a, _)| format!("{} {:?}", thousands(*d as f64), a))
        .collect();
    let mut row = format!(
        "{} msg/s ({} messages in {secs:.2} s, {} redelivered); per member: {}",
        thousands(rate),
        thousands(unique as f64),
        thousands((delivered - unique) as f64),
        split.join(", ")
    );
    if let Some(c) = broker_cpu {
        row += &format!("; broker CPU {c:.0}%");
    }
    if let Some(c) = tool_cpu {
        row += &format!(", amqp-perf CPU {c:.0}%");
    }
    Ok((json, (format!("{m} member(s)"), row)))
}

type FailoverResult = (Json, Vec<(String, String)>, Vec<String>);

/// The failover phase: `--failover-runs` kills under a steady publish.
async fn failover(spec: &GroupSpec, uri: &AmqpUri, run_id: u64) -> Result<FailoverResult> {
    let n = spec.failover_members;
    let mut errors = Vec::new();
    let (pub_stop_tx, pub_stop_rx) = watch::channel(false);
    let published = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(
        uri.clone(),
        spec.clone(),
        0,
        spec.rate,
        spec.count,
        pub_stop_rx,
        published.clone(),
    ));
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    let mut all_ms: Vec<f64> = Vec::new();
    let mut worst_ms: Vec<f64> = Vec::new();
    for rep in 0..spec.failover_runs {
        if publisher.is_finished() {
            errors.push("the failover publisher stopped".into());
            break;
        }
        let group = format!("perf-failover-{run_id}-{rep}");
        let shared = Shared::new(spec.partitions);
        let (go_tx, go_rx) = watch::channel(false);
        let members = start_members(spec, uri, &group, "next", n, &shared, &go_rx).await?;
        let _ = go_tx.send(true);
        // Steady state: the assignment is a balanced partition of all
        // partitions and every member received from each of its partitions
        // during the last second.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut steady = false;
        let mut before: Vec<Vec<u64>> =
            members.iter().map(|m| m.stats.partition_counts()).collect();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now: Vec<Vec<u64>> = members.iter().map(|m| m.stats.partition_counts()).collect();
            let assignments: Vec<Vec<u32>> = members
                .iter()
                .map(|m| m.stats.assignment.lock().clone())
                .collect();
            let mut owned: Vec<u32> = assignments.iter().flatten().copied().collect();
            owned.sort_unstable();
            let complete = owned == (0..spec.partitions).collect::<Vec<u32>>();
            let sizes: Vec<usize> = assignments.iter().map(|a| a.len()).collect();
            let balanced = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1;
            let flowing = assignments.iter().enumerate().all(|(i, a)| {
                a.iter()
                    .all(|&p| now[i][p as usize] > before[i][p as usize])
            });
            before = now;
            if complete && balanced && flowing {
                steady = true;
                break;
            }
        }
        if !steady {
            let a: Vec<String> = members
                .iter()
                .map(|m| format!("{:?}", m.stats.assignment.lock()))
                .collect();
            errors.push(format!(
                "run {rep}: no steady assignment after 30 s ({})",
                a.join(" ")
            ));
            stop_members(members, None, &mut errors).await;
            continue;
        }
        let victim = rep % n;
        let owned = members[victim].stats.assignment.lock().clone();
        *shared.failover.lock() = Some(Failover {
            victim,
            killed_at: None,
            partitions: owned.clone(),
            hwm_at_kill: Vec::new(),
            resumed: BTreeMap::new(),
            others_meanwhile: 0,
        });
        shared.armed.store(true, Ordering::Release);
        let _ = members[victim].cmd.send(KILL);
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut complete = false;
        while Instant::now() < deadline {
            {
                let f = shared.failover.lock();
                let f = f.as_ref().unwrap();
                if f.killed_at.is_some() && f.resumed.len() == f.partitions.len() {
                    complete = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shared.armed.store(false, Ordering::Release);
        let f = shared.failover.lock().take().unwrap();
        let assignments: Vec<Vec<u32>> = members
            .iter()
            .map(|m| m.stats.assignment.lock().clone())
            .collect();
        stop_members(members, Some(victim), &mut errors).await;
        if !complete {
            errors.push(format!(
                "run {rep}: partitions {:?} of member {victim}: only {:?} resumed within 45 s",
                f.partitions,
                f.resumed.keys().collect::<Vec<_>>()
            ));
            continue;
        }
        // (partition, ms, member, first offset at the new owner, highest
        // offset received before the kill). First offset <= highest: the
        // new owner got some of the victim's messages again (unacked);
        // highest + 1: it continued exactly; above that: offsets were
        // skipped, which must not happen.
        let ms: Vec<(u32, f64, usize, i64, i64)> = f
            .resumed
            .iter()
            .map(|(p, (d, who, off))| {
                (
                    *p,
                    d.as_secs_f64() * 1000.0,
                    *who,
                    *off,
                    f.hwm_at_kill[*p as usize],
                )
            })
            .collect();
        for (p, _, _, off, hwm) in &ms {
            if *off > hwm + 1 {
                errors.push(format!(
                    "run {rep}: partition {p} resumed at offset {off}, but only up to {hwm} had been received: offsets skipped"
                ));
            }
        }
        let worst = ms.iter().map(|x| x.1).fold(0.0, f64::max);
        all_ms.extend(ms.iter().map(|x| x.1));
        worst_ms.push(worst);
        let desc: Vec<String> = ms
            .iter()
            .map(|(p, d, who, off, hwm)| {
                format!("p{p} -> member {who} after {d:.1} ms (offset {off}, seen {hwm})")
            })
            .collect();
        rows.push((
            format!("failover run {rep}"),
            format!(
                "killed member {victim} of {n} (owned {:?}): {}; {} deliveries of other partitions meanwhile; then {:?}",
                owned,
                desc.join(", "),
                f.others_meanwhile,
                assignments
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != victim)
                    .map(|(_, a)| a.clone())
                    .collect::<Vec<_>>()
            ),
        ));
        runs.push(
            Json::obj()
                .with("run", rep)
                .with("group", group.as_str())
                .with("victim", victim)
                .with(
                    "victim_partitions",
                    owned.iter().map(|&p| p as u64).collect::<Vec<u64>>(),
                )
                .with(
                    "resumed",
                    ms.iter()
                        .map(|(p, d, who, off, hwm)| {
                            Json::obj()
                                .with("partition", *p as u64)
                                .with("ms", *d)
                                .with("member", *who)
                                .with("first_offset", *off)
                                .with("highest_offset_before_kill", *hwm)
                        })
                        .collect::<Vec<Json>>(),
                )
                .with("all_resumed_ms", worst)
                .with("other_partitions_delivered_meanwhile", f.others_meanwhile),
        );
    }
    let _ = pub_stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(70), publisher).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => errors.push(format!("failover publisher: {e:#}")),
        Ok(Err(e)) => errors.push(format!("failover publisher task: {e}")),
        Err(_) => errors.push("failover publisher did not stop".into()),
    }
    let min = all_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = all_ms.iter().copied().fold(0.0, f64::max);
    let worst_min = worst_ms.iter().copied().fold(f64::INFINITY, f64::min);
    if !all_ms.is_empty() {
        rows.push((
            "failover".into(),
            format!(
                "{} kills, {} partitions moved: first delivery elsewhere after min {min:.1} ms, max {max:.1} ms; all of a victim's partitions back after {worst_min:.1}-{max:.1} ms ({n} members, {} msg/s published)",
                worst_ms.len(),
                all_ms.len(),
                thousands(spec.rate)
            ),
        ));
    }
    let json = Json::obj()
        .with("members", n)
        .with("rate", spec.rate)
        .with("runs", runs)
        .with(
            "partition_resume_ms_min",
            (!all_ms.is_empty()).then_some(min),
        )
        .with(
            "partition_resume_ms_max",
            (!all_ms.is_empty()).then_some(max),
        )
        .with(
            "all_resumed_ms_min",
            (!worst_ms.is_empty()).then_some(worst_min),
        )
        .with("all_resumed_ms_max", (!worst_ms.is_empty()).then_some(max));
    Ok((json, rows, errors))
}

/// Publishes with confirms into the super stream, routing key = the
/// message's index (from `first_index`). `count` 0 = until `stop`; `rate`
/// 0 = as fast as the confirm window allows. Returns (sent, confirmed).
async fn publish(
    uri: AmqpUri,
    spec: GroupSpec,
    count: u64,
    rate: f64,
    first_index: u64,
    mut stop: watch::Receiver<bool>,
    published: Arc<AtomicU64>,
) -> Result<(u64, u64)> {
    let mut conn = Conn::connect(&uri, "amqp-perf group publisher").await?;
    conn.confirm_select().await?;
    let (read, mut write, frame_max) = conn.into_split();
    let settled = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let closed = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_confirms(
        read,
        settled.clone(),
        notify.clone(),
        closed.clone(),
    ));
    let raw_props = encode::properties(&BasicProperties::default());
    let mut body: Vec<u8> = (0..spec.size).map(|i| (i % 251) as u8).collect();
    let window = spec.confirm.max(1);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let start = Instant::now();
    let mut sent: u64 = 0;
    'outer: loop {
        if *stop.borrow() || closed.load(Ordering::Acquire) {
            break;
        }
        let mut n: u64 = 512;
        if count > 0 {
            n = n.min(count - sent);
            if n == 0 {
                break;
            }
        }
        loop {
            let notified = notify.notified();
            let outstanding = sent - settled.load(Ordering::Acquire).min(sent);
            if outstanding < window {
                n = n.min(window - outstanding);
                break;
            }
            if closed.load(Ordering::Acquire) || *stop.borrow() {
                break 'outer;
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        if rate > 0.0 {
            let elapsed = start.elapsed().as_secs_f64();
            let due = (rate * elapsed) as u64 + 1;
            if due <= sent {
                let wait = Duration::from_secs_f64((sent as f64 / rate - elapsed).max(0.0));
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_micros(200))) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            n = n.min(due - sent);
        }
        let ts = now_nanos().to_be_bytes();
        if body.len() >= 8 {
            body[..8].copy_from_slice(&ts);
        }
        for k in 0..n {
            let key = (first_index + sent + k).to_string();
            encode::method(
                &mut buf,
                1,
                &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: spec.name.as_str().into(),
                    routing_key: key.as_str().into(),
                    mandatory: false,
                    immediate: false,
                })),
            );
            encode::content(&mut buf, 1, &raw_props, &body, frame_max);
        }
        if write.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
        sent += n;
        published.fetch_add(n, Ordering::Relaxed);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while settled.load(Ordering::Acquire) < sent
        && !closed.load(Ordering::Acquire)
        && Instant::now() < deadline
    {
        let notified = notify.notified();
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    let confirmed = settled.load(Ordering::Acquire);
    send_close(&mut write).await;
    let reader_result = tokio::time::timeout(Duration::from_secs(3), reader).await;
    if let Ok(Ok(Err(e))) = reader_result {
        if confirmed < sent {
            return Err(e);
        }
    }
    Ok((sent, confirmed))
}

async fn read_confirms(
    mut read: ReadSide,
    settled: Arc<AtomicU64>,
    notify: Arc<tokio::sync::Notify>,
    closed: Arc<AtomicBool>,
) -> Result<()> {
    let mut tracker = Tracker::default();
    let result: Result<()> = async {
        loop {
            while let Some(frame) = read.decode()? {
                let Frame::Method { method, .. } = frame else {
                    continue;
                };
                match *method {
                    AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                        settled.fetch_add(
                            tracker.settle(a.delivery_tag, a.multiple),
                            Ordering::Release,
                        );
                        notify.notify_one();
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Nack(a)) => {
                        settled.fetch_add(
                            tracker.settle(a.delivery_tag, a.multiple),
                            Ordering::Release,
                        );
                        notify.notify_one();
                    }
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => return Ok(()),
                    m => other_method(m)?,
                }
            }
            if read.fill(64 * 1024).await? == 0 {
                return Ok(());
            }
        }
    }
    .await;
    closed.store(true, Ordering::Release);
    notify.notify_one();
    result
}

/// Methods that end a run: cancellation and closes.
fn other_method(method: AMQPClass) -> Result<()> {
    match method {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
            bail!("broker cancelled consumer {}", c.consumer_tag)
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            bail!(
                "broker closed the channel: {} {}",
                c.reply_code,
                c.reply_text
            )
        }
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
            bail!(
                "broker closed the connection: {} {}",
                c.reply_code,
                c.reply_text
            )
        }
        _ => Ok(()),
    }
}

/// Parse state of one member's connection.
struct MemberState {
    id: usize,
    remaining: u64,
    in_message: bool,
    last_tag: u64,
    partition: Option<u32>,
    offset: Option<i64>,
    /// Messages completed in this read batch.
    done: u64,
    /// Of those, ones above the partition's high-water mark.
    fresh: u64,
    per_partition: Vec<u64>,
    assignment: Vec<u32>,
    /// When the current read returned.
    now: Instant,
}

impl MemberState {
    fn complete(&mut self, shared: &Shared, stats: &MemberStats) {
        if !self.in_message {
            return;
        }
        self.in_message = false;
        self.done += 1;
        let Some(p) = self.partition else {
            return;
        };
        if let Some(c) = self.per_partition.get_mut(p as usize) {
            *c += 1;
        }
        if let (Some(o), Some(h)) = (self.offset, shared.hwm.get(p as usize)) {
            if h.fetch_max(o, Ordering::Relaxed) < o {
                self.fresh += 1;
            }
        }
        if shared.armed.load(Ordering::Acquire) {
            let mut f = shared.failover.lock();
            if let Some(f) = f.as_mut() {
                if let Some(at) = f.killed_at {
                    if f.victim != self.id
                        && !f.partitions.contains(&p)
                        && f.resumed.len() < f.partitions.len()
                    {
                        f.others_meanwhile += 1;
                    }
                    if f.victim != self.id
                        && f.partitions.contains(&p)
                        && !f.resumed.contains_key(&p)
                    {
                        f.resumed.insert(
                            p,
                            (
                                self.now.saturating_duration_since(at),
                                self.id,
                                self.offset.unwrap_or(-1),
                            ),
                        );
                    }
                }
            }
        }
        let _ = stats;
    }

    fn flush(&mut self, shared: &Shared, stats: &MemberStats) {
        if self.done == 0 {
            return;
        }
        shared.delivered.fetch_add(self.done, Ordering::Relaxed);
        shared.unique.fetch_add(self.fresh, Ordering::Relaxed);
        stats.delivered.fetch_add(self.done, Ordering::Relaxed);
        for (i, c) in self.per_partition.iter_mut().enumerate() {
            if *c > 0 {
                stats.per_partition[i].fetch_add(*c, Ordering::Relaxed);
                *c = 0;
            }
        }
        self.done = 0;
        self.fresh = 0;
    }
}

#[allow(clippy::too_many_arguments)]
async fn member(
    uri: AmqpUri,
    super_stream: String,
    group: String,
    offset: String,
    prefetch: u16,
    id: usize,
    stats: Arc<MemberStats>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<bool>,
    mut cmd: watch::Receiver<u8>,
) -> Result<()> {
    let mut conn = Conn::connect(&uri, &format!("amqp-perf group member {id}")).await?;
    conn.qos(prefetch).await?;
    let _ = ready.send(()).await;
    drop(ready);
    while !*go.borrow() {
        if go.changed().await.is_err() {
            return Ok(());
        }
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-consumer-group".into(),
        AMQPValue::LongString(group.as_str().into()),
    );
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(offset.as_str().into()),
    );
    conn.consume(
        &super_stream,
        &format!("amqp-perf-member-{id}"),
        false,
        args,
    )
    .await
    .with_context(|| format!("basic.consume on {super_stream} (group {group})"))?;
    let (mut read, mut write, _) = conn.into_split();
    let mut st = MemberState {
        id,
        remaining: 0,
        in_message: false,
        last_tag: 0,
        partition: None,
        offset: None,
        done: 0,
        fresh: 0,
        per_partition: vec![0; shared.hwm.len()],
        assignment: Vec::new(),
        now: Instant::now(),
    };
    let mut ack_buf = BytesMut::with_capacity(256);
    let result: Result<()> = async {
        loop {
            let completed_before = st.done;
            parse(&mut read, &mut st, &shared, &stats)?;
            if st.done > completed_before {
                let tag = if st.in_message {
                    st.last_tag - 1
                } else {
                    st.last_tag
                };
                encode::method(
                    &mut ack_buf,
                    1,
                    &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: tag,
                        multiple: true,
                    })),
                );
                st.flush(&shared, &stats);
                write.write_all(&ack_buf).await?;
                ack_buf.clear();
            }
            tokio::select! {
                n = read.fill(256 * 1024) => {
                    st.now = Instant::now();
                    if n? == 0 {
                        bail!("connection closed by broker");
                    }
                }
                _ = cmd.changed() => return Ok(()),
            }
        }
    }
    .await;
    if *cmd.borrow() == KILL {
        // Abrupt death: no connection.close, and an RST instead of a FIN.
        let stream = read.reunite(write)?;
        let _ = stream.set_zero_linger();
        if let Some(f) = shared.failover.lock().as_mut() {
            f.hwm_at_kill = shared
                .hwm
                .iter()
                .map(|h| h.load(Ordering::Relaxed))
                .collect();
            f.killed_at = Some(Instant::now());
        }
        drop(stream);
        return Ok(());
    }
    send_close(&mut write).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            while let Ok(Some(frame)) = read.decode() {
                if let Frame::Method { channel: 0, method } = frame {
                    if matches!(
                        *method,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                    ) {
                        return;
                    }
                }
            }
            match read.fill(64 * 1024).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    result
}

/// Parses every complete frame in the buffer.
fn parse(
    read: &mut ReadSide,
    st: &mut MemberState,
    shared: &Shared,
    stats: &MemberStats,
) -> Result<()> {
    loop {
        let Some((kind, size)) = read.next_frame() else {
            return Ok(());
        };
        let payload = &read.buf[7..7 + size];
        let delivered = if kind == FRAME_METHOD {
            deliver_tag(payload)?
        } else {
            None
        };
        match kind {
            FRAME_METHOD if delivered.is_some() => {
                st.last_tag = delivered.unwrap_or_default();
                st.in_message = true;
                st.remaining = 0;
                st.partition = None;
                st.offset = None;
            }
            FRAME_HEADER if size >= 14 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload[4..12]);
                st.remaining = u64::from_be_bytes(b);
                let h = parse_headers(payload).unwrap_or_default();
                st.partition = h.partition;
                st.offset = h.offset;
                if let Some(a) = h.assignment {
                    if a != st.assignment {
                        *stats.assignment.lock() = a.clone();
                        st.assignment = a;
                    }
                }
                if st.remaining == 0 {
                    st.complete(shared, stats);
                }
            }
            FRAME_BODY => {
                st.remaining = st.remaining.saturating_sub(size as u64);
                if st.remaining == 0 {
                    st.complete(shared, stats);
                }
            }
            FRAME_HEARTBEAT => {}
            _ => {
                if let Some(Frame::Method { method, .. }) = read.decode()? {
                    other_method(*method)?;
                }
                continue;
            }
        }
        read.buf.advance(8 + size);
    }
}

/// Reads the group headers from a content header frame's payload (class,
/// weight, body size, property flags, then the properties in order).
fn parse_headers(payload: &[u8]) -> Option<GroupHeaders> {
    let flags = u16::from_be_bytes([*payload.get(12)?, *payload.get(13)?]);
    let mut i = 14;
    for bit in [0x8000u16, 0x4000] {
        if flags & bit != 0 {
            i += 1 + *payload.get(i)? as usize;
        }
    }
    if flags & 0x2000 == 0 {
        return Some(GroupHeaders::default());
    }
    let len = u32::from_be_bytes(payload.get(i..i + 4)?.try_into().ok()?) as usize;
    let table = payload.get(i + 4..i + 4 + len)?;
    let mut h = GroupHeaders::default();
    let mut i = 0;
    while i < table.len() {
        let kl = *table.get(i)? as usize;
        let key = table.get(i + 1..i + 1 + kl)?;
        i += 1 + kl;
        let ty = *table.get(i)?;
        i += 1;
        match key {
            b"x-stream-partition" => {
                h.partition = Some(read_int(table, i, ty)? as u32);
            }
            b"x-stream-offset" => {
                h.offset = Some(read_int(table, i, ty)?);
            }
            b"x-consumer-group-partitions" if ty == b'A' => {
                let alen = u32::from_be_bytes(table.get(i..i + 4)?.try_into().ok()?) as usize;
                let arr = table.get(i + 4..i + 4 + alen)?;
                let mut j = 0;
                let mut parts = Vec::new();
                while j < arr.len() {
                    let et = arr[j];
                    j += 1;
                    parts.push(read_int(arr, j, et)? as u32);
                    j = skip_value(arr, j, et)?;
                }
                h.assignment = Some(parts);
            }
            _ => {}
        }
        i = skip_value(table, i, ty)?;
    }
    Some(h)
}

/// An integer field value of type `ty` at `at`.
fn read_int(b: &[u8], at: usize, ty: u8) -> Option<i64> {
    let get = |n: usize| b.get(at..at + n);
    Some(match ty {
        b'b' => get(1)?[0] as i8 as i64,
        b'B' => get(1)?[0] as i64,
        b's' => i16::from_be_bytes(get(2)?.try_into().ok()?) as i64,
        b'u' => u16::from_be_bytes(get(2)?.try_into().ok()?) as i64,
        b'I' => i32::from_be_bytes(get(4)?.try_into().ok()?) as i64,
        b'i' => u32::from_be_bytes(get(4)?.try_into().ok()?) as i64,
        b'l' | b'L' => i64::from_be_bytes(get(8)?.try_into().ok()?),
        _ => return None,
    })
}

/// The index just past a field value of type `ty` starting at `at`.
fn skip_value(b: &[u8], at: usize, ty: u8) -> Option<usize> {
    let n = match ty {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'x' | b'A' | b'F' => {
            4 + u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize
        }
        _ => return None,
    };
    (at + n <= b.len()).then_some(at + n)
}

/// `--members 1,2,3`.
pub fn parse_members(s: &str) -> Result<Vec<usize>> {
    if s.trim().is_empty() || s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| anyhow!("--members: {x:?} is not a positive number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray};

    #[test]
    fn reads_group_headers_from_a_content_header() {
        let mut headers = FieldTable::default();
        headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(41));
        headers.insert("other".into(), AMQPValue::LongString("x".into()));
        headers.insert("x-stream-partition".into(), AMQPValue::LongLongInt(2));
        let mut arr = FieldArray::default();
        arr.push(AMQPValue::LongLongInt(0));
        arr.push(AMQPValue::LongLongInt(2));
        headers.insert(
            "x-consumer-group-partitions".into(),
            AMQPValue::FieldArray(arr),
        );
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers);
        let raw = encode::properties(&props);
        let mut buf = BytesMut::new();
        encode::content(&mut buf, 1, &raw, b"hello", 131_072);
        assert_eq!(buf[0], FRAME_HEADER);
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
        let h = parse_headers(&buf[7..7 + size]).unwrap();
        assert_eq!(
            h,
            GroupHeaders {
                partition: Some(2),
                offset: Some(41),
                assignment: Some(vec![0, 2]),
            }
        );
    }

    #[test]
    fn parses_member_lists() {
        assert_eq!(parse_members("1,2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_members("none").unwrap().is_empty());
        assert!(parse_members("0").is_err());
    }
}
