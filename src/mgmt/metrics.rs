//! Prometheus metrics in the text exposition format, with the names of
//! RabbitMQ's `rabbitmq_prometheus` plugin: `/metrics` (each per-object
//! family summed, no object labels) and `/metrics/per-object` (one sample
//! per queue or connection). Served on its own listener (RabbitMQ: 15692),
//! without authentication, as RabbitMQ does.
//!
//! Per-object labels: queues `vhost`, `queue` as in RabbitMQ; connections
//! `connection` (the connection's name; RabbitMQ labels them with an Erlang
//! pid, which this broker does not have); channels `channel` (the
//! channel's name, `"<connection name> (<number>)"`, for RabbitMQ's pid)
//! and `vhost`. RabbitMQ splits channel counters further by exchange or
//! queue; this broker counts per channel only, so those labels are absent.
//!
//! The aggregated `rabbitmq_channel_*_total` counters include the channels
//! closed since start (the registry's channel ledger), so they never go
//! down; per-object samples are of the open channels.
//!
//! The `rabbitmq_global_messages_*` counters are sums over the objects that
//! exist now (connections and queues), so they can go down when a connection
//! closes or a queue is deleted; Prometheus' `rate()` treats that as a reset.

use crate::broker::registry::CHANNEL_COUNTS;
use crate::broker::Broker;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves `/metrics` and `/metrics/per-object` until `shutdown` resolves.
pub async fn serve_metrics(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Prometheus metrics listening");
    }
    axum::serve(listener, router(broker))
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(broker)
}

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn aggregated(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&broker, false),
    )
}

async fn per_object(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&broker, true),
    )
}

/// What this process uses, from `/proc/self`.
#[derive(Debug, Default, Clone)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
    pub cpu_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // utime and stime, in clock ticks (100 per second on Linux).
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let after = stat.rsplit_once(')')?.1.to_string();
                let fields: Vec<&str> = after.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0);
        ProcessStats {
            resident_memory_bytes: field("VmRSS:") * 1024,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds,
            threads: field("Threads:"),
            cpu_seconds,
        }
    }
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<f64>) -> &mut Self {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let value: f64 = value.into();
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {help}");
    Family { out, name }
}

