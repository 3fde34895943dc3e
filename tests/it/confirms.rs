//! Publisher confirms, mandatory returns, transactions, direct reply-to.

use crate::common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;

#[tokio::test]
async fn confirms_ack_every_publish() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..500 {
        let c = ch
            .basic_publish(
                "".into(),
                "q".into(),
                Default::default(),
                format!("{i}").as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    // Unroutable messages are confirmed too.
    confirms.push(
        ch.basic_publish(
            "amq.direct".into(),
            "nobody".into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .unwrap(),
    );
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    let q = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 500);
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_its_ack() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let returned = confirm.take_message().expect("basic.return before the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.data, b"lost");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
}

#[tokio::test]
async fn transactions_buffer_publishes_and_acks_until_commit() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let (_c2, observer) = broker.channel().await;
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.tx_select().await.unwrap();
    publish(&ch, "", "q", b"1").await;
    publish(&ch, "", "q", b"2").await;
    let seen = observer
        .queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(seen.message_count(), 0, "nothing visible before commit");
    ch.tx_commit().await.unwrap();
    let seen = observer
        .queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(seen.message_count(), 2);

    publish(&ch, "", "q", b"3").await;
    ch.tx_rollback().await.unwrap();
    let seen = observer
        .queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(seen.message_count(), 2, "rolled back publish is gone");

    // A rolled-back ack leaves the message unacked, to be acked later.
    let m = ch
        .basic_get("q".into(), Default::default())
        .await
        .unwrap()
        .unwrap();
    ch.basic_ack(m.delivery.delivery_tag, Default::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_ack(m.delivery.delivery_tag, Default::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    let seen = observer
        .queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(seen.message_count(), 1);
}

#[tokio::test]
async fn tx_and_confirm_modes_exclude_each_other() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let err = ch.confirm_select(Default::default()).await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let err = ch.tx_select().await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch.tx_commit().await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".into()
        )
    );
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let broker = TestBroker::start().await;
    let (_c, server) = broker.channel().await;
    server
        .queue_declare("rpc".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut requests = consume(
        &server,
        "rpc",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await;

    let (_c2, client) = broker.channel().await;
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_with(
        &client,
        "",
        "rpc",
        b"ping",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    let request = next(&mut requests).await;
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("reply_to set")
        .to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    publish(&server, "", &reply_to, b"pong").await;
    let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, b"pong");
    assert_eq!(reply.routing_key.as_str(), reply_to);
    // A reply to a stale address is dropped silently.
    publish(&server, "", "amq.rabbitmq.reply-to.bogus", b"late").await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn direct_reply_to_errors() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    publish_with(
        &ch,
        "",
        "x",
        b"?",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    let err = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge".into()
        )
    );
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "amq.rabbitmq.reply-to".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
}

#[tokio::test]
async fn publish_checks_user_id_and_expiration() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    publish_with(
        &ch,
        "",
        "q",
        b"ok",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    publish_with(
        &ch,
        "",
        "q",
        b"bad",
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await;
    let err = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'".into()
        )
    );
    for (value, text) in [
        (
            "abc",
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
        ),
        (
            "-1",
            "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}",
        ),
        (
            "1.5",
            "PRECONDITION_FAILED - invalid expiration '1.5': {leftover_string,\".5\"}",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        publish_with(
            &ch,
            "",
            "q",
            b"x",
            BasicProperties::default().with_expiration(value.into()),
        )
        .await;
        let err = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(
            broker.error_of(err).await,
            (406, text.to_string()),
            "expiration {value}"
        );
    }
    let ch = conn.create_channel().await.unwrap();
    publish_with(
        &ch,
        "",
        "q",
        b"fine",
        BasicProperties::default().with_expiration("+5".into()),
    )
    .await;
    let q = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 2);
}

#[tokio::test]
async fn large_messages_are_split_into_frames_and_reassembled() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare("big".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "big", &body).await;
    let got = get(&ch, "big").await.unwrap();
    assert_eq!(got.delivery.data.len(), body.len());
    assert!(got.delivery.data == body);
}

#[tokio::test]
async fn message_over_max_size_is_refused_with_406() {
    let broker = TestBroker::start_with(|c| c.amqp.max_message_size = 1000).await;
    let (_c, ch) = broker.channel().await;
    ch.basic_publish(
        "".into(),
        "q".into(),
        Default::default(),
        &[0u8; 2000],
        Default::default(),
    )
    .await
    .unwrap();
    let err = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000"
                .into()
        )
    );
    broker.assert_healthy().await;
}
