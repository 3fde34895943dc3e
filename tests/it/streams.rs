//! Stream queues over AMQP 0-9-1: declare rules, offsets, retention,
//! filtering, many readers, server-side offset tracking and restarts.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![("x-queue-type", long_str("stream"))];
    pairs.extend(extra.iter().cloned());
    table(&pairs)
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) -> u32 {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        stream_args(extra),
    )
    .await
    .expect("declare stream")
    .message_count()
}

/// Publishes `bodies` with confirms and waits for all of them, so they
/// are committed (and form chunks of their own).
async fn publish_confirmed(ch: &Channel, queue: &str, bodies: &[String], filter: Option<&str>) {
    let mut confirms = Vec::new();
    for body in bodies {
        let mut props = BasicProperties::default();
        if let Some(f) = filter {
            props = props.with_headers(table(&[("x-stream-filter-value", long_str(f))]));
        }
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                body.as_bytes(),
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn stream_consumer(ch: &Channel, queue: &str, args: &[(&str, AMQPValue)]) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(args),
    )
    .await
    .expect("consume")
}

fn offset_of(d: &lapin::message::Delivery) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset"))
    {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset missing or not a long: {other:?}"),
    }
}

/// Reads `n` deliveries, acking each; returns (body, offset).
async fn read_acked(c: &mut lapin::Consumer, n: usize) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(c).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
        out.push((String::from_utf8(d.data.clone()).unwrap(), offset_of(&d)));
    }
    out
}

async fn stream_channel(broker: &TestBroker, prefetch: u16) -> (lapin::Connection, Channel) {
    let (c, ch) = broker.channel().await;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    (c, ch)
}

