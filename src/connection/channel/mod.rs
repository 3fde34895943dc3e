//! One AMQP channel: its state machine, and the dispatch of every
//! channel-level method to the file of its class:
//! - `publish`: basic.publish and its content (header, body), routing,
//!   mandatory returns
//! - `consume`: basic.consume/cancel/get/qos/recover, ack/nack/reject,
//!   consumer groups, direct reply-to
//! - `declare`: exchange.* and queue.*
//! - `tx_confirm`: confirm.select and publisher confirms, tx.*

mod catalog_wait;
mod consume;
mod declare;
mod publish;
mod tx_confirm;

use super::confirms::Confirms;
use super::delivery::ChannelDelivery;
use super::publish::PendingPublish;
use super::ConnContext;
use crate::broker::access::{Access, Kind, Perm};
use crate::broker::names;
use crate::broker::queue::Queue;
use crate::broker::queue::Settle;
use crate::broker::super_stream::group::Member as GroupMember;
use crate::protocol::{AMQPClass, AmqpError};
use amq_protocol::protocol::{basic, channel};
use consume::settle;
use std::collections::HashMap;
use std::sync::Arc;
use tx_confirm::Transaction;

pub struct Channel {
    pub id: u16,
    pub delivery: Arc<ChannelDelivery>,
    /// consumer tag -> queue
    consumers: HashMap<String, Arc<Queue>>,
    /// consumer tag -> membership of a consumer group.
    group_members: HashMap<String, Arc<GroupMember>>,
    /// Direct reply-to: (consumer tag, reply address).
    reply_consumer: Option<(String, String)>,
    publishing: Option<PendingPublish>,
    /// Per-consumer prefetch applied to consumers created from now on.
    prefetch: u32,
    confirm: bool,
    confirms: Confirms,
    /// Sequence number of the publish being completed (confirm mode).
    current_publish: Option<u64>,
    tx: Option<Transaction>,
    /// Committed transactions whose commit-ok waits for the message log to
    /// sync past their last append, oldest first (0: waits only for the
    /// ones before it, so commit-oks keep their order).
    commits_waiting: std::collections::VecDeque<u64>,
    /// Replies waiting for the catalog to flush the change numbered so
    /// (see `catalog_wait`).
    catalog_waiting: std::collections::VecDeque<(u64, AMQPClass)>,
    /// The last queue declared on this channel (for empty queue names).
    last_queue: Option<String>,
    /// The user's permissions in this vhost, loaded on first use.
    access: Option<Access>,
}

fn ok(method: AMQPClass) -> Result<Option<AMQPClass>, AmqpError> {
    Ok(Some(method))
}

impl Channel {
    pub fn new(id: u16, delivery: Arc<ChannelDelivery>) -> Self {
        Channel {
            id,
            delivery,
            consumers: HashMap::new(),
            access: None,
            group_members: HashMap::new(),
            reply_consumer: None,
            publishing: None,
            prefetch: 0,
            confirm: false,
            confirms: Confirms::default(),
            current_publish: None,
            tx: None,
            commits_waiting: Default::default(),
            catalog_waiting: Default::default(),
            last_queue: None,
        }
    }

    /// Handles a method frame; returns the reply to send, if any.
    pub fn handle_method(
        &mut self,
        ctx: &mut ConnContext,
        method: AMQPClass,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        if self.publishing.is_some() {
            let expected = if self.publishing.as_ref().is_some_and(|p| p.expects_header()) {
                "expected content header for class 60, got non content header frame instead"
            } else {
                "expected content body, got non content body frame instead"
            };
            return Err(AmqpError::unexpected_frame(expected).on(60, 40));
        }
        let (class_id, method_id) = method_ids(&method);
        self.dispatch(ctx, method)
            .map_err(|e| e.on_if_unset(class_id, method_id))
    }

    /// Forwards each class to its file.
    fn dispatch(
        &mut self,
        ctx: &mut ConnContext,
        method: AMQPClass,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            C::Basic(basic::AMQPMethod::Publish(m)) => self.publish(m),
            C::Basic(m) => self.handle_basic(ctx, m),
            C::Exchange(m) => self.after_catalog_flush(ctx, |ch, ctx| ch.handle_exchange(ctx, m)),
            C::Queue(m) => self.after_catalog_flush(ctx, |ch, ctx| ch.handle_queue(ctx, m)),
            C::Confirm(m) => self.handle_confirm(m),
            C::Tx(m) => self.handle_tx(ctx, m),
            C::Channel(channel::AMQPMethod::Flow(m)) => {
                if !m.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                ok(C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: true,
                })))
            }
            C::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => ok(C::Access(
                amq_protocol::protocol::access::AMQPMethod::RequestOk(
                    amq_protocol::protocol::access::RequestOk {},
                ),
            )),
            other => unimplemented(other),
        }
    }

    /// Checks the user's permission `perm` on a queue or exchange (403).
    fn allow(
        &mut self,
        ctx: &ConnContext,
        perm: Perm,
        kind: Kind,
        name: &str,
    ) -> Result<(), AmqpError> {
        self.access
            .get_or_insert_with(|| Access::load(&ctx.broker, &ctx.user, &ctx.vhost.name))
            .check(perm, kind, name)
    }

    /// Resolves an empty queue name to the channel's last declared queue.
    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(names::clean(name));
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// Bumps one of this channel's message counters (management stats).
    fn count(&self, counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closing: stop deliveries, cancel consumers, requeue unacked messages.
    pub fn close(&mut self, ctx: &mut ConnContext) {
        self.delivery.close();
        let tags: Vec<String> = self
            .consumers
            .keys()
            .chain(self.group_members.keys())
            .cloned()
            .collect();
        for tag in tags {
            self.cancel_consumer(ctx, &tag);
        }
        if let Some((_, address)) = self.reply_consumer.take() {
            ctx.vhost.remove_reply_queue(&address);
        }
        settle(self.delivery.take_all(), Settle::Requeue);
        self.publishing = None;
    }
}

/// 503 for a method this broker does not handle.
fn unimplemented(method: AMQPClass) -> Result<Option<AMQPClass>, AmqpError> {
    let (class_id, method_id) = method_ids(&method);
    Err(AmqpError::command_invalid("unimplemented method").on(class_id, method_id))
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition_failed(format!("unknown delivery tag {tag}"))
}

pub fn method_ids(method: &AMQPClass) -> (u16, u16) {
    (method.get_amqp_class_id(), method.get_amqp_method_id())
}
