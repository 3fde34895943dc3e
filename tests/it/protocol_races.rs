//! Where client and broker act at once: a publish that kills its channel in
//! confirm mode, channel closes that cross on the wire, and a client still
//! writing while the connection closes. Raw frames, so the order of what
//! each side sends is the test's to choose; the Go client's own suite
//! (tests/amqp091-go.sh) covers the same edges with a real client.

use crate::common::*;
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use broker::protocol::{BasicProperties, Frame};
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn channel_close(code: u16) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: code,
        reply_text: "".into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn channel_close_ok() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
}

fn is_channel_close_ok(method: &AMQPClass) -> bool {
    matches!(method, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
}

async fn declare_queue(raw: &mut RawClient, ch: u16, name: &str) {
    raw.send_method(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    )
    .await;
    let ok = raw.expect_method().await;
    assert!(
        matches!(ok, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{ok:?}"
    );
}

async fn confirm_select(raw: &mut RawClient, ch: u16) {
    raw.send_method(
        ch,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    let ok = raw.expect_method().await;
    assert!(
        matches!(ok, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
        "{ok:?}"
    );
}

/// The channel number is usable again: open it, publish, get the message.
async fn channel_works_again(raw: &mut RawClient, ch: u16) {
    raw.open_channel(ch).await;
    declare_queue(raw, ch, "after").await;
    raw.publish(ch, "", "after", &BasicProperties::default(), b"again")
        .await;
    raw.send_method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "after".into(),
            no_ack: true,
        })),
    )
    .await;
    let got = raw.expect_method().await;
    assert!(
        matches!(got, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))),
        "{got:?}"
    );
}

/// Three publishes in confirm mode, the third ending in a channel error:
/// the first two are acked (the positive signal), the third gets neither
/// ack nor nack before the channel.close.
async fn third_publish_fails(
    broker: &TestBroker,
    prepare: impl AsyncFnOnce(&mut RawClient),
    exchange: &str,
    properties: BasicProperties,
    expected_code: u16,
) {
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    prepare(&mut raw).await;
    declare_queue(&mut raw, 1, "ok").await;
    confirm_select(&mut raw, 1).await;
    let plain = BasicProperties::default();
    raw.publish(1, "", "ok", &plain, b"1").await;
    raw.publish(1, "", "ok", &plain, b"2").await;
    raw.publish(1, exchange, "ok", &properties, b"3").await;
    let mut acked = 0;
    let close = loop {
        match raw.expect_method().await {
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                assert!(
                    ack.delivery_tag <= 2,
                    "the failed publish was acked: {ack:?}"
                );
                acked = ack.delivery_tag;
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                panic!("the failed publish was nacked: {nack:?}")
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => break close,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.reply_code, expected_code, "{close:?}");
    assert_eq!(acked, 2, "the publishes before the failed one are acked");
    raw.send_method(1, channel_close_ok()).await;
    channel_works_again(&mut raw, 1).await;
}

#[tokio::test]
async fn a_publish_that_closes_its_channel_is_neither_acked_nor_nacked() {
    let broker = TestBroker::start().await;
    // 404: no such exchange.
    third_publish_fails(
        &broker,
        async |_| {},
        "missing",
        BasicProperties::default(),
        404,
    )
    .await;
    // 403: an internal exchange.
    third_publish_fails(
        &broker,
        async |raw| {
            raw.send_method(
                1,
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: "inside".into(),
                    kind: "direct".into(),
                    passive: false,
                    durable: false,
                    auto_delete: false,
                    internal: true,
                    nowait: false,
                    arguments: Default::default(),
                })),
            )
            .await;
            raw.expect_method().await;
        },
        "inside",
        BasicProperties::default(),
        403,
    )
    .await;
    // 406: a malformed expiration.
    third_publish_fails(
        &broker,
        async |_| {},
        "",
        BasicProperties::default().with_expiration("soon".into()),
        406,
    )
    .await;
}

