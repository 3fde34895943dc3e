//! Dead-lettering: the message a queue republishes to its dead-letter
//! exchange, with the `x-death` history in RabbitMQ's layout.

use crate::broker::arguments::as_string;
use crate::broker::message::Message;
use crate::protocol::{AMQPValue, BasicProperties, FieldArray, FieldTable, LongString};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn cc_keys(headers: &FieldTable) -> Vec<String> {
    match headers.inner().get("CC") {
        Some(AMQPValue::FieldArray(list)) => list.as_slice().iter().filter_map(as_string).collect(),
        _ => Vec::new(),
    }
}

/// The properties with `expiration` removed and new headers.
fn rebuild_properties(p: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default().with_headers(headers);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// Builds the dead-lettered copy of `message` leaving `queue` for `reason`,
/// and the routing keys to publish it with.
pub fn build(
    message: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    dlrk: Option<&str>,
) -> (Message, Vec<String>) {
    let original = message.properties.headers().clone().unwrap_or_default();
    let mut routing_keys = vec![message.routing_key.clone()];
    routing_keys.extend(cc_keys(&original));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let mut deaths: Vec<AMQPValue> = match original.inner().get("x-death") {
        Some(AMQPValue::FieldArray(list)) => list.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |entry: &AMQPValue| match entry {
        AMQPValue::FieldTable(t) => {
            t.inner().get("queue").and_then(as_string).as_deref() == Some(queue)
                && t.inner().get("reason").and_then(as_string).as_deref() == Some(reason.as_str())
        }
        _ => false,
    };
    let entry = match deaths.iter().position(same) {
        Some(pos) => {
            let AMQPValue::FieldTable(mut t) = deaths.remove(pos) else {
                unreachable!("matched a table above")
            };
            let count = match t.inner().get("count") {
                Some(v) => crate::broker::arguments::as_int(v).unwrap_or(0) as i64,
                None => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), text(reason.as_str()));
            t.insert("queue".into(), text(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), text(&message.exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(
                    routing_keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
                )),
            );
            if let Some(expiration) = message.properties.expiration() {
                t.insert("original-expiration".into(), text(expiration.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));

    let mut headers = original.clone();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (key, value) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", message.exchange.as_str()),
    ] {
        if !headers.contains_key(key) {
            headers.insert(key.into(), text(value));
        }
    }
    headers.insert("x-last-death-reason".into(), text(reason.as_str()));
    headers.insert("x-last-death-queue".into(), text(queue));
    headers.insert("x-last-death-exchange".into(), text(&message.exchange));
    let keys = match dlrk {
        Some(key) => {
            // With an explicit dead-letter routing key, CC no longer applies.
            let mut without_cc = FieldTable::default();
            for (k, v) in headers.inner() {
                if k.as_str() != "CC" {
                    without_cc.insert(k.clone(), v.clone());
                }
            }
            headers = without_cc;
            vec![key.to_string()]
        }
        None => routing_keys,
    };
    let properties = rebuild_properties(&message.properties, headers);
    let raw = crate::protocol::encode::properties(&properties);
    let routing_key = dlrk.unwrap_or(&message.routing_key).to_string();
    let dead = Message::new(
        dlx.to_string(),
        routing_key,
        properties,
        raw,
        message.body.clone(),
    );
    (dead, keys)
}

/// Whether the x-death history shows a cycle through `queue` with no client
/// rejection in it (RabbitMQ drops such messages instead of looping).
pub fn is_silent_cycle(message: &Message, queue: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return false;
    };
    let mut seen_queue = false;
    for entry in deaths.as_slice() {
        if let AMQPValue::FieldTable(t) = entry {
            if t.inner().get("reason").and_then(as_string).as_deref() == Some("rejected") {
                return false;
            }
            if t.inner().get("queue").and_then(as_string).as_deref() == Some(queue) {
                seen_queue = true;
            }
        }
    }
    seen_queue
}
