//! Event sourcing with a stream queue: account events (created, deposited,
//! withdrawn) are appended to the `accounts` stream. The stream is the
//! source of truth:
//!
//! - a reader rebuilds every balance by replaying the stream from `first`;
//! - a CQRS-style projection keeps a read model up to date. It consumes
//!   under a name (`x-stream-consumer-name`), so the broker remembers the
//!   last event it acked; after a restart it resumes right after it instead
//!   of replaying everything (or missing what was written while it was
//!   down).
//!
//! Run with `cargo run --example event_sourcing` (broker URL in `AMQP_URL`).

use futures_lite::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{options::*, BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const STREAM: &str = "accounts";
const PROJECTION: &str = "balances-projection";

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Created { account: String },
    Deposited { account: String, amount: i64 },
    Withdrawn { account: String, amount: i64 },
}

impl Event {
    /// A tiny text encoding, `kind account [amount]`, to keep the example
    /// free of a serialization crate.
    fn encode(&self) -> String {
        match self {
            Event::Created { account } => format!("created {account}"),
            Event::Deposited { account, amount } => format!("deposited {account} {amount}"),
            Event::Withdrawn { account, amount } => format!("withdrawn {account} {amount}"),
        }
    }

    fn decode(text: &str) -> Option<Event> {
        let mut parts = text.split(' ');
        let kind = parts.next()?;
        let account = parts.next()?.to_string();
        let amount = || -> Option<i64> { text.split(' ').nth(2)?.parse().ok() };
        Some(match kind {
            "created" => Event::Created { account },
            "deposited" => Event::Deposited {
                account,
                amount: amount()?,
            },
            "withdrawn" => Event::Withdrawn {
                account,
                amount: amount()?,
            },
            _ => return None,
        })
    }
}

/// The read model: balances by account.
#[derive(Default, Debug, PartialEq)]
struct Balances(BTreeMap<String, i64>);

impl Balances {
    fn apply(&mut self, event: &Event) {
        match event {
            Event::Created { account } => {
                self.0.insert(account.clone(), 0);
            }
            Event::Deposited { account, amount } => {
                *self.0.entry(account.clone()).or_default() += amount
            }
            Event::Withdrawn { account, amount } => {
                *self.0.entry(account.clone()).or_default() -= amount
            }
        }
    }
}

async fn connect() -> lapin::Result<Connection> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn append(channel: &Channel, events: &[Event]) -> Result<()> {
    let mut confirms = Vec::new();
    for event in events {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    STREAM.into(),
                    BasicPublishOptions::default(),
                    event.encode().as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?,
        );
    }
    for confirm in confirms {
        if !confirm.await?.is_ack() {
            return Err("an event was not confirmed".into());
        }
    }
    println!(" [x] Appended {} events", events.len());
    Ok(())
}

/// Consumes from the stream with `args` until `stop` events were applied
/// (or nothing arrives for half a second), acking each one.
async fn consume(
    connection: &Connection,
    args: FieldTable,
    model: &mut Balances,
    stop: usize,
) -> Result<usize> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(50, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            STREAM.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let mut applied = 0;
    while applied < stop {
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        else {
            break;
        };
        let delivery = delivery?;
        let text = String::from_utf8_lossy(&delivery.data).into_owned();
        let event = Event::decode(&text).ok_or_else(|| format!("bad event {text:?}"))?;
        model.apply(&event);
        applied += 1;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    channel.close(200, "done".into()).await?;
    Ok(applied)
}

fn projection_args(start_from_first: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-consumer-name".into(),
        AMQPValue::LongString(PROJECTION.into()),
    );
    if start_from_first {
        // Only for the projection's very first run; later runs resume.
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
    }
    args
}

async fn run() -> Result<()> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(STREAM.into(), QueueDeleteOptions::default())
        .await?;
    let mut stream_args = FieldTable::default();
    stream_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    channel
        .queue_declare(
            STREAM.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            stream_args,
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let account = |a: &str| a.to_string();
    let first_batch = vec![
        Event::Created {
            account: account("alice"),
        },
        Event::Created {
            account: account("bob"),
        },
        Event::Deposited {
            account: account("alice"),
            amount: 100,
        },
        Event::Deposited {
            account: account("bob"),
            amount: 50,
        },
        Event::Withdrawn {
            account: account("alice"),
            amount: 30,
        },
        Event::Deposited {
            account: account("bob"),
            amount: 25,
        },
    ];
    append(&channel, &first_batch).await?;

    // The projection starts, handles four events, and its process stops.
    let mut read_model = Balances::default();
    let handled = consume(&connection, projection_args(true), &mut read_model, 4).await?;
    println!(
        " [p] Projection handled {handled} events, then stopped: {:?}",
        read_model.0
    );

    // Meanwhile more events arrive.
    let second_batch = vec![
        Event::Created {
            account: account("carol"),
        },
        Event::Deposited {
            account: account("carol"),
            amount: 70,
        },
        Event::Withdrawn {
            account: account("bob"),
            amount: 5,
        },
    ];
    append(&channel, &second_batch).await?;

    // The projection restarts on a new connection with no offset: the broker
    // resumes it after the last event it acked.
    let restarted = connect().await?;
    let resumed = consume(
        &restarted,
        projection_args(false),
        &mut read_model,
        usize::MAX,
    )
    .await?;
    println!(
        " [p] Projection resumed and handled {resumed} more events: {:?}",
        read_model.0
    );

    // A fresh reader rebuilds the state by replaying everything.
    let mut replayed = Balances::default();
    let mut from_first = FieldTable::default();
    from_first.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let total = consume(&restarted, from_first, &mut replayed, usize::MAX).await?;
    println!(" [r] Replay of {total} events: {:?}", replayed.0);

    let expected: BTreeMap<String, i64> = [("alice", 70), ("bob", 70), ("carol", 70)]
        .map(|(a, b)| (a.to_string(), b))
        .into();
    if total != first_batch.len() + second_batch.len() || replayed.0 != expected {
        return Err(format!("replay gave {:?}, expected {expected:?}", replayed.0).into());
    }
    if handled + resumed != total {
        return Err(format!("projection handled {handled} + {resumed} of {total} events: it did not resume where it stopped").into());
    }
    if read_model != replayed {
        return Err("the projection's read model differs from the replay".into());
    }
    println!(" [.] Read model matches the replay");
    channel
        .queue_delete(STREAM.into(), QueueDeleteOptions::default())
        .await?;
    restarted.close(200, "bye".into()).await?;
    connection.close(200, "bye".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "timed out")?
}
