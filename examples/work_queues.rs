//! RabbitMQ tutorial 2, "Work Queues": a producer puts persistent tasks on the
//! durable queue `task_queue`; two workers share them. Each worker takes one
//! task at a time (prefetch 1), "works" 100 ms per dot in the body, then acks.
//!
//! Run with `cargo run --example work_queues` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TASKS: [&str; 6] = [
    "First.", "Second..", "Third...", "Fourth.", "Fifth..", "Sixth.",
];

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn declare_task_queue(channel: &lapin::Channel) -> lapin::Result<()> {
    channel
        .queue_declare(
            "task_queue".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
}

/// A worker subscribes with its own connection and prefetch 1 ...
async fn subscribe() -> Result<(Connection, lapin::Consumer)> {
    let conn = connect().await?;
    let channel = conn.create_channel().await?;
    declare_task_queue(&channel).await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            "task_queue".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

/// ... then works on one task at a time and acks it once it is done.
async fn work(
    id: usize,
    mut consumer: lapin::Consumer,
    done: mpsc::UnboundedSender<(usize, String)>,
) -> Result<()> {
    println!(" [worker {id}] Waiting for tasks");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let task = String::from_utf8_lossy(&delivery.data).into_owned();
        println!(" [worker {id}] Received {task:?}");
        let dots = task.matches('.').count() as u64;
        tokio::time::sleep(Duration::from_millis(100 * dots)).await;
        println!(" [worker {id}] Done {task:?}");
        delivery.ack(BasicAckOptions::default()).await?;
        if done.send((id, task)).is_err() {
            break; // the producer has stopped waiting
        }
    }
    Ok(())
}

async fn run() -> Result<()> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for id in 1..=2 {
        let (conn, consumer) = subscribe().await?;
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = work(id, consumer, done_tx).await {
                eprintln!(" [worker {id}] error: {e}");
                std::process::exit(1);
            }
            drop(conn); // keep the worker's connection open until here
        });
    }

    // Producer: persistent messages (delivery_mode 2) on the durable queue.
    let conn = connect().await?;
    let channel = conn.create_channel().await?;
    declare_task_queue(&channel).await?;
    for task in TASKS {
        channel
            .basic_publish(
                "".into(),
                "task_queue".into(),
                BasicPublishOptions::default(),
                task.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        println!(" [x] Sent {task:?}");
    }

    let mut pending: BTreeSet<&str> = TASKS.into_iter().collect();
    let mut per_worker = [0; 2];
    while !pending.is_empty() {
        let (id, task) = done_rx.recv().await.ok_or("workers stopped")?;
        pending.remove(task.as_str());
        per_worker[id - 1] += 1;
    }
    println!(
        " [x] All tasks done: worker 1 did {}, worker 2 did {}",
        per_worker[0], per_worker[1]
    );
    if per_worker.contains(&0) {
        return Err("the tasks were not shared between the workers".into());
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
