//! The management HTTP API (RabbitMQ's `/api/...`, same paths, JSON field
//! names and status codes) and the Prometheus endpoint. One file per API
//! resource. Everything here reads broker state through its public
//! snapshots and counters; nothing holds a broker lock across an await.
//!
//! Message rates (`*_details.rate`) of queues, exchanges, channels and
//! connections come from a background sampler (`rates.rs`). See each file
//! for the details of what it answers.

mod auth;
mod bindings;
mod certificate;
mod channels;
mod cluster;
mod connections;
mod consumer_groups;
mod consumers;
mod definitions;
mod error;
mod exchanges;
mod health;
pub mod metrics;
mod overview;
mod policies;
mod queues;
pub mod rates;
mod remote_queues;
mod ui;
mod users;
mod values;
mod vhosts;

pub use error::{ApiError, ApiResult};
pub use metrics::serve_metrics;

use crate::broker::Broker;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// What every handler shares.
#[derive(Clone)]
pub struct Ctx {
    pub broker: Arc<Broker>,
    /// This node's name, `broker@host`.
    pub node: String,
    pub started: Instant,
    /// Message rates, sampled in the background by `serve`.
    pub rates: Arc<rates::Sampler>,
}

impl Ctx {
    pub fn new(broker: Arc<Broker>, sample_interval: std::time::Duration) -> Self {
        let node = broker.config.node_name();
        Ctx {
            broker,
            node,
            started: Instant::now(),
            rates: rates::Sampler::new(sample_interval),
        }
    }
}

/// The largest request body the API reads (RabbitMQ's default
/// `management.http_max_body_size`, 20 MiB: room for the definitions of a
/// large deployment); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;

/// The `/api` router, authenticated, with a JSON 404 for everything else.
/// Rates stay 0 unless the sampler of `ctx` is started (as `serve` does).
pub fn router(ctx: Ctx) -> Router {
    overview::report_this_node(&ctx);
    let api = Router::new()
        .merge(overview::routes())
        .merge(cluster::routes())
        .merge(vhosts::routes())
        .merge(users::routes())
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(channels::routes())
        .merge(consumers::routes())
        .merge(consumer_groups::routes())
        .merge(policies::routes())
        .merge(definitions::routes())
        .merge(health::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            catalog_flushed,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::authenticate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(json_payload_too_large))
        .with_state(ctx);
    Router::new()
        .nest("/api", api)
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(not_found)
}

/// A change (PUT, POST, DELETE) is answered once the catalog has flushed
/// it (see `store::catalog`), as AMQP's declare-oks are.
async fn catalog_flushed(
    axum::extract::State(ctx): axum::extract::State<Ctx>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let changes =
        request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD;
    let response = next.run(request).await;
    if changes {
        if let Some(store) = &ctx.broker.store {
            store.catalog.wait_flushed().await;
        }
    }
    response
}

/// Serves the management API on `listener` until `shutdown` resolves.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_interval(broker, listener, shutdown, rates::DEFAULT_INTERVAL).await
}

/// `serve`, sampling message rates every `sample_interval` (tests use a
/// short one).
pub async fn serve_with_interval(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    sample_interval: std::time::Duration,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "management API listening");
    }
    let ctx = Ctx::new(broker.clone(), sample_interval);
    ctx.rates.start(&broker);
    let app = router(ctx).into_make_service_with_connect_info::<SocketAddr>();
    let tls = &broker.config.management.tls;
    if !tls.enabled {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    }
    // HTTPS only on this port ([management.tls]).
    let acceptor = crate::tls::build_acceptor(&tls.certificates("management.tls"))
        .map_err(std::io::Error::other)?;
    // tap_io: client addresses (ConnectInfo) for any listener type.
    let listener = crate::tls::TlsListener::new(listener, acceptor)?.tap_io(|_| {});
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// The body-limit rejection is plain text; the API answers in JSON.
async fn json_payload_too_large(response: axum::response::Response) -> axum::response::Response {
    if response.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    axum::response::IntoResponse::into_response(ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body larger than {MAX_BODY_BYTES} bytes"),
    ))
}

// ---- helpers shared by the resource files ----

/// A request body as a JSON object; an empty body is `{}`.
pub(crate) fn json_body(body: &Bytes) -> ApiResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::not_json()),
    }
}

/// A boolean field of a request body; `default` when absent. RabbitMQ
/// accepts `"true"`/`"false"` strings too.
pub(crate) fn bool_field(body: &Map<String, Value>, key: &str, default: bool) -> ApiResult<bool> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key} must be a boolean, got {other}"
        ))),
    }
}

pub(crate) fn string_field<'a>(
    body: &'a Map<String, Value>,
    key: &str,
) -> ApiResult<Option<&'a str>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key} must be a string, got {other}"
        ))),
    }
}

