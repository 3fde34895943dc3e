//! A whole connection fed raw bytes: the real connection task
//! (`broker::connection::serve_stream`) on an in-memory pipe, against a
//! broker without storage. The first input byte picks where the fuzz bytes
//! go: right after the protocol header (the handshake itself is fuzzed) or
//! after a complete guest/guest handshake (channels, publishes, consumes,
//! acks...). Time is paused and auto-advanced, so heartbeat and close
//! timeouts cost nothing; every run gets a fresh runtime and broker, so
//! nothing carries over.
#![no_main]

use amq_protocol::protocol::{connection, AMQPClass};
use broker::connection::limits::ConnectionLimits;
use broker::protocol::encode;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Protocol header, start-ok (PLAIN guest/guest), tune-ok, open "/".
fn handshake() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"AMQP\x00\x00\x09\x01");
        let methods = [
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
        ];
        for method in methods {
            encode::method(&mut buf, 0, &AMQPClass::Connection(method));
        }
        buf.to_vec()
    })
}

fn config() -> broker::Config {
    let mut config = broker::Config::default();
    config.storage.data_dir = std::env::temp_dir().join("broker-fuzz-unused");
    config.amqp.handshake_timeout_secs = 1;
    config
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, fuzz)) = data.split_first() else {
        return;
    };
    let mut input = Vec::with_capacity(fuzz.len() + 256);
    if mode & 1 == 0 {
        input.extend_from_slice(handshake());
    } else {
        input.extend_from_slice(b"AMQP\x00\x00\x09\x01");
    }
    input.extend_from_slice(fuzz);

    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let broker = broker::broker::Broker::new(config(), None);
        let limits = ConnectionLimits::new();
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
        let local: SocketAddr = ([127, 0, 0, 1], 5672).into();
        let serve = broker::connection::serve_stream(server, peer, local, broker, limits, stop_rx);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let write = async move {
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
            // Hold the write side open like a client waiting for answers;
            // dropping it here would end the connection the same way.
            client_write
        };
        let read = async move {
            let mut sink = vec![0u8; 64 * 1024];
            while let Ok(n) = client_read.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let all = async { tokio::join!(serve, write, read) };
        // Paused time: this only fires if the connection never ends.
        let _ = tokio::time::timeout(Duration::from_secs(3600), all).await;
    });
});
