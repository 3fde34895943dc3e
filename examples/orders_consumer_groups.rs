//! Partitioned stream and consumer groups (the Kafka model over AMQP
//! 0-9-1): an `orders` stream with 3 partitions; group A has two members
//! that share the partitions, group B has one member that reads everything.
//! Orders are keyed by order id, so every event of one order lands in one
//! partition and is read in order. Then one member of A stops and its
//! partitions move to the other member, which resumes after the last
//! offset A committed there.
//!
//! Run with `cargo run --example orders_consumer_groups` (broker URL in
//! `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{options::*, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ORDERS: &str = "orders";

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

/// What a member saw: (partition, order id, event).
type Seen = Arc<Mutex<Vec<(i64, String, String)>>>;

struct Member {
    name: &'static str,
    connection: Connection,
    seen: Seen,
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)
        .cloned()
}

/// Joins `group` on its own connection and processes orders until stopped.
async fn start_member(name: &'static str, group: &str) -> Result<Member> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-consumer-group".into(),
        AMQPValue::LongString(group.into()),
    );
    // Where a new group starts; later members resume from committed offsets.
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            ORDERS.into(),
            name.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let seen: Seen = Default::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut assignment = Vec::new();
        while let Some(Ok(delivery)) = consumer.next().await {
            let partition = match header(&delivery, "x-stream-partition") {
                Some(AMQPValue::LongLongInt(p)) => p,
                _ => -1,
            };
            // The member's current partitions come with every delivery.
            if let Some(AMQPValue::FieldArray(now)) =
                header(&delivery, "x-consumer-group-partitions")
            {
                let now: Vec<i64> = now
                    .as_slice()
                    .iter()
                    .filter_map(|v| match v {
                        AMQPValue::LongLongInt(p) => Some(*p),
                        _ => None,
                    })
                    .collect();
                if now != assignment {
                    println!(" [{name}] assigned partitions {now:?}");
                    assignment = now;
                }
            }
            let text = String::from_utf8_lossy(&delivery.data).into_owned();
            let (order, event) = text.split_once(' ').unwrap_or((&text, ""));
            log.lock()
                .unwrap()
                .push((partition, order.to_string(), event.to_string()));
            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });
    Ok(Member {
        name,
        connection,
        seen,
    })
}

async fn publish_orders(channel: &Channel, orders: std::ops::Range<u32>) -> Result<()> {
    let mut confirms = Vec::new();
    for event in ["created", "paid", "shipped"] {
        for order in orders.clone() {
            let key = format!("order-{order}");
            confirms.push(
                channel
                    .basic_publish(
                        ORDERS.into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        format!("{key} {event}").as_bytes(),
                        BasicProperties::default(),
                    )
                    .await?,
            );
        }
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err("an order event was not confirmed".into());
        }
    }
    Ok(())
}

async fn wait_for(members: &[&Member], count: usize) -> Result<()> {
    for _ in 0..250 {
        let total: usize = members.iter().map(|m| m.seen.lock().unwrap().len()).sum();
        if total >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("members did not get {count} events").into())
}

/// Every order's events arrived in order, each exactly once across `members`.
fn check(members: &[&Member], orders: u32) -> Result<()> {
    let mut per_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for member in members {
        for (_, order, event) in member.seen.lock().unwrap().iter() {
            per_order
                .entry(order.clone())
                .or_default()
                .push(event.clone());
        }
    }
    if per_order.len() != orders as usize {
        return Err(format!("{} orders seen, {orders} expected", per_order.len()).into());
    }
    for (order, events) in per_order {
        if events != ["created", "paid", "shipped"] {
            return Err(format!("{order}: events {events:?}").into());
        }
    }
    Ok(())
}

fn partitions(member: &Member) -> BTreeSet<i64> {
    member
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _, _)| *p)
        .collect()
}

async fn run() -> Result<()> {
    let admin = connect().await?;
    let channel = admin.create_channel().await?;
    // A fresh stream each run: deleting the super stream deletes its partitions.
    channel
        .exchange_delete(ORDERS.into(), ExchangeDeleteOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert("x-partitions".into(), AMQPValue::LongInt(3));
    channel
        .exchange_declare(
            ORDERS.into(),
            ExchangeKind::Custom("x-super-stream".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    println!(" [x] Super stream '{ORDERS}' with partitions {ORDERS}-0, -1, -2");

    let a1 = start_member("A1", "A").await?;
    let a2 = start_member("A2", "A").await?;
    let b1 = start_member("B1", "B").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    publish_orders(&channel, 0..20).await?;
    println!(" [x] Published 20 orders x 3 events");
    wait_for(&[&a1, &a2], 60).await?;
    wait_for(&[&b1], 60).await?;
    check(&[&a1, &a2], 20)?;
    check(&[&b1], 20)?;
    println!(
        " [.] Group A: {} read partitions {:?}, {} read {:?}; group B: {} read all {:?}",
        a1.name,
        partitions(&a1),
        a2.name,
        partitions(&a2),
        b1.name,
        partitions(&b1)
    );

    // A2 stops; its partitions move to A1, which resumes after A's
    // committed offsets there.
    let a2_seen = a2.seen.lock().unwrap().len();
    a2.connection.close(200, "stopping".into()).await?;
    println!(" [!] {} stopped", a2.name);
    publish_orders(&channel, 20..30).await?;
    wait_for(&[&a1, &a2], 90).await?;
    wait_for(&[&b1], 90).await?;
    check(&[&a1, &a2], 30)?;
    println!(
        " [.] {} now reads partitions {:?}; {} kept its {} events",
        a1.name,
        partitions(&a1),
        a2.name,
        a2_seen
    );
    if partitions(&a1).len() != 3 {
        return Err("A1 did not take over every partition".into());
    }

    a1.connection.close(200, "bye".into()).await?;
    b1.connection.close(200, "bye".into()).await?;
    channel
        .exchange_delete(ORDERS.into(), ExchangeDeleteOptions::default())
        .await?;
    admin.close(200, "bye".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "timed out")?
}
