//! `/api/queues[/{vhost}[/{name}]]` (GET, PUT, DELETE),
//! `/api/queues/{vhost}/{name}/get`, `/api/queues/{vhost}/{name}/contents`
//! (DELETE purges) and, beyond RabbitMQ, `/api/queues/{vhost}/{name}/browse`
//! (peek at ready messages without taking them).
//!
//! Not known to the broker, so shown as 0: unacknowledged and persistent
//! message bytes, memory.
//!
//! Each operation is checked as its AMQP method (see `auth.rs`): declare
//! and delete need configure on the queue (a declare with a dead-letter
//! exchange also read on the queue and write on that exchange), get,
//! browse and purge need read on it.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::remote_queues::{local_stats, remote_stats, RemoteStats};
use super::values::table_to_json;
use super::{
    arguments_field, bool_field, created, flag, json_body, list, no_content, put_rate,
    string_field, Ctx,
};
use crate::broker::access::{Kind, Perm};
use crate::broker::queue::{Queue, QueuedMessage, Settle};
use crate::broker::registry::{format_timestamp, now_ms};
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::protocol::BasicProperties;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/queues", get(list_all))
        .route("/queues/{vhost}", get(list_in))
        .route(
            "/queues/{vhost}/{name}",
            get(get_one).put(declare).delete(delete_queue),
        )
        .route("/queues/{vhost}/{name}/get", post(get_messages))
        .route("/queues/{vhost}/{name}/browse", post(browse))
        .route("/queues/{vhost}/{name}/contents", delete(purge))
}

/// RabbitMQ's names of the queue's delivery counters, in the order of
/// `QueueCounters::kinds`.
const QUEUE_DELIVERY_KINDS: [&str; 5] = [
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
];

