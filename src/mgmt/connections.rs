//! `/api/connections[/{name}]` (GET; DELETE closes the connection with
//! 320 CONNECTION_FORCED and the `X-Reason` header as its text) and
//! `/api/vhosts/{vhost}/connections`. Administrators and monitoring users
//! see every connection, others only their own, as in RabbitMQ.

use super::auth::Caller;
use super::certificate;
use super::error::{ApiError, ApiResult};
use super::values::table_to_json;
use super::{list, no_content, put_rate, Ctx};
use crate::broker::registry::ConnectionInfo;
use crate::protocol::AMQPValue;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/connections", get(list_all))
        .route("/connections/{name}", get(get_one).delete(close))
        .route("/vhosts/{vhost}/connections", get(list_in_vhost))
}

pub(crate) fn connection_json(ctx: &Ctx, c: &ConnectionInfo) -> Value {
    let mut obj = Map::new();
    obj.insert("name".into(), json!(c.name()));
    obj.insert("user".into(), json!(c.user));
    obj.insert("vhost".into(), json!(c.vhost));
    obj.insert("node".into(), json!(ctx.node));
    obj.insert("state".into(), json!("running"));
    obj.insert("type".into(), json!("network"));
    obj.insert("protocol".into(), json!("AMQP 0-9-1"));
    obj.insert("auth_mechanism".into(), json!("PLAIN"));
    obj.insert("host".into(), json!(c.local.ip().to_string()));
    obj.insert("port".into(), json!(c.local.port()));
    obj.insert("peer_host".into(), json!(c.peer.ip().to_string()));
    obj.insert("peer_port".into(), json!(c.peer.port()));
    add_tls_fields(&mut obj, c);
    obj.insert("channel_max".into(), json!(c.channel_max));
    obj.insert("frame_max".into(), json!(c.frame_max));
    obj.insert("timeout".into(), json!(c.heartbeat));
    obj.insert("channels".into(), json!(c.channels.load(Ordering::Relaxed)));
    obj.insert("connected_at".into(), json!(c.connected_at));
    obj.insert(
        "client_properties".into(),
        table_to_json(&c.client_properties),
    );
    if let Some(name) = c.client_properties.inner().get("connection_name") {
        let name = match name {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        };
        if let Some(name) = name {
            obj.insert("user_provided_name".into(), json!(name));
        }
    }
    let (recv_rate, send_rate) = ctx.rates.connection(c.id);
    put_rate(
        &mut obj,
        "recv_oct",
        c.recv_bytes.load(Ordering::Relaxed),
        recv_rate,
    );
    put_rate(
        &mut obj,
        "send_oct",
        c.send_bytes.load(Ordering::Relaxed),
        send_rate,
    );
    obj.insert("recv_cnt".into(), json!(0));
    obj.insert("send_cnt".into(), json!(0));
    obj.insert("send_pend".into(), json!(0));
    obj.insert("reductions".into(), json!(0));
    Value::Object(obj)
}

/// `ssl` and RabbitMQ's `ssl_*` / `peer_cert_*` fields (null when the
/// connection is not TLS, or has no client certificate).
fn add_tls_fields(obj: &mut Map<String, Value>, c: &ConnectionInfo) {
    let tls = c.tls.get();
    obj.insert("ssl".into(), json!(tls.is_some()));
    let suite = tls.and_then(|t| certificate::suite_parts(&t.cipher_suite));
    let cert = tls
        .and_then(|t| t.peer_certificate.as_deref())
        .and_then(certificate::describe);
    let fields = [
        ("ssl_protocol", tls.map(|t| t.protocol.clone())),
        ("ssl_key_exchange", suite.as_ref().map(|s| s.0.clone())),
        ("ssl_cipher", suite.as_ref().map(|s| s.1.clone())),
        ("ssl_hash", suite.as_ref().map(|s| s.2.clone())),
        ("peer_cert_subject", cert.as_ref().map(|c| c.0.clone())),
        ("peer_cert_issuer", cert.as_ref().map(|c| c.1.clone())),
        ("peer_cert_validity", cert.as_ref().map(|c| c.2.clone())),
    ];
    for (key, value) in fields {
        obj.insert(key.into(), json!(value));
    }
}

pub(crate) fn visible(ctx: &Ctx, caller: &Caller) -> Vec<Arc<ConnectionInfo>> {
    let mut all = ctx.broker.registry.connections();
    if !caller.sees_everything() {
        all.retain(|c| c.user == caller.name);
    }
    all.sort_by_key(|c| c.connected_at);
    all
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let items = visible(&ctx, &caller)
        .iter()
        .map(|c| connection_json(&ctx, c))
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
    let items = visible(&ctx, &caller)
        .iter()
        .filter(|c| c.vhost == vhost.name)
        .map(|c| connection_json(&ctx, c))
        .collect();
    list(items, &query)
}

pub(crate) fn find(ctx: &Ctx, caller: &Caller, name: &str) -> ApiResult<Arc<ConnectionInfo>> {
    visible(ctx, caller)
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(ApiError::not_found)
}

async fn get_one(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = find(&ctx, &caller, &name)?;
    Ok(Json(connection_json(&ctx, &c)))
}

/// Closes a connection: 320 CONNECTION_FORCED, reason from `X-Reason`.
/// Monitoring users may close only their own connections.
async fn close(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let c = find(&ctx, &caller, &name)?;
    if !caller.is_admin() && c.user != caller.name {
        return Err(ApiError::not_authorized(
            "Not administrator user: only your own connections can be closed",
        ));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    c.request_close(reason);
    Ok(no_content())
}
