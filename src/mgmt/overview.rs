//! `/api/overview`, `/api/nodes[/{node}]`, `/api/cluster-name`: the broker
//! as a whole. Counts are read live; rates come from the sampler
//! (`rates.rs`); churn rates are 0.
//!
//! `message_stats` sums the per-queue counters: `publish` counts a message
//! once per queue it reached (RabbitMQ counts it once per publish). For
//! administrators and monitoring users the totals include queues deleted
//! since (as sampled); other users see the sums of their vhosts' queues.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::metrics::ProcessStats;
use super::rates::{Counts, Rates};
use super::{put_count, put_rate, Ctx};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/overview", get(overview))
        .route("/nodes", get(nodes))
        .route("/nodes/{node}", get(node))
        .route("/cluster-name", get(cluster_name))
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        {"name": "x-consistent-hash", "description": "Consistent Hashing Exchange", "enabled": true},
        {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true},
    ])
}

/// Per-queue counters summed over all queues of the given vhosts.
#[derive(Default)]
pub(crate) struct Totals {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
    pub queues: u64,
    pub exchanges: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
}

impl Totals {
    pub fn of(vhosts: &[std::sync::Arc<crate::broker::vhost::VHost>]) -> Totals {
        let mut t = Totals::default();
        for vhost in vhosts {
            // The default exchange is listed too.
            t.exchanges += vhost.exchanges().len() as u64 + 1;
            for q in vhost.queues() {
                let (ready, _, consumers) = q.snapshot();
                t.queues += 1;
                t.ready += ready as u64;
                t.consumers += consumers as u64;
                t.unacked += q.unacked_count() as u64;
                t.published += q.counters.published.load(Ordering::Relaxed);
                t.delivered += q.counters.delivered.load(Ordering::Relaxed);
                t.acked += q.counters.acked.load(Ordering::Relaxed);
                t.redelivered += q.counters.redelivered.load(Ordering::Relaxed);
            }
        }
        t
    }

    /// Adds the counts of queues of other nodes (`Totals::of` counts their
    /// definitions only).
    pub fn add_remote(&mut self, remote: &super::remote_queues::RemoteStats) {
        for stats in remote.values().flatten() {
            self.ready += stats.ready;
            self.unacked += stats.unacked;
            self.consumers += stats.consumers;
        }
    }

    /// Replaces the message counters with overall ones (`Sampler::totals`).
    pub fn with_counts(mut self, c: &Counts) -> Totals {
        self.published = c.published;
        self.delivered = c.delivered;
        self.acked = c.acked;
        self.redelivered = c.redelivered;
        self
    }

    pub fn queue_totals(&self, r: &Rates) -> Value {
        let mut m = Map::new();
        put_rate(&mut m, "messages", self.ready + self.unacked, r.messages);
        put_rate(&mut m, "messages_ready", self.ready, r.messages_ready);
        put_rate(
            &mut m,
            "messages_unacknowledged",
            self.unacked,
            r.messages_unacknowledged,
        );
        Value::Object(m)
    }

    pub fn message_stats(&self, r: &Rates) -> Value {
        let mut m = Map::new();
        put_rate(&mut m, "publish", self.published, r.publish);
        put_rate(&mut m, "deliver_get", self.delivered, r.deliver_get);
        put_rate(&mut m, "ack", self.acked, r.ack);
        put_rate(&mut m, "redeliver", self.redelivered, r.redeliver);
        Value::Object(m)
    }
}

