//! Bindings: `/api/bindings[/{vhost}]`,
//! `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}[/{props}]`
//! (GET, POST to create, DELETE by properties key),
//! `/api/queues/{vhost}/{name}/bindings` and
//! `/api/exchanges/{vhost}/{name}/bindings/{source|destination}`.
//!
//! Every queue's implicit binding to the default exchange is listed, as in
//! RabbitMQ. A binding's `properties_key` is its routing key URL-encoded,
//! plus `~` and a short hash of its arguments when it has any (RabbitMQ
//! hashes the Erlang term, so the hash differs from RabbitMQ's, but it is
//! stable and unique in the same way).
//!
//! Creating or deleting a binding is checked as queue.bind / exchange.bind
//! (see `auth.rs`): write on the destination, then read on the source
//! (`amq.default` for the default exchange).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::exchanges::exchange_name;
use super::values::table_to_json;
use super::{arguments_field, json_body, list, no_content, percent_encode, string_field, Ctx};
use crate::broker::access::{Access, Kind, Perm};
use crate::broker::exchange::Destination;
use crate::broker::vhost::VHost;
use crate::protocol::FieldTable;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/bindings", get(list_all))
        .route("/bindings/{vhost}", get(list_in))
        .route(
            "/bindings/{vhost}/e/{source}/q/{destination}",
            get(list_between_queue).post(create_to_queue),
        )
        .route(
            "/bindings/{vhost}/e/{source}/e/{destination}",
            get(list_between_exchange).post(create_to_exchange),
        )
        .route(
            "/bindings/{vhost}/e/{source}/q/{destination}/{props}",
            get(get_to_queue).delete(delete_to_queue),
        )
        .route(
            "/bindings/{vhost}/e/{source}/e/{destination}/{props}",
            get(get_to_exchange).delete(delete_to_exchange),
        )
        .route("/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
}

/// One binding as the API shows it.
#[derive(Clone)]
struct Row {
    source: String,
    destination: String,
    to_queue: bool,
    routing_key: String,
    arguments: FieldTable,
}

impl Row {
    fn props_key(&self) -> String {
        props_key(&self.routing_key, &self.arguments)
    }

    fn json(&self, vhost: &str) -> Value {
        json!({
            "source": self.source,
            "vhost": vhost,
            "destination": self.destination,
            "destination_type": if self.to_queue { "queue" } else { "exchange" },
            "routing_key": self.routing_key,
            "arguments": table_to_json(&self.arguments),
            "properties_key": self.props_key(),
        })
    }
}

/// RabbitMQ's `properties_key`: `~` alone for an empty key without
/// arguments, the URL-encoded key, and `~hash` when there are arguments.
pub(crate) fn props_key(routing_key: &str, arguments: &FieldTable) -> String {
    if arguments.inner().is_empty() {
        if routing_key.is_empty() {
            return "~".into();
        }
        return percent_encode(routing_key);
    }
    let canonical = table_to_json(arguments).to_string();
    let digest = Sha256::digest(canonical.as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4]);
    format!("{}~{hash}", percent_encode(routing_key))
}

/// Every binding of a vhost: the default exchange's implicit ones first,
/// then by source exchange name, each in creation order.
fn rows(vhost: &VHost) -> Vec<Row> {
    let mut queues = vhost.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Row> = queues
        .iter()
        .map(|q| Row {
            source: String::new(),
            destination: q.name.clone(),
            to_queue: true,
            routing_key: q.name.clone(),
            arguments: FieldTable::default(),
        })
        .collect();
    let mut exchanges = vhost.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for x in exchanges {
        for b in x.bindings() {
            out.push(Row {
                source: x.name.clone(),
                destination: b.destination.name().to_string(),
                to_queue: matches!(b.destination, Destination::Queue(_)),
                routing_key: b.routing_key,
                arguments: b.arguments,
            });
        }
    }
    out
}

/// The explicit bindings only (no default-exchange ones), for definitions.
pub(crate) fn explicit_bindings(vhost: &VHost) -> Vec<Value> {
    rows(vhost)
        .into_iter()
        .filter(|r| !r.source.is_empty())
        .map(|r| {
            let mut v = r.json(&vhost.name);
            if let Value::Object(m) = &mut v {
                m.remove("properties_key");
            }
            v
        })
        .collect()
}

