//! RabbitMQ tutorial 6, "RPC": a server answers Fibonacci requests from the
//! queue `rpc_queue`, replying to each request's `reply_to` queue with the same
//! `correlation_id`. The client first uses its own exclusive callback queue,
//! then RabbitMQ's direct reply-to: it consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` (no-ack) on the channel it publishes requests on.
//!
//! Run with `cargo run --example rpc` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::{
    options::*, types::FieldTable, BasicProperties, Channel, Connection, ConnectionProperties,
    Consumer,
};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// Server side: one request at a time, reply, then ack the request.
async fn serve(channel: Channel, mut requests: Consumer) -> Result<()> {
    while let Some(request) = requests.next().await {
        let request = request?;
        let n: u64 = String::from_utf8_lossy(&request.data).parse()?;
        let reply_to = request
            .properties
            .reply_to()
            .clone()
            .ok_or("request without reply_to")?;
        let correlation_id = request
            .properties
            .correlation_id()
            .clone()
            .unwrap_or_default();
        println!(" [server] fib({n}), replying to {reply_to}");
        let properties = BasicProperties::default().with_correlation_id(correlation_id);
        channel
            .basic_publish(
                "".into(),
                reply_to,
                Default::default(),
                fib(n).to_string().as_bytes(),
                properties,
            )
            .await?;
        request.ack(BasicAckOptions::default()).await?;
    }
    // Our consumer was cancelled: close the channel before the connection.
    channel.close(200, "done".into()).await?;
    Ok(())
}

/// Client side: publish a request and wait for the reply carrying its correlation id.
async fn call(channel: &Channel, replies: &mut Consumer, reply_to: &str, n: u64) -> Result<u64> {
    let correlation_id = format!("{}-{n}", std::process::id());
    println!(" [client] Requesting fib({n}) with reply_to {reply_to}");
    let properties = BasicProperties::default()
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation_id.as_str().into());
    channel
        .basic_publish(
            "".into(),
            "rpc_queue".into(),
            Default::default(),
            n.to_string().as_bytes(),
            properties,
        )
        .await?;
    loop {
        let reply = replies.next().await.ok_or("reply consumer closed")??;
        if reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str())
            == Some(correlation_id.as_str())
        {
            let result = String::from_utf8_lossy(&reply.data).parse()?;
            println!(" [client] Got fib({n}) = {result}");
            return Ok(result);
        }
        println!(" [client] Ignoring a reply for another request");
    }
}

async fn run() -> Result<()> {
    // The RPC server, with its own connection.
    let server = connect().await?;
    let channel = server.create_channel().await?;
    channel
        .queue_declare(
            "rpc_queue".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let requests = channel
        .basic_consume(
            "rpc_queue".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    println!(" [server] Awaiting RPC requests");
    let server_tag = requests.tag();
    let server_channel = channel.clone();
    let server_task = tokio::spawn(async move {
        let result = serve(channel, requests).await;
        if let Err(e) = &result {
            eprintln!(" [server] error: {e}");
        }
        result
    });

    let client = connect().await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };

    // 1. Classic: an exclusive, server-named callback queue.
    let channel = client.create_channel().await?;
    let callback = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = channel
        .basic_consume(
            callback.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    for (n, expected) in [(10, 55), (20, 6765)] {
        if call(&channel, &mut replies, callback.name().as_str(), n).await? != expected {
            return Err(format!("wrong answer for fib({n})").into());
        }
    }

    // 2. Direct reply-to: consume the pseudo-queue with no-ack, then publish
    //    requests on that same channel with reply_to = amq.rabbitmq.reply-to.
    let channel = client.create_channel().await?;
    let mut replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    for (n, expected) in [(15, 610), (25, 75025)] {
        if call(&channel, &mut replies, DIRECT_REPLY_TO, n).await? != expected {
            return Err(format!("wrong answer for fib({n})").into());
        }
    }

    client.close(200, "bye".into()).await?;
    // Stop the server cleanly: cancel its consumer, let it finish the current
    // request (the ack is sent after the reply), then close its connection.
    server_channel
        .basic_cancel(server_tag, BasicCancelOptions::default())
        .await?;
    server_task.await??;
    server.close(200, "bye".into()).await?;
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
