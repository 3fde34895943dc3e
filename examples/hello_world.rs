//! RabbitMQ tutorial 1, "Hello World!": one producer sends a single message to
//! the queue `hello` and one consumer receives it.
//!
//! Run with `cargo run --example hello_world` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable, BasicProperties, Connection, ConnectionProperties};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn run() -> Result<()> {
    // Receiver: declare the queue and start consuming before anything is sent.
    let receiver = connect().await?;
    let channel = receiver.create_channel().await?;
    channel
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            "hello".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    println!(" [*] Waiting for messages");
    let receive = tokio::spawn(async move {
        let delivery = consumer.next().await.ok_or("consumer closed")??;
        let body = String::from_utf8_lossy(&delivery.data).into_owned();
        println!(" [x] Received {body:?}");
        // Close explicitly: an implicit close when the consumer is dropped
        // could race with closing the connection.
        channel.close(200, "done".into()).await?;
        Result::Ok(body)
    });

    // Sender: publish one message through the default exchange.
    let sender = connect().await?;
    let channel = sender.create_channel().await?;
    channel
        .queue_declare(
            "hello".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!(" [x] Sending \"Hello World!\"");
    channel
        .basic_publish(
            "".into(),
            "hello".into(),
            BasicPublishOptions::default(),
            b"Hello World!",
            BasicProperties::default(),
        )
        .await?;

    let body = receive.await??;
    if body != "Hello World!" {
        return Err(format!("unexpected message {body:?}").into());
    }
    sender.close(200, "bye".into()).await?;
    receiver.close(200, "bye".into()).await?;
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