fn to_json(vhost: &VHost, rows: impl IntoIterator<Item = Row>) -> Vec<Value> {
    rows.into_iter().map(|r| r.json(&vhost.name)).collect()
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut vhosts = ctx.broker.vhosts();
    vhosts.retain(|v| caller.can_read(&ctx, &v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list(
        vhosts.iter().flat_map(|v| to_json(v, rows(v))).collect(),
        &query,
    )
}

async fn list_in(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    list(to_json(&vhost, rows(&vhost)), &query)
}

/// Checks that the source exchange and the destination exist (404).
fn check_ends(vhost: &VHost, source: &str, destination: &str, to_queue: bool) -> ApiResult<()> {
    let source_ok = source.is_empty() || vhost.exchange(source).is_some();
    let destination_ok = if to_queue {
        vhost.queue(destination).is_some()
    } else {
        vhost.exchange(exchange_name(destination)).is_some()
    };
    if source_ok && destination_ok {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

fn between(vhost: &VHost, source: &str, destination: &str, to_queue: bool) -> Vec<Row> {
    rows(vhost)
        .into_iter()
        .filter(|r| r.source == source && r.destination == destination && r.to_queue == to_queue)
        .collect()
}

async fn list_between(
    ctx: &Ctx,
    caller: &Caller,
    (vhost, source, destination): (String, String, String),
    to_queue: bool,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(ctx, &vhost)?;
    let source = exchange_name(&source);
    check_ends(&vhost, source, &destination, to_queue)?;
    list(
        to_json(&vhost, between(&vhost, source, &destination, to_queue)),
        query,
    )
}

async fn list_between_queue(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_between(&ctx, &caller, p, true, &query).await
}

async fn list_between_exchange(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_between(&ctx, &caller, p, false, &query).await
}

/// The checks of a bind or unbind, in AMQP's order. The default exchange
/// is checked as `amq.default`, whichever way the path names it.
fn check_bind(
    mut access: Access,
    source: &str,
    destination: &str,
    to_queue: bool,
) -> ApiResult<()> {
    let kind = if to_queue {
        Kind::Queue
    } else {
        Kind::Exchange
    };
    access.check(Perm::Write, kind, destination)?;
    access.check(Perm::Read, Kind::Exchange, source)?;
    Ok(())
}

/// POST `{"routing_key": "k", "arguments": {}}` → 201 with the new
/// binding's properties key in `Location`.
async fn create(
    ctx: &Ctx,
    caller: &Caller,
    (vhost, source, destination): (String, String, String),
    to_queue: bool,
    body: &Bytes,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(ctx, &vhost)?;
    let body = json_body(body)?;
    let key = string_field(&body, "routing_key")?.unwrap_or_default();
    let arguments = arguments_field(&body)?;
    let source = exchange_name(&source);
    check_ends(&vhost, source, &destination, to_queue)?;
    check_bind(caller.access(ctx, &vhost), source, &destination, to_queue)?;
    if to_queue {
        let owner = vhost
            .queue(&destination)
            .and_then(|q| q.options.exclusive_owner)
            .unwrap_or(0);
        vhost.bind_queue(&destination, source, key, &arguments, owner)?;
    } else {
        vhost.bind_exchange(exchange_name(&destination), source, key, &arguments)?;
    }
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, props_key(key, &arguments))],
    )
        .into_response())
}

async fn create_to_queue(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    create(&ctx, &caller, p, true, &body).await
}

async fn create_to_exchange(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    create(&ctx, &caller, p, false, &body).await
}

/// The binding from `source` to `destination` with this properties key.
/// The key arrives URL-decoded; compare it with the decoded form too.
fn find(
    vhost: &VHost,
    source: &str,
    destination: &str,
    to_queue: bool,
    props: &str,
) -> ApiResult<Row> {
    check_ends(vhost, source, destination, to_queue)?;
    between(vhost, source, destination, to_queue)
        .into_iter()
        .find(|r| {
            let key = r.props_key();
            key == props || super::percent_decode(&key) == props
        })
        .ok_or_else(ApiError::not_found)
}

async fn get_one(
    ctx: &Ctx,
    caller: &Caller,
    (vhost, source, destination, props): (String, String, String, String),
    to_queue: bool,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(ctx, &vhost)?;
    let row = find(
        &vhost,
        exchange_name(&source),
        &destination,
        to_queue,
        &props,
    )?;
    Ok(Json(row.json(&vhost.name)))
}

async fn get_to_queue(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    get_one(&ctx, &caller, p, true).await
}

async fn get_to_exchange(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    get_one(&ctx, &caller, p, false).await
}

async fn delete_one(
    ctx: &Ctx,
    caller: &Caller,
    (vhost, source, destination, props): (String, String, String, String),
    to_queue: bool,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(ctx, &vhost)?;
    let source = exchange_name(&source);
    let row = find(&vhost, source, &destination, to_queue, &props)?;
    check_bind(caller.access(ctx, &vhost), source, &destination, to_queue)?;
    if to_queue {
        let owner = vhost
            .queue(&destination)
            .and_then(|q| q.options.exclusive_owner)
            .unwrap_or(0);
        vhost.unbind_queue(
            &destination,
            source,
            &row.routing_key,
            &row.arguments,
            owner,
        )?;
    } else {
        vhost.unbind_exchange(&destination, source, &row.routing_key, &row.arguments)?;
    }
    Ok(no_content())
}

async fn delete_to_queue(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    delete_one(&ctx, &caller, p, true).await
}

async fn delete_to_exchange(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    delete_one(&ctx, &caller, p, false).await
}

async fn queue_bindings(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    let found = rows(&vhost)
        .into_iter()
        .filter(|r| r.to_queue && r.destination == name);
    list(to_json(&vhost, found), &query)
}

async fn exchange_bindings(
    ctx: &Ctx,
    caller: &Caller,
    (vhost, name): (String, String),
    as_source: bool,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let vhost = caller.readable_vhost(ctx, &vhost)?;
    let name = exchange_name(&name);
    if !name.is_empty() && vhost.exchange(name).is_none() {
        return Err(ApiError::not_found());
    }
    let found = rows(&vhost).into_iter().filter(|r| {
        if as_source {
            r.source == name
        } else {
            !r.to_queue && r.destination == name
        }
    });
    list(to_json(&vhost, found), query)
}

async fn exchange_bindings_source(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    exchange_bindings(&ctx, &caller, p, true, &query).await
}

async fn exchange_bindings_destination(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    exchange_bindings(&ctx, &caller, p, false, &query).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AMQPValue;

    #[test]
    fn properties_keys_like_rabbitmq() {
        let none = FieldTable::default();
        assert_eq!(props_key("", &none), "~");
        assert_eq!(props_key("ref-mq", &none), "ref-mq");
        assert_eq!(props_key("a.#", &none), "a.%23");
        let mut args = FieldTable::default();
        args.insert("x-match".into(), AMQPValue::LongString("all".into()));
        let key = props_key("a.#", &args);
        assert!(key.starts_with("a.%23~"), "{key}");
        assert_eq!(key.len(), "a.%23~".len() + 6);
        assert_eq!(key, props_key("a.#", &args));
    }
}
