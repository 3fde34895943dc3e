//! `/api/consumers[/{vhost}]`: every consumer of every queue the caller may
//! read, with RabbitMQ's field names. Read from the queues' consumer lists
//! at request time (no stats lag, unlike RabbitMQ's ~5 s).

use super::auth::Caller;
use super::error::ApiResult;
use super::values::table_to_json;
use super::{list, Ctx};
use crate::broker::queue::Consumer;
use crate::broker::registry::ConnectionInfo;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/consumers", get(list_all))
        .route("/consumers/{vhost}", get(list_in_vhost))
}

/// One consumer with the queue it reads.
pub(crate) struct Found {
    pub vhost: String,
    pub queue: String,
    pub consumer: Arc<Consumer>,
    /// False for a single-active-consumer queue's waiting consumers.
    pub active: bool,
}

impl Found {
    pub fn channel_key(&self) -> (u64, u16) {
        self.consumer.sink.channel_key()
    }
}

/// Every consumer in the vhosts the caller may read (`only`: one vhost).
pub(crate) fn consumers(ctx: &Ctx, caller: &Caller, only: Option<&str>) -> Vec<Found> {
    let mut found = Vec::new();
    for vhost in ctx.broker.vhosts() {
        if only.is_some_and(|name| name != vhost.name) || !caller.can_read(ctx, &vhost.name) {
            continue;
        }
        for queue in vhost.queues() {
            let single_active = queue.args.single_active_consumer;
            for (i, consumer) in queue.consumer_list().into_iter().enumerate() {
                found.push(Found {
                    vhost: vhost.name.clone(),
                    queue: queue.name.clone(),
                    consumer,
                    active: !single_active || i == 0,
                });
            }
        }
    }
    found.sort_by(|a, b| {
        (a.channel_key(), &a.consumer.tag).cmp(&(b.channel_key(), &b.consumer.tag))
    });
    found
}

/// RabbitMQ's channel name: `"<connection name> (<number>)"`.
pub(crate) fn channel_name(c: &ConnectionInfo, number: u16) -> String {
    format!("{} ({number})", c.name())
}

pub(crate) fn channel_details(ctx: &Ctx, c: Option<&ConnectionInfo>, number: u16) -> Value {
    match c {
        Some(c) => json!({
            "name": channel_name(c, number),
            "number": number,
            "connection_name": c.name(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "node": ctx.node,
            "user": c.user,
        }),
        None => json!({"number": number, "node": ctx.node}),
    }
}

pub(crate) fn consumer_json(ctx: &Ctx, f: &Found) -> Value {
    let (conn, number) = f.channel_key();
    let c = ctx.broker.registry.get(conn);
    let consumer = &f.consumer;
    json!({
        "consumer_tag": &*consumer.tag,
        "queue": {"name": f.queue, "vhost": f.vhost},
        "channel_details": channel_details(ctx, c.as_deref(), number),
        "ack_required": !consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": consumer.prefetch,
        "arguments": table_to_json(&consumer.arguments),
        "active": f.active,
        "activity_status": if f.active { "up" } else { "waiting" },
        "consumer_timeout": 1_800_000,
    })
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let items = consumers(&ctx, &caller, None)
        .iter()
        .map(|f| consumer_json(&ctx, f))
        .collect();
    list(items, &query)
}

async fn list_in_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    let items = consumers(&ctx, &caller, Some(&vhost.name))
        .iter()
        .map(|f| consumer_json(&ctx, f))
        .collect();
    list(items, &query)
}
