//! Exchange declaration, deletion, binding and routing per type.

use crate::common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
}

async fn bound_queue(ch: &Channel, exchange: &str, key: &str) -> String {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    q.name().to_string()
}

/// Binds exchange `destination` to `source` with `key`.
async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

#[tokio::test]
async fn direct_fanout_and_topic_route_as_rabbitmq() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "d", ExchangeKind::Direct).await;
    declare(&ch, "f", ExchangeKind::Fanout).await;
    declare(&ch, "t", ExchangeKind::Topic).await;
    let dq = bound_queue(&ch, "d", "red").await;
    let fq1 = bound_queue(&ch, "f", "ignored").await;
    let fq2 = bound_queue(&ch, "f", "").await;
    let tq = bound_queue(&ch, "t", "a.#.b").await;
    let tq_star = bound_queue(&ch, "t", "*.x").await;

    publish(&ch, "d", "red", b"1").await;
    publish(&ch, "d", "blue", b"2").await;
    publish(&ch, "f", "whatever", b"3").await;
    for key in ["a.b", "a.x.y.b", "a..b", "b", "a.x", "q.x", "x"] {
        publish(&ch, "t", key, key.as_bytes()).await;
    }
    assert_eq!(count(&ch, &dq).await, 1);
    assert_eq!(count(&ch, &fq1).await, 1);
    assert_eq!(count(&ch, &fq2).await, 1);
    assert_eq!(count(&ch, &tq).await, 3);
    assert_eq!(count(&ch, &tq_star).await, 2);
    // Delivered with the exchange and key the client published to.
    let m = get(&ch, &tq).await.unwrap();
    assert_eq!(m.delivery.exchange.as_str(), "t");
    assert_eq!(m.delivery.routing_key.as_str(), "a.b");
}

#[tokio::test]
async fn headers_exchange_matches_all_and_any() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let all_q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let any_q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let all = table(&[("format", long_str("pdf")), ("type", long_str("report"))]);
    let any = table(&[
        ("x-match", long_str("any")),
        ("format", long_str("pdf")),
        ("type", long_str("log")),
    ]);
    ch.queue_bind(
        all_q.name().clone(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        all,
    )
    .await
    .unwrap();
    ch.queue_bind(
        any_q.name().clone(),
        "amq.match".into(),
        "".into(),
        Default::default(),
        any.clone(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        any_q.name().clone(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        any,
    )
    .await
    .unwrap();
    let send = |headers: FieldTable| {
        let ch = ch.clone();
        async move {
            publish_with(
                &ch,
                "amq.headers",
                "",
                b"x",
                BasicProperties::default().with_headers(headers),
            )
            .await;
        }
    };
    send(table(&[
        ("format", long_str("pdf")),
        ("type", long_str("report")),
    ]))
    .await;
    send(table(&[("format", long_str("pdf"))])).await;
    send(table(&[("type", long_str("log"))])).await;
    send(table(&[("other", long_str("1"))])).await;
    assert_eq!(count(&ch, all_q.name().as_str()).await, 1);
    assert_eq!(count(&ch, any_q.name().as_str()).await, 3);
}

#[tokio::test]
async fn bad_x_match_is_406() {
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
    let err = ch
        .queue_bind(
            q.name().clone(),
            "amq.headers".into(),
            "".into(),
            Default::default(),
            table(&[("x-match", long_str("bogus"))]),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x"
                .to_string()
        )
    );
    broker.assert_healthy().await;
}

#[tokio::test]
async fn exchange_to_exchange_keeps_original_exchange_and_key() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "src", ExchangeKind::Topic).await;
    declare(&ch, "dst", ExchangeKind::Fanout).await;
    bind_exchange(&ch, "dst", "src", "k.*").await;
    let q = bound_queue(&ch, "dst", "").await;
    publish(&ch, "src", "k.1", b"via e2e").await;
    publish(&ch, "src", "other", b"not routed").await;
    let m = get(&ch, &q).await.expect("routed through e2e binding");
    assert_eq!(m.delivery.exchange.as_str(), "src");
    assert_eq!(m.delivery.routing_key.as_str(), "k.1");
    assert!(get(&ch, &q).await.is_none());
    ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "k.*".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "k.1", b"after unbind").await;
    assert!(get(&ch, &q).await.is_none());
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "ae", ExchangeKind::Fanout).await;
    ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        Default::default(),
        table(&[("alternate-exchange", long_str("ae"))]),
    )
    .await
    .unwrap();
    let routed = bound_queue(&ch, "main", "known").await;
    let unrouted = bound_queue(&ch, "ae", "").await;
    publish(&ch, "main", "known", b"a").await;
    publish(&ch, "main", "unknown", b"b").await;
    assert_eq!(count(&ch, &routed).await, 1);
    let m = get(&ch, &unrouted).await.expect("to the AE");
    assert_eq!(m.delivery.exchange.as_str(), "main");
    assert_eq!(m.delivery.routing_key.as_str(), "unknown");
}

