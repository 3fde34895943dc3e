//! The one way a message enters the broker: `VHost::publish`, everything
//! between "a message arrived" and "these queues took it" (CC/BCC,
//! exchange statistics, deduplication, delaying exchanges, routing,
//! storing, handing to queues). A channel (basic.publish) and the HTTP API
//! call it; the caller keeps what belongs to it (permissions, confirms,
//! basic.return, its own counters).

use super::*;
use crate::protocol::{AMQPValue, BasicProperties};

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to this many queues (0: unroutable).
    Routed(usize),
    /// A repeat of a recent deduplication key: accepted, not routed.
    Duplicate,
    /// Held by a delaying exchange (`x-delay`), routed when due.
    Delayed,
}

pub struct Published {
    pub outcome: Outcome,
    /// Some queue refused it (overflow `reject-publish`): a confirm is a
    /// nack.
    pub refused: bool,
    /// The log sequence whose sync makes it durable (a confirm waits).
    pub log_seq: Option<u64>,
    /// The message, when it reached no queue (for `basic.return`).
    pub unroutable: Option<Arc<Message>>,
    /// Forwarded to queues of other cluster nodes: a confirm waits for
    /// their answers too.
    pub forwarded: Option<Arc<crate::broker::forward::Receipt>>,
}

impl Published {
    fn held(outcome: Outcome, log_seq: Option<u64>) -> Published {
        Published {
            outcome,
            refused: false,
            log_seq,
            unroutable: None,
            forwarded: None,
        }
    }
}

/// `CC` and `BCC` headers must be arrays (RabbitMQ's text).
pub fn check_cc_bcc(headers: &FieldTable) -> Result<(), AmqpError> {
    for key in ["CC", "BCC"] {
        if let Some(value) = headers.inner().get(key) {
            if !matches!(value, AMQPValue::FieldArray(_)) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{key}\",{}}}",
                    arguments::type_name(value)
                )));
            }
        }
    }
    Ok(())
}

/// The routing keys `CC` and `BCC` add; a message with `BCC` loses that
/// header before delivery.
fn cc_bcc(message: &mut Message) -> Vec<String> {
    let mut extra_keys = Vec::new();
    let Some(headers) = message.properties.headers() else {
        return extra_keys;
    };
    for key in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(list)) = headers.inner().get(key) {
            extra_keys.extend(list.as_slice().iter().filter_map(arguments::as_string));
        }
    }
    if headers.contains_key("BCC") {
        let mut kept = FieldTable::default();
        for (k, v) in headers.inner() {
            if k.as_str() != "BCC" {
                kept.insert(k.clone(), v.clone());
            }
        }
        let properties = BasicProperties::clone(&message.properties).with_headers(kept);
        message.raw_properties = crate::protocol::encode::properties(&properties);
        message.properties = Arc::new(properties);
    }
    extra_keys
}

impl VHost {
    /// An exchange a client may publish to: the default one (`None`), or
    /// an existing one that is not internal.
    pub fn publish_target(&self, name: &str) -> Result<Option<Arc<Exchange>>, AmqpError> {
        if name.is_empty() {
            return Ok(None);
        }
        let exchange = self.exchange(name).ok_or_else(|| self.no_exchange(name))?;
        if exchange.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal {}",
                self.exchange_resource(name)
            )));
        }
        Ok(Some(exchange))
    }

    /// Publishes `message` to its exchange: see the module comment. An
    /// error only when the exchange is missing or internal.
    pub fn publish(&self, mut message: Message) -> Result<Published, AmqpError> {
        let exchange = self.publish_target(&message.exchange)?;
        let extra_keys = cc_bcc(&mut message);
        // Only CC/BCC need a list of keys; the usual publish borrows its one.
        let routing_key = message.routing_key.as_str();
        let with_extra: Vec<&str>;
        let keys: &[&str] = if extra_keys.is_empty() {
            std::slice::from_ref(&routing_key)
        } else {
            with_extra = std::iter::once(routing_key)
                .chain(extra_keys.iter().map(String::as_str))
                .collect();
            &with_extra
        };
        let queues = match &exchange {
            None => {
                let queues = self.route_by_name("", keys, None);
                let stats = &self.default_exchange_stats;
                stats.published_in();
                stats.routed_out(queues.len());
                queues
            }
            Some(exchange) => {
                exchange.stats.published_in();
                if exchange.is_duplicate(&message) {
                    return Ok(Published::held(Outcome::Duplicate, None));
                }
                if let Some(delay) = exchange.delay_of(&message) {
                    let log_seq = exchange.delay(self, message, delay);
                    return Ok(Published::held(Outcome::Delayed, log_seq));
                }
                let queues = self.route(exchange, keys, message.properties.headers().as_ref());
                exchange.stats.routed_out(queues.len());
                queues
            }
        };
        let delivered = self.deliver(message, &queues);
        Ok(Published {
            outcome: Outcome::Routed(queues.len()),
            refused: delivered.refused,
            log_seq: delivered.log_seq,
            unroutable: queues.is_empty().then_some(delivered.message),
            forwarded: delivered.forwarded,
        })
    }
}
