//! `x-delayed-message` exchanges (RabbitMQ's delayed message exchange
//! plugin): a message with a positive `x-delay` header is held for that
//! many milliseconds, then routed as the exchange's `x-delayed-type` says.
//! The holding itself is the vhost's (`VHost::delay`).

use super::Exchange;
use crate::broker::arguments;
use crate::broker::message::Message;

impl Exchange {
    /// How long (ms) this exchange holds `message`; `None` when it routes
    /// it now (not a delaying exchange, or no positive `x-delay`).
    pub fn delay_of(&self, message: &Message) -> Option<u64> {
        if !self.delayed {
            return None;
        }
        let delay = message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delay"))
            .and_then(arguments::as_int)?;
        (delay > 0).then(|| delay.min(u64::MAX as i128) as u64)
    }
}
