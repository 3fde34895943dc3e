//! `/api/consumer-groups[/{vhost}]`: consumer groups on partitioned streams
//! (this broker's extension): members with their partitions, and per
//! partition the owner, the group's committed offset and its lag.

use super::auth::Caller;
use super::error::ApiResult;
use super::{list, Ctx};
use crate::broker::super_stream::group::GroupInfo;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/consumer-groups", get(list_all))
        .route("/consumer-groups/{vhost}", get(list_vhost))
}

pub(crate) fn group_json(ctx: &Ctx, vhost: &str, group: &GroupInfo) -> Value {
    let connection_name = |id: u64| ctx.broker.registry.get(id).map(|c| c.name());
    json!({
        "vhost": vhost,
        "super_stream": group.super_stream,
        "name": group.name,
        "rebalances": group.rebalances,
        "members": group.members.iter().map(|m| json!({
            "consumer_tag": m.consumer_tag,
            "channel_details": {
                "connection_name": connection_name(m.channel.0),
                "number": m.channel.1,
            },
            "partitions": m.partitions,
        })).collect::<Vec<_>>(),
        "partitions": group.partitions.iter().map(|p| json!({
            "index": p.index,
            "queue": p.queue,
            "owner": p.owner,
            "committed_offset": p.committed,
            "lag": p.lag,
        })).collect::<Vec<_>>(),
    })
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut vhosts = ctx.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut all = Vec::new();
    for vhost in vhosts {
        if caller.can_read(&ctx, &vhost.name) {
            for group in vhost.groups.snapshot() {
                all.push(group_json(&ctx, &vhost.name, &group));
            }
        }
    }
    list(all, &query)
}

async fn list_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    let all = vhost
        .groups
        .snapshot()
        .iter()
        .map(|g| group_json(&ctx, &vhost.name, g))
        .collect();
    list(all, &query)
}
