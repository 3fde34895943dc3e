//! `/api/channels[/{name}]`, `/api/vhosts/{vhost}/channels` and
//! `/api/connections/{name}/channels`, with RabbitMQ's field names.
//! Visibility as connections: administrators and monitoring users see all,
//! others their own.
//!
//! What is known of a channel here: its number and connection, its
//! consumers (count, per-consumer prefetch, unacked deliveries), its
//! confirm/transaction mode and message counters (kept by the connection
//! as relaxed atomics in the registry; rates from the sampler for
//! publish, confirm, deliver_get, ack and redeliver). Channel numbers come from the connection
//! registry when the connection layer reports them; until then they are
//! the channels that have consumers, completed with the lowest free
//! numbers up to the connection's channel count (clients number channels
//! from 1).
//!
//! `idle_since` shows once two reads saw the same counters: the channel
//! has been idle since the earlier of them (or before).

use super::auth::Caller;
use super::connections::{find, visible};
use super::consumers::{channel_name, consumer_json, consumers, Found};
use super::error::{ApiError, ApiResult};
use super::rates::{channel_counts, CHANNEL_COUNTERS};
use super::{list, put_count, put_rate, Ctx};
use crate::broker::registry::{format_timestamp, now_ms, ChannelStats, ConnectionInfo};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/channels", get(list_all))
        .route("/channels/{name}", get(get_one))
        .route("/vhosts/{vhost}/channels", get(list_in_vhost))
        .route("/connections/{name}/channels", get(list_on_connection))
}

/// A channel's `message_stats`, as RabbitMQ names them; all zero when
/// the connection does not report its channels.
fn message_stats(ctx: &Ctx, c: &ConnectionInfo, number: u16) -> Value {
    let stats = c.channel_stats(number).unwrap_or_default();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut obj = Map::new();
    let rates = ctx.rates.channel(c.id, number);
    let counts = channel_counts(&stats);
    for ((key, count), rate) in CHANNEL_COUNTERS.iter().zip(counts).zip(rates) {
        put_rate(&mut obj, key, count, rate);
    }
    for (key, counter) in [
        ("deliver", &stats.deliver),
        ("deliver_no_ack", &stats.deliver_no_ack),
        ("get", &stats.get),
        ("get_no_ack", &stats.get_no_ack),
        ("get_empty", &stats.get_empty),
        ("return_unroutable", &stats.return_unroutable),
        ("drop_unroutable", &stats.drop_unroutable),
    ] {
        put_count(&mut obj, key, load(counter));
    }
    Value::Object(obj)
}

/// The open channel numbers of `c`.
fn channel_numbers(c: &ConnectionInfo, found: &[Found]) -> Vec<u16> {
    if let Some(numbers) = c.reported_channels() {
        return numbers;
    }
    let mut numbers: BTreeSet<u16> = found
        .iter()
        .map(Found::channel_key)
        .filter(|(conn, _)| *conn == c.id)
        .map(|(_, n)| n)
        .collect();
    let count = c.channels.load(Ordering::Relaxed);
    let mut next = 1u16;
    while numbers.len() < count && next < u16::MAX {
        numbers.insert(next);
        next += 1;
    }
    numbers.into_iter().collect()
}

/// One channel as RabbitMQ shows it; `detailed` adds `consumer_details`.
fn channel_json(
    ctx: &Ctx,
    c: &ConnectionInfo,
    number: u16,
    found: &[Found],
    detailed: bool,
) -> Value {
    let mine: Vec<&Found> = found
        .iter()
        .filter(|f| f.channel_key() == (c.id, number))
        .collect();
    let unacked: u64 = mine
        .iter()
        .map(|f| u64::from(f.consumer.unacked.load(Ordering::Relaxed)))
        .sum();
    let prefetch = mine.iter().map(|f| f.consumer.prefetch).max().unwrap_or(0);
    let mut obj = Map::new();
    obj.insert("name".into(), json!(channel_name(c, number)));
    obj.insert("number".into(), json!(number));
    obj.insert("node".into(), json!(ctx.node));
    obj.insert("user".into(), json!(c.user));
    obj.insert("vhost".into(), json!(c.vhost));
    obj.insert("state".into(), json!("running"));
    obj.insert(
        "connection_details".into(),
        json!({
            "name": c.name(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
        }),
    );
    obj.insert("consumer_count".into(), json!(mine.len()));
    obj.insert("prefetch_count".into(), json!(prefetch));
    obj.insert("global_prefetch_count".into(), json!(0));
    let stats = c.channel_stats(number);
    let mode = |f: fn(&ChannelStats) -> &AtomicBool| {
        stats
            .as_deref()
            .is_some_and(|s| f(s).load(Ordering::Relaxed))
    };
    obj.insert("confirm".into(), json!(mode(|s| &s.confirm_mode)));
    obj.insert("transactional".into(), json!(mode(|s| &s.transactional)));
    obj.insert("messages_unacknowledged".into(), json!(unacked));
    obj.insert("messages_unconfirmed".into(), json!(0));
    obj.insert("messages_uncommitted".into(), json!(0));
    obj.insert("acks_uncommitted".into(), json!(0));
    obj.insert("pending_raft_commands".into(), json!(0));
    obj.insert("message_stats".into(), message_stats(ctx, c, number));
    if let Some(stats) = &stats {
        let activity = stats.counts().iter().fold(0u64, |a, n| a.wrapping_add(*n));
        if let Some(since) = stats.idle.observe(activity, now_ms()) {
            obj.insert("idle_since".into(), json!(format_timestamp(since)));
        }
    }
    obj.insert("reductions".into(), json!(0));
    obj.insert("reductions_details".into(), json!({"rate": 0.0}));
    obj.insert("garbage_collection".into(), json!({}));
    obj.insert("user_who_performed_action".into(), json!(c.user));
    if detailed {
        obj.insert(
            "consumer_details".into(),
            Value::Array(mine.iter().map(|f| consumer_json(ctx, f)).collect()),
        );
        obj.insert("deliveries".into(), json!([]));
        obj.insert("publishes".into(), json!([]));
    }
    Value::Object(obj)
}

fn channels_of(ctx: &Ctx, connections: &[Arc<ConnectionInfo>], found: &[Found]) -> Vec<Value> {
    connections
        .iter()
        .flat_map(|c| {
            channel_numbers(c, found)
                .into_iter()
                .map(|n| channel_json(ctx, c, n, found, false))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let found = consumers(&ctx, &caller, None);
    list(channels_of(&ctx, &visible(&ctx, &caller), &found), &query)
}

async fn list_in_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    let mut connections = visible(&ctx, &caller);
    connections.retain(|c| c.vhost == vhost.name);
    let found = consumers(&ctx, &caller, Some(&vhost.name));
    list(channels_of(&ctx, &connections, &found), &query)
}

async fn list_on_connection(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let c = find(&ctx, &caller, &name)?;
    let found = consumers(&ctx, &caller, Some(&c.vhost));
    list(channels_of(&ctx, &[c], &found), &query)
}

async fn get_one(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let (conn_name, number) = name
        .strip_suffix(')')
        .and_then(|rest| rest.rsplit_once(" ("))
        .and_then(|(conn, n)| Some((conn, n.parse::<u16>().ok()?)))
        .ok_or_else(ApiError::not_found)?;
    let c = find(&ctx, &caller, conn_name)?;
    let found = consumers(&ctx, &caller, Some(&c.vhost));
    if !channel_numbers(&c, &found).contains(&number) {
        return Err(ApiError::not_found());
    }
    Ok(Json(channel_json(&ctx, &c, number, &found, true)))
}
