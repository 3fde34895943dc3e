//! Back-pressure between queues and slow consumer connections.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

/// Appends one basic.publish to the default exchange with its header and
/// body frames (no properties) to `out`, as a client would write it.
fn encode_publish(out: &mut bytes::BytesMut, routing_key: &str, mandatory: bool, body: &[u8]) {
    use broker::protocol::{encode, AMQPClass};
    encode::method(
        out,
        1,
        &AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(
            amq_protocol::protocol::basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                mandatory,
                immediate: false,
            },
        )),
    );
    encode::content(
        out,
        1,
        &encode::properties(&Default::default()),
        body,
        131_072,
    );
}

/// A no-ack consumer slower than its publisher fills its connection's write
/// side; the queue then holds back and is woken when the writer drains.
/// Runs on two worker threads, the setting in which waking once re-entered
/// the queue lock and stopped the broker (found by `amqp-perf` at full rate;
/// this test exercises the same path but does not hit that narrow window
/// reliably).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_autoack_consumer_drains_everything() {
    let broker = TestBroker::start().await;
    let (_pc, publisher) = broker.channel().await;
    let (_cc, consumer_ch) = broker.channel().await;
    publisher
        .queue_declare("flood".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "flood".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    const COUNT: usize = 60_000;
    let body = vec![7u8; 1024];
    let publishing = tokio::spawn(async move {
        for _ in 0..COUNT {
            publisher
                .basic_publish(
                    "".into(),
                    "flood".into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await
                .unwrap();
        }
        publisher
    });
    let mut received = 0;
    let drained = tokio::time::timeout(Duration::from_secs(90), async {
        while received < COUNT {
            consumer
                .next()
                .await
                .expect("consumer open")
                .expect("delivery");
            received += 1;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "stalled after {received} of {COUNT} messages"
    );
    publishing.await.unwrap();
    broker.assert_healthy().await;
}

/// Fairness: one connection floods (a raw socket writing pipelined
/// publishes as fast as the broker takes them, never reading) while a
/// polite publisher on another connection publishes with confirms, one at a
/// time. Every polite publish is confirmed while the flood goes on; the
/// flooder is slowed by its own socket (the broker reads it at its own
/// pace), and its queue stays within its `x-max-length`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_publisher_does_not_starve_a_polite_one() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let broker = TestBroker::start().await;
    let (_sc, setup) = broker.channel().await;
    declare(
        &setup,
        "flood",
        table(&[("x-max-length", lapin::types::AMQPValue::LongInt(1000))]),
    )
    .await;
    declare(&setup, "polite", FieldTable::default()).await;

    // 500 publishes of 1 KiB, encoded once, written again and again.
    let mut batch = bytes::BytesMut::new();
    for _ in 0..500 {
        encode_publish(&mut batch, "flood", false, &[b'f'; 1024]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let mut flooder = RawClient::open(broker.port).await;
    flooder.open_channel(1).await;
    let flooding = tokio::spawn({
        let (stop, flooded) = (stop.clone(), flooded.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                flooder.send_raw(&batch).await;
                flooded.fetch_add(500, Ordering::Relaxed);
            }
            flooder
        }
    });
    // The flood is under way before the polite publisher starts.
    while flooded.load(Ordering::Relaxed) < 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (_pc, polite) = broker.channel().await;
    polite
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    const POLITE: usize = 200;
    for i in 0..POLITE {
        let confirm = tokio::time::timeout(Duration::from_secs(60), async {
            polite
                .basic_publish(
                    "".into(),
                    "polite".into(),
                    BasicPublishOptions::default(),
                    format!("polite {i}").as_bytes(),
                    Default::default(),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm")
        })
        .await
        .unwrap_or_else(|_| panic!("polite publish {i} not confirmed during the flood"));
        assert!(confirm.is_ack(), "publish {i}: {confirm:?}");
    }
    let during = flooded.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _flooder = flooding.await.expect("flooder");
    eprintln!("{POLITE} polite confirms while the flooder wrote {during} publishes");
    assert_eq!(ready(&setup, "polite").await, POLITE as u32);
    // The flood queue is bounded by its own limit, whatever got through.
    assert!(ready(&setup, "flood").await <= 1000);
    broker.assert_healthy().await;
}

/// A client that publishes without reading what it is sent (here: every
/// message comes back as basic.return) is not read either once its
/// connection's write side is full, so the broker does not buffer the
/// returns without bound. When it reads again, everything comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_not_read_either() {
    use broker::protocol::decode::{Frame, FrameDecoder};
    use broker::protocol::AMQPClass;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = TestBroker::start().await;
    // Mandatory publishes of 64 KiB that no queue takes: each one is
    // returned with its body.
    const BODY: usize = 64 * 1024;
    const COUNT: u64 = 4096; // 256 MiB in all
    let mut one = bytes::BytesMut::new();
    encode_publish(&mut one, "nobody-here", true, &[b'r'; BODY]);

    let mut client = RawClient::open(broker.port).await;
    client.open_channel(1).await;
    let (mut read_half, mut write_half) = client.stream.into_split();
    let written = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn({
        let written = written.clone();
        async move {
            for _ in 0..COUNT {
                write_half.write_all(&one).await.expect("write");
                written.fetch_add(1, Ordering::Relaxed);
            }
            write_half
        }
    });

    // The writes stall: nothing has read the returns.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(
            now < COUNT,
            "all {COUNT} publishes were taken without reading a byte"
        );
        last = now;
    }
    eprintln!(
        "writes stalled after {last} publishes ({} MiB)",
        (last * BODY as u64) >> 20
    );
    assert!(
        last * (BODY as u64) < 96 << 20,
        "{last} publishes of 64 KiB read before the broker stopped reading"
    );
    broker.assert_healthy().await;

    // Reading again: every publish comes back as a return, none lost.
    let decoder = FrameDecoder::new(1 << 20);
    let mut buf = bytes::BytesMut::with_capacity(1 << 20);
    let mut returns = 0u64;
    while returns < COUNT {
        match decoder.decode(&mut buf).expect("valid frames") {
            Some(Frame::Method { method, .. }) => {
                if matches!(
                    *method,
                    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Return(_))
                ) {
                    returns += 1;
                }
            }
            Some(_) => {}
            None => {
                let n = tokio::time::timeout(Duration::from_secs(10), read_half.read_buf(&mut buf))
                    .await
                    .expect("returns keep coming")
                    .expect("read");
                assert!(n > 0, "closed after {returns} returns");
            }
        }
    }
    let _ = writing.await.expect("all publishes written");
    broker.assert_healthy().await;
}
