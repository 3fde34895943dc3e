//! Back-pressure between queues and slow consumer connections.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;

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
