//! RabbitMQ tutorial 5, "Topics": log lines go to the topic exchange
//! `topic_logs` with a `<facility>.<severity>` routing key. Subscribers bind
//! patterns where `*` matches exactly one word and `#` zero or more words.
//!
//! Run with `cargo run --example topics` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{
    options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Routing keys published, in order; the last one matches every subscriber.
const KEYS: [&str; 6] = [
    "kern",
    "kern.info",
    "cron.critical",
    "app.db.critical",
    "kern.disk.error",
    "kern.critical",
];

/// (binding patterns, routing keys the subscriber must receive).
const SUBSCRIBERS: [(&[&str], &[&str]); 4] = [
    (&["#"], &KEYS),
    (
        &["kern.#"],
        &["kern", "kern.info", "kern.disk.error", "kern.critical"],
    ),
    (&["*.critical"], &["cron.critical", "kern.critical"]),
    // A message matching both patterns is still delivered only once.
    (
        &["kern.*", "*.critical"],
        &["kern.info", "cron.critical", "kern.critical"],
    ),
];

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn declare_exchange(channel: &lapin::Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            "topic_logs".into(),
            ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
}

/// An exclusive server-named queue bound once per pattern.
async fn subscribe(
    conn: &Connection,
    patterns: &[&str],
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
    for pattern in patterns {
        channel
            .queue_bind(
                queue.name().clone(),
                "topic_logs".into(),
                (*pattern).into(),
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

/// Receives as many messages as expected and checks their routing keys.
async fn receive(
    patterns: &[&str],
    channel: lapin::Channel,
    mut consumer: lapin::Consumer,
    expected: &[&str],
) -> Result<()> {
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let delivery = consumer.next().await.ok_or("consumer closed")??;
        println!(
            " [{}] {}: {}",
            patterns.join(" "),
            delivery.routing_key,
            String::from_utf8_lossy(&delivery.data)
        );
        received.push(delivery.routing_key.to_string());
    }
    if received != expected {
        return Err(format!("{patterns:?} got {received:?}, expected {expected:?}").into());
    }
    // Close the channel explicitly rather than when the consumer is dropped,
    // which could race with the connection being closed.
    channel.close(200, "done".into()).await?;
    Ok(())
}

async fn run() -> Result<()> {
    let conn = connect().await?;
    let mut subscribers = Vec::new();
    for (patterns, expected) in SUBSCRIBERS {
        let (channel, consumer) = subscribe(&conn, patterns).await?;
        println!(" [*] Subscriber bound to {patterns:?}");
        subscribers.push(tokio::spawn(receive(patterns, channel, consumer, expected)));
    }

    let channel = conn.create_channel().await?;
    declare_exchange(&channel).await?;
    for key in KEYS {
        let message = format!("a message about {key}");
        println!(" [x] Sent {key}: {message}");
        channel
            .basic_publish(
                "topic_logs".into(),
                key.into(),
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
