//! Serving what other cluster nodes ask of this node's broker
//! (`forward::Call`): messages they routed to queues of this node, and
//! operations on those queues' contents.

use crate::broker::forward::{self, Answer, Call, Forwarded, QueueStats};
use crate::broker::queue::Queue;
use crate::broker::Broker;
use crate::protocol::error::ErrorScope;
use crate::protocol::AmqpError;
use std::sync::{Arc, Weak};

/// The handler the cluster layer calls with each broker call.
pub fn handler(broker: Weak<Broker>) -> crate::cluster::BrokerHandler {
    Arc::new(move |from, body| {
        let broker = broker.upgrade();
        Box::pin(async move {
            let answer = match (broker, forward::decode::<Call>(&body)) {
                (Some(broker), Some(call)) => serve(&broker, &from, call).await,
                (None, _) => refused(AmqpError::internal("the broker is stopping")),
                (_, None) => {
                    tracing::warn!(node = %from, "unreadable call from cluster node");
                    refused(AmqpError::internal("unreadable call"))
                }
            };
            forward::encode(&answer)
        })
    })
}

async fn serve(broker: &Arc<Broker>, from: &str, call: Call) -> Answer {
    let Some(relays) = broker.replication.relays().cloned() else {
        return refused(AmqpError::internal("not a cluster node"));
    };
    match call {
        Call::Alive => Answer::Boot(relays.boot()),
        Call::NodeReport => Answer::Report(broker.replication.node_report().unwrap_or_default()),
        Call::QueueStats { queues } => Answer::Stats(
            queues
                .iter()
                .map(|(vhost, name)| {
                    local_queue(broker, vhost, name)
                        .ok()
                        .map(|q| queue_stats(&q))
                })
                .collect(),
        ),
        Call::Consume {
            vhost,
            queue,
            request,
        } => {
            let from = from.to_string();
            let boot_here = relays.boot();
            blocking(broker, move |broker| {
                let queue = local_queue(broker, &vhost, &queue)?;
                relays.serve_consume(&from, &queue, request)
            })
            .await
            .map_or_else(refused, |_| Answer::Boot(boot_here))
        }
        Call::ConsumeGroup {
            vhost,
            super_stream,
            group,
            request,
        } => {
            let boot_here = relays.boot();
            let joined = (|| {
                let vhost = broker.vhost(&vhost).ok_or_else(|| no_vhost(&vhost))?;
                let partitions = vhost.partitions(&super_stream);
                if partitions.is_empty() || partitions.iter().any(|p| p.is_remote()) {
                    return Err(AmqpError::not_found(format!(
                        "no super stream '{super_stream}' in vhost '{}' on this node",
                        vhost.name
                    )));
                }
                let resource = format!("super stream '{super_stream}' in vhost '{}'", vhost.name);
                let (start, _) =
                    crate::broker::queue::stream::consume_options(&resource, &request.arguments)?;
                let relay = request.relay;
                let template = relays.relayed_consumer(from, request)?;
                let member = vhost
                    .groups
                    .join(&vhost, &super_stream, &group, template, start);
                relays.add_member(from, relay, member);
                Ok(())
            })();
            joined.map_or_else(refused, |_| Answer::Boot(boot_here))
        }
        Call::Cancel { relay } => {
            relays.serve_cancel(from, relay);
            Answer::Done
        }
        Call::Settle { ids, how } => {
            relays.serve_settle(from, &ids, how);
            Answer::Done
        }
        Call::Get {
            vhost,
            queue,
            no_ack,
            boot,
        } => local_queue(broker, &vhost, &queue)
            .and_then(|queue| relays.serve_get(from, boot, &queue, no_ack))
            .map_or_else(refused, Answer::Got),
        Call::Deliver(batch) => Answer::Delivered {
            refused: relays.deliveries(from, batch).await,
        },
        Call::Cancelled { relay } => {
            relays.cancelled(from, relay);
            Answer::Done
        }
        Call::Publish(messages) => Answer::Published(publish(broker, messages).await),
        Call::DeleteQueue {
            vhost,
            name,
            if_unused,
            if_empty,
        } => blocking(broker, move |broker| {
            let vhost = broker.vhost(&vhost).ok_or_else(|| no_vhost(&vhost))?;
            vhost.delete_queue(&name, if_unused, if_empty, 0)
        })
        .await
        .map_or_else(refused, |n| Answer::Count(n as u64)),
        Call::PurgeQueue { vhost, name } => match broker.vhost(&vhost) {
            Some(vhost) => match vhost.queue(&name) {
                Some(queue) => queue
                    .check_purge()
                    .map(|_| Answer::Count(queue.purge() as u64))
                    .unwrap_or_else(refused),
                None => refused(vhost.no_queue(&name)),
            },
            None => refused(no_vhost(&vhost)),
        },
        Call::QueueCounts { vhost, name } => {
            match broker.vhost(&vhost).and_then(|v| v.queue(&name)) {
                Some(queue) => {
                    let (ready, _, consumers) = queue.snapshot();
                    Answer::Counts {
                        ready: ready as u64,
                        consumers: consumers as u64,
                    }
                }
                None => Answer::Counts {
                    ready: 0,
                    consumers: 0,
                },
            }
        }
    }
}

