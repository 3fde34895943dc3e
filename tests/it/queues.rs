//! Queue declaration, exclusivity, auto-delete, purge and delete.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test]
async fn server_named_queue_and_declare_ok_counts() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str();
    assert!(name.starts_with("amq.gen-") && name.len() == 30, "{name}");
    for _ in 0..3 {
        publish(&ch, "", name, b"m").await;
    }
    let _consumer = ch
        .basic_consume(
            name.into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // One message goes out unacked to the consumer? No: prefetch unlimited,
    // so all three are unacked now and declare-ok counts ready only.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let again = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(again.message_count(), 0);
    assert_eq!(again.consumer_count(), 1);
}

#[tokio::test]
async fn redeclare_with_different_arguments_is_406() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let ttl = |v: i32| table(&[("x-message-ttl", AMQPValue::LongInt(v))]);
    ch.queue_declare("q".into(), Default::default(), ttl(1000))
        .await
        .unwrap();
    // Same value as another integer width is equivalent.
    ch.queue_declare(
        "q".into(),
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongLongInt(1000))]),
    )
    .await
    .expect("equivalent redeclare");
    let err = ch
        .queue_declare("q".into(), Default::default(), ttl(2000))
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare("q".into(), Default::default(), FieldTable::default())
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'signedint'".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            ttl(1000),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'".into()
        )
    );
    // Passive ignores everything but the name.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare");
    broker.assert_healthy().await;
}

#[tokio::test]
async fn reserved_and_missing_names() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare("amq.foo".into(), Default::default(), FieldTable::default())
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "nope".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch.basic_get("nope".into(), Default::default()).await;
    assert_eq!(broker.error_of(err).await.0, 404);
    let ch = conn.create_channel().await.unwrap();
    let err = ch.queue_purge("".into(), Default::default()).await;
    assert_eq!(
        broker.error_of(err).await,
        (404, "NOT_FOUND - no previously declared queue".into())
    );
    // Deleting a missing queue is fine; so is unbinding a missing binding.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        ch.queue_delete("never".into(), Default::default())
            .await
            .unwrap(),
        0
    );
    ch.queue_unbind(
        "never".into(),
        "amq.direct".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    broker.assert_healthy().await;
}

#[tokio::test]
async fn names_have_cr_and_lf_stripped() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "ref-cr\r\nlf".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.name().as_str(), "ref-crlf");
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_goes_with_it() {
    let broker = TestBroker::start().await;
    let (owner, ch) = broker.channel().await;
    ch.queue_declare(
        "excl".into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let (other, och) = broker.channel().await;
    let err = och
        .queue_declare(
            "excl".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await, (405, locked.to_string()));
    let och = other.create_channel().await.unwrap();
    let err = och.basic_get("excl".into(), Default::default()).await;
    assert_eq!(broker.error_of(err).await.0, 405);
    // Publishing to it from elsewhere is allowed.
    let och = other.create_channel().await.unwrap();
    publish(&och, "", "excl", b"hi").await;
    // It survives its channel closing, and goes with its connection.
    ch.close(200, "bye".into()).await.unwrap();
    let ch2 = owner.create_channel().await.unwrap();
    assert!(get(&ch2, "excl").await.is_some());
    owner.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let och = other.create_channel().await.unwrap();
    let err = och
        .queue_declare(
            "excl".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await.0, 404);
}

#[tokio::test]
async fn auto_delete_queue_goes_after_its_last_consumer() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let opts = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.queue_declare("ad".into(), opts, FieldTable::default())
        .await
        .unwrap();
    // Never consumed: stays.
    let c1 = ch
        .basic_consume(
            "ad".into(),
            "c1".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _c2 = ch
        .basic_consume(
            "ad".into(),
            "c2".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_cancel(c1.tag(), Default::default()).await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("ad".into(), passive, FieldTable::default())
        .await
        .expect("one consumer left");
    ch.basic_cancel("c2".into(), Default::default())
        .await
        .unwrap();
    let err = ch
        .queue_declare("ad".into(), passive, FieldTable::default())
        .await;
    assert_eq!(broker.error_of(err).await.0, 404);
}

#[tokio::test]
async fn purge_and_delete_report_ready_counts() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("pq".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for _ in 0..4 {
        publish(&ch, "", "pq", b"m").await;
    }
    assert_eq!(
        ch.queue_purge("pq".into(), Default::default())
            .await
            .unwrap(),
        4
    );
    publish(&ch, "", "pq", b"m").await;
    let err = ch
        .queue_delete(
            "pq".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - queue 'pq' in vhost '/' not empty".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let _consumer = ch
        .basic_consume(
            "pq".into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let err = ch2
        .queue_delete(
            "pq".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - queue 'pq' in vhost '/' in use".into()
        )
    );
    let ch3 = conn.create_channel().await.unwrap();
    publish(&ch3, "", "pq", b"m").await;
    ch3.queue_delete("pq".into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn empty_queue_name_means_last_declared() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Bind with empty queue and empty key: the queue's name is the key.
    ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", q.name().as_str(), b"by name").await;
    let m = ch
        .basic_get("".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert_eq!(m.expect("bound by name").delivery.data, b"by name");
}
