//! A published message: routed once, shared (`Arc`) by every queue it reaches.

use crate::protocol::{encode, BasicProperties};
use crate::store::stream_log::EntrySource;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Message {
    /// The exchange the client published to (delivered as-is, even for copies
    /// that reached a queue through exchange-to-exchange bindings).
    pub exchange: String,
    pub routing_key: String,
    /// Behind a pointer: a message is moved several times between decoding
    /// and its `Arc`, and a pointer moves cheaper than a few hundred bytes.
    /// Shared (`Arc`) so that messages that need no parsed properties (stream
    /// reads) share one default instead of allocating.
    pub properties: Arc<BasicProperties>,
    /// Encoded form of `properties`, sent unchanged on delivery.
    pub raw_properties: Bytes,
    pub body: Bytes,
    /// Its id in the message log, when it was stored for durable queues.
    pub store_id: Option<u64>,
}

impl Message {
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: impl Into<Arc<BasicProperties>>,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        Message {
            exchange,
            routing_key,
            properties: properties.into(),
            raw_properties,
            body,
            store_id: None,
        }
    }

    /// Replaces the properties and re-encodes them.
    pub fn set_properties(&mut self, properties: BasicProperties) {
        self.raw_properties = encode::properties(&properties);
        self.properties = Arc::new(properties);
    }

    pub fn is_persistent(&self) -> bool {
        *self.properties.delivery_mode() == Some(2)
    }

    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}

/// A stream append shares the message with the log writer.
impl EntrySource for Message {
    fn exchange(&self) -> &str {
        &self.exchange
    }
    fn routing_key(&self) -> &str {
        &self.routing_key
    }
    fn raw_properties(&self) -> &[u8] {
        &self.raw_properties
    }
    fn body(&self) -> &[u8] {
        &self.body
    }
}
