//! RabbitMQ tutorial 4, "Routing": log lines go to the direct exchange
//! `direct_logs` with their severity as routing key. One subscriber binds
//! only `error`, the other binds `info`, `warning` and `error`; nobody binds
//! `debug`, so those lines are dropped.
//!
//! Run with `cargo run --example routing` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{
    options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// (severity, message); the last one reaches every subscriber.
const LOGS: [(&str, &str); 4] = [
    ("info", "service started"),
    ("debug", "nobody listens to this"),
    ("warning", "disk almost full"),
    ("error", "disk full"),
];

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn declare_exchange(channel: &lapin::Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            "direct_logs".into(),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await
}

/// An exclusive server-named queue bound once per severity.
async fn subscribe(
    conn: &Connection,
    severities: &[&str],
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    declare_exchange(&channel).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for severity in severities {
        channel
            .queue_bind(
                queue.name().clone(),
                "direct_logs".into(),
                (*severity).into(),
                Default::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Receives as many lines as expected and checks they are exactly those.
async fn receive(
    name: &'static str,
    channel: lapin::Channel,
    mut consumer: lapin::Consumer,
    expected: Vec<String>,
) -> Result<()> {
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let delivery = consumer.next().await.ok_or("consumer closed")??;
        let line = format!(
            "{}:{}",
            delivery.routing_key,
            String::from_utf8_lossy(&delivery.data)
        );
        println!(" [{name}] {line}");
        received.push(line);
    }
    if received != expected {
        return Err(format!("{name} got {received:?}, expected {expected:?}").into());
    }
    // Close the channel explicitly rather than when the consumer is dropped,
    // which could race with the connection being closed.
    channel.close(200, "done".into()).await?;
    Ok(())
}

async fn run() -> Result<()> {
    let conn = connect().await?;
    let mut subscribers = Vec::new();
    for (name, severities) in [
        ("errors only", &["error"][..]),
        ("all but debug", &["info", "warning", "error"][..]),
    ] {
        let (channel, consumer) = subscribe(&conn, severities).await?;
        println!(" [*] Subscriber '{name}' bound to {severities:?}");
        let expected = LOGS
            .iter()
            .filter(|(severity, _)| severities.contains(severity))
            .map(|(severity, message)| format!("{severity}:{message}"))
            .collect();
        subscribers.push(tokio::spawn(receive(name, channel, consumer, expected)));
    }

    // Emitter: the severity is the routing key.
    let channel = conn.create_channel().await?;
    declare_exchange(&channel).await?;
    for (severity, message) in LOGS {
        println!(" [x] Sent {severity}:{message}");
        channel
            .basic_publish(
                "direct_logs".into(),
                severity.into(),
                Default::default(),
                message.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
    }

    for subscriber in subscribers {
        subscriber.await??;
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    match tokio::time::timeout(Duration::from_secs(10), run()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("timed out");
            std::process::exit(1);
        }
    }
}
