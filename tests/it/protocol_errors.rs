//! Frame- and channel-level protocol violations sent as raw bytes: each gets
//! RabbitMQ's close (code, text, class/method) and the broker keeps serving.

use crate::common::*;
use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};

fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![frame_type];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

fn publish_method(queue: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    }))
}

fn header(class_id: u16, body_size: u64) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no properties
    frame(2, 1, &p)
}

async fn opened(port: u16) -> RawClient {
    let mut raw = RawClient::open(port).await;
    raw.open_channel(1).await;
    raw
}

async fn assert_connection_close(
    raw: &mut RawClient,
    code: u16,
    text: &str,
    class: u16,
    method: u16,
) {
    let got = raw.expect_connection_close().await;
    assert_eq!(got, (code, text.to_string(), class, method));
}

#[tokio::test]
async fn bad_frame_end_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    let mut f = frame(1, 1, &[0, 20, 0, 10]);
    *f.last_mut().unwrap() = 0;
    raw.send_raw(&f).await;
    assert_connection_close(
        &mut raw,
        501,
        "FRAME_ERROR - type 1, all octets = <<0,20,0,10>>: {invalid_frame_end_marker,0}",
        0,
        0,
    )
    .await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn unknown_frame_type_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&frame(9, 1, b"abc")).await;
    assert_connection_close(
        &mut raw,
        501,
        "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame",
        0,
        0,
    )
    .await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn frame_larger_than_frame_max_is_501_before_buffering() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    // Only the header of a 200 KB frame: the broker must refuse it at once.
    let mut head = vec![1u8, 0, 1];
    head.extend_from_slice(&200_004u32.to_be_bytes());
    raw.send_raw(&head).await;
    assert_connection_close(
        &mut raw,
        501,
        "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200004,131064}",
        0,
        0,
    )
    .await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn truncated_method_is_501() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&frame(1, 1, &[0, 50, 0, 10, 0])).await;
    let (code, text, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - cannot decode"), "{text}");
    broker.assert_healthy().await;
}

#[tokio::test]
async fn unknown_method_is_503() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&frame(1, 1, &[0, 99, 0, 1])).await;
    let (code, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 503);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn method_on_unopened_channel_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.send_method(5, publish_method("q")).await;
    assert_connection_close(
        &mut raw,
        504,
        "CHANNEL_ERROR - expected 'channel.open'",
        60,
        40,
    )
    .await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn channel_method_on_channel_zero_is_504() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::open(broker.port).await;
    raw.send_method(
        0,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_connection_close(
        &mut raw,
        504,
        "CHANNEL_ERROR - unexpected method in connection state running",
        20,
        10,
    )
    .await;
}

#[tokio::test]
async fn connection_method_on_a_channel_is_503() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_method(
        1,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    assert_connection_close(
        &mut raw,
        503,
        "COMMAND_INVALID - unimplemented method",
        10,
        51,
    )
    .await;
}

#[tokio::test]
async fn content_without_publish_is_505() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&header(60, 3)).await;
    assert_connection_close(
        &mut raw,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        0,
        0,
    )
    .await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&frame(3, 1, b"abc")).await;
    let (code, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 505);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn publish_followed_by_body_or_method_is_505() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_method(1, publish_method("q")).await;
    raw.send_raw(&frame(3, 1, b"abc")).await;
    assert_connection_close(
        &mut raw,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60,
        40,
    )
    .await;

    let mut raw = opened(broker.port).await;
    raw.send_method(1, publish_method("q")).await;
    raw.send_raw(&header(50, 3)).await;
    assert_connection_close(
        &mut raw,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
        60,
        40,
    )
    .await;
    broker.assert_healthy().await;
}

#[tokio::test]
async fn body_longer_than_declared_is_refused() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_method(1, publish_method("q")).await;
    raw.send_raw(&header(60, 3)).await;
    raw.send_raw(&frame(3, 1, b"abcdef")).await;
    let (code, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 505);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn heartbeat_on_a_channel_is_505() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_raw(&frame(8, 1, &[])).await;
    assert_connection_close(
        &mut raw,
        505,
        "UNEXPECTED_FRAME - type 8, all octets = <<>>",
        0,
        0,
    )
    .await;
}

#[tokio::test]
async fn frames_after_channel_close_are_dropped_until_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    )
    .await;
    let (code, text, class, method) = raw.expect_channel_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (404, "NOT_FOUND - no queue 'missing' in vhost '/'", 50, 10)
    );
    // Ignored: the channel is closing.
    raw.send_method(1, publish_method("q")).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    // The number can be reused after close-ok.
    raw.open_channel(1).await;
}

#[tokio::test]
async fn deeply_nested_tables_are_refused_without_crashing() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    // queue.declare whose arguments nest 20 000 tables deep.
    let mut inner: Vec<u8> = vec![0, 0, 0, 0];
    for _ in 0..20_000 {
        let mut entry = vec![1, b'k', b'F'];
        entry.extend_from_slice(&inner);
        let mut t = (entry.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&entry);
        inner = t;
    }
    let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    payload.extend_from_slice(&inner);
    raw.send_raw(&frame(1, 1, &payload)).await;
    let (code, ..) = raw.expect_connection_close().await;
    assert_eq!(code, 501);
    broker.assert_healthy().await;
}

#[tokio::test]
async fn immediate_publish_is_540() {
    let broker = TestBroker::start().await;
    let mut raw = opened(broker.port).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    assert_connection_close(&mut raw, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40).await;
}

#[tokio::test]
async fn random_bytes_after_handshake_never_crash_the_broker() {
    let broker = TestBroker::start().await;
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..50 {
        let mut raw = opened(broker.port).await;
        let mut bytes = vec![0u8; 300];
        for b in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Start with a plausible frame type so the decoder goes deeper.
        bytes[0] = [1u8, 2, 3, 8][(seed % 4) as usize];
        raw.send_raw(&bytes).await;
        drop(raw);
    }
    broker.assert_healthy().await;
}