/// Consumer groups on partitioned streams (this broker's extension): few
/// objects, so always per group and partition.
fn consumer_group_metrics(out: &mut String, broker: &Broker) {
    let mut groups = Vec::new();
    for vhost in broker.vhosts() {
        for g in vhost.groups.snapshot() {
            groups.push((vhost.name.clone(), g));
        }
    }
    groups.sort_by(|a, b| {
        (&a.0, &a.1.super_stream, &a.1.name).cmp(&(&b.0, &b.1.super_stream, &b.1.name))
    });
    let mut f = family(
        out,
        "broker_consumer_group_members",
        "gauge",
        "Members of a consumer group",
    );
    for (vhost, g) in &groups {
        f.sample(
            &[
                ("vhost", vhost),
                ("super_stream", &g.super_stream),
                ("group", &g.name),
            ],
            g.members.len() as f64,
        );
    }
    let mut f = family(
        out,
        "broker_consumer_group_rebalances_total",
        "counter",
        "Rebalances of a consumer group",
    );
    for (vhost, g) in &groups {
        f.sample(
            &[
                ("vhost", vhost),
                ("super_stream", &g.super_stream),
                ("group", &g.name),
            ],
            g.rebalances as f64,
        );
    }
    let mut f = family(
        out,
        "broker_consumer_group_committed_offset",
        "gauge",
        "Last offset a consumer group acked on a partition",
    );
    for (vhost, g) in &groups {
        for p in &g.partitions {
            if let Some(committed) = p.committed {
                let index = p.index.to_string();
                f.sample(
                    &[
                        ("vhost", vhost),
                        ("super_stream", &g.super_stream),
                        ("group", &g.name),
                        ("partition", &index),
                    ],
                    committed as f64,
                );
            }
        }
    }
    let mut f = family(
        out,
        "broker_consumer_group_lag",
        "gauge",
        "Messages of a partition after the group's committed offset",
    );
    for (vhost, g) in &groups {
        for p in &g.partitions {
            let index = p.index.to_string();
            f.sample(
                &[
                    ("vhost", vhost),
                    ("super_stream", &g.super_stream),
                    ("group", &g.name),
                    ("partition", &index),
                ],
                p.lag as f64,
            );
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

struct QueueSample {
    vhost: String,
    name: String,
    ready: u64,
    ready_bytes: u64,
    unacked: u64,
    consumers: u64,
    published: u64,
    delivered: u64,
    acked: u64,
    redelivered: u64,
}

struct ChannelSample {
    name: String,
    vhost: String,
    counts: [u64; CHANNEL_COUNTS],
    consumers: u64,
    unacked: u64,
}

/// RabbitMQ's channel counter families, with the index of their counter in
/// `ChannelStats::counts` (publish, confirm, return_unroutable,
/// drop_unroutable, deliver, deliver_no_ack, get, get_no_ack, get_empty,
/// redeliver, ack).
const CHANNEL_COUNTER_FAMILIES: [(&str, &str, usize); 11] = [
    (
        "rabbitmq_channel_messages_published_total",
        "Total number of messages published into an exchange on a channel",
        0,
    ),
    (
        "rabbitmq_channel_messages_confirmed_total",
        "Total number of messages published into an exchange and confirmed on the channel",
        1,
    ),
    (
        "rabbitmq_channel_messages_unroutable_returned_total",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        2,
    ),
    (
        "rabbitmq_channel_messages_unroutable_dropped_total",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        3,
    ),
    (
        "rabbitmq_channel_get_ack_total",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        6,
    ),
    (
        "rabbitmq_channel_get_total",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        7,
    ),
    (
        "rabbitmq_channel_messages_delivered_ack_total",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        4,
    ),
    (
        "rabbitmq_channel_messages_delivered_total",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        5,
    ),
    (
        "rabbitmq_channel_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        9,
    ),
    (
        "rabbitmq_channel_messages_acked_total",
        "Total number of messages acknowledged by consumers",
        10,
    ),
    (
        "rabbitmq_channel_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        8,
    ),
];

/// The open channels with their counters, consumers and unacked
/// deliveries (the consumers' unacked messages, as `/api/channels`).
fn channel_samples(broker: &Broker) -> Vec<ChannelSample> {
    let mut consumers: HashMap<(u64, u16), (u64, u64)> = HashMap::new();
    for vhost in broker.vhosts() {
        for q in vhost.queues() {
            for c in q.consumer_list() {
                let entry = consumers.entry(c.sink.channel_key()).or_default();
                entry.0 += 1;
                entry.1 += u64::from(c.unacked.load(Ordering::Relaxed));
            }
        }
    }
    let mut channels = Vec::new();
    for c in broker.registry.connections() {
        let conn_name = c.name();
        for (number, stats) in c.open_channel_stats() {
            let (consumers, unacked) = consumers.get(&(c.id, number)).copied().unwrap_or_default();
            channels.push(ChannelSample {
                name: format!("{conn_name} ({number})"),
                vhost: c.vhost.clone(),
                counts: stats.counts(),
                consumers,
                unacked,
            });
        }
    }
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    channels
}

/// The channel families: per open channel, or summed (the counters over
/// every channel since start).
fn channel_metrics(out: &mut String, broker: &Broker, per_object: bool) {
    let channels = channel_samples(broker);
    let totals = broker.registry.channel_totals();
    family(
        out,
        "rabbitmq_channels_opened_total",
        "counter",
        "Total number of channels opened",
    )
    .sample(&[], totals.opened as f64);
    family(
        out,
        "rabbitmq_channels_closed_total",
        "counter",
        "Total number of channels closed",
    )
    .sample(&[], totals.closed as f64);
    type Gauge = (&'static str, &'static str, fn(&ChannelSample) -> u64);
    let gauges: [Gauge; 2] = [
        (
            "rabbitmq_channel_consumers",
            "Consumers on a channel",
            |c| c.consumers,
        ),
        (
            "rabbitmq_channel_messages_unacked",
            "Delivered but not yet acknowledged messages",
            |c| c.unacked,
        ),
    ];
    for (name, help, value) in gauges {
        let mut f = family(out, name, "gauge", help);
        if per_object {
            for c in &channels {
                f.sample(
                    &[("channel", &c.name), ("vhost", &c.vhost)],
                    value(c) as f64,
                );
            }
        } else {
            f.sample(&[], channels.iter().map(value).sum::<u64>() as f64);
        }
    }
    for (name, help, index) in CHANNEL_COUNTER_FAMILIES {
        let mut f = family(out, name, "counter", help);
        if per_object {
            for c in &channels {
                f.sample(
                    &[("channel", &c.name), ("vhost", &c.vhost)],
                    c.counts[index] as f64,
                );
            }
        } else {
            f.sample(&[], totals.counts[index] as f64);
        }
    }
}

struct ConnectionSample {
    name: String,
    channels: u64,
    recv: u64,
    send: u64,
    published: u64,
}

/// The whole exposition; `per_object` keeps one sample per queue or
/// connection, otherwise each family is one unlabelled sum.
pub fn render(broker: &Broker, per_object: bool) -> String {
    let mut queues = Vec::new();
    for vhost in broker.vhosts() {
        for q in vhost.queues() {
            let (ready, ready_bytes, consumers) = q.snapshot();
            queues.push(QueueSample {
                vhost: q.vhost.clone(),
                name: q.name.clone(),
                ready: ready as u64,
                ready_bytes: ready_bytes as u64,
                unacked: q.unacked_count() as u64,
                consumers: consumers as u64,
                published: q.counters.published.load(Ordering::Relaxed),
                delivered: q.counters.delivered.load(Ordering::Relaxed),
                acked: q.counters.acked.load(Ordering::Relaxed),
                redelivered: q.counters.redelivered.load(Ordering::Relaxed),
            });
        }
    }
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    let mut connections: Vec<ConnectionSample> = broker
        .registry
        .connections()
        .iter()
        .map(|c| ConnectionSample {
            name: c.name(),
            channels: c.channels.load(Ordering::Relaxed) as u64,
            recv: c.recv_bytes.load(Ordering::Relaxed),
            send: c.send_bytes.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
        })
        .collect();
    connections.sort_by(|a, b| a.name.cmp(&b.name));

    let mut out = String::with_capacity(4096 + 512 * queues.len());
    let sum_q = |f: fn(&QueueSample) -> u64| queues.iter().map(f).sum::<u64>() as f64;
    let sum_c = |f: fn(&ConnectionSample) -> u64| connections.iter().map(f).sum::<u64>() as f64;

    // Totals.
    family(
        &mut out,
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
    )
    .sample(&[], connections.len() as f64);
    family(
        &mut out,
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
    )
    .sample(&[], sum_c(|c| c.channels));
    family(
        &mut out,
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
    )
    .sample(&[], sum_q(|q| q.consumers));
    family(&mut out, "rabbitmq_queues", "gauge", "Queues available")
        .sample(&[], queues.len() as f64);
    let (opened, closed) = broker.registry.churn();
    family(
        &mut out,
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened",
    )
    .sample(&[], opened as f64);
    family(
        &mut out,
        "rabbitmq_connections_closed_total",
        "counter",
        "Total number of connections closed or terminated",
    )
    .sample(&[], closed as f64);

    // Per queue.
    type QueueFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&QueueSample) -> u64,
    );
    let queue_families: [QueueFamily; 9] = [
        (
            "rabbitmq_queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers",
            |q| q.ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.unacked,
        ),
        (
            "rabbitmq_queue_messages",
            "gauge",
            "Sum of ready and unacknowledged messages - total queue depth",
            |q| q.ready + q.unacked,
        ),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "gauge",
            "Size in bytes of ready messages",
            |q| q.ready_bytes,
        ),
        (
            "rabbitmq_queue_consumers",
            "gauge",
            "Consumers on a queue",
            |q| q.consumers,
        ),
        (
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Total number of messages published to queues",
            |q| q.published,
        ),
        (
            "rabbitmq_queue_messages_delivered_total",
            "counter",
            "Total number of messages delivered from queues to consumers",
            |q| q.delivered,
        ),
        (
            "rabbitmq_queue_messages_acked_total",
            "counter",
            "Total number of messages acknowledged by consumers on queues",
            |q| q.acked,
        ),
        (
            "rabbitmq_queue_messages_redelivered_total",
            "counter",
            "Total number of messages redelivered from queues to consumers",
            |q| q.redelivered,
        ),
    ];
    for (name, kind, help, value) in queue_families {
        let mut f = family(&mut out, name, kind, help);
        if per_object {
            for q in &queues {
                f.sample(&[("vhost", &q.vhost), ("queue", &q.name)], value(q) as f64);
            }
        } else {
            f.sample(&[], queues.iter().map(value).sum::<u64>() as f64);
        }
    }

    // Per connection.
    type ConnFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ConnectionSample) -> u64,
    );
    let connection_families: [ConnFamily; 3] = [
        (
            "rabbitmq_connection_incoming_bytes_total",
            "counter",
            "Total number of bytes received on a connection",
            |c| c.recv,
        ),
        (
            "rabbitmq_connection_outgoing_bytes_total",
            "counter",
            "Total number of bytes sent on a connection",
            |c| c.send,
        ),
        (
            "rabbitmq_connection_channels",
            "gauge",
            "Channels on a connection",
            |c| c.channels,
        ),
    ];
    for (name, kind, help, value) in connection_families {
        let mut f = family(&mut out, name, kind, help);
        if per_object {
            for c in &connections {
                f.sample(&[("connection", &c.name)], value(c) as f64);
            }
        } else {
            f.sample(&[], connections.iter().map(value).sum::<u64>() as f64);
        }
    }

    channel_metrics(&mut out, broker, per_object);

    // Global counters (sums over live objects, see the module comment).
    let amqp = [("protocol", "amqp091")];
    let classic = [
        ("protocol", "amqp091"),
        ("queue_type", "rabbit_classic_queue"),
    ];
    family(
        &mut out,
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
    )
    .sample(&amqp, sum_c(|c| c.published));
    family(
        &mut out,
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
    )
    .sample(&classic, sum_q(|q| q.delivered));
    family(
        &mut out,
        "rabbitmq_global_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
    )
    .sample(&classic, sum_q(|q| q.redelivered));
    family(
        &mut out,
        "rabbitmq_global_messages_acknowledged_total",
        "counter",
        "Total number of message acknowledgements received from consumers",
    )
    .sample(&classic, sum_q(|q| q.acked));
    family(
        &mut out,
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    )
    .sample(&amqp, sum_q(|q| q.consumers));

    consumer_group_metrics(&mut out, broker);

    // Process.
    let process = ProcessStats::read();
    family(
        &mut out,
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
    )
    .sample(&[], process.open_fds as f64);
    family(
        &mut out,
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
    )
    .sample(&[], process.max_fds as f64);
    family(
        &mut out,
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
    )
    .sample(&[], process.resident_memory_bytes as f64);
    family(
        &mut out,
        "rabbitmq_process_threads",
        "gauge",
        "OS threads of the broker process",
    )
    .sample(&[], process.threads as f64);
    family(
        &mut out,
        "rabbitmq_process_cpu_seconds_total",
        "counter",
        "CPU time used by the broker process, user and system",
    )
    .sample(&[], process.cpu_seconds);

    // Identity.
    let version = env!("CARGO_PKG_VERSION");
    family(
        &mut out,
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    )
    .sample(
        &[
            ("rabbitmq_version", version),
            ("prometheus_plugin_version", version),
            ("product", "broker"),
        ],
        1.0,
    );
    let node = broker.config.node_name();
    let cluster = broker.config.cluster_name();
    family(
        &mut out,
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    )
    .sample(
        &[
            ("rabbitmq_node", &node),
            ("rabbitmq_cluster", &cluster),
            (
                "rabbitmq_endpoint",
                if per_object {
                    "per-object"
                } else {
                    "aggregated"
                },
            ),
        ],
        1.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
    }

    #[test]
    fn reads_process_stats() {
        let p = ProcessStats::read();
        assert!(p.resident_memory_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.max_fds >= p.open_fds);
    }
}