/// Delivers each run of messages of one vhost in order; a message of an
/// unknown vhost is refused.
async fn publish(broker: &Arc<Broker>, messages: Vec<Forwarded>) -> Vec<bool> {
    let mut refused = Vec::with_capacity(messages.len());
    let mut run: Vec<Forwarded> = Vec::new();
    for message in messages {
        if run.first().is_some_and(|m| m.vhost != message.vhost) {
            refused.extend(publish_run(broker, std::mem::take(&mut run)).await);
        }
        run.push(message);
    }
    refused.extend(publish_run(broker, run).await);
    refused
}

async fn publish_run(broker: &Arc<Broker>, run: Vec<Forwarded>) -> Vec<bool> {
    let Some(first) = run.first() else {
        return Vec::new();
    };
    match broker.vhost(&first.vhost) {
        Some(vhost) => vhost.accept_forwarded(run).await,
        None => vec![true; run.len()],
    }
}

/// A queue's counts, as another node's management API shows them.
pub fn queue_stats(queue: &Queue) -> QueueStats {
    use std::sync::atomic::Ordering::Relaxed;
    let (ready, ready_bytes, consumers) = queue.snapshot();
    let c = &queue.counters;
    QueueStats {
        ready: ready as u64,
        ready_bytes: ready_bytes as u64,
        unacked: queue.unacked_count() as u64,
        consumers: consumers as u64,
        published: c.published.load(Relaxed),
        delivered: c.delivered.load(Relaxed),
        acked: c.acked.load(Relaxed),
        redelivered: c.redelivered.load(Relaxed),
    }
}

/// A queue that lives on this node.
fn local_queue(broker: &Broker, vhost: &str, name: &str) -> Result<Arc<Queue>, AmqpError> {
    let vhost = broker.vhost(vhost).ok_or_else(|| no_vhost(vhost))?;
    match vhost.queue(name) {
        Some(queue) if !queue.is_remote() => Ok(queue),
        _ => Err(vhost.no_queue(name)),
    }
}

/// Runs broker code that may wait for the cluster (a metadata change) off
/// the async workers.
async fn blocking<T: Send + 'static>(
    broker: &Arc<Broker>,
    work: impl FnOnce(&Broker) -> Result<T, AmqpError> + Send + 'static,
) -> Result<T, AmqpError> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || work(&broker))
        .await
        .unwrap_or_else(|e| Err(AmqpError::internal(format!("call failed: {e}"))))
}

fn refused(e: AmqpError) -> Answer {
    Answer::Refused {
        connection: e.scope == ErrorScope::Connection,
        code: e.code,
        text: e.text,
    }
}

fn no_vhost(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no vhost '{name}'"))
}