/// Counts cover what the caller may see: every vhost and connection for
/// administrators and monitoring users, otherwise its vhosts and its own
/// connections.
/// `?msg_rates_age=&msg_rates_incr=` / `?lengths_age=&lengths_incr=`
/// (seconds), as RabbitMQ's UI asks for chart data: adds `samples`
/// (newest first), `avg_rate` and `avg` to the overview's message and
/// queue-length `_details`. Only for callers who see every vhost.
fn add_samples(ctx: &Ctx, out: &mut Value, query: &HashMap<String, String>) {
    let param = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());
    type Field = (&'static str, &'static str, fn(&Counts) -> u64);
    let families: [(&str, &str, &[Field]); 2] = [
        (
            "msg_rates_age",
            "msg_rates_incr",
            &[
                ("message_stats", "publish", |c| c.published),
                ("message_stats", "deliver_get", |c| c.delivered),
                ("message_stats", "ack", |c| c.acked),
                ("message_stats", "redeliver", |c| c.redelivered),
            ],
        ),
        (
            "lengths_age",
            "lengths_incr",
            &[
                ("queue_totals", "messages", |c| c.ready + c.unacked),
                ("queue_totals", "messages_ready", |c| c.ready),
                ("queue_totals", "messages_unacknowledged", |c| c.unacked),
            ],
        ),
    ];
    for (age_key, incr_key, fields) in families {
        let (Some(age), Some(incr)) = (param(age_key), param(incr_key)) else {
            continue;
        };
        let history = ctx.rates.history(age, incr.max(1));
        for (section, key, get) in fields {
            let samples: Vec<Value> = history
                .iter()
                .map(|(ts, c)| json!({"sample": get(c), "timestamp": ts}))
                .collect();
            let values: Vec<f64> = history.iter().map(|(_, c)| get(c) as f64).collect();
            let avg = if values.is_empty() {
                0.0
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            };
            let avg_rate = match (history.first(), history.last()) {
                (Some((t1, c1)), Some((t0, c0))) if t1 > t0 => {
                    (get(c1) as f64 - get(c0) as f64) / ((t1 - t0) as f64 / 1000.0)
                }
                _ => 0.0,
            };
            if let Some(Value::Object(details)) = out
                .get_mut(*section)
                .and_then(|s| s.get_mut(format!("{key}_details")))
            {
                details.insert("samples".into(), Value::Array(samples));
                details.insert("avg".into(), json!(avg));
                details.insert("avg_rate".into(), json!(avg_rate));
            }
        }
    }
}

async fn overview(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let broker = &ctx.broker;
    let mut vhosts = broker.vhosts();
    vhosts.retain(|v| caller.can_read(&ctx, &v.name));
    let mut totals = Totals::of(&vhosts);
    // Queues of other nodes count as their nodes count them.
    let all_queues: Vec<_> = vhosts.iter().flat_map(|v| v.queues()).collect();
    totals.add_remote(&super::remote_queues::remote_stats(&ctx, &all_queues).await);
    let names: Vec<&str> = vhosts.iter().map(|v| v.name.as_str()).collect();
    let rates = ctx.rates.sum(|vhost, _| names.contains(&vhost));
    if caller.sees_everything() {
        let queues: Vec<_> = vhosts.iter().flat_map(|v| v.queues()).collect();
        totals = totals.with_counts(&ctx.rates.totals(&queues));
    }
    let mut connections = broker.registry.connections();
    if !caller.sees_everything() {
        connections.retain(|c| c.user == caller.name);
    }
    let channels: usize = connections
        .iter()
        .map(|c| c.channels.load(Ordering::Relaxed))
        .sum();
    let amqp = &broker.config.amqp;
    let mut churn = Map::new();
    for key in [
        "channel_closed",
        "channel_created",
        "queue_created",
        "queue_declared",
        "queue_deleted",
    ] {
        put_count(&mut churn, key, 0);
    }
    let (opened, closed) = broker.registry.churn();
    let (opened_rate, closed_rate) = ctx.rates.churn();
    put_rate(&mut churn, "connection_created", opened, opened_rate);
    put_rate(&mut churn, "connection_closed", closed, closed_rate);
    let mut out = json!({
        "management_version": VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {
            "global": [600, 3600, 28800, 86400],
            "basic": [600, 3600],
            "detailed": [600],
        },
        "exchange_types": exchange_types(),
        "product_version": VERSION,
        "product_name": "Broker",
        "rabbitmq_version": VERSION,
        "cluster_name": broker.config.cluster_name(),
        "erlang_version": "none",
        "erlang_full_version": "none (Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": true,
        "message_stats": totals.message_stats(&rates),
        "churn_rates": churn,
        "queue_totals": totals.queue_totals(&rates),
        "object_totals": {
            "channels": channels,
            "connections": connections.len(),
            "consumers": totals.consumers,
            "exchanges": totals.exchanges,
            "queues": totals.queues,
        },
        "statistics_db_event_queue": 0,
        "node": ctx.node,
        "listeners": [{
            "node": ctx.node,
            "protocol": "amqp",
            "ip_address": amqp.bind,
            "port": amqp.port,
            "socket_opts": {},
        }],
        "contexts": [],
    });
    if caller.sees_everything() {
        add_samples(&ctx, &mut out, &query);
    }
    Json(out)
}