/// The `arguments` object of a request body.
pub(crate) fn arguments_field(body: &Map<String, Value>) -> ApiResult<crate::protocol::FieldTable> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(map)) => values::table_from_json(map)
            .map_err(|e| ApiError::bad_request(format!("arguments: {e}"))),
        // RabbitMQ's UI sends `[]` for "no arguments".
        Some(Value::Array(a)) if a.is_empty() => Ok(Default::default()),
        Some(other) => Err(ApiError::bad_request(format!(
            "arguments must be an object, got {other}"
        ))),
    }
}

/// A query flag such as `if-unused=true`.
pub(crate) fn flag(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true")
}

/// Adds `key` and `key_details` (a zero rate) to `obj`.
pub(crate) fn put_count(obj: &mut Map<String, Value>, key: &str, value: u64) {
    put_rate(obj, key, value, 0.0);
}

/// Adds `key` and `key_details` with a sampled per-second `rate`.
pub(crate) fn put_rate(obj: &mut Map<String, Value>, key: &str, value: u64, rate: f64) {
    // Two decimals, as RabbitMQ shows them; not-a-number cannot occur in JSON.
    let rate = if rate.is_finite() {
        (rate * 100.0).round() / 100.0
    } else {
        0.0
    };
    obj.insert(key.to_string(), Value::from(value));
    obj.insert(format!("{key}_details"), serde_json::json!({"rate": rate}));
}

/// 201 Created with an empty body (a new object).
pub(crate) fn created() -> Response {
    StatusCode::CREATED.into_response()
}

/// 204 No Content (deleted, or declared again identically).
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Percent-encodes as Erlang's `http_uri:encode` plus `~`, as RabbitMQ
/// encodes routing keys in binding `properties_key`s.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list answer: sorted, filtered, paged and trimmed to `columns` as
/// RabbitMQ does with `?page=&page_size=&name=&sort=&sort_reverse=&columns=`.
/// Without `page` the answer is the plain array.
pub(crate) fn list(mut items: Vec<Value>, query: &HashMap<String, String>) -> ApiResult {
    if let Some(key) = query.get("sort").filter(|k| !k.is_empty()) {
        items.sort_by(|a, b| compare(lookup(a, key), lookup(b, key)));
    }
    if flag(query, "sort_reverse") {
        items.reverse();
    }
    let columns: Option<Vec<&str>> = query
        .get("columns")
        .map(|c| c.split(',').filter(|s| !s.is_empty()).collect());
    let trim = |item: Value| match &columns {
        Some(cols) => select_columns(&item, cols),
        None => item,
    };
    let Some(page) = query.get("page") else {
        return Ok(Json(Value::Array(items.into_iter().map(trim).collect())).into_response());
    };
    let page: usize = page
        .parse()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| ApiError::bad_request("page must be a positive integer"))?;
    let page_size: usize = match query.get("page_size") {
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("page_size must be between 1 and 500"))?,
        None => 100,
    };
    let total_count = items.len();
    if let Some(name) = query.get("name").filter(|n| !n.is_empty()) {
        let needle = name.to_lowercase();
        items.retain(|item| {
            item.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.to_lowercase().contains(&needle))
        });
    }
    let filtered_count = items.len();
    let page_count = filtered_count.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request("page out of range"));
    }
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(trim)
        .collect();
    Ok(Json(serde_json::json!({
        "filtered_count": filtered_count,
        "item_count": page_items.len(),
        "items": page_items,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total_count,
    }))
    .into_response())
}

/// A field by dotted path (`message_stats.publish`).
fn lookup<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |v, key| v.get(key))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Keeps only the listed (possibly dotted) fields.
fn select_columns(item: &Value, columns: &[&str]) -> Value {
    let mut out = Value::Object(Map::new());
    for column in columns {
        let Some(found) = lookup(item, column) else {
            continue;
        };
        let mut target = &mut out;
        let parts: Vec<&str> = column.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(map) = target else { break };
            if i + 1 == parts.len() {
                map.insert(part.to_string(), found.clone());
                break;
            }
            target = map
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_routing_keys_like_rabbitmq() {
        assert_eq!(percent_encode("a.#"), "a.%23");
        assert_eq!(percent_encode("a.*~b"), "a.%2A%7Eb");
        assert_eq!(percent_decode("a.%23~x"), "a.#~x");
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn pages_and_columns() {
        let items: Vec<Value> = (0..5)
            .map(|i| serde_json::json!({"name": format!("q{i}"), "message_stats": {"publish": i}, "x": 1}))
            .collect();
        let q: HashMap<String, String> = [
            ("page", "2"),
            ("page_size", "2"),
            ("columns", "name,message_stats.publish"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let resp = list(items, &q).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[test]
    fn selects_dotted_columns() {
        let item =
            serde_json::json!({"name": "a", "message_stats": {"publish": 3, "ack": 1}, "x": 1});
        assert_eq!(
            select_columns(&item, &["name", "message_stats.publish"]),
            serde_json::json!({"name": "a", "message_stats": {"publish": 3}})
        );
    }
}
