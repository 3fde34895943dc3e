//! `/api/exchanges[/{vhost}[/{name}]]` (GET, PUT, DELETE) and
//! `/api/exchanges/{vhost}/{name}/publish`. The default exchange is listed
//! with name `""` and addressed as `amq.default` in paths.
//!
//! Each operation is checked as its AMQP method (see `auth.rs`): declare
//! and delete need configure on the exchange (a declare with an
//! alternate exchange also read on it and write on the alternate one),
//! publish needs write on it (`amq.default` for the default exchange).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::values::{table_from_json, table_to_json};
use super::{
    arguments_field, bool_field, created, flag, json_body, list, no_content, put_rate,
    string_field, Ctx,
};
use crate::broker::access::{Kind, Perm};
use crate::broker::exchange::Exchange;
use crate::broker::message::Message;
use crate::broker::vhost::publish as publishing;
use crate::broker::vhost::{ExchangeDeclare, VHost};
use crate::protocol::{encode, AmqpError, BasicProperties, ShortString};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/exchanges", get(list_all))
        .route("/exchanges/{vhost}", get(list_in))
        .route(
            "/exchanges/{vhost}/{name}",
            get(get_one).put(declare).delete(delete),
        )
        .route("/exchanges/{vhost}/{name}/publish", post(publish))
}

/// Path name to exchange name: `amq.default` is the default exchange.
pub(crate) fn exchange_name(path_name: &str) -> &str {
    if path_name == "amq.default" {
        ""
    } else {
        path_name
    }
}

fn exchange_json(ctx: &Ctx, vhost: &str, x: &Exchange) -> Value {
    let mut obj = json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.type_name(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
    });
    add_message_stats(&mut obj, x.stats.get(), ctx.rates.exchange(vhost, x));
    obj
}

fn default_exchange_json(ctx: &Ctx, vhost: &VHost) -> Value {
    let mut obj = json!({
        "name": "",
        "vhost": vhost.name,
        "type": "direct",
        "durable": true,
        "auto_delete": false,
        "internal": false,
        "arguments": {},
        "user_who_performed_action": "rmq-internal",
    });
    let counts = vhost.default_exchange_stats.get();
    add_message_stats(&mut obj, counts, ctx.rates.default_exchange(&vhost.name));
    obj
}

/// `message_stats` {publish_in, publish_out + `_details`}: present once
/// something was published to the exchange, as in RabbitMQ.
fn add_message_stats(obj: &mut Value, (publish_in, publish_out): (u64, u64), rates: (f64, f64)) {
    if publish_in == 0 && publish_out == 0 {
        return;
    }
    let mut stats = Map::new();
    put_rate(&mut stats, "publish_in", publish_in, rates.0);
    put_rate(&mut stats, "publish_out", publish_out, rates.1);
    if let Value::Object(map) = obj {
        map.insert("message_stats".into(), Value::Object(stats));
    }
}

/// All exchanges of a vhost, the default one first, then by name.
fn vhost_exchanges(ctx: &Ctx, vhost: &VHost) -> Vec<Value> {
    let mut exchanges = vhost.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    std::iter::once(default_exchange_json(ctx, vhost))
        .chain(exchanges.iter().map(|x| exchange_json(ctx, &vhost.name, x)))
        .collect()
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
        vhosts
            .iter()
            .flat_map(|v| vhost_exchanges(&ctx, v))
            .collect(),
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
    list(vhost_exchanges(&ctx, &vhost), &query)
}

async fn get_one(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    let name = exchange_name(&name);
    let mut obj = if name.is_empty() {
        default_exchange_json(&ctx, &vhost)
    } else {
        let x = vhost.exchange(name).ok_or_else(ApiError::not_found)?;
        exchange_json(&ctx, &vhost.name, &x)
    };
    if let Value::Object(map) = &mut obj {
        map.insert("incoming".into(), json!([]));
        map.insert("outgoing".into(), json!([]));
    }
    Ok(Json(obj))
}

/// PUT: `{"type": "direct", "durable": true, "auto_delete": false,
/// "internal": false, "arguments": {}}`; 201 when created, 204 when it
/// existed with the same properties, 400 when they differ.
async fn declare(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let body = json_body(&body)?;
    let kind = string_field(&body, "type")?
        .ok_or_else(|| ApiError::bad_request("[{key_missing,type}]"))?;
    let arguments = arguments_field(&body)?;
    let name = exchange_name(&name);
    caller
        .access(&ctx, &vhost)
        .check_exchange_declare(name, &arguments)?;
    let existed = vhost.exchange(name).is_some();
    vhost.declare_exchange(ExchangeDeclare {
        name,
        kind,
        passive: false,
        durable: bool_field(&body, "durable", true)?,
        auto_delete: bool_field(&body, "auto_delete", false)?,
        internal: bool_field(&body, "internal", false)?,
        arguments: &arguments,
    })?;
    Ok(if existed { no_content() } else { created() })
}

