//! The Prometheus endpoint, scraped over HTTP and parsed line by line with
//! a real exposition-format parser.

use crate::common::TestBroker;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prometheus_parse::{Scrape, Value};
use std::time::Duration;

/// A broker with its Prometheus endpoint served by the server itself.
async fn start() -> TestBroker {
    TestBroker::start().await
}

/// Scrapes `path` of the Prometheus endpoint; checks the content type and
/// that every line is a comment or a `rabbitmq_` sample.
async fn scrape(m: &TestBroker, path: &str) -> (String, Scrape) {
    let resp = reqwest::get(format!("{}{path}", m.metrics_url()))
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
    let (_, empty) = scrape(&m, "/metrics").await;
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
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", m.port),
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
        let (_, s) = scrape(&m, "/metrics/per-object").await;
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
    let (text, agg) = scrape(&m, "/metrics").await;
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

/// The sample of `metric` for the channel whose name ends in `(number)`.
fn for_channel(scrape: &Scrape, metric: &str, number: u16) -> f64 {
    let suffix = format!(" ({number})");
    let s = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels
                    .get("channel")
                    .is_some_and(|c| c.contains(" -> ") && c.ends_with(&suffix))
        })
        .unwrap_or_else(|| panic!("no {metric} for channel {number}"));
    assert_eq!(s.labels.get("vhost"), Some("/"));
    value(&s.value)
}

/// Scrapes `path` until `check` holds (counters are bumped as frames are
/// handled, so a scrape may come a moment early), for at most 10 s.
async fn scrape_until(m: &TestBroker, path: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..200 {
        let (_, s) = scrape(m, path).await;
        if check(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (text, _) = scrape(m, path).await;
    panic!("condition not met within 10 s:\n{text}");
}

#[tokio::test]
async fn channel_counters_follow_amqp_and_survive_channel_close() {
    let m = start().await;
    let conn = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", m.port),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();

    // Channel 1 publishes under confirms: 4 routed, 1 mandatory unroutable
    // (returned), 1 plain unroutable (dropped).
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["work", "firehose"] {
        publisher
            .queue_declare(
                q.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let sends = [
        ("work", false),
        ("work", false),
        ("work", false),
        ("firehose", false),
        ("nowhere", true),
        ("nowhere", false),
    ];
    for (key, mandatory) in sends {
        publisher
            .basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"payload",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Channel 2: two manual-ack deliveries (acked), a get with ack (acked),
    // then a get on the empty queue.
    let worker = conn.create_channel().await.unwrap();
    let mut work = worker
        .basic_consume(
            "work".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let d = work.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    worker
        .basic_cancel("worker".into(), Default::default())
        .await
        .unwrap();
    // Channel 3: an auto-ack consumer on firehose, then, once channel 2 is
    // closed, a get with ack of the third message and a get on the empty
    // queue. (The third message may have reached channel 2 before the
    // cancel; its close requeued it, and the get sees it redelivered.)
    let reader = conn.create_channel().await.unwrap();
    let mut firehose = reader
        .basic_consume(
            "firehose".into(),
            "fire".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    firehose.next().await.unwrap().unwrap();
    worker.close(200, "bye".into()).await.unwrap();
    let got = reader
        .basic_get("work".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the third message");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert!(reader
        .basic_get("work".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());

    // Per object: the open channels (1 and 3), labelled with their names.
    let s = scrape_until(&m, "/metrics/per-object", |s| {
        for_channel(s, "rabbitmq_channel_messages_acked_total", 3) == 1.0
            && for_channel(s, "rabbitmq_channel_messages_confirmed_total", 1) == 6.0
    })
    .await;
    assert_eq!(
        for_channel(&s, "rabbitmq_channel_messages_published_total", 1),
        6.0
    );
    assert_eq!(
        for_channel(&s, "rabbitmq_channel_messages_unroutable_returned_total", 1),
        1.0
    );
    assert_eq!(
        for_channel(&s, "rabbitmq_channel_messages_unroutable_dropped_total", 1),
        1.0
    );
    assert_eq!(
        for_channel(&s, "rabbitmq_channel_messages_delivered_total", 3),
        1.0
    );
    assert_eq!(for_channel(&s, "rabbitmq_channel_get_ack_total", 3), 1.0);
    assert_eq!(for_channel(&s, "rabbitmq_channel_get_total", 3), 0.0);
    assert_eq!(for_channel(&s, "rabbitmq_channel_get_empty_total", 3), 1.0);
    assert_eq!(for_channel(&s, "rabbitmq_channel_consumers", 3), 1.0);
    assert_eq!(for_channel(&s, "rabbitmq_channel_consumers", 1), 0.0);
    assert!(
        !s.samples
            .iter()
            .any(|x| x.labels.get("channel").is_some_and(|c| c.ends_with(" (2)"))),
        "closed channel 2 has no per-object samples"
    );
    assert_eq!(
        s.docs
            .get("rabbitmq_channel_messages_published_total")
            .map(String::as_str),
        Some("Total number of messages published into an exchange on a channel")
    );

    // Aggregated: every channel since start, the closed one included.
    // Channel 2 took 2 or 3 deliveries in manual-ack mode; with 3, the get
    // counted a redelivery.
    let agg = scrape_until(&m, "/metrics", |s| {
        only(s, "rabbitmq_channel_messages_acked_total") == 3.0
    })
    .await;
    let expect = [
        ("rabbitmq_channels", 2.0),
        ("rabbitmq_channels_opened_total", 3.0),
        ("rabbitmq_channels_closed_total", 1.0),
        ("rabbitmq_channel_consumers", 1.0),
        ("rabbitmq_channel_messages_unacked", 0.0),
        ("rabbitmq_channel_messages_published_total", 6.0),
        ("rabbitmq_channel_messages_confirmed_total", 6.0),
        ("rabbitmq_channel_messages_unroutable_returned_total", 1.0),
        ("rabbitmq_channel_messages_unroutable_dropped_total", 1.0),
        ("rabbitmq_channel_messages_delivered_total", 1.0),
        ("rabbitmq_channel_get_ack_total", 1.0),
        ("rabbitmq_channel_get_total", 0.0),
        ("rabbitmq_channel_get_empty_total", 1.0),
    ];
    for (metric, want) in expect {
        assert_eq!(only(&agg, metric), want, "{metric}");
    }
    let delivered_ack = only(&agg, "rabbitmq_channel_messages_delivered_ack_total");
    assert!(
        delivered_ack == 2.0 || delivered_ack == 3.0,
        "{delivered_ack}"
    );
    assert_eq!(
        only(&agg, "rabbitmq_channel_messages_redelivered_total"),
        delivered_ack - 2.0
    );

    // Closing everything keeps the totals.
    publisher.close(200, "bye".into()).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    let after = scrape_until(&m, "/metrics", |s| only(s, "rabbitmq_connections") == 0.0).await;
    assert_eq!(only(&after, "rabbitmq_channels"), 0.0);
    assert_eq!(only(&after, "rabbitmq_channels_closed_total"), 3.0);
    for (metric, want) in expect.iter().skip(5) {
        assert_eq!(only(&after, metric), *want, "{metric} after close");
    }
    assert_eq!(
        only(&after, "rabbitmq_channel_messages_delivered_ack_total"),
        delivered_ack
    );
    assert_eq!(only(&after, "rabbitmq_channel_messages_acked_total"), 3.0);
}

#[tokio::test]
async fn unknown_metrics_paths_are_404() {
    let m = start().await;
    let resp = reqwest::get(format!("{}/metrics/nope", m.metrics_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
