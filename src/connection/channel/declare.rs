//! exchange.* and queue.* on a channel: declare, bind, unbind, purge,
//! delete.

use super::{ok, unimplemented, Channel};
use crate::broker::access::{Kind, Perm};
use crate::broker::arguments;
use crate::broker::names;
use crate::broker::vhost::{ExchangeDeclare, QueueDeclare, REPLY_TO, REPLY_TO_PREFIX};
use crate::connection::ConnContext;
use crate::protocol::text::short;
use crate::protocol::{AMQPClass, AmqpError};
use amq_protocol::protocol::{exchange, queue};
use std::sync::Arc;

impl Channel {
    /// exchange.*
    pub(super) fn handle_exchange(
        &mut self,
        ctx: &mut ConnContext,
        method: exchange::AMQPMethod,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            exchange::AMQPMethod::Declare(m) => self.exchange_declare(ctx, m),
            exchange::AMQPMethod::Delete(m) => {
                let name = names::clean(m.exchange.as_str());
                self.allow(ctx, Perm::Configure, Kind::Exchange, &name)?;
                ctx.vhost.delete_exchange(&name, m.if_unused)?;
                Ok(
                    (!m.nowait).then_some(C::Exchange(exchange::AMQPMethod::DeleteOk(
                        exchange::DeleteOk {},
                    ))),
                )
            }
            exchange::AMQPMethod::Bind(m) => {
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
            exchange::AMQPMethod::Unbind(m) => {
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
            other => unimplemented(C::Exchange(other)),
        }
    }

    /// queue.*
    pub(super) fn handle_queue(
        &mut self,
        ctx: &mut ConnContext,
        method: queue::AMQPMethod,
    ) -> Result<Option<AMQPClass>, AmqpError> {
        use AMQPClass as C;
        match method {
            queue::AMQPMethod::Declare(m) => self.queue_declare(ctx, m),
            queue::AMQPMethod::Bind(m) => {
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
            queue::AMQPMethod::Unbind(m) => {
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
            queue::AMQPMethod::Purge(m) => {
                let name = self.queue_name(m.queue.as_str())?;
                self.allow(ctx, Perm::Read, Kind::Queue, &name)?;
                let queue = ctx.vhost.usable_queue(&name, ctx.id)?;
                queue.check_purge()?;
                let count = ctx.vhost.purge_queue(&queue)?;
                Ok(
                    (!m.nowait).then_some(C::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: count as u32,
                    }))),
                )
            }
            queue::AMQPMethod::Delete(m) => {
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
            other => unimplemented(C::Queue(other)),
        }
    }

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
}
