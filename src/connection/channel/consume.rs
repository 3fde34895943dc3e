//! Consumers and acknowledgements on a channel: basic.consume (queues,
//! streams, consumer groups, direct reply-to), cancel, get, qos, recover,
//! ack/nack/reject.

use super::tx_confirm::TxAck;
use super::{ok, unimplemented, unknown_tag, Channel};
use crate::broker::access::{Kind, Perm};
use crate::broker::arguments;
use crate::broker::names;
use crate::broker::queue::{self, stream, Consumer, DeliverySink, Queue, QueueOptions, Settle};
use crate::broker::super_stream::group;
use crate::broker::vhost::{REPLY_TO, REPLY_TO_PREFIX};
use crate::connection::delivery::Unacked;
use crate::connection::ConnContext;
use crate::protocol::text::short;
use crate::protocol::{AMQPClass, AmqpError, FieldTable};
use amq_protocol::protocol::basic;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

impl Channel {
    /// basic.* except publish.
    pub(super) fn handle_basic(
        &mut self,
        ctx: &mut ConnContext,
        method: basic::AMQPMethod,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            basic::AMQPMethod::Ack(m) => self.ack(ctx, m.delivery_tag, m.multiple).map(|_| None),
            basic::AMQPMethod::Nack(m) => self
                .nack(ctx, m.delivery_tag, m.multiple, m.requeue)
                .map(|_| None),
            basic::AMQPMethod::Reject(m) => self
                .nack(ctx, m.delivery_tag, false, m.requeue)
                .map(|_| None),
            basic::AMQPMethod::Consume(m) => self.consume(ctx, m),
            basic::AMQPMethod::Cancel(m) => self.cancel(ctx, m),
            basic::AMQPMethod::Get(m) => self.get(ctx, m),
            basic::AMQPMethod::Qos(m) => self.qos(m),
            basic::AMQPMethod::Recover(m) => {
                self.recover(m.requeue)?;
                ok(C::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})))
            }
            basic::AMQPMethod::RecoverAsync(m) => self.recover(m.requeue).map(|_| None),
            other => unimplemented(C::Basic(other)),
        }
    }

    // ---- consumers ----

    fn consume(
        &mut self,
        ctx: &mut ConnContext,
        m: basic::Consume,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let queue_name = self.queue_name(m.queue.as_str())?;
        let tag = if m.consumer_tag.as_str().is_empty() {
            names::consumer_tag()
        } else {
            m.consumer_tag.to_string()
        };
        let tag_in_use = self.consumers.get(&tag).is_some_and(|q| !q.is_deleted())
            || self.group_members.contains_key(&tag)
            || self.reply_consumer.as_ref().is_some_and(|(t, _)| *t == tag);
        if tag_in_use {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        if queue_name == REPLY_TO {
            return self.consume_replies(ctx, m, tag);
        }
        if let Some(group) = arguments::get(&m.arguments, group::GROUP_ARG) {
            let group = arguments::as_string(group).ok_or_else(|| {
                AmqpError::precondition_failed(format!(
                    "invalid arg '{}': expected a string",
                    group::GROUP_ARG
                ))
            })?;
            self.allow(ctx, Perm::Read, Kind::Exchange, &queue_name)?;
            return self.consume_group(ctx, m, tag, &queue_name, &group);
        }
        self.allow(ctx, Perm::Read, Kind::Queue, &queue_name)?;
        let queue = ctx.vhost.usable_queue(&queue_name, ctx.id)?;
        let priority = match arguments::get(&m.arguments, "x-priority") {
            None => 0,
            Some(value) => match arguments::as_int(value) {
                Some(p) => p.clamp(i32::MIN as i128, i32::MAX as i128) as i32,
                None => {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid arg 'x-priority' for {}: \"expected integer, got {}\"",
                        queue.resource(),
                        arguments::type_name(value)
                    )))
                }
            },
        };
        queue.check_consume(m.no_ack, self.prefetch, &m.arguments)?;
        let consumer = Arc::new(Consumer {
            tag: Arc::from(tag.as_str()),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            priority,
            prefetch: self.prefetch,
            unacked: AtomicU32::new(0),
            arguments: m.arguments.clone(),
            sink: self.delivery.clone() as Arc<dyn DeliverySink>,
        });
        queue.check_consumer_allowed(m.exclusive)?;
        // consume-ok goes out before the first delivery for this consumer.
        if !m.nowait {
            ctx.output.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(tag.as_str()),
                })),
            );
        }
        if queue.is_remote() {
            ctx.vhost.consume_remote(&queue, consumer)?;
        } else {
            queue.add_consumer(consumer)?;
        }
        self.consumers.insert(tag, queue);
        Ok(None)
    }

    /// basic.consume on a super stream with `x-consumer-group`: joins the
    /// group, which assigns this consumer some of the partitions.
    fn consume_group(
        &mut self,
        ctx: &mut ConnContext,
        m: basic::Consume,
        tag: String,
        super_stream: &str,
        group: &str,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let resource = format!(
            "super stream '{super_stream}' in vhost '{}'",
            ctx.vhost.name
        );
        let is_super_stream = ctx
            .vhost
            .exchange(super_stream)
            .is_some_and(|e| e.kind == crate::broker::exchange::ExchangeKind::SuperStream);
        if !is_super_stream {
            return Err(AmqpError::not_found(format!("no {resource}")));
        }
        if m.no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by consumer groups on {resource}"
            )));
        }
        if self.prefetch == 0 {
            return Err(AmqpError::precondition_failed(format!(
                "consumer prefetch count is not set for '{resource}'"
            )));
        }
        let (start, filter) = stream::consume_options(&resource, &m.arguments)?;
        if filter.is_some() {
            return Err(AmqpError::precondition_failed(format!(
                "x-stream-filter is not supported by consumer groups on {resource}"
            )));
        }
        let template = Arc::new(Consumer {
            tag: Arc::from(tag.as_str()),
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: self.prefetch,
            unacked: AtomicU32::new(0),
            arguments: m.arguments.clone(),
            sink: self.delivery.clone() as Arc<dyn DeliverySink>,
        });
        if !m.nowait {
            ctx.output.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(tag.as_str()),
                })),
            );
        }
        // Partitions on another node: the member joins the group there
        // and is cancelled like a relayed consumer.
        let partitions = ctx.vhost.partitions(super_stream);
        if let Some(partition) = partitions.first().filter(|p| p.is_remote()) {
            ctx.vhost
                .consume_group_remote(partition, super_stream, group, template)?;
            self.consumers.insert(tag, partition.clone());
            return Ok(None);
        }
        let member = ctx
            .vhost
            .groups
            .join(&ctx.vhost, super_stream, group, template, start);
        self.group_members.insert(tag, member);
        Ok(None)
    }

    /// basic.consume on `amq.rabbitmq.reply-to`: a private, no-ack queue
    /// addressed by a generated reply-to name.
    fn consume_replies(
        &mut self,
        ctx: &mut ConnContext,
        m: basic::Consume,
        tag: String,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        if !m.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply_consumer.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let node = ctx.broker.replication.node();
        let address = format!("{REPLY_TO_PREFIX}{}", names::reply_to_token(node));
        let queue = Arc::new(
            Queue::new(
                address.clone(),
                ctx.vhost.name.clone(),
                QueueOptions::default(),
            )
            .with_page_budget(ctx.vhost.pages.clone()),
        );
        let consumer = Arc::new(Consumer {
            tag: Arc::from(tag.as_str()),
            no_ack: true,
            exclusive: true,
            priority: 0,
            prefetch: 0,
            unacked: AtomicU32::new(0),
            arguments: FieldTable::default(),
            sink: self.delivery.clone() as Arc<dyn DeliverySink>,
        });
        if !m.nowait {
            ctx.output.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(tag.as_str()),
                })),
            );
        }
        queue.add_consumer(consumer)?;
        ctx.vhost.add_reply_queue(queue);
        self.reply_consumer = Some((tag, address));
        Ok(None)
    }

    fn cancel(
        &mut self,
        ctx: &mut ConnContext,
        m: basic::Cancel,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let tag = m.consumer_tag.to_string();
        self.cancel_consumer(ctx, &tag);
        Ok(
            (!m.nowait).then_some(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
                basic::CancelOk {
                    consumer_tag: m.consumer_tag,
                },
            ))),
        )
    }

    pub(super) fn cancel_consumer(&mut self, ctx: &mut ConnContext, tag: &str) {
        if let Some(member) = self.group_members.remove(tag) {
            member.leave();
            return;
        }
        if self.reply_consumer.as_ref().is_some_and(|(t, _)| t == tag) {
            if let Some((_, address)) = self.reply_consumer.take() {
                ctx.vhost.remove_reply_queue(&address);
            }
            return;
        }
        let Some(queue) = self.consumers.remove(tag) else {
            return;
        };
        if queue.is_remote() {
            ctx.vhost
                .cancel_remote(&queue, tag, self.delivery.channel_key());
            return;
        }
        if let Some((_, auto_delete)) = queue.remove_consumer(tag, self.delivery.channel_key()) {
            if auto_delete {
                ctx.vhost.remove_queue(&queue);
                ctx.exclusive_queues.retain(|q| !Arc::ptr_eq(q, &queue));
            }
        }
    }

    fn get(
        &mut self,
        ctx: &mut ConnContext,
        m: basic::Get,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let name = self.queue_name(m.queue.as_str())?;
        self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
        let queue = ctx.vhost.usable_queue(&name, ctx.id)?;
        queue.check_get()?;
        let got = if queue.is_remote() {
            ctx.vhost.get_remote(&queue, m.no_ack)?
        } else {
            queue.get(m.no_ack)
        };
        match got {
            Some((message, remaining)) => {
                self.delivery
                    .deliver_get(&queue, message, remaining, m.no_ack);
                Ok(None)
            }
            None => {
                self.count(&self.delivery.stats.get_empty, 1);
                ok(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                    basic::GetEmpty {},
                )))
            }
        }
    }

    fn qos(&mut self, m: basic::Qos) -> Result<Option<AMQPClass>, AmqpError> {
        if m.global {
            self.delivery.set_global_prefetch(m.prefetch_count as u32);
        } else {
            // As RabbitMQ 3.x: a per-consumer qos also lifts a global limit.
            self.prefetch = m.prefetch_count as u32;
            self.delivery.set_global_prefetch(0);
        }
        ok(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})))
    }

    // ---- acknowledgements ----

    fn ack(&mut self, ctx: &mut ConnContext, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        if let Some(tx) = &mut self.tx {
            tx.acks.push(TxAck::Ack { tag, multiple });
            return Ok(());
        }
        let taken = self.delivery.take(tag, multiple).map_err(unknown_tag)?;
        self.count(&self.delivery.stats.ack, taken.len() as u64);
        settle(taken, Settle::Ack);
        self.after_credit_returned(ctx);
        Ok(())
    }

    fn nack(
        &mut self,
        ctx: &mut ConnContext,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        if let Some(tx) = &mut self.tx {
            tx.acks.push(TxAck::Nack {
                tag,
                multiple,
                requeue,
            });
            return Ok(());
        }
        let taken = self.delivery.take(tag, multiple).map_err(unknown_tag)?;
        if let Some(refused) = taken.iter().find_map(|e| e.queue.check_nack().err()) {
            return Err(refused);
        }
        settle(taken, Settle::nack(requeue));
        self.after_credit_returned(ctx);
        Ok(())
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        settle(self.delivery.take_all(), Settle::Requeue);
        Ok(())
    }

    /// Freed prefetch credit: queues of this channel's consumers may now
    /// deliver more.
    pub(super) fn after_credit_returned(&self, _ctx: &ConnContext) {
        for queue in self.consumers.values() {
            queue.dispatch();
        }
    }
}

/// Settles deliveries taken back from this channel's unacked ones: each
/// queue's type decides what an ack, reject or requeue means for it.
pub(super) fn settle(taken: Vec<Unacked>, how: Settle) {
    queue::settle(
        taken.into_iter().map(|u| (u.queue, u.consumer, u.message)),
        how,
    );
}