/// A queue's JSON; for a queue of another node, with the counts its node
/// gave in `remote` (`state: down` when it did not answer).
pub(crate) fn queue_json(ctx: &Ctx, q: &Queue, remote: &RemoteStats) -> Value {
    let c = &q.counters;
    let counted = match q.remote_node() {
        None => Some(local_stats(q)),
        Some(_) => remote
            .get(&(q.vhost.clone(), q.name.clone()))
            .cloned()
            .flatten(),
    };
    let state = if counted.is_some() { "running" } else { "down" };
    let counted = counted.unwrap_or_default();
    let (ready, ready_bytes, consumers, unacked) = (
        counted.ready,
        counted.ready_bytes,
        counted.consumers,
        counted.unacked,
    );
    let mut obj = Map::new();
    obj.insert("name".into(), json!(q.name));
    obj.insert("vhost".into(), json!(q.vhost));
    obj.insert("type".into(), json!(q.type_name()));
    let node = q.remote_node().unwrap_or(&ctx.node);
    if let Some(members) = q.members(node) {
        obj.insert("leader".into(), json!(members.leader));
        obj.insert("members".into(), json!(members.members));
        obj.insert("online".into(), json!(members.online));
    }
    obj.insert("durable".into(), json!(q.options.durable));
    obj.insert("auto_delete".into(), json!(q.options.auto_delete));
    obj.insert("exclusive".into(), json!(q.is_exclusive()));
    obj.insert("arguments".into(), table_to_json(&q.options.arguments));
    obj.insert("node".into(), json!(node));
    obj.insert("state".into(), json!(state));
    obj.insert("policy".into(), json!(q.policy_name()));
    obj.insert("operator_policy".into(), Value::Null);
    obj.insert(
        "effective_policy_definition".into(),
        Value::Object(q.policy_definition().unwrap_or_default()),
    );
    obj.insert("consumers".into(), json!(consumers));
    let capacity = if consumers > 0 { 1.0 } else { 0.0 };
    obj.insert("consumer_capacity".into(), json!(capacity));
    obj.insert("consumer_utilisation".into(), json!(capacity));
    let list = if consumers > 0 {
        q.consumer_list()
    } else {
        Vec::new()
    };
    let exclusive_tag = list.iter().find(|c| c.exclusive).map(|c| c.tag.to_string());
    let active_tag = list
        .first()
        .filter(|_| q.args.single_active_consumer)
        .map(|c| c.tag.to_string());
    obj.insert("exclusive_consumer_tag".into(), json!(exclusive_tag));
    obj.insert("single_active_consumer_tag".into(), json!(active_tag));
    let r = ctx.rates.queue(q);
    put_rate(&mut obj, "messages", ready + unacked, r.messages);
    put_rate(&mut obj, "messages_ready", ready, r.messages_ready);
    put_rate(
        &mut obj,
        "messages_unacknowledged",
        unacked,
        r.messages_unacknowledged,
    );
    obj.insert("messages_ram".into(), json!(ready + unacked));
    obj.insert("messages_ready_ram".into(), json!(ready));
    obj.insert("messages_unacknowledged_ram".into(), json!(unacked));
    obj.insert("messages_persistent".into(), json!(0));
    obj.insert("messages_paged_out".into(), json!(0));
    obj.insert("message_bytes".into(), json!(ready_bytes));
    obj.insert("message_bytes_ready".into(), json!(ready_bytes));
    obj.insert("message_bytes_unacknowledged".into(), json!(0));
    obj.insert("message_bytes_ram".into(), json!(ready_bytes));
    obj.insert("message_bytes_persistent".into(), json!(0));
    obj.insert("message_bytes_paged_out".into(), json!(0));
    obj.insert("memory".into(), json!(0));
    obj.insert("reductions".into(), json!(0));
    obj.insert("head_message_timestamp".into(), Value::Null);
    obj.insert("recoverable_slaves".into(), Value::Null);
    let mut stats = Map::new();
    put_rate(&mut stats, "publish", counted.published, r.publish);
    put_rate(&mut stats, "deliver_get", counted.delivered, r.deliver_get);
    put_rate(&mut stats, "ack", counted.acked, r.ack);
    put_rate(&mut stats, "redeliver", counted.redelivered, r.redeliver);
    // The kinds of delivery; their rates are sampled when read (see
    // `QueueCounters::kinds_with_rates`), at most once per sampler interval.
    let kinds = c.kinds_with_rates(ctx.rates.interval);
    for (key, (count, rate)) in QUEUE_DELIVERY_KINDS.iter().zip(kinds) {
        put_rate(&mut stats, key, count, rate);
    }
    obj.insert("message_stats".into(), Value::Object(stats));
    if let Some(since) = c.idle.observe(c.activity(), now_ms()) {
        obj.insert("idle_since".into(), json!(format_timestamp(since)));
    }
    obj.insert(
        "backing_queue_status".into(),
        json!({"mode": "default", "version": 2, "len": ready, "avg_ingress_rate": 0.0, "avg_egress_rate": 0.0}),
    );
    if let Some(owner) = q.options.exclusive_owner {
        if let Some(conn) = ctx
            .broker
            .registry
            .connections()
            .into_iter()
            .find(|c| c.id == owner)
        {
            obj.insert(
                "owner_pid_details".into(),
                json!({"name": conn.name(), "peer_host": conn.peer.ip().to_string(), "peer_port": conn.peer.port()}),
            );
        }
    }
    Value::Object(obj)
}

