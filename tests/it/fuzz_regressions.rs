//! Inputs found by fuzzing (fuzz/README.md) or by reading the code the
//! fuzz targets drive, each sent by a raw client to a real broker: the
//! broker answers as RabbitMQ would (or closes the socket) and goes on
//! serving everyone else.

use crate::common::{RawClient, TestBroker};
use amq_protocol::protocol::connection;
use broker::protocol::AMQPClass;
use std::time::Duration;

/// An AMQPLAIN response made of tables nested `depth` deep (after valid
/// credentials), as the client's start-ok response.
fn nested_amqplain(depth: usize) -> Vec<u8> {
    // Each level: empty key, type 'F', the length of everything inside.
    let mut nested: Vec<u8> = Vec::with_capacity(6 * depth);
    for level in 1..=depth {
        nested.extend_from_slice(&[0u8, b'F']);
        nested.extend_from_slice(&((6 * (depth - level)) as u32).to_be_bytes());
    }
    let mut response = Vec::new();
    for (key, value) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
        response.push(key.len() as u8);
        response.extend_from_slice(key.as_bytes());
        response.push(b'S');
        response.extend_from_slice(&(value.len() as u32).to_be_bytes());
        response.extend_from_slice(value.as_bytes());
    }
    response.push(4);
    response.extend_from_slice(b"deep");
    response.push(b'F');
    response.extend_from_slice(&(nested.len() as u32).to_be_bytes());
    response.extend_from_slice(&nested);
    response
}

/// Found reading the handshake for the connection fuzz target: the
/// AMQPLAIN response is a field table that the frame decoder's depth check
/// never sees (it is a long string to the decoder), and it used to go
/// through the recursive table parser: 20 000 nested tables in one frame
/// overflowed the connection task's stack and aborted the whole broker.
#[tokio::test]
async fn deeply_nested_amqplain_response_does_not_overflow_the_stack() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await; // start
    let response = nested_amqplain(20_000);
    assert!(response.len() < 131_072 - 100, "must fit in one frame");
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "AMQPLAIN".into(),
            response: response.into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    // The credentials beside the nested value are read: the login succeeds.
    let tune = tokio::time::timeout(Duration::from_secs(10), raw.expect_method())
        .await
        .expect("no answer to start-ok");
    assert!(
        matches!(tune, AMQPClass::Connection(connection::AMQPMethod::Tune(_))),
        "expected connection.tune, got {tune:?}"
    );
    broker.assert_healthy().await;
}

/// A truncated AMQPLAIN response is a refused login, not a crash.
#[tokio::test]
async fn truncated_amqplain_response_is_a_refused_login() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.port).await;
    raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
    raw.expect_method().await; // start
    let mut response = nested_amqplain(3);
    response.truncate(response.len() - 2);
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "AMQPLAIN".into(),
            response: response.into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    // No authentication_failure_close capability: the socket just closes.
    let rest = tokio::time::timeout(Duration::from_secs(10), raw.read_to_close())
        .await
        .expect("socket not closed");
    assert!(rest.len() < 1024, "unexpected answer: {rest:?}");
    broker.assert_healthy().await;
}

/// The committed seed corpus (fuzz/corpus/), replayed on stable so that CI
/// runs it even though the fuzz crate needs nightly: decoder seeds through
/// `FrameDecoder`, as the fuzz targets do.
#[test]
fn decoder_seeds_decode_without_panicking() {
    use broker::protocol::FrameDecoder;
    use bytes::BytesMut;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut count = 0;
    for target in ["frame_decoder", "field_table", "content_header"] {
        for seed in seeds(&root.join(target)) {
            count += 1;
            // Whatever the target wraps it in, the raw seed is also a
            // byte stream a client could send.
            let decoder = FrameDecoder::new(131_072);
            let mut buf = BytesMut::from(&seed[..]);
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }
    }
    assert!(count >= 10, "seed corpus missing: {count} seeds");
}

/// Connection seeds against a real broker: the first byte says whether the
/// rest follows a full handshake (even) or just the protocol header (odd).
#[tokio::test]
async fn connection_seeds_leave_the_broker_serving() {
    use broker::protocol::encode;
    use bytes::BytesMut;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/connection");
    let broker = TestBroker::start().await;
    let mut handshake = BytesMut::new();
    handshake.extend_from_slice(b"AMQP\x00\x00\x09\x01");
    for method in [
        connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        }),
        connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 16,
            frame_max: 131_072,
            heartbeat: 0,
        }),
        connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }),
    ] {
        encode::method(&mut handshake, 0, &AMQPClass::Connection(method));
    }
    let all = seeds(&root);
    assert!(!all.is_empty(), "no connection seeds");
    for seed in all {
        let Some((&mode, rest)) = seed.split_first() else {
            continue;
        };
        let mut raw = RawClient::connect(broker.port).await;
        if mode & 1 == 0 {
            raw.send_raw(&handshake).await;
        } else {
            raw.send_raw(b"AMQP\x00\x00\x09\x01").await;
        }
        raw.send_raw(rest).await;
        raw.read_to_close().await;
    }
    broker.assert_healthy().await;
}

fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}