/// DELETE, with `?if-unused=true`; 404 when there is no such exchange.
async fn delete(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let name = exchange_name(&name);
    if !name.is_empty() && vhost.exchange(name).is_none() {
        return Err(ApiError::not_found());
    }
    caller
        .access(&ctx, &vhost)
        .check(Perm::Configure, Kind::Exchange, name)?;
    vhost.delete_exchange(name, flag(&query, "if-unused"))?;
    Ok(no_content())
}

/// Builds message properties from the management API's JSON form.
pub(crate) fn properties_from_json(map: &Map<String, Value>) -> ApiResult<BasicProperties> {
    let mut props = BasicProperties::default();
    let short = |key: &str, v: &Value| -> ApiResult<ShortString> {
        match v {
            Value::String(s) if s.len() <= 255 => Ok(s.as_str().into()),
            Value::Number(n) if key == "expiration" => Ok(n.to_string().into()),
            _ => Err(ApiError::bad_request(format!(
                "property {key} must be a short string"
            ))),
        }
    };
    let octet = |key: &str, v: &Value| -> ApiResult<u8> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| ApiError::bad_request(format!("property {key} must be 0-255")))
    };
    for (key, v) in map {
        props = match key.as_str() {
            "content_type" => props.with_content_type(short(key, v)?),
            "content_encoding" => props.with_content_encoding(short(key, v)?),
            "headers" => match v {
                Value::Object(h) => props.with_headers(
                    table_from_json(h)
                        .map_err(|e| ApiError::bad_request(format!("headers: {e}")))?,
                ),
                _ => return Err(ApiError::bad_request("headers must be an object")),
            },
            "delivery_mode" => props.with_delivery_mode(octet(key, v)?),
            "priority" => props.with_priority(octet(key, v)?),
            "correlation_id" => props.with_correlation_id(short(key, v)?),
            "reply_to" => props.with_reply_to(short(key, v)?),
            "expiration" => props.with_expiration(short(key, v)?),
            "message_id" => props.with_message_id(short(key, v)?),
            "timestamp" => props.with_timestamp(
                v.as_u64()
                    .ok_or_else(|| ApiError::bad_request("timestamp must be an integer"))?,
            ),
            "type" => props.with_type(short(key, v)?),
            "user_id" => props.with_user_id(short(key, v)?),
            "app_id" => props.with_app_id(short(key, v)?),
            "cluster_id" => props.with_cluster_id(short(key, v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown message property {other}"
                )))
            }
        };
    }
    Ok(props)
}

/// POST `{"properties": {}, "routing_key": "k", "payload": "...",
/// "payload_encoding": "string"|"base64"}` → `{"routed": bool}`. All four
/// keys are required, as in RabbitMQ. A persistent message reaching
/// durable queues goes to the message log like one published over AMQP.
async fn publish(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let body = json_body(&body)?;
    let missing: Vec<String> = ["properties", "payload_encoding", "payload", "routing_key"]
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let properties = match &body["properties"] {
        Value::Object(map) => properties_from_json(map)?,
        Value::Array(a) if a.is_empty() => BasicProperties::default(),
        _ => return Err(ApiError::bad_request("properties must be an object")),
    };
    let routing_key = string_field(&body, "routing_key")?.unwrap_or_default();
    // As in basic.publish (a short string); the message log stores it so.
    crate::broker::check_name_length("routing key", routing_key).map_err(ApiError::from_amqp)?;
    let payload = string_field(&body, "payload")?.unwrap_or_default();
    let payload = match string_field(&body, "payload_encoding")? {
        Some("string") => Bytes::copy_from_slice(payload.as_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        _ => {
            return Err(ApiError::bad_request(
                "payload_encoding must be string or base64",
            ))
        }
    };
    let name = exchange_name(&name);
    // Write permission first, then the exchange, as basic.publish does.
    caller
        .access(&ctx, &vhost)
        .check(Perm::Write, Kind::Exchange, name)?;
    // A missing or internal exchange is a 400 whose reason is the AMQP
    // error, as in RabbitMQ; so are bad CC/BCC headers.
    let amqp_error = |e: AmqpError| ApiError::bad_request(e.to_string());
    vhost.publish_target(name).map_err(amqp_error)?;
    if let Some(headers) = properties.headers() {
        publishing::check_cc_bcc(headers).map_err(amqp_error)?;
    }
    let raw = encode::properties(&properties);
    let message = Message::new(
        name.to_string(),
        routing_key.to_string(),
        properties,
        raw,
        payload,
    );
    // As over AMQP (RabbitMQ's management publishes through a channel):
    // counted into the exchange, deduplicated, delayed, stored.
    let published = vhost.publish(message).map_err(amqp_error)?;
    let routed = matches!(published.outcome, publishing::Outcome::Routed(n) if n > 0);
    Ok(Json(json!({ "routed": routed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_from_json() {
        let json = json!({"delivery_mode": 2, "headers": {"a": 1}, "content_type": "text/plain"});
        let props = properties_from_json(json.as_object().unwrap()).unwrap();
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        assert!(properties_from_json(json!({"delivery_mode": 300}).as_object().unwrap()).is_err());
        assert!(properties_from_json(json!({"bogus": 1}).as_object().unwrap()).is_err());
    }
}
