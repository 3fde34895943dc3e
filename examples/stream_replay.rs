//! Stream replay: publish events to a stream queue, then read them back
//! again and again — from the first retained message and from a point in
//! time. A stream keeps its messages after they are read (acks only return
//! prefetch credit), so every reader sees the whole log.
//!
//! Run with `cargo run --example stream_replay` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{options::*, BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STREAM: &str = "replay-demo";

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

fn stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    // Keep a day of events (whole segments older than that are dropped).
    args.insert("x-max-age".into(), AMQPValue::LongString("1D".into()));
    args
}

/// Publishes `events` and waits until the broker confirms each one.
async fn publish(channel: &Channel, events: &[String]) -> Result<()> {
    let mut confirms = Vec::new();
    for event in events {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    STREAM.into(),
                    BasicPublishOptions::default(),
                    event.as_bytes(),
                    BasicProperties::default(),
                )
                .await?,
        );
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err("a publish was not confirmed".into());
        }
    }
    Ok(())
}

/// Reads from `offset` (an `x-stream-offset` value) until nothing more
/// arrives for half a second; returns (offset, body) pairs.
async fn read_from(connection: &Connection, offset: AMQPValue) -> Result<Vec<(i64, String)>> {
    let channel = connection.create_channel().await?;
    // Stream consumers need a prefetch and manual acks.
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    let mut consumer = channel
        .basic_consume(
            STREAM.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let mut read = Vec::new();
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        let delivery = delivery?;
        let offset = match delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset"))
        {
            Some(AMQPValue::LongLongInt(n)) => *n,
            _ => return Err("delivery without x-stream-offset".into()),
        };
        read.push((offset, String::from_utf8_lossy(&delivery.data).into_owned()));
        delivery.ack(BasicAckOptions::default()).await?;
    }
    channel.close(200, "done".into()).await?;
    Ok(read)
}

async fn run() -> Result<()> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    // Start from an empty stream each run.
    channel
        .queue_delete(STREAM.into(), QueueDeleteOptions::default())
        .await?;
    channel
        .queue_declare(
            STREAM.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_arguments(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let morning: Vec<String> = (1..=10).map(|i| format!("morning event {i}")).collect();
    publish(&channel, &morning).await?;
    println!(" [x] Published {} morning events", morning.len());
    // Chunks carry the time they were written: a timestamp between the two
    // batches finds the first afternoon event.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let noon = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let afternoon: Vec<String> = (1..=5).map(|i| format!("afternoon event {i}")).collect();
    publish(&channel, &afternoon).await?;
    println!(" [x] Published {} afternoon events", afternoon.len());

    let everything = read_from(&connection, AMQPValue::LongString("first".into())).await?;
    println!(" [.] Replay from first: {} events", everything.len());
    for (offset, body) in &everything {
        println!("     {offset:>3}  {body}");
    }
    // Read it again: nothing was consumed away.
    let again = read_from(&connection, AMQPValue::LongString("first".into())).await?;
    let since_noon = read_from(&connection, AMQPValue::Timestamp(noon)).await?;
    println!(
        " [.] Replay from the timestamp {noon}: {} events",
        since_noon.len()
    );
    for (offset, body) in &since_noon {
        println!("     {offset:>3}  {body}");
    }
    let from_offset = read_from(&connection, AMQPValue::LongLongInt(12)).await?;
    println!(" [.] Replay from offset 12: {} events", from_offset.len());

    let expected: Vec<String> = morning.iter().chain(&afternoon).cloned().collect();
    let bodies = |read: &[(i64, String)]| read.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>();
    if bodies(&everything) != expected || bodies(&again) != expected {
        return Err("replay from first did not return every event in order".into());
    }
    if bodies(&since_noon) != afternoon {
        return Err("replay from the timestamp did not start at the afternoon".into());
    }
    if from_offset.first().map(|(o, _)| *o) != Some(12) || from_offset.len() != 3 {
        return Err("replay from offset 12 did not start there".into());
    }
    channel
        .queue_delete(STREAM.into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "timed out")?
}
