//! basic.publish on a channel: the method, its content header and body
//! (assembled by `connection::publish`), the checks on a whole message,
//! routing, and mandatory returns.

use super::Channel;
use crate::broker::access::{Kind, Perm};
use crate::broker::message::Message;
use crate::broker::vhost::{publish, REPLY_TO};
use crate::connection::publish::{Assembled, PendingPublish, Progress};
use crate::connection::ConnContext;
use crate::protocol::error::code;
use crate::protocol::text::short;
use crate::protocol::{AMQPClass, AmqpError, BasicProperties};
use amq_protocol::protocol::basic;
use bytes::Bytes;
use std::sync::Arc;

impl Channel {
    // ---- content ----

    pub fn handle_header(
        &mut self,
        ctx: &mut ConnContext,
        class_id: u16,
        body_size: u64,
        properties: Arc<BasicProperties>,
        raw_properties: Bytes,
    ) -> Result<(), AmqpError> {
        let Some(pending) = self.publishing.take() else {
            return Err(unexpected_content());
        };
        if !pending.expects_header() {
            return Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40));
        }
        let max = ctx.broker.config.amqp.max_message_size;
        if body_size > max {
            return Err(AmqpError::precondition_failed(format!(
                "message size {body_size} is larger than configured max size {max}"
            ))
            .on(60, 40));
        }
        let progress = pending.header(class_id, body_size, properties, raw_properties)?;
        self.advance(ctx, progress)
    }

    pub fn handle_body(&mut self, ctx: &mut ConnContext, payload: Bytes) -> Result<(), AmqpError> {
        let Some(pending) = self.publishing.take() else {
            return Err(unexpected_content());
        };
        if pending.expects_header() {
            return Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40));
        }
        let progress = pending.body(payload)?;
        self.advance(ctx, progress)
    }

    fn advance(&mut self, ctx: &mut ConnContext, progress: Progress) -> Result<(), AmqpError> {
        match progress {
            Progress::Incomplete(pending) => {
                self.publishing = Some(pending);
                Ok(())
            }
            Progress::Complete(message) => self
                .complete_publish(ctx, message)
                .map_err(|e| e.on_if_unset(60, 40)),
        }
    }

    pub(super) fn publish(&mut self, m: basic::Publish) -> Result<Option<AMQPClass>, AmqpError> {
        if m.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.publishing = Some(PendingPublish::new(m));
        Ok(None)
    }

    /// A whole message arrived: check it, then route it (or buffer it in a
    /// transaction).
    fn complete_publish(
        &mut self,
        ctx: &mut ConnContext,
        mut message: Assembled,
    ) -> Result<(), AmqpError> {
        // Every publish counts, even one that fails the checks below.
        self.current_publish = self.confirm.then(|| self.confirms.next());
        let exchange_name = message.publish.exchange.as_str();
        self.allow(ctx, Perm::Write, Kind::Exchange, exchange_name)?;
        ctx.vhost.publish_target(exchange_name)?;
        if let Some(user_id) = message.properties.user_id() {
            if user_id.as_str() != ctx.user {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    user_id, ctx.user
                )));
            }
        }
        if let Some(expiration) = message.properties.expiration() {
            validate_expiration(expiration.as_str())?;
        }
        if let Some(headers) = message.properties.headers() {
            publish::check_cc_bcc(headers)?;
        }
        if message
            .properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO)
        {
            let Some((_, address)) = &self.reply_consumer else {
                return Err(AmqpError::precondition_failed(
                    "fast reply consumer does not exist",
                ));
            };
            let properties =
                BasicProperties::clone(&message.properties).with_reply_to(short(address.as_str()));
            message.raw_properties = crate::protocol::encode::properties(&properties);
            message.properties = Arc::new(properties);
        }
        match &mut self.tx {
            Some(tx) => tx.publishes.push(message),
            None => {
                self.route(ctx, message)?;
            }
        }
        Ok(())
    }

    /// Publishes a checked message through the vhost; returns it to the
    /// publisher when mandatory and unroutable; marks it confirmable.
    /// Returns the log sequence whose sync makes it durable, if it was
    /// stored. An error only if its exchange went away since the checks.
    pub(super) fn route(
        &mut self,
        ctx: &mut ConnContext,
        message: Assembled,
    ) -> Result<Option<u64>, AmqpError> {
        let Assembled {
            publish,
            properties,
            raw_properties,
            body,
        } = message;
        let publish_seq = self.current_publish.take();
        self.count(&self.delivery.stats.publish, 1);
        // The names move into the message (no copies).
        let message = Message::new(
            String::from(publish.exchange),
            String::from(publish.routing_key),
            properties,
            raw_properties,
            body,
        );
        let published = match ctx.vhost.publish(message) {
            Ok(published) => published,
            Err(error) => {
                // The channel closes: this publish is not confirmed.
                self.current_publish = publish_seq;
                return Err(error);
            }
        };
        if let Some(message) = published.unroutable {
            let unroutable = if publish.mandatory {
                &self.delivery.stats.return_unroutable
            } else {
                &self.delivery.stats.drop_unroutable
            };
            self.count(unroutable, 1);
            if publish.mandatory {
                ctx.output
                    .send(crate::connection::output::Outbound::Return {
                        channel: self.id,
                        reply_code: code::NO_ROUTE,
                        reply_text: "NO_ROUTE",
                        message,
                    });
            }
        }
        ctx.forwards |= published.forwarded.is_some();
        self.confirm_later(
            ctx,
            publish_seq,
            published.refused,
            published.log_seq,
            published.forwarded,
        );
        Ok(published.log_seq)
    }
}

fn unexpected_content() -> AmqpError {
    AmqpError::unexpected_frame("expected method frame, got non method frame instead")
}

/// Per-message `expiration`: a non-negative integer string of milliseconds,
/// at most ten years, with RabbitMQ's error texts.
fn validate_expiration(value: &str) -> Result<(), AmqpError> {
    let invalid = |reason: String| {
        AmqpError::precondition_failed(format!("invalid expiration '{value}': {reason}"))
    };
    let digits_start = usize::from(value.starts_with('+') || value.starts_with('-'));
    let digits: String = value[digits_start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.is_empty() {
        return Err(invalid("no_integer".into()));
    }
    let rest = &value[digits_start + digits.len()..];
    if !rest.is_empty() {
        return Err(invalid(format!("{{leftover_string,\"{rest}\"}}")));
    }
    let number: i128 = digits.parse().unwrap_or(i128::MAX);
    let signed = if value.starts_with('-') {
        -number
    } else {
        number
    };
    if signed < 0 {
        return Err(invalid(format!("{{value_negative,{signed}}}")));
    }
    if signed > 315_360_000_000 {
        return Err(invalid(format!("{{value_too_large,\n   {signed}}}")));
    }
    Ok(())
}
