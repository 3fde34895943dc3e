//! RabbitMQ tutorial 3, "Publish/Subscribe": an emitter publishes log lines to
//! the fanout exchange `logs`; every subscriber binds its own exclusive,
//! server-named queue to it and so receives every line.
//!
//! Run with `cargo run --example publish_subscribe` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{
    options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const LOGS: [&str; 3] = ["info: starting", "warning: disk almost full", "info: done"];

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn declare_logs(channel: &lapin::Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
}

/// A subscriber: a fresh exclusive queue (name chosen by the server) bound to `logs`.
async fn subscribe(conn: &Connection) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    declare_logs(&channel).await?;
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
    channel
        .queue_bind(
            queue.name().clone(),
            "logs".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    println!(" [*] Subscriber queue {} bound to logs", queue.name());
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

async fn receive(
    id: usize,
    channel: lapin::Channel,
    mut consumer: lapin::Consumer,
) -> Result<Vec<String>> {
    let mut received = Vec::new();
    while received.len() < LOGS.len() {
        let delivery = consumer.next().await.ok_or("consumer closed")??;
        let line = String::from_utf8_lossy(&delivery.data).into_owned();
        println!(" [subscriber {id}] {line}");
        received.push(line);
    }
    // Close the channel explicitly rather than when the consumer is dropped,
    // which could race with the connection being closed.
    channel.close(200, "done".into()).await?;
    Ok(received)
}

async fn run() -> Result<()> {
    let conn = connect().await?;
    let mut subscribers = Vec::new();
    for id in 1..=2 {
        let (channel, consumer) = subscribe(&conn).await?;
        subscribers.push(tokio::spawn(receive(id, channel, consumer)));
    }

    // Emitter: the routing key is ignored by a fanout exchange.
    let channel = conn.create_channel().await?;
    declare_logs(&channel).await?;
    for line in LOGS {
        println!(" [x] Sent {line:?}");
        channel
            .basic_publish(
                "logs".into(),
                "".into(),
                Default::default(),
                line.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
    }

    for subscriber in subscribers {
        if subscriber.await?? != LOGS {
            return Err("a subscriber did not get every log line in order".into());
        }
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
