//! `/api/vhosts[/{vhost}]`: virtual hosts with their message totals.
//! PUT creates a vhost (usable by AMQP clients at once, with full
//! permissions for its creator, as RabbitMQ does) or updates its
//! description and tags; DELETE closes its connections and removes its
//! queues, exchanges, bindings and permissions. Both are stored before the
//! answer.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::overview::Totals;
use super::{created, json_body, list, no_content, put_count, put_rate, string_field, Ctx};
use crate::broker::queue::QueueType;
use crate::broker::vhost::VHost;
use crate::store::catalog::VhostRecord;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new().route("/vhosts", get(list_vhosts)).route(
        "/vhosts/{vhost}",
        get(get_vhost).put(put_vhost).delete(delete_vhost),
    )
}

/// A vhost record from a PUT body or a definitions entry; `current` gives
/// the values of fields the body leaves out.
pub(crate) fn vhost_from_json(
    name: &str,
    body: &Map<String, Value>,
    current: Option<VhostRecord>,
) -> ApiResult<VhostRecord> {
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    // A longer name would be cut in the message log (AMQP short string).
    crate::broker::check_name_length("vhost name", name).map_err(ApiError::from_amqp)?;
    let mut record = current.unwrap_or_else(|| VhostRecord {
        name: name.to_string(),
        ..Default::default()
    });
    let metadata = match body.get("metadata") {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let field = |key: &str| body.get(key).or_else(|| metadata.and_then(|m| m.get(key)));
    if let Some(description) = field("description") {
        record.description = match description {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "description must be a string, got {other}"
                )))
            }
        };
    }
    if let Some(tags) = field("tags") {
        record.tags = match tags {
            Value::String(s) => s
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Value::Null => Vec::new(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "tags must be a string or a list, got {other}"
                )))
            }
        };
    }
    if let Some(kind) = string_field(body, "default_queue_type")? {
        if kind != "undefined" && QueueType::from_name(kind).is_none() {
            return Err(ApiError::bad_request(format!(
                "unsupported default_queue_type {kind}"
            )));
        }
        record.default_queue_type = Some(kind.to_string());
    }
    Ok(record)
}

pub(crate) fn vhost_json(ctx: &Ctx, vhost: &Arc<VHost>) -> Value {
    let totals = Totals::of(std::slice::from_ref(vhost));
    let (mut recv, mut send) = (0u64, 0u64);
    for c in ctx.broker.registry.connections() {
        if c.vhost == vhost.name {
            recv += c.recv_bytes.load(Ordering::Relaxed);
            send += c.send_bytes.load(Ordering::Relaxed);
        }
    }
    let record = ctx.broker.vhost_record(&vhost.name).unwrap_or_default();
    let queue_type = record
        .default_queue_type
        .clone()
        .unwrap_or_else(|| "undefined".to_string());
    let mut obj = Map::new();
    obj.insert("name".into(), json!(vhost.name));
    obj.insert("description".into(), json!(record.description));
    obj.insert("tags".into(), json!(record.tags));
    obj.insert("default_queue_type".into(), json!(queue_type));
    obj.insert(
        "metadata".into(),
        json!({"description": record.description, "tags": record.tags, "default_queue_type": queue_type}),
    );
    obj.insert("tracing".into(), json!(false));
    obj.insert(
        "cluster_state".into(),
        json!({ ctx.node.clone(): "running" }),
    );
    let rates = ctx.rates.sum(|v, _| v == vhost.name);
    put_rate(
        &mut obj,
        "messages",
        totals.ready + totals.unacked,
        rates.messages,
    );
    put_rate(
        &mut obj,
        "messages_ready",
        totals.ready,
        rates.messages_ready,
    );
    put_rate(
        &mut obj,
        "messages_unacknowledged",
        totals.unacked,
        rates.messages_unacknowledged,
    );
    obj.insert("message_stats".into(), totals.message_stats(&rates));
    put_count(&mut obj, "recv_oct", recv);
    put_count(&mut obj, "send_oct", send);
    Value::Object(obj)
}

async fn list_vhosts(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut vhosts = ctx.broker.vhosts();
    vhosts.retain(|v| caller.can_read(&ctx, &v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list(vhosts.iter().map(|v| vhost_json(&ctx, v)).collect(), &query)
}

async fn get_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(&ctx, &name)?;
    Ok(Json(vhost_json(&ctx, &vhost)))
}

async fn put_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let body = json_body(&body)?;
    let record = vhost_from_json(&name, &body, ctx.broker.vhost_record(&name))?;
    if ctx.broker.put_vhost(record)? {
        ctx.broker.grant_full(&caller.name, &name);
        Ok(created())
    } else {
        Ok(no_content())
    }
}

async fn delete_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    if ctx.broker.delete_vhost(&name)? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}