async fn vhost_queues(ctx: &Ctx, vhost: &VHost) -> Vec<Value> {
    let mut queues = vhost.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let remote = remote_stats(ctx, &queues).await;
    queues.iter().map(|q| queue_json(ctx, q, &remote)).collect()
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut vhosts = ctx.broker.vhosts();
    vhosts.retain(|v| caller.can_read(&ctx, &v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut all = Vec::new();
    for vhost in &vhosts {
        all.extend(vhost_queues(&ctx, vhost).await);
    }
    list(all, &query)
}

async fn list_in(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    list(vhost_queues(&ctx, &vhost).await, &query)
}

async fn get_one(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    let remote = remote_stats(&ctx, std::slice::from_ref(&q)).await;
    let mut obj = queue_json(&ctx, &q, &remote);
    if let Value::Object(map) = &mut obj {
        let details: Vec<Value> = super::consumers::consumers(&ctx, &caller, Some(&vhost.name))
            .iter()
            .filter(|f| f.queue == q.name)
            .map(|f| super::consumers::consumer_json(&ctx, f))
            .collect();
        map.insert("consumer_details".into(), Value::Array(details));
        map.insert("deliveries".into(), json!([]));
        map.insert("incoming".into(), json!([]));
    }
    Ok(Json(obj))
}

/// PUT `{"durable": true, "auto_delete": false, "arguments": {}}`:
/// 201 when created, 204 when it existed identically, 400 when it differs
/// or an argument is invalid.
async fn declare(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let body = json_body(&body)?;
    let arguments = arguments_field(&body)?;
    caller
        .access(&ctx, &vhost)
        .check_queue_declare(&name, &arguments)?;
    let existed = vhost.queue(&name).is_some();
    vhost.declare_queue(
        QueueDeclare {
            name: &name,
            passive: false,
            durable: bool_field(&body, "durable", true)?,
            exclusive: false,
            auto_delete: bool_field(&body, "auto_delete", false)?,
            arguments: &arguments,
        },
        0,
    )?;
    Ok(if existed { no_content() } else { created() })
}

/// DELETE with `?if-unused=true` / `?if-empty=true`; 404 when missing.
async fn delete_queue(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    caller
        .access(&ctx, &vhost)
        .check(Perm::Configure, Kind::Queue, &q.name)?;
    // Management may delete another connection's exclusive queue, as in
    // RabbitMQ: act as its owner.
    let owner = q.options.exclusive_owner.unwrap_or(0);
    vhost.delete_queue(
        &name,
        flag(&query, "if-unused"),
        flag(&query, "if-empty"),
        owner,
    )?;
    Ok(no_content())
}

async fn purge(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    caller
        .access(&ctx, &vhost)
        .check(Perm::Read, Kind::Queue, &q.name)?;
    let vhost_for_purge = vhost.clone();
    tokio::task::spawn_blocking(move || vhost_for_purge.purge_queue(&q))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(no_content())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    AckRequeue,
    Ack,
    RejectRequeue,
    Reject,
}

/// Message properties the way the management API shows them: an object
/// of the set properties, or an empty list when none is set.
pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let s = |v: &Option<crate::protocol::ShortString>| v.as_ref().map(|s| json!(s.as_str()));
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put("headers", p.headers().as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode().map(|v| json!(v)));
    put("priority", p.priority().map(|v| json!(v)));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("message_id", s(p.message_id()));
    put("timestamp", p.timestamp().map(|v| json!(v)));
    put("type", s(p.kind()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    put("cluster_id", s(p.cluster_id()));
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

fn message_json(
    queued: &QueuedMessage,
    remaining: usize,
    base64_only: bool,
    truncate: Option<usize>,
) -> Value {
    let m = &queued.message;
    let body = &m.body[..truncate.map_or(m.body.len(), |t| t.min(m.body.len()))];
    let (payload, encoding) = match std::str::from_utf8(body) {
        Ok(text) if !base64_only => (text.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": queued.redelivered,
        "exchange": m.exchange,
        "routing_key": m.routing_key,
        "message_count": remaining,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// POST `{"count": N, "ackmode": "ack_requeue_true"|"ack_requeue_false"|
/// "reject_requeue_true"|"reject_requeue_false", "encoding": "auto"|"base64",
/// "truncate": bytes}` → the messages taken, oldest first. Requeued
/// messages go back to their original positions, flagged redelivered.
async fn get_messages(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let q: Arc<Queue> = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    let body = json_body(&body)?;
    let count = count_field(&body, "count", 1)?;
    let mode = match string_field(&body, "ackmode")? {
        Some("ack_requeue_true") => AckMode::AckRequeue,
        Some("ack_requeue_false") => AckMode::Ack,
        Some("reject_requeue_true") => AckMode::RejectRequeue,
        Some("reject_requeue_false") => AckMode::Reject,
        Some(other) => return Err(ApiError::bad_request(format!("invalid ackmode {other}"))),
        None => return Err(ApiError::bad_request("[{key_missing,ackmode}]")),
    };
    let (base64_only, truncate) = output_options(&body)?;
    caller
        .access(&ctx, &vhost)
        .check(Perm::Read, Kind::Queue, &q.name)?;
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        // A queue of another node is got from (and settled on) its node.
        let got = if q.is_remote() {
            vhost.get_remote(&q, false).map_err(ApiError::from_amqp)?
        } else {
            q.get(false)
        };
        let Some((queued, remaining)) = got else {
            break;
        };
        out.push(message_json(&queued, remaining, base64_only, truncate));
        taken.push((q.clone(), None, queued));
    }
    let how = match mode {
        AckMode::AckRequeue | AckMode::RejectRequeue => Settle::Requeue,
        AckMode::Ack => Settle::Ack,
        AckMode::Reject => Settle::Reject,
    };
    crate::broker::queue::settle(taken, how);
    Ok(Json(Value::Array(out)))
}

/// A non-negative integer field (a number or a numeric string, as
/// RabbitMQ's UI sends them); `default` when absent.
fn count_field(body: &Map<String, Value>, key: &str, default: u64) -> ApiResult<u64> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
    }
}

/// `encoding` ("auto" or "base64": base64 only?) and `truncate` (bytes)
/// of a get or browse request.
fn output_options(body: &Map<String, Value>) -> ApiResult<(bool, Option<usize>)> {
    let base64_only = match string_field(body, "encoding")? {
        None | Some("auto") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::bad_request(format!("invalid encoding {other}"))),
    };
    let truncate = match body.get("truncate") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(_) => Some(usize::try_from(count_field(body, "truncate", 0)?).unwrap_or(usize::MAX)),
    };
    Ok((base64_only, truncate))
}

/// Browse a queue (beyond RabbitMQ): POST `{"count": N (default 1),
/// "offset": K (default 0), "encoding": "auto"|"base64", "truncate": bytes}`
/// → the ready messages at positions K..K+N from the head, shaped as
/// `/get` answers them (`message_count`: ready messages behind each one).
/// Nothing is removed, requeued, reordered or flagged redelivered; paged
/// out messages are read from disk and stay there. Needs read permission
/// on the queue, as basic.get (tags alone, even monitoring, are not enough).
/// Stream queues answer 400: read them with a consumer and
/// `x-stream-offset` instead.
async fn browse(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let vhost = caller.vhost_with_access(&ctx, &vhost)?;
    let q: Arc<Queue> = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    caller
        .access(&ctx, &vhost)
        .check(Perm::Read, Kind::Queue, &q.name)?;
    let body = json_body(&body)?;
    let count = count_field(&body, "count", 1)?;
    let offset = count_field(&body, "offset", 0)?;
    let (base64_only, truncate) = output_options(&body)?;
    q.check_browse().map_err(ApiError::bad_request)?;
    let (count, offset) = (
        usize::try_from(count).unwrap_or(usize::MAX),
        usize::try_from(offset).unwrap_or(usize::MAX),
    );
    let (messages, ready) = q.browse(offset, count);
    let out = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let behind = ready.saturating_sub(offset.saturating_add(i).saturating_add(1));
            message_json(m, behind, base64_only, truncate)
        })
        .collect();
    Ok(Json(Value::Array(out)))
}