#[tokio::test]
async fn declare_rules_follow_rabbitmq() {
    let broker = TestBroker::start().await;
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable, &str)> = vec![
        (
            "s1",
            QueueDeclareOptions::default(),
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's1' in vhost '/'",
        ),
        (
            "s2",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 's2' in vhost '/'",
        ),
        (
            "s3",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's3' in vhost '/'",
        ),
        (
            "",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue",
        ),
        (
            "s4",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_args(&[("x-max-length", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 's4' in vhost '/' of queue type rabbit_stream_queue",
        ),
        (
            "s5",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_args(&[("x-max-age", long_str("10S"))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's5' in vhost '/': invalid_max_age",
        ),
    ];
    for (name, options, args, text) in cases {
        let (_c, ch) = broker.channel().await;
        let err = expect_amqp_error(ch.queue_declare(name.into(), options, args).await);
        assert_eq!(err, (406, text.to_string()), "declaring {name:?}");
    }
}

#[tokio::test]
async fn unsupported_operations_get_rabbitmq_errors() {
    let broker = TestBroker::start().await;
    let cases: Vec<(&str, u16, String)> = vec![
        (
            "get",
            540,
            "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 'st' in vhost '/'"
                .into(),
        ),
        (
            "purge",
            540,
            "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 'st' in vhost '/'"
                .into(),
        ),
        (
            "no-ack",
            540,
            "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue 'st' in vhost '/'"
                .into(),
        ),
        (
            "no-prefetch",
            406,
            "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 'st' in vhost '/''"
                .into(),
        ),
        (
            "bad-offset",
            406,
            "PRECONDITION_FAILED - failed consuming from stream queue 'st' in vhost '/': invalid offset specification 'bogus'"
                .into(),
        ),
        (
            "nack",
            540,
            "NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue 'st' in vhost '/'"
                .into(),
        ),
    ];
    {
        let (_c, ch) = broker.channel().await;
        declare_stream(&ch, "st", &[]).await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish_confirmed(&ch, "st", &bodies("m", 3), None).await;
    }
    for (case, code, text) in cases {
        let (_c, ch) = broker.channel().await;
        if case != "no-prefetch" {
            ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        }
        let result = match case {
            "get" => ch
                .basic_get("st".into(), BasicGetOptions::default())
                .await
                .map(|_| ()),
            "purge" => ch
                .queue_purge("st".into(), QueuePurgeOptions::default())
                .await
                .map(|_| ()),
            "no-ack" => ch
                .basic_consume(
                    "st".into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            "no-prefetch" => ch
                .basic_consume(
                    "st".into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            "bad-offset" => ch
                .basic_consume(
                    "st".into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    table(&[("x-stream-offset", long_str("bogus"))]),
                )
                .await
                .map(|_| ()),
            "nack" => {
                let mut c =
                    stream_consumer(&ch, "st", &[("x-stream-offset", long_str("first"))]).await;
                let d = next(&mut c).await;
                d.nack(BasicNackOptions::default()).await.unwrap();
                // The close comes asynchronously; probe with a declare.
                ch.queue_declare(
                    "st".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ())
            }
            _ => unreachable!(),
        };
        assert_eq!(broker.error_of(result).await, (code, text), "{case}");
    }
    broker.assert_healthy().await;
}

#[tokio::test]
async fn every_offset_spec_starts_where_rabbitmq_starts() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 100).await;
    assert_eq!(declare_stream(&ch, "s", &[]).await, 0);
    // Two committed chunks: 10 messages, a pause, 5 more.
    publish_confirmed(&ch, "s", &bodies("a", 10), None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_confirmed(&ch, "s", &bodies("b", 5), None).await;
    // Declare-ok counts the stream's messages.
    assert_eq!(declare_stream(&ch, "s", &[]).await, 15);

    let mut first = stream_consumer(&ch, "s", &[("x-stream-offset", long_str("first"))]).await;
    let got = read_acked(&mut first, 15).await;
    assert_eq!(got[0], ("a0".to_string(), 0));
    assert_eq!(got[14], ("b4".to_string(), 14));
    for (i, (_, offset)) in got.iter().enumerate() {
        assert_eq!(*offset, i as i64);
    }

    let mut numeric =
        stream_consumer(&ch, "s", &[("x-stream-offset", AMQPValue::LongLongInt(12))]).await;
    assert_eq!(read_acked(&mut numeric, 3).await[0], ("b2".to_string(), 12));
    let mut negative = stream_consumer(
        &ch,
        "s",
        &[("x-stream-offset", AMQPValue::ShortShortInt(-1))],
    )
    .await;
    assert_eq!(read_acked(&mut negative, 1).await[0].1, 0);

    // "last": the start of the last chunk written (the 5 b's went in one
    // or more chunks; the last one ends at offset 14).
    let mut last = stream_consumer(&ch, "s", &[("x-stream-offset", long_str("last"))]).await;
    let d = next(&mut last).await;
    let last_start = offset_of(&d);
    assert!(
        (10..=14).contains(&last_start),
        "last started at {last_start}"
    );

    // A timestamp between the two batches: from the first b.
    let mut stamped = stream_consumer(
        &ch,
        "s",
        &[("x-stream-offset", AMQPValue::Timestamp(between))],
    )
    .await;
    assert_eq!(read_acked(&mut stamped, 1).await[0], ("b0".to_string(), 10));
    // An interval reaching back past both batches: from the start.
    let mut interval = stream_consumer(&ch, "s", &[("x-stream-offset", long_str("1h"))]).await;
    assert_eq!(read_acked(&mut interval, 1).await[0].1, 0);

    // "next" (and no offset at all): only what comes after subscribing,
    // delivered as it arrives.
    let mut next_c = stream_consumer(&ch, "s", &[("x-stream-offset", long_str("next"))]).await;
    let mut default_c = stream_consumer(&ch, "s", &[]).await;
    assert_nothing(&mut next_c, 200).await;
    publish_confirmed(&ch, "s", &["c0".to_string()], None).await;
    assert_eq!(read_acked(&mut next_c, 1).await[0], ("c0".to_string(), 15));
    assert_eq!(
        read_acked(&mut default_c, 1).await[0],
        ("c0".to_string(), 15)
    );
    // An offset beyond the end waits for it.
    let mut ahead =
        stream_consumer(&ch, "s", &[("x-stream-offset", AMQPValue::LongLongInt(17))]).await;
    publish_confirmed(&ch, "s", &bodies("d", 2), None).await;
    assert_eq!(read_acked(&mut ahead, 1).await[0], ("d1".to_string(), 17));
}

#[tokio::test]
async fn acks_only_return_credit_and_messages_stay() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 2).await;
    declare_stream(&ch, "credit", &[]).await;
    publish_confirmed(&ch, "credit", &bodies("m", 6), None).await;
    let mut c = stream_consumer(&ch, "credit", &[("x-stream-offset", long_str("first"))]).await;
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    assert_nothing(&mut c, 300).await;
    d1.ack(BasicAckOptions { multiple: true }).await.unwrap();
    let d2 = next(&mut c).await;
    let _d3 = next(&mut c).await;
    assert_eq!(offset_of(&d0), 0);
    assert_eq!(offset_of(&d2), 2);
    assert_nothing(&mut c, 300).await;
    // Nothing was removed: the stream still holds all six.
    assert_eq!(declare_stream(&ch, "credit", &[]).await, 6);
}

#[tokio::test]
async fn many_readers_each_read_everything_and_follow_the_tail() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 50).await;
    declare_stream(&ch, "fan", &[]).await;
    publish_confirmed(&ch, "fan", &bodies("old", 500), None).await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        let (conn, rch) = stream_channel(&broker, 50).await;
        let c = stream_consumer(&rch, "fan", &[("x-stream-offset", long_str("first"))]).await;
        readers.push((conn, rch, c));
    }
    let publisher = {
        let ch = ch.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                publish_confirmed(&ch, "fan", &bodies(&format!("new{i}-"), 100), None).await;
            }
        })
    };
    for (_conn, _rch, c) in readers.iter_mut() {
        let got = read_acked(c, 1000).await;
        for (i, (_, offset)) in got.iter().enumerate() {
            assert_eq!(*offset, i as i64, "each reader sees every offset in order");
        }
        assert_eq!(got[999].0, "new4-99");
    }
    publisher.await.unwrap();
}

