//! What a load scenario declares and uses, resolved from the options:
//! queue and exchange names, routing and binding keys, publisher and
//! consumer counts, and the setup and teardown of those queues and
//! exchanges.

use crate::consumer::ConsumeSpec;
use crate::publisher::PublishSpec;
use crate::report::{thousands, Json};
use crate::{Cli, QueueType, Scenario};
use amq_protocol::types::{AMQPValue, FieldTable};
use amqp_perf::client::{AmqpUri, Conn};
use anyhow::{bail, Context, Result};

/// Names, routing and counts resolved from the options (after the
/// scenario filled in its defaults).
pub struct Plan {
    pub queues: Vec<String>,
    pub exchange: String,
    exchange_type: String,
    pub publishers: usize,
    pub consumers: usize,
    durable: bool,
    /// Stream queues (x-queue-type=stream).
    pub stream: bool,
    /// x-stream-offset for stream consumers.
    stream_offset: AMQPValue,
    /// Deliveries per published message.
    fanout: u64,
}

impl Plan {
    pub fn new(cli: &Cli) -> Result<Plan> {
        let queue_count = cli.queue_count.unwrap_or(1);
        let queues: Vec<String> = (0..queue_count)
            .map(|i| {
                if cli.queues.contains("%d") {
                    cli.queues.replace("%d", &i.to_string())
                } else if queue_count == 1 {
                    cli.queues.clone()
                } else {
                    format!("{}-{i}", cli.queues)
                }
            })
            .collect();
        let exchange = cli.exchange.clone().unwrap_or_default();
        let exchange_type = cli.exchange_type.clone();
        let consumers = cli.consumers.unwrap_or(1);
        let publishers = cli.publishers.unwrap_or(1);
        if consumers > 0 && queues.is_empty() {
            bail!("consumers need at least one queue (--queue-count)");
        }
        if exchange.is_empty() && queues.is_empty() && cli.routing_key.is_none() {
            bail!("with no queues, give --exchange or --routing-key");
        }
        let stream = cli.queue_type == QueueType::Stream;
        let drains = consumers > 0 || cli.scenario == Scenario::Backlog;
        if stream && drains && (cli.autoack || cli.prefetch == 0) {
            bail!("stream consumers need manual acks and --prefetch > 0");
        }
        if stream && cli.scenario == Scenario::Expiry {
            bail!("the expiry scenario needs a classic queue");
        }
        let fanout = if exchange_type == "fanout" && !exchange.is_empty() {
            queues.len().max(1) as u64
        } else {
            1
        };
        Ok(Plan {
            queues,
            exchange,
            exchange_type,
            publishers,
            consumers,
            durable: cli.persistent || cli.durable || stream,
            stream,
            stream_offset: stream_offset_value(&cli.stream_offset),
            fanout,
        })
    }

    fn routing_key(&self, cli: &Cli, publisher: usize) -> String {
        if let Some(k) = &cli.routing_key {
            return k.clone();
        }
        if self.queues.is_empty() {
            return String::new();
        }
        self.queues[publisher % self.queues.len()].clone()
    }

    fn binding_key(&self, cli: &Cli, queue: &str) -> String {
        if self.exchange_type == "fanout" {
            return String::new();
        }
        cli.binding_key
            .clone()
            .or_else(|| cli.routing_key.clone())
            .unwrap_or_else(|| queue.to_string())
    }

    fn declares_exchange(&self) -> bool {
        !self.exchange.is_empty() && !self.exchange.starts_with("amq.")
    }

