//! Consumers, prefetch, acks, requeue order, recover, cancellation.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

async fn queue_with(ch: &lapin::Channel, name: &str, bodies: &[&str]) {
    ch.queue_declare(name.into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for b in bodies {
        publish(ch, "", name, b.as_bytes()).await;
    }
}

fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

#[tokio::test]
async fn consume_ack_and_get() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q", &["1", "2", "3"]).await;
    let m = ch
        .basic_get("q".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count, 2);
    assert_eq!(body(&m.delivery), "1");
    m.delivery.ack(Default::default()).await.unwrap();
    let mut consumer = consume(&ch, "q", Default::default()).await;
    for expected in ["2", "3"] {
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), expected);
        assert!(!d.redelivered);
        d.ack(Default::default()).await.unwrap();
    }
    assert!(ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn nack_requeue_restores_original_position_with_redelivered() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q", &["a", "b", "c", "d"]).await;
    let first = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    let second = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    // Requeue in reverse: they still come back in original order, before c.
    second
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    first
        .delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let mut consumer = consume(
        &ch,
        "q",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;
    let got: Vec<(String, bool)> = {
        let mut v = vec![];
        for _ in 0..4 {
            let d = next(&mut consumer).await;
            v.push((body(&d), d.redelivered));
        }
        v
    };
    assert_eq!(
        got,
        vec![
            ("a".into(), true),
            ("b".into(), true),
            ("c".into(), false),
            ("d".into(), false)
        ]
    );
}

#[tokio::test]
async fn reject_without_requeue_drops_and_multiple_ack_settles_a_range() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q", &["1", "2", "3", "4"]).await;
    let mut consumer = consume(&ch, "q", Default::default()).await;
    let mut tags = vec![];
    for _ in 0..4 {
        tags.push(next(&mut consumer).await.delivery_tag);
    }
    ch.basic_reject(tags[0], BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_ack(tags[2], BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.basic_nack(
        tags[3],
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(body(&d), "4");
    assert!(d.redelivered);
    assert_nothing(&mut consumer, 200).await;
}

#[tokio::test]
async fn unknown_delivery_tag_is_406() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.basic_ack(99, Default::default()).await.unwrap();
    let err = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (406, "PRECONDITION_FAILED - unknown delivery tag 99".into())
    );
    // Double ack too.
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q2", &["x"]).await;
    let m = ch
        .basic_get("q2".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    ch.basic_ack(m.delivery.delivery_tag, Default::default())
        .await
        .unwrap();
    ch.basic_ack(m.delivery.delivery_tag, Default::default())
        .await
        .unwrap();
    let err = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await.0, 406);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn prefetch_limits_unacked_per_consumer() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let bodies: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    queue_with(&ch, "q", &refs).await;
    ch.basic_qos(3, Default::default()).await.unwrap();
    let mut a = consume(&ch, "q", Default::default()).await;
    let mut b = consume(&ch, "q", Default::default()).await;
    let mut a_got = vec![];
    for _ in 0..3 {
        a_got.push(next(&mut a).await);
    }
    for _ in 0..3 {
        next(&mut b).await;
    }
    assert_nothing(&mut a, 200).await;
    assert_nothing(&mut b, 50).await;
    // One ack frees one slot.
    a_got[0].ack(Default::default()).await.unwrap();
    next(&mut a).await;
    assert_nothing(&mut a, 200).await;
}

#[tokio::test]
async fn global_qos_is_shared_by_the_channel() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q", &["1", "2", "3", "4", "5", "6"]).await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut a = consume(&ch, "q", Default::default()).await;
    let mut b = consume(&ch, "q", Default::default()).await;
    let mut total = 0;
    for consumer in [&mut a, &mut b] {
        while tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_ok()
        {
            total += 1;
        }
    }
    assert_eq!(total, 3, "three unacked across both consumers");
}

#[tokio::test]
async fn channel_close_requeues_unacked_in_order() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    queue_with(&ch, "q", &["1", "2", "3"]).await;
    let mut consumer = consume(&ch, "q", Default::default()).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    ch.close(200, "bye".into()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for expected in ["1", "2", "3"] {
        let m = ch
            .basic_get("q".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body(&m.delivery), expected);
        assert!(m.delivery.redelivered);
    }
}

#[tokio::test]
async fn recover_requeues_everything_unacked() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    queue_with(&ch, "q", &["1", "2"]).await;
    let m1 = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    let _m2 = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let again = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body(&again.delivery), body(&m1.delivery));
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn consumer_priorities_serve_higher_first() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.basic_qos(2, Default::default()).await.unwrap();
    let mut lo = ch
        .basic_consume(
            "q".into(),
            "lo".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut hi = ch
        .basic_consume(
            "q".into(),
            "hi".into(),
            Default::default(),
            table(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap();
    for i in 0..3 {
        publish(&ch, "", "q", i.to_string().as_bytes()).await;
    }
    assert_eq!(body(&next(&mut hi).await), "0");
    assert_eq!(body(&next(&mut hi).await), "1");
    assert_eq!(body(&next(&mut lo).await), "2");
}

#[tokio::test]
async fn exclusive_consumer_and_duplicate_tags() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    // Held: dropping a lapin consumer cancels it.
    let _only = ch
        .basic_consume(
            "q".into(),
            "only".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let err = ch2
        .basic_consume(
            "q".into(),
            "x".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".into()
        )
    );
    // Cancel of an unknown tag is fine.
    ch.basic_cancel("unknown".into(), Default::default())
        .await
        .unwrap();
    // Reusing a tag on the channel closes the connection (530).
    let err = ch
        .basic_consume(
            "q".into(),
            "only".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'only'".into()
        )
    );
    broker.assert_healthy().await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut consumer = consume(&ch, "q", Default::default()).await;
    let (_c2, ch2) = broker.channel().await;
    ch2.queue_delete("q".into(), Default::default())
        .await
        .unwrap();
    // lapin advertises consumer_cancel_notify: the stream ends.
    let end = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("cancel arrives");
    assert!(end.is_none(), "consumer should end, got {end:?}");
}

#[tokio::test]
async fn qos_prefetch_size_and_recover_without_requeue_are_540() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    use amq_protocol::protocol::{basic, AMQPClass};
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    raw.expect_method().await;
    // amq-protocol's Qos has no prefetch_size field: encode it by hand.
    let mut frame = vec![1u8, 0, 1];
    let payload: Vec<u8> = [&[0u8, 60, 0, 10][..], &1000u32.to_be_bytes(), &[0, 1], &[0]].concat();
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    raw.send_raw(&frame).await;
    let (code, text, ..) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)")
    );

    let (_c, ch) = broker.channel().await;
    let err = ch
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (540, "NOT_IMPLEMENTED - requeue=false".into())
    );
    broker.assert_healthy().await;
}