#[tokio::test]
async fn retention_by_size_drops_old_segments() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 100).await;
    declare_stream(
        &ch,
        "sized",
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(5_000)),
        ],
    )
    .await;
    let body = "x".repeat(500);
    for _ in 0..20 {
        publish_confirmed(&ch, "sized", &vec![body.clone(); 10], None).await;
    }
    let queue = broker.broker.vhost("/").unwrap().queue("sized").unwrap();
    let stream = queue.stream().unwrap();
    let (first, end) = stream.log.bounds();
    assert_eq!(end, 200);
    assert!(first > 0, "old segments were dropped");
    assert!(
        stream.log.bytes() <= 20_000 + 6_000,
        "{} bytes kept",
        stream.log.bytes()
    );
    let kept = ch
        .queue_declare(
            "sized".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count() as u64;
    assert_eq!(kept, end - first);
    // "first" now means the oldest retained message.
    let mut c = stream_consumer(&ch, "sized", &[("x-stream-offset", long_str("first"))]).await;
    assert_eq!(offset_of(&next(&mut c).await), first as i64);
}

#[tokio::test]
async fn retention_by_age_drops_old_segments() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 100).await;
    declare_stream(
        &ch,
        "aged",
        &[
            ("x-max-age", long_str("1s")),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(1_000)),
        ],
    )
    .await;
    // One message per chunk (each waits for its confirm), three chunks per
    // segment: segments start at offsets 0, 3, 6 and 9.
    for body in bodies(&"o".repeat(300), 10) {
        publish_confirmed(&ch, "aged", &[body], None).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // New segments roll over; retention runs on each roll and removes the
    // segments whose newest message is older than a second. The old
    // segment still being written when the pause began (offsets 9..) got
    // new messages after it, so it stays.
    for body in bodies(&"n".repeat(300), 10) {
        publish_confirmed(&ch, "aged", &[body], None).await;
    }
    let mut c = stream_consumer(&ch, "aged", &[("x-stream-offset", long_str("first"))]).await;
    let d = next(&mut c).await;
    assert!(
        offset_of(&d) == 9,
        "old messages aged out, first is {}",
        offset_of(&d)
    );
}

#[tokio::test]
async fn filtering_delivers_matching_messages_and_skips_chunks() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 500).await;
    declare_stream(&ch, "orders", &[]).await;
    // Chunks of one colour each, and a chunk without a filter value.
    for round in 0..10 {
        for colour in ["red", "green", "blue"] {
            publish_confirmed(
                &ch,
                "orders",
                &bodies(&format!("{colour}{round}-"), 20),
                Some(colour),
            )
            .await;
        }
    }
    publish_confirmed(&ch, "orders", &bodies("plain", 5), None).await;
    let stream = broker
        .broker
        .vhost("/")
        .unwrap()
        .queue("orders")
        .unwrap()
        .stream()
        .unwrap()
        .clone();
    let before = stream
        .log
        .chunks_read
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut blue = stream_consumer(
        &ch,
        "orders",
        &[
            ("x-stream-offset", long_str("first")),
            ("x-stream-filter", long_str("blue")),
        ],
    )
    .await;
    let got = read_acked(&mut blue, 200).await;
    assert!(got.iter().all(|(b, _)| b.starts_with("blue")));
    assert_nothing(&mut blue, 300).await;
    let read = stream
        .log
        .chunks_read
        .load(std::sync::atomic::Ordering::Relaxed)
        - before;
    // Blue is a third of the messages: about a third of the chunks (plus
    // Bloom false positives) are read.
    let chunks = stream.log.chunk_count() as u64;
    assert!(
        read * 2 < chunks,
        "a selective reader read {read} chunks of {chunks}"
    );

    // A list of values plus unfiltered messages.
    let mut mixed = stream_consumer(
        &ch,
        "orders",
        &[
            ("x-stream-offset", long_str("first")),
            (
                "x-stream-filter",
                AMQPValue::FieldArray(vec![long_str("red"), long_str("green")].into()),
            ),
            ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
        ],
    )
    .await;
    let got = read_acked(&mut mixed, 405).await;
    assert!(got.iter().all(|(b, _)| !b.starts_with("blue")));
    assert_eq!(got.last().unwrap().0, "plain4");
}