    pub async fn setup(&self, cli: &Cli, conn: &mut Conn) -> Result<()> {
        if self.declares_exchange() {
            conn.exchange_declare(&self.exchange, &self.exchange_type, self.durable)
                .await
                .context("exchange.declare")?;
        }
        for q in &self.queues {
            if self.stream {
                // Streams cannot be purged: start from an empty log.
                conn.queue_delete(q).await.context("queue.delete")?;
                let mut args = FieldTable::default();
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("stream".into()),
                );
                conn.queue_declare_with(q, true, false, args)
                    .await
                    .with_context(|| format!("queue.declare {q} (stream)"))?;
            } else {
                conn.queue_declare(q, self.durable, false)
                    .await
                    .with_context(|| format!("queue.declare {q}"))?;
                conn.queue_purge(q).await.context("queue.purge")?;
            }
            if !self.exchange.is_empty() {
                conn.queue_bind(q, &self.exchange, &self.binding_key(cli, q))
                    .await
                    .context("queue.bind")?;
            }
        }
        Ok(())
    }

    pub async fn teardown(&self, cli: &Cli, uri: &AmqpUri) {
        if cli.keep {
            return;
        }
        let Ok(mut conn) = Conn::connect(uri, "amqp-perf teardown").await else {
            return;
        };
        for q in &self.queues {
            let _ = conn.queue_delete(q).await;
        }
        if self.declares_exchange() {
            let _ = conn.exchange_delete(&self.exchange).await;
        }
        conn.close().await;
    }

    pub fn publish_spec(&self, cli: &Cli, i: usize, count: u64) -> PublishSpec {
        PublishSpec {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key(cli, i),
            size: cli.size,
            persistent: cli.persistent,
            confirm: cli.confirm,
            rate: cli.rate,
            count,
            expiration: cli.expiration,
            max_backlog: cli.max_backlog,
            fanout: self.fanout,
            has_consumers: self.consumers > 0,
        }
    }

    pub fn consume_spec(&self, cli: &Cli, i: usize) -> ConsumeSpec {
        ConsumeSpec {
            queue: self.queues[i % self.queues.len()].clone(),
            autoack: cli.autoack,
            prefetch: cli.prefetch,
            multi_ack: cli.multi_ack,
            parser: cli.parser,
            arguments: self.consume_arguments(),
        }
    }

    fn consume_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.stream {
            args.insert("x-stream-offset".into(), self.stream_offset.clone());
        }
        args
    }

    pub fn describe(&self, cli: &Cli) -> Json {
        Json::obj()
            .with("publishers", self.publishers)
            .with("consumers", self.consumers)
            .with("queues", self.queues.len())
            .with("exchange", self.exchange.as_str())
            .with("exchange_type", self.exchange_type.as_str())
            .with("size", cli.size)
            .with("persistent", cli.persistent)
            .with("durable", self.durable)
            .with("queue_type", if self.stream { "stream" } else { "classic" })
            .with(
                "stream_offset",
                if self.stream {
                    Some(cli.stream_offset.clone())
                } else {
                    None
                },
            )
            .with("confirm", cli.confirm)
            .with("autoack", cli.autoack)
            .with("prefetch", cli.prefetch)
            .with("multi_ack", cli.multi_ack)
            .with("rate", cli.rate)
            .with("parser", format!("{:?}", cli.parser).to_lowercase())
    }

    pub fn summary(&self, cli: &Cli) -> String {
        let mut s = format!(
            "{}p/{}c, {} queue(s), {} B",
            self.publishers,
            self.consumers,
            self.queues.len(),
            cli.size
        );
        if !self.exchange.is_empty() {
            s += &format!(", exchange {} ({})", self.exchange, self.exchange_type);
        }
        if cli.persistent {
            s += ", persistent";
        } else if self.durable && !self.stream {
            s += ", durable queues";
        }
        if self.stream {
            s += &format!(", stream (read from {})", cli.stream_offset);
        }
        if cli.confirm > 0 {
            s += &format!(", confirms (window {})", cli.confirm);
        }
        if self.consumers > 0 {
            if cli.autoack {
                s += ", autoack";
            } else {
                s += &format!(", manual ack (prefetch {})", cli.prefetch);
            }
        }
        if cli.rate > 0.0 {
            s += &format!(", rate {}/s per publisher", thousands(cli.rate));
        }
        s
    }
}

/// `--stream-offset` as sent: a number is a long, anything else (first,
/// last, next, an interval) a string.
fn stream_offset_value(spec: &str) -> AMQPValue {
    match spec.parse::<i64>() {
        Ok(n) => AMQPValue::LongLongInt(n),
        Err(_) => AMQPValue::LongString(spec.into()),
    }
}
