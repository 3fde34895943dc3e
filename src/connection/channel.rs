//! One AMQP channel: its state machine and the handling of every
//! channel-level method (exchange, queue, basic, confirm, tx).

use super::confirms::{Confirm, Confirms};
use super::delivery::{ChannelDelivery, Unacked};
use super::publish::{Assembled, PendingPublish, Progress};
use super::ConnContext;
use crate::broker::access::{Access, Kind, Perm};
use crate::broker::arguments;
use crate::broker::message::Message;
use crate::broker::names;
use crate::broker::queue::stream::group::{self, Member as GroupMember};
use crate::broker::queue::{stream, Consumer, DeliverySink, Queue, QueueOptions};
use crate::broker::vhost::{publish, ExchangeDeclare, QueueDeclare, REPLY_TO, REPLY_TO_PREFIX};
use crate::protocol::error::code;
use crate::protocol::text::short;
use crate::protocol::{AMQPClass, AmqpError, BasicProperties, FieldTable};
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, tx};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// What to do with acks inside a transaction.
enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

#[derive(Default)]
struct Transaction {
    publishes: Vec<Assembled>,
    acks: Vec<TxAck>,
}

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

    fn dispatch(
        &mut self,
        ctx: &mut ConnContext,
        method: AMQPClass,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            C::Basic(basic::AMQPMethod::Publish(m)) => self.publish(m),
            C::Basic(basic::AMQPMethod::Ack(m)) => {
                self.ack(ctx, m.delivery_tag, m.multiple).map(|_| None)
            }
            C::Basic(basic::AMQPMethod::Nack(m)) => self
                .nack(ctx, m.delivery_tag, m.multiple, m.requeue)
                .map(|_| None),
            C::Basic(basic::AMQPMethod::Reject(m)) => self
                .nack(ctx, m.delivery_tag, false, m.requeue)
                .map(|_| None),
            C::Basic(basic::AMQPMethod::Consume(m)) => self.consume(ctx, m),
            C::Basic(basic::AMQPMethod::Cancel(m)) => self.cancel(ctx, m),
            C::Basic(basic::AMQPMethod::Get(m)) => self.get(ctx, m),
            C::Basic(basic::AMQPMethod::Qos(m)) => self.qos(m),
            C::Basic(basic::AMQPMethod::Recover(m)) => {
                self.recover(m.requeue)?;
                ok(C::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})))
            }
            C::Basic(basic::AMQPMethod::RecoverAsync(m)) => self.recover(m.requeue).map(|_| None),
            C::Exchange(exchange::AMQPMethod::Declare(m)) => self.exchange_declare(ctx, m),
            C::Exchange(exchange::AMQPMethod::Delete(m)) => {
                let name = names::clean(m.exchange.as_str());
                self.allow(ctx, Perm::Configure, Kind::Exchange, &name)?;
                ctx.vhost.delete_exchange(&name, m.if_unused)?;
                Ok(
                    (!m.nowait).then_some(C::Exchange(exchange::AMQPMethod::DeleteOk(
                        exchange::DeleteOk {},
                    ))),
                )
            }
            C::Exchange(exchange::AMQPMethod::Bind(m)) => {
                self.allow(ctx, Perm::Write, Kind::Exchange, m.destination.as_str())?;
                self.allow(ctx, Perm::Read, Kind::Exchange, m.source.as_str())?;
                ctx.vhost.bind_exchange(
                    m.destination.as_str(),
                    m.source.as_str(),
                    m.routing_key.as_str(),
                    &m.arguments,
                )?;
                Ok(
                    (!m.nowait).then_some(C::Exchange(exchange::AMQPMethod::BindOk(
                        exchange::BindOk {},
                    ))),
                )
            }
            C::Exchange(exchange::AMQPMethod::Unbind(m)) => {
                self.allow(ctx, Perm::Write, Kind::Exchange, m.destination.as_str())?;
                self.allow(ctx, Perm::Read, Kind::Exchange, m.source.as_str())?;
                ctx.vhost.unbind_exchange(
                    m.destination.as_str(),
                    m.source.as_str(),
                    m.routing_key.as_str(),
                    &m.arguments,
                )?;
                Ok(
                    (!m.nowait).then_some(C::Exchange(exchange::AMQPMethod::UnbindOk(
                        exchange::UnbindOk {},
                    ))),
                )
            }
            C::Queue(queue::AMQPMethod::Declare(m)) => self.queue_declare(ctx, m),
            C::Queue(queue::AMQPMethod::Bind(m)) => {
                let queue = self.queue_name(m.queue.as_str())?;
                let key = if m.queue.as_str().is_empty() && m.routing_key.as_str().is_empty() {
                    queue.clone()
                } else {
                    m.routing_key.to_string()
                };
                self.allow(ctx, Perm::Write, Kind::Queue, &queue)?;
                self.allow(ctx, Perm::Read, Kind::Exchange, m.exchange.as_str())?;
                ctx.vhost
                    .bind_queue(&queue, m.exchange.as_str(), &key, &m.arguments, ctx.id)?;
                Ok((!m.nowait).then_some(C::Queue(queue::AMQPMethod::BindOk(queue::BindOk {}))))
            }
            C::Queue(queue::AMQPMethod::Unbind(m)) => {
                let queue = self.queue_name(m.queue.as_str())?;
                self.allow(ctx, Perm::Write, Kind::Queue, &queue)?;
                self.allow(ctx, Perm::Read, Kind::Exchange, m.exchange.as_str())?;
                ctx.vhost.unbind_queue(
                    &queue,
                    m.exchange.as_str(),
                    m.routing_key.as_str(),
                    &m.arguments,
                    ctx.id,
                )?;
                ok(C::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})))
            }
            C::Queue(queue::AMQPMethod::Purge(m)) => {
                let name = self.queue_name(m.queue.as_str())?;
                self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
                let queue = ctx.vhost.usable_queue(&name, ctx.id)?;
                if queue.stream().is_some() {
                    return Err(stream_refuses("queue.purge", &queue));
                }
                let count = queue.purge();
                Ok(
                    (!m.nowait).then_some(C::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: count as u32,
                    }))),
                )
            }
            C::Queue(queue::AMQPMethod::Delete(m)) => {
                let name = self.queue_name(m.queue.as_str())?;
                self.allow(ctx, Perm::Configure, Kind::Queue, &name)?;
                let count = ctx
                    .vhost
                    .delete_queue(&name, m.if_unused, m.if_empty, ctx.id)?;
                ctx.exclusive_queues.retain(|q| q.name != name);
                Ok(
                    (!m.nowait).then_some(C::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: count as u32,
                    }))),
                )
            }
            C::Confirm(confirm::AMQPMethod::Select(m)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirm = true;
                self.delivery.stats.confirm_mode.store(true, Relaxed);
                Ok(
                    (!m.nowait).then_some(C::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    ))),
                )
            }
            C::Tx(tx::AMQPMethod::Select(_)) => {
                if self.confirm {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Transaction::default);
                self.delivery.stats.transactional.store(true, Relaxed);
                ok(C::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
            }
            C::Tx(tx::AMQPMethod::Commit(_)) => {
                let log_seq = self.commit(ctx)?;
                // As RabbitMQ: commit-ok only once the transaction's
                // persistent messages are on disk (sent by `flush_confirms`).
                let synced = ctx
                    .broker
                    .store
                    .as_ref()
                    .map_or(u64::MAX, |s| *s.log.synced().borrow());
                match log_seq {
                    Some(seq) if seq > synced => {
                        self.commits_waiting.push_back(seq);
                        Ok(None)
                    }
                    Some(seq)
                        if ctx
                            .broker
                            .store
                            .as_ref()
                            .is_some_and(|s| s.log.failures().failed(seq)) =>
                    {
                        Err(not_stored())
                    }
                    _ if !self.commits_waiting.is_empty() => {
                        self.commits_waiting.push_back(0);
                        Ok(None)
                    }
                    _ => ok(C::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
                }
            }
            C::Tx(tx::AMQPMethod::Rollback(_)) => {
                let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
                *tx = Transaction::default();
                ok(C::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})))
            }
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
            other => {
                let (class_id, method_id) = method_ids(&other);
                Err(AmqpError::command_invalid("unimplemented method").on(class_id, method_id))
            }
        }
    }

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

    fn publish(&mut self, m: basic::Publish) -> Result<Option<AMQPClass>, AmqpError> {
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
    fn route(
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
                ctx.output.send(super::output::Outbound::Return {
                    channel: self.id,
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE",
                    message,
                });
            }
        }
        self.confirm_later(publish_seq, published.refused, published.log_seq);
        Ok(published.log_seq)
    }

    /// Bumps one of this channel's message counters (management stats).
    fn count(&self, counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records how publish `seq` (confirm mode) is to be confirmed: nacked
    /// when a queue refused it, acked once the log synced past `log_seq`.
    fn confirm_later(&mut self, seq: Option<u64>, refused: bool, log_seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if refused {
            self.confirms.nack(seq);
        } else if let Some(log_seq) = log_seq {
            self.confirms.wait_for_log(seq, log_seq);
        }
    }

    /// The publish being completed failed its checks and closes the
    /// channel: it is not confirmed (see `Confirms::withdraw`).
    pub fn withdraw_failed_publish(&mut self) {
        if let Some(seq) = self.current_publish.take() {
            self.confirms.withdraw(seq);
        }
    }

    /// Whether some confirm or commit-ok waits for the message log.
    pub fn waiting_for_log(&self) -> bool {
        (self.confirm && self.confirms.waiting_for_log()) || !self.commits_waiting.is_empty()
    }

    /// Sends the acks and nacks that are due: everything published and
    /// routed, except what still waits for the message log to sync past
    /// `synced`; likewise the commit-oks. Called once per batch of frames
    /// read and on each sync. What the log could not store (disk full) is
    /// nacked; a transaction of it fails the channel (506, as no
    /// commit-ok may say it is safe).
    pub fn flush_confirms(&mut self, ctx: &ConnContext, synced: u64) -> Result<(), AmqpError> {
        let failures = ctx.broker.store.as_ref().map(|s| s.log.failures());
        let failed = |seq: u64| failures.is_some_and(|f| f.failed(seq));
        while let Some(&seq) = self.commits_waiting.front().filter(|seq| **seq <= synced) {
            self.commits_waiting.pop_front();
            if failed(seq) {
                self.commits_waiting.clear();
                return Err(not_stored());
            }
            ctx.output.method(
                self.id,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            );
        }
        if !self.confirm {
            return Ok(());
        }
        let confirmed_before = self.confirms.confirmed();
        let due = self.confirms.flush(synced, failed);
        self.count(
            &self.delivery.stats.confirm,
            self.confirms.confirmed() - confirmed_before,
        );
        for confirm in due {
            let method = match confirm {
                Confirm::Ack { tag, multiple } => basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple,
                }),
                Confirm::Nack { tag, multiple } => basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: tag,
                    multiple,
                    requeue: false,
                }),
            };
            ctx.output.method(self.id, AMQPClass::Basic(method));
        }
        Ok(())
    }

    // ---- exchanges and queues ----

    fn exchange_declare(
        &mut self,
        ctx: &mut ConnContext,
        m: exchange::Declare,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let name = names::clean(m.exchange.as_str());
        if !m.passive {
            self.allow(ctx, Perm::Configure, Kind::Exchange, &name)?;
            if let Some(ae) =
                arguments::get(&m.arguments, "alternate-exchange").and_then(arguments::as_string)
            {
                self.allow(ctx, Perm::Read, Kind::Exchange, &name)?;
                self.allow(ctx, Perm::Write, Kind::Exchange, &ae)?;
            }
        }
        ctx.vhost.declare_exchange(ExchangeDeclare {
            name: &name,
            kind: m.kind.as_str(),
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: &m.arguments,
        })?;
        Ok(
            (!m.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                exchange::DeclareOk {},
            ))),
        )
    }

    fn queue_declare(
        &mut self,
        ctx: &mut ConnContext,
        m: queue::Declare,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        let name = names::clean(m.queue.as_str());
        let reply = |name: &str, messages: usize, consumers: usize| {
            (!m.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                queue::DeclareOk {
                    queue: short(name),
                    message_count: messages as u32,
                    consumer_count: consumers as u32,
                },
            )))
        };
        if name == REPLY_TO
            || (name.starts_with(REPLY_TO_PREFIX) && ctx.vhost.reply_queue(&name).is_some())
        {
            return Ok(reply(&name, 0, 1));
        }
        let dlx =
            arguments::get(&m.arguments, "x-dead-letter-exchange").and_then(arguments::as_string);
        let check_declare = |this: &mut Self, ctx: &ConnContext, name: &str| {
            this.allow(ctx, Perm::Configure, Kind::Queue, name)?;
            if let Some(dlx) = &dlx {
                this.allow(ctx, Perm::Read, Kind::Queue, name)?;
                this.allow(ctx, Perm::Write, Kind::Exchange, dlx)?;
            }
            Ok::<(), AmqpError>(())
        };
        if !m.passive && !name.is_empty() {
            check_declare(self, ctx, &name)?;
        }
        let (queue, messages, consumers) = ctx.vhost.declare_queue(
            QueueDeclare {
                name: &name,
                passive: m.passive,
                durable: m.durable,
                exclusive: m.exclusive,
                auto_delete: m.auto_delete,
                arguments: &m.arguments,
            },
            ctx.id,
        )?;
        // A server-named queue is checked under the name it got.
        if !m.passive && name.is_empty() {
            if let Err(e) = check_declare(self, ctx, &queue.name) {
                ctx.vhost.remove_queue(&queue);
                return Err(e);
            }
        }
        if queue.options.exclusive_owner == Some(ctx.id)
            && !ctx.exclusive_queues.iter().any(|q| Arc::ptr_eq(q, &queue))
        {
            ctx.exclusive_queues.push(queue.clone());
        }
        self.last_queue = Some(queue.name.clone());
        Ok(reply(&queue.name, messages, consumers))
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
        if queue.stream().is_some() {
            if m.no_ack {
                return Err(stream_refuses("automatic acknowledgement", &queue));
            }
            if self.prefetch == 0 {
                return Err(AmqpError::precondition_failed(format!(
                    "consumer prefetch count is not set for '{}'",
                    queue.resource()
                )));
            }
            stream::consume_options(&queue.resource(), &m.arguments)?;
        }
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
        queue.add_consumer(consumer)?;
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
        let address = format!("{REPLY_TO_PREFIX}{}", names::reply_to_token());
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

    fn cancel_consumer(&mut self, ctx: &mut ConnContext, tag: &str) {
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
        if queue.stream().is_some() {
            return Err(stream_refuses("basic.get", &queue));
        }
        match queue.get(m.no_ack) {
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
        if let Some(entry) = taken.iter().find(|e| e.queue.stream().is_some()) {
            return Err(stream_refuses("basic.nack and basic.reject", &entry.queue));
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
    fn after_credit_returned(&self, _ctx: &ConnContext) {
        for queue in self.consumers.values() {
            queue.dispatch();
        }
    }

    /// Applies the transaction; returns the log sequence its commit-ok
    /// waits for (its last append), if it stored anything.
    fn commit(&mut self, ctx: &mut ConnContext) -> Result<Option<u64>, AmqpError> {
        let tx = self.tx.as_mut().ok_or_else(not_transactional)?;
        let Transaction { publishes, acks } = std::mem::take(tx);
        let mut log_seq = None;
        for message in publishes {
            if let Some(seq) = self.route(ctx, message)? {
                log_seq = log_seq.max(Some(seq));
            }
        }
        let mut first_error = None;
        for ack in acks {
            let (tag, multiple, how) = match ack {
                TxAck::Ack { tag, multiple } => (tag, multiple, Settle::Ack),
                TxAck::Nack {
                    tag,
                    multiple,
                    requeue,
                } => (tag, multiple, Settle::nack(requeue)),
            };
            match self.delivery.take(tag, multiple) {
                Ok(taken) => {
                    if matches!(how, Settle::Ack) {
                        self.count(&self.delivery.stats.ack, taken.len() as u64);
                    }
                    settle(taken, how)
                }
                Err(tag) => {
                    first_error.get_or_insert(unknown_tag(tag));
                }
            }
        }
        self.after_credit_returned(ctx);
        first_error.map_or(Ok(log_seq), Err)
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

/// What becomes of settled deliveries.
#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    /// nack/reject without requeue: dead-lettered as `rejected`.
    Reject,
}

impl Settle {
    fn nack(requeue: bool) -> Self {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        }
    }
}

/// Acked messages leave their queues, rejected ones are dead-lettered,
/// requeued ones go back.
fn settle(taken: Vec<Unacked>, how: Settle) {
    let mut by_queue: Vec<(Arc<Queue>, Vec<crate::broker::queue::QueuedMessage>)> = Vec::new();
    // A stream keeps its messages; an ack moves a named consumer's tracked
    // offset: the highest acked offset per consumer, tracked once.
    let mut stream_acks: Vec<(Arc<Queue>, Arc<Consumer>, u64)> = Vec::new();
    for entry in taken {
        if let (Settle::Ack, Some(_), Some(consumer)) = (how, entry.queue.stream(), &entry.consumer)
        {
            let offset = entry.message.seq;
            match stream_acks
                .iter_mut()
                .find(|(_, c, _)| Arc::ptr_eq(c, consumer))
            {
                Some(acked) => acked.2 = acked.2.max(offset),
                None => stream_acks.push((entry.queue.clone(), consumer.clone(), offset)),
            }
        }
        match by_queue
            .iter_mut()
            .find(|(q, _)| Arc::ptr_eq(q, &entry.queue))
        {
            Some((_, list)) => list.push(entry.message),
            None => by_queue.push((entry.queue, vec![entry.message])),
        }
    }
    for (queue, consumer, offset) in stream_acks {
        if let Some(stream) = queue.stream() {
            stream.track(&consumer, offset);
        }
    }
    for (queue, messages) in by_queue {
        match how {
            Settle::Requeue => queue.requeue(messages),
            Settle::Reject => queue.rejected(messages),
            Settle::Ack => {
                queue.acked(&messages);
                if let Some(stream) = queue.stream() {
                    stream.store_tracked();
                }
                queue.dispatch();
            }
        }
    }
}

/// RabbitMQ's 540 for an operation stream queues do not support.
fn stream_refuses(operation: &str, queue: &Queue) -> AmqpError {
    AmqpError::not_implemented(format!(
        "{operation} not supported by stream queues {}",
        queue.resource()
    ))
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition_failed(format!("unknown delivery tag {tag}"))
}

fn not_transactional() -> AmqpError {
    AmqpError::precondition_failed("channel is not transactional")
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

pub fn method_ids(method: &AMQPClass) -> (u16, u16) {
    (method.get_amqp_class_id(), method.get_amqp_method_id())
}

/// A transaction whose messages the log could not write (disk full).
fn not_stored() -> AmqpError {
    AmqpError::channel(
        code::RESOURCE_ERROR,
        "transaction not committed: the message store could not write it (disk full?)",
    )
}