#[tokio::test]
async fn a_named_consumer_resumes_after_its_last_ack() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 10).await;
    declare_stream(&ch, "tracked", &[]).await;
    publish_confirmed(&ch, "tracked", &bodies("m", 20), None).await;
    let name = ("x-stream-consumer-name", long_str("projector"));
    {
        let (_c2, ch2) = stream_channel(&broker, 10).await;
        let mut c = stream_consumer(
            &ch2,
            "tracked",
            &[("x-stream-offset", long_str("first")), name.clone()],
        )
        .await;
        let got = read_acked(&mut c, 7).await;
        assert_eq!(got[6].1, 6);
        // Give the last ack time to arrive before the connection closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_c3, ch3) = stream_channel(&broker, 10).await;
    let mut c = stream_consumer(&ch3, "tracked", std::slice::from_ref(&name)).await;
    assert_eq!(read_acked(&mut c, 1).await[0], ("m7".to_string(), 7));
    // An explicit offset wins over the tracked one.
    let mut again = stream_consumer(
        &ch3,
        "tracked",
        &[name, ("x-stream-offset", long_str("first"))],
    )
    .await;
    assert_eq!(read_acked(&mut again, 1).await[0].1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_tracked_offsets_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let name = ("x-stream-consumer-name", long_str("reader"));
    {
        let broker = BrokerProcess::start(dir.path()).await;
        let (_c, ch) = broker.channel().await;
        ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        declare_stream(&ch, "events", &[]).await;
        publish_confirmed(&ch, "events", &bodies("e", 1000), None).await;
        let mut c = stream_consumer(
            &ch,
            "events",
            &[("x-stream-offset", long_str("first")), name.clone()],
        )
        .await;
        read_acked(&mut c, 300).await;
        // Tracked offsets reach disk within sled's flush interval (0.5 s).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.kill();
    }
    let broker = BrokerProcess::start(dir.path()).await;
    let (_c, ch) = broker.channel().await;
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    assert_eq!(declare_stream(&ch, "events", &[]).await, 1000);
    let mut resumed = stream_consumer(&ch, "events", &[name]).await;
    assert_eq!(
        read_acked(&mut resumed, 1).await[0],
        ("e300".to_string(), 300)
    );
    let mut all = stream_consumer(&ch, "events", &[("x-stream-offset", long_str("first"))]).await;
    let got = read_acked(&mut all, 1000).await;
    assert_eq!(got[999], ("e999".to_string(), 999));
    // Offsets go on from where they were.
    ch.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&ch, "events", &["after".to_string()], None).await;
    assert_eq!(
        read_acked(&mut all, 1).await[0],
        ("after".to_string(), 1000)
    );
}

#[tokio::test]
async fn deleting_a_stream_cancels_readers_and_frees_its_files() {
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 10).await;
    declare_stream(&ch, "gone", &[]).await;
    publish_confirmed(&ch, "gone", &bodies("m", 5), None).await;
    let stream = broker
        .broker
        .vhost("/")
        .unwrap()
        .queue("gone")
        .unwrap()
        .stream()
        .unwrap()
        .clone();
    let (_c2, ch2) = stream_channel(&broker, 10).await;
    let mut c = stream_consumer(&ch2, "gone", &[("x-stream-offset", long_str("first"))]).await;
    next(&mut c).await;
    ch.queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(stream.log.is_deleted());
    // The consumer was cancelled (lapin ends the stream of deliveries).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = c.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "consumer not cancelled");
    // Redeclared, the stream starts empty.
    assert_eq!(declare_stream(&ch, "gone", &[]).await, 0);
    // The old files go in the background; the new stream's folder stays.
    let streams = broker.broker.store.as_ref().unwrap().dir.join("streams");
    let folders = || -> Vec<String> {
        std::fs::read_dir(&streams)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while folders().len() != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = folders();
    assert_eq!(left.len(), 1, "old stream files left: {left:?}");
    assert!(!left[0].starts_with("deleted-"), "{left:?}");
    publish_confirmed(&ch, "gone", &bodies("new", 1), None).await;
    let mut c = stream_consumer(&ch2, "gone", &[("x-stream-offset", long_str("first"))]).await;
    let d = next(&mut c).await;
    assert_eq!(d.data, b"new0");
    broker.assert_healthy().await;
}

#[tokio::test]
async fn a_stream_with_a_255_byte_name_works() {
    // Its folder name would be 514 hex digits: the filesystem allows 255.
    let broker = TestBroker::start().await;
    let (_c, ch) = stream_channel(&broker, 10).await;
    let name = "s".repeat(255);
    declare_stream(&ch, &name, &[]).await;
    publish_confirmed(&ch, &name, &bodies("m", 3), None).await;
    let mut c = stream_consumer(&ch, &name, &[("x-stream-offset", long_str("first"))]).await;
    let read = read_acked(&mut c, 3).await;
    assert_eq!(
        read.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    broker.assert_healthy().await;
}
