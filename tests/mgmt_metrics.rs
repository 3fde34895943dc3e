//! The Prometheus endpoint, scraped over HTTP and parsed line by line with
//! a real exposition-format parser.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prometheus_parse::{Scrape, Value};
use std::time::Duration;

struct Metrics {
    amqp_port: u16,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Metrics {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = broker::Config::default();
    config.amqp.bind = "127.0.0.1".into();
    config.amqp.port = 0;
    config.storage.data_dir = dir.path().to_path_buf();
    // The test serves the endpoints itself, on ports of its own.
    config.management.enabled = false;
    config.prometheus.enabled = false;
    let server = broker::Server::bind(config).await.expect("bind");
    let amqp_port = server.local_addr().port();
    let broker = server.broker.clone();
    tokio::spawn(server.run(std::future::pending()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(broker::mgmt::serve_metrics(
        broker,
        listener,
        std::future::pending(),
    ));
    Metrics {
        amqp_port,
        base: format!("http://{addr}"),
        _dir: dir,
    }
}

impl Metrics {
    async fn scrape(&self, path: &str) -> (String, Scrape) {
        let resp = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("scrape");
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = resp.text().await.unwrap();
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with("# TYPE ")
                    || line.starts_with("# HELP ")
                    || line.starts_with("rabbitmq_"),
                "unexpected line: {line}"
            );
        }
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
        (text, scrape)
    }
}

fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("unexpected sample kind {other:?}"),
    }
}

/// The single unlabelled (or only) sample of a metric.
fn only(scrape: &Scrape, metric: &str) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .collect();
    assert_eq!(found.len(), 1, "{metric}: {found:?}");
    value(&found[0].value)
}

fn for_queue(scrape: &Scrape, metric: &str, queue: &str) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && s.labels.get("queue") == Some(queue))
        .unwrap_or_else(|| panic!("no {metric} for {queue}"));
    assert_eq!(s.labels.get("vhost"), Some("/"));
    value(&s.value)
}

#[tokio::test]
async fn scrapes_follow_amqp_activity() {
    let m = start().await;
    let (_, empty) = m.scrape("/metrics").await;
    assert_eq!(only(&empty, "rabbitmq_queues"), 0.0);
    assert_eq!(only(&empty, "rabbitmq_connections"), 0.0);
    assert!(only(&empty, "rabbitmq_process_resident_memory_bytes") > 0.0);
    assert!(only(&empty, "rabbitmq_process_open_fds") > 0.0);
    assert!(only(&empty, "rabbitmq_process_max_fds") >= only(&empty, "rabbitmq_process_open_fds"));
    let build = empty
        .samples
        .iter()
        .find(|s| s.metric == "rabbitmq_build_info")
        .expect("build info");
    assert_eq!(
        build.labels.get("rabbitmq_version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let identity = empty
        .samples
        .iter()
        .find(|s| s.metric == "rabbitmq_identity_info")
        .expect("identity info");
    assert!(identity
        .labels
        .get("rabbitmq_node")
        .unwrap()
        .starts_with("broker@"));
    assert_eq!(identity.labels.get("rabbitmq_endpoint"), Some("aggregated"));
    assert!(empty.docs.contains_key("rabbitmq_queue_messages_ready"));

    let conn = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", m.amqp_port),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in ["metered", "idle"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for _ in 0..5 {
        ch.basic_publish(
            "".into(),
            "metered".into(),
            BasicPublishOptions::default(),
            b"12345678",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // Two delivered to a manual-ack consumer with prefetch 2, left unacked.
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch.basic_qos(2, Default::default()).await.unwrap();
    let _consumer = consumer_ch
        .basic_consume(
            "metered".into(),
            "meter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut per_object = None;
    for _ in 0..100 {
        let (_, s) = m.scrape("/metrics/per-object").await;
        if for_queue(&s, "rabbitmq_queue_messages_unacked", "metered") == 2.0 {
            per_object = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = per_object.expect("two unacked within 5 s");
    assert_eq!(
        for_queue(&s, "rabbitmq_queue_messages_ready", "metered"),
        3.0
    );
    assert_eq!(for_queue(&s, "rabbitmq_queue_messages", "metered"), 5.0);
    assert_eq!(
        for_queue(&s, "rabbitmq_queue_messages_ready_bytes", "metered"),
        24.0
    );
    assert_eq!(for_queue(&s, "rabbitmq_queue_consumers", "metered"), 1.0);
    assert_eq!(
        for_queue(&s, "rabbitmq_queue_messages_published_total", "metered"),
        5.0
    );
    assert_eq!(
        for_queue(&s, "rabbitmq_queue_messages_delivered_total", "metered"),
        2.0
    );
    assert_eq!(for_queue(&s, "rabbitmq_queue_messages_ready", "idle"), 0.0);
    let identity = s
        .samples
        .iter()
        .find(|x| x.metric == "rabbitmq_identity_info")
        .unwrap();
    assert_eq!(identity.labels.get("rabbitmq_endpoint"), Some("per-object"));
    let conn_channels: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "rabbitmq_connection_channels")
        .collect();
    assert_eq!(conn_channels.len(), 1);
    assert_eq!(value(&conn_channels[0].value), 2.0);
    assert!(conn_channels[0]
        .labels
        .get("connection")
        .unwrap()
        .contains(" -> "));

    // Aggregated: the same families, summed, without object labels.
    let (text, agg) = m.scrape("/metrics").await;
    assert_eq!(only(&agg, "rabbitmq_queues"), 2.0);
    assert_eq!(only(&agg, "rabbitmq_connections"), 1.0);
    assert_eq!(only(&agg, "rabbitmq_connections_opened_total"), 1.0);
    assert_eq!(only(&agg, "rabbitmq_connections_closed_total"), 0.0);
    assert_eq!(only(&agg, "rabbitmq_channels"), 2.0);
    assert_eq!(only(&agg, "rabbitmq_consumers"), 1.0);
    assert_eq!(only(&agg, "rabbitmq_queue_messages_ready"), 3.0);
    assert_eq!(only(&agg, "rabbitmq_queue_messages_unacked"), 2.0);
    assert_eq!(only(&agg, "rabbitmq_queue_messages"), 5.0);
    assert!(only(&agg, "rabbitmq_connection_incoming_bytes_total") > 0.0);
    // Present; its value comes from the connections' `published` counters,
    // which the connection task does not maintain yet.
    only(&agg, "rabbitmq_global_messages_received_total");
    assert_eq!(only(&agg, "rabbitmq_global_messages_delivered_total"), 2.0);
    assert!(
        !text.contains("queue=\""),
        "aggregated output has no queue labels"
    );
    assert!(agg
        .samples
        .iter()
        .filter(|x| x.metric == "rabbitmq_global_messages_delivered_total")
        .all(|x| x.labels.get("protocol") == Some("amqp091")));
}

#[tokio::test]
async fn unknown_metrics_paths_are_404() {
    let m = start().await;
    let resp = reqwest::get(format!("{}/metrics/nope", m.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