#[tokio::test]
async fn routing_cycles_end_and_deliver_one_copy() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    // Exchange-to-exchange bindings in a ring: a -> b -> a.
    declare(&ch, "ring-a", ExchangeKind::Fanout).await;
    declare(&ch, "ring-b", ExchangeKind::Fanout).await;
    bind_exchange(&ch, "ring-b", "ring-a", "").await;
    bind_exchange(&ch, "ring-a", "ring-b", "").await;
    let ring = bound_queue(&ch, "ring-b", "").await;
    publish(&ch, "ring-a", "k", b"once").await;
    assert_eq!(count(&ch, &ring).await, 1);

    // Alternate exchanges that name each other, the second with an
    // exchange-to-exchange binding back to the first: nothing loops, and
    // a queue on the second alternate's e2e target gets one copy.
    for (name, alternate) in [("ae-x", "ae-y"), ("ae-y", "ae-x")] {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            Default::default(),
            table(&[("alternate-exchange", long_str(alternate))]),
        )
        .await
        .unwrap();
    }
    declare(&ch, "ae-sink", ExchangeKind::Fanout).await;
    bind_exchange(&ch, "ae-x", "ae-y", "k").await;
    bind_exchange(&ch, "ae-sink", "ae-y", "k").await;
    let sink = bound_queue(&ch, "ae-sink", "").await;
    publish(&ch, "ae-x", "k", b"via the alternate").await;
    publish(&ch, "ae-x", "unroutable", b"nowhere").await;
    assert_eq!(count(&ch, &sink).await, 1);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn cc_and_bcc_add_routing_keys_and_bcc_is_removed() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let a = bound_queue(&ch, "amq.direct", "a").await;
    let b = bound_queue(&ch, "amq.direct", "b").await;
    let c = bound_queue(&ch, "amq.direct", "c").await;
    let list = |k: &str| AMQPValue::FieldArray(vec![long_str(k)].into());
    let headers = table(&[("CC", list("b")), ("BCC", list("c"))]);
    publish_with(
        &ch,
        "amq.direct",
        "a",
        b"x",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in [&a, &b, &c] {
        let m = get(&ch, q).await.expect("each queue gets a copy");
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("CC"));
        assert!(!headers.contains_key("BCC"), "BCC must be stripped");
        assert_eq!(m.delivery.routing_key.as_str(), "a");
    }
}

#[tokio::test]
async fn declare_errors_match_rabbitmq() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "missing".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'".into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x1", ExchangeKind::Direct).await;
    let err = ch
        .exchange_declare(
            "x1".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x1' in vhost '/': received 'fanout' but current is 'direct'".into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "x1".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await.0, 406);

    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_delete("amq.fanout".into(), Default::default())
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed"
                .into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    let err = ch.exchange_delete("".into(), Default::default()).await;
    assert_eq!(
        broker.error_of(err).await,
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let err = ch
        .queue_bind(
            q.name().clone(),
            "".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(broker.error_of(err).await.0, 403);

    // Redeclaring amq.direct with its own properties is fine.
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("redeclare amq.direct");
    // Deleting a missing exchange is not an error.
    ch.exchange_delete("never-was".into(), Default::default())
        .await
        .unwrap();
    broker.assert_healthy().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_connection_with_503() {
    let broker = TestBroker::start().await;
    let (conn, ch) = broker.channel().await;
    let err = ch
        .exchange_declare(
            "e".into(),
            ExchangeKind::Custom("foo".into()),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (503, "COMMAND_INVALID - invalid exchange type 'foo'".into())
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!conn.status().connected());
    broker.assert_healthy().await;
}

#[tokio::test]
async fn delete_if_unused_and_auto_delete() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "used", ExchangeKind::Direct).await;
    bound_queue(&ch, "used", "k").await;
    let err = ch
        .exchange_delete(
            "used".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        broker.error_of(err).await,
        (
            406,
            "PRECONDITION_FAILED - exchange 'used' in vhost '/' in use".into()
        )
    );

    let ch = broker.channel().await.1;
    ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = bound_queue(&ch, "ad", "k").await;
    ch.queue_unbind(
        q.as_str().into(),
        "ad".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            "ad".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        broker.error_of(err).await.0,
        404,
        "auto-delete exchange goes with its last binding"
    );
}

#[tokio::test]
async fn publishing_to_missing_or_internal_exchange_fails() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.basic_publish(
        "nope".into(),
        "k".into(),
        Default::default(),
        b"x",
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
        (404, "NOT_FOUND - no exchange 'nope' in vhost '/'".into())
    );

    let (_c, ch) = broker.channel().await;
    ch.exchange_declare(
        "int".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "int".into(),
        "k".into(),
        Default::default(),
        b"x",
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
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'int' in vhost '/'".into()
        )
    );
    broker.assert_healthy().await;
}

#[tokio::test]
async fn topic_routing_with_many_bindings_stays_exact() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "many", ExchangeKind::Topic).await;
    let target = bound_queue(&ch, "many", "orders.eu.*").await;
    let other = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::exclusive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..2000 {
        ch.queue_bind(
            other.name().clone(),
            "many".into(),
            format!("noise.{i}.#").as_str().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    publish(&ch, "many", "orders.eu.1", b"x").await;
    publish(&ch, "many", "noise.7.a.b", b"y").await;
    assert_eq!(count(&ch, &target).await, 1);
    assert_eq!(count(&ch, other.name().as_str()).await, 1);
}

#[tokio::test]
async fn default_exchange_with_cc_delivers_one_copy_per_queue() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    for q in ["cc-a", "cc-b"] {
        ch.queue_declare(q.into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
    }
    // CC names cc-b, then cc-a again (not next to the publish key).
    let cc = AMQPValue::FieldArray(vec![long_str("cc-b"), long_str("cc-a")].into());
    publish_with(
        &ch,
        "",
        "cc-a",
        b"once",
        BasicProperties::default().with_headers(table(&[("CC", cc)])),
    )
    .await;
    assert_eq!(count(&ch, "cc-a").await, 1);
    assert_eq!(count(&ch, "cc-b").await, 1);
}