#[tokio::test]
async fn a_client_sees_no_ack_for_a_publish_to_a_missing_exchange() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.queue_declare("ok".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let good = ch
        .basic_publish(
            "".into(),
            "ok".into(),
            Default::default(),
            b"1",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(good.is_ack());
    let outcome = match ch
        .basic_publish(
            "missing".into(),
            "ok".into(),
            Default::default(),
            b"2",
            Default::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await,
        Err(e) => Err(e),
    };
    assert!(
        !matches!(&outcome, Ok(c) if c.is_ack()),
        "a publish to a missing exchange was confirmed: {outcome:?}"
    );
    // The channel is closed with 404, the connection lives on.
    assert!(!ch.status().connected());
    let other = conn.create_channel().await.unwrap();
    other
        .queue_declare(
            "ok".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Provokes a server channel.close (404) on channel 1.
async fn server_closes_channel_1(raw: &mut RawClient) {
    raw.publish(1, "missing", "k", &BasicProperties::default(), b"x")
        .await;
}

#[tokio::test]
async fn crossing_channel_close_after_reading_the_servers_close() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    server_closes_channel_1(&mut raw).await;
    let (code, ..) = raw.expect_channel_close().await;
    assert_eq!(code, 404);
    // The client had decided to close channel 1 too: its close crosses the
    // server's. The server answers it, then takes the client's close-ok.
    raw.send_method(1, channel_close(200)).await;
    let ok = raw.expect_method().await;
    assert!(is_channel_close_ok(&ok), "{ok:?}");
    raw.send_method(1, channel_close_ok()).await;
    // Connection and the other channel still work; channel 1 reopens.
    declare_queue(&mut raw, 2, "still").await;
    channel_works_again(&mut raw, 1).await;
}

#[tokio::test]
async fn crossing_channel_close_sent_before_the_servers_close_arrives() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    // The failing publish and the client's close in one write: the server's
    // close is already on its way when the client's arrives.
    let mut both = encode_publish(1, "missing", "k", &BasicProperties::default(), b"x");
    broker::protocol::encode::method(&mut both, 1, &channel_close(200));
    raw.send_raw(&both).await;
    let (code, ..) = raw.expect_channel_close().await;
    assert_eq!(code, 404);
    let ok = raw.expect_method().await;
    assert!(is_channel_close_ok(&ok), "{ok:?}");
    // Frames for channel 1 before the client's close-ok are dropped, as on
    // any closing channel (a late publish here must not kill anything).
    server_closes_channel_1(&mut raw).await;
    raw.send_method(1, channel_close_ok()).await;
    declare_queue(&mut raw, 2, "still").await;
    channel_works_again(&mut raw, 1).await;
}

/// Writes publishes on channel 1 for `period`, counting how many writes
/// went through; stops at the first failed write.
async fn keep_publishing(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    period: Duration,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    usize,
    Option<std::io::Error>,
) {
    let publish = encode_publish(1, "", "nowhere", &BasicProperties::default(), &[7; 512]);
    let until = tokio::time::Instant::now() + period;
    let mut written = 0;
    while tokio::time::Instant::now() < until {
        if let Err(e) = writer.write_all(&publish).await {
            return (writer, written, Some(e));
        }
        written += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (writer, written, None)
}

/// Reads frames until connection.close-ok (or connection.close from the
/// server); `None` when the socket ends or is reset first.
async fn read_until_connection_method(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
) -> Option<AMQPClass> {
    let mut buf = bytes::BytesMut::new();
    let decoder = broker::protocol::FrameDecoder::new(1 << 20);
    loop {
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            if let Frame::Method { channel: 0, method } = frame {
                return Some(*method);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), reader.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// After close-ok the socket stays readable-to-EOF by the server: the
/// client's own shutdown is what ends it.
async fn server_closes_after_client_does(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
) {
    writer.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the server should close cleanly once the client has: {ended:?}"
    );
}

#[tokio::test]
async fn a_client_still_writing_after_connection_close_gets_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    let (mut reader, mut writer) = raw.stream.into_split();
    let mut close = bytes::BytesMut::new();
    broker::protocol::encode::method(
        &mut close,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    writer.write_all(&close).await.unwrap();
    // Like a multiplexing client, keep writing channel frames after the
    // close; meanwhile read the reply.
    let writing = tokio::spawn(keep_publishing(writer, Duration::from_millis(600)));
    let reply = read_until_connection_method(&mut reader).await;
    assert!(
        matches!(
            reply,
            Some(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
        ),
        "expected close-ok, got {reply:?}"
    );
    let (writer, written, error) = writing.await.unwrap();
    assert!(
        error.is_none(),
        "the broker hung up on a client still writing (after {written} writes): {error:?}"
    );
    assert!(written > 10, "only {written} writes");
    server_closes_after_client_does(reader, writer).await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn after_the_servers_connection_close_input_is_discarded_until_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.open_channel(1).await;
    // A second channel.open on channel 1: connection error 504.
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let (mut reader, writer) = raw.stream.into_split();
    let writing = tokio::spawn(keep_publishing(writer, Duration::from_millis(400)));
    let close = read_until_connection_method(&mut reader).await;
    assert!(
        matches!(
            &close,
            Some(AMQPClass::Connection(connection::AMQPMethod::Close(c))) if c.reply_code == 504
        ),
        "{close:?}"
    );
    let (mut writer, written, error) = writing.await.unwrap();
    assert!(
        error.is_none(),
        "the broker hung up before the client's close-ok (after {written} writes): {error:?}"
    );
    let mut close_ok = bytes::BytesMut::new();
    broker::protocol::encode::method(
        &mut close_ok,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    writer.write_all(&close_ok).await.unwrap();
    // close-ok ends it: the server closes its side.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(matches!(ended, Ok(Ok(_))), "{ended:?}");
    broker.assert_healthy().await;
}