fn node_json(ctx: &Ctx) -> Value {
    // The members this node cannot reach now (RabbitMQ lists the nodes it
    // has seen a partition with).
    let partitions: Vec<String> = ctx
        .broker
        .replication
        .cluster()
        .map(|c| c.status().members)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.reachable && m.name != ctx.node)
        .map(|m| m.name)
        .collect();
    let p = ProcessStats::read();
    let alarms = &ctx.broker.alarms;
    let alarm = alarms.current().map(|reason| {
        if reason.contains("disk") {
            "disk"
        } else {
            "memory"
        }
    });
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "name": ctx.node,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "uptime": ctx.started.elapsed().as_millis() as u64,
        "processors": processors,
        "os_pid": std::process::id().to_string(),
        "fd_used": p.open_fds,
        "fd_total": p.max_fds,
        "sockets_used": ctx.broker.registry.count(),
        "mem_used": p.resident_memory_bytes,
        "mem_limit": alarms.memory_limit(),
        "mem_alarm": alarm == Some("memory"),
        "disk_free": crate::broker::alarms::free_disk(&ctx.broker.config.storage.data_dir),
        "disk_free_limit": alarms.disk_free_limit(),
        "disk_free_alarm": alarm == Some("disk"),
        "proc_used": p.threads,
        "run_queue": 0,
        "rates_mode": "basic",
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "applications": [{"name": "rabbit", "description": "RabbitMQ-compatible broker", "version": VERSION}],
        "rabbitmq_version": VERSION,
        "partitions": partitions,
        "exchange_types": exchange_types(),
    })
}

/// Lets other nodes' `/api/nodes` show this node in full.
/// (The report holds the broker for the life of the process, as the API
/// server does.)
pub(crate) fn report_this_node(ctx: &Ctx) {
    let for_report = ctx.clone();
    ctx.broker
        .replication
        .set_node_report(std::sync::Arc::new(move || {
            node_json(&for_report).to_string()
        }));
}

/// Every node of the cluster: this one, and the others as they report
/// themselves (name and `running: false` for one that does not answer).
async fn all_nodes(ctx: &Ctx) -> Vec<Value> {
    let mut nodes = vec![node_json(ctx)];
    let Some(cluster) = ctx.broker.replication.cluster() else {
        return nodes;
    };
    for member in cluster.status().members {
        if member.name == ctx.node {
            continue;
        }
        let report = if member.reachable {
            let call = crate::broker::forward::encode(&crate::broker::forward::Call::NodeReport);
            let answer = cluster
                .call(&member.name, call, std::time::Duration::from_secs(2))
                .await;
            match answer.ok().and_then(|b| crate::broker::forward::decode(&b)) {
                Some(crate::broker::forward::Answer::Report(text)) => {
                    serde_json::from_str::<Value>(&text).ok()
                }
                _ => None,
            }
        } else {
            None
        };
        nodes.push(report.unwrap_or_else(|| {
            json!({
                "name": member.name,
                "type": "disc",
                "running": member.reachable,
                "cluster_links": [],
                "partitions": [],
            })
        }));
    }
    nodes
}

async fn nodes(State(ctx): State<Ctx>) -> Json<Value> {
    Json(Value::Array(all_nodes(&ctx).await))
}

async fn node(State(ctx): State<Ctx>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    all_nodes(&ctx)
        .await
        .into_iter()
        .find(|n| n["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn cluster_name(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!({"name": ctx.broker.config.cluster_name()}))
}
