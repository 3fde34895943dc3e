//! `/api/definitions[/{vhost}]`: GET exports in RabbitMQ's format, POST
//! imports the same shape (a file exported from RabbitMQ imports
//! unchanged, password hashes included), for administrators. Exclusive
//! queues and the predeclared `amq.*` exchanges are left out of exports,
//! as RabbitMQ does; policies are exported and imported; parameters are
//! exported empty and ignored on import (the broker has none).
//!
//! Import order is users, vhosts, permissions, policies, exchanges,
//! queues, bindings; the first entry that cannot be applied stops the import with
//! a 400 naming it (what came before stays, as in RabbitMQ). Exchanges and
//! queues that exist already are left as they are, even if the document
//! declares them differently (RabbitMQ does the same).

use super::auth::Caller;
use super::bindings::explicit_bindings;
use super::error::{ApiError, ApiResult};
use super::exchanges::exchange_name;
use super::overview::VERSION;
use super::users::{
    all_permissions, permission_from_json, permission_json, user_from_json, user_json,
};
use super::values::table_to_json;
use super::vhosts::vhost_from_json;
use super::{arguments_field, bool_field, json_body, no_content, string_field, Ctx};
use crate::broker::policy::PolicyRecord;
use crate::broker::vhost::{ExchangeDeclare, PolicyError, QueueDeclare, VHost};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/definitions", get(all).post(import_all))
        .route("/definitions/{vhost}", get(one_vhost).post(import_vhost))
}

/// The entries of one section of a definitions document.
fn section<'a>(defs: &'a Map<String, Value>, key: &str) -> ApiResult<Vec<&'a Map<String, Value>>> {
    match defs.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_object().ok_or_else(|| {
                    ApiError::bad_request(format!("{key}: every entry must be an object"))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a list"))),
    }
}

fn required<'a>(entry: &'a Map<String, Value>, what: &str, key: &str) -> ApiResult<&'a str> {
    string_field(entry, key)?
        .ok_or_else(|| ApiError::bad_request(format!("{what}: [{{key_missing,{key}}}]")))
}

/// Prefixes an import error with the entry it came from.
fn context(what: String) -> impl Fn(ApiError) -> ApiError {
    move |e| ApiError::new(e.status, e.error, format!("{what}: {}", e.reason))
}

/// The vhost an entry names (or the one of a per-vhost import).
fn entry_vhost(
    ctx: &Ctx,
    entry: &Map<String, Value>,
    only: Option<&Arc<VHost>>,
    what: &str,
) -> ApiResult<Arc<VHost>> {
    if let Some(v) = only {
        return Ok(v.clone());
    }
    let name = required(entry, what, "vhost")?;
    ctx.broker
        .vhost(name)
        .ok_or_else(|| ApiError::bad_request(format!("{what}: no vhost '{name}'")))
}

fn import_users(ctx: &Ctx, defs: &Map<String, Value>) -> ApiResult<()> {
    for entry in section(defs, "users")? {
        let name = required(entry, "user", "name")?;
        let what = format!("user '{name}'");
        let mut entry = entry.clone();
        entry.entry("tags").or_insert_with(|| json!([]));
        let user = user_from_json(name, &entry).map_err(context(what))?;
        ctx.broker.put_user(user)?;
    }
    for entry in section(defs, "vhosts")? {
        let name = required(entry, "vhost", "name")?;
        let record = vhost_from_json(name, entry, ctx.broker.vhost_record(name))
            .map_err(context(format!("vhost '{name}'")))?;
        ctx.broker.put_vhost(record)?;
    }
    for entry in section(defs, "permissions")? {
        let user = required(entry, "permission", "user")?;
        let vhost = required(entry, "permission", "vhost")?;
        let what = format!("permission of '{user}' in vhost '{vhost}'");
        if ctx.broker.vhost(vhost).is_none() || ctx.broker.users.read().get(user).is_none() {
            return Err(ApiError::bad_request(format!(
                "{what}: vhost_or_user_not_found"
            )));
        }
        let permission = permission_from_json(entry).map_err(context(what))?;
        ctx.broker.set_permission(user, vhost, permission)?;
    }
    Ok(())
}

fn import_objects(
    ctx: &Ctx,
    defs: &Map<String, Value>,
    only: Option<&Arc<VHost>>,
) -> ApiResult<()> {
    for entry in section(defs, "policies")? {
        let name = required(entry, "policy", "name")?;
        let what = format!("policy '{name}'");
        let vhost = entry_vhost(ctx, entry, only, &what)?;
        let mut entry = entry.clone();
        entry.insert("vhost".into(), json!(vhost.name));
        let record: PolicyRecord = serde_json::from_value(Value::Object(entry))
            .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
        vhost.put_policy(record).map_err(|e| match e {
            PolicyError::Invalid(reason) => ApiError::bad_request(format!("{what}: {reason}")),
            PolicyError::Unavailable(error) => error.into(),
        })?;
    }
    for entry in section(defs, "exchanges")? {
        let name = required(entry, "exchange", "name")?;
        let what = format!("exchange '{name}'");
        let vhost = entry_vhost(ctx, entry, only, &what)?;
        // Existing exchanges are kept as they are, as RabbitMQ does.
        if name.is_empty() || name.starts_with("amq.") || vhost.exchange(name).is_some() {
            continue;
        }
        let declare = || -> ApiResult<()> {
            let arguments = arguments_field(entry)?;
            vhost.declare_exchange(ExchangeDeclare {
                name,
                kind: required(entry, "exchange", "type")?,
                passive: false,
                durable: bool_field(entry, "durable", true)?,
                auto_delete: bool_field(entry, "auto_delete", false)?,
                internal: bool_field(entry, "internal", false)?,
                arguments: &arguments,
            })?;
            Ok(())
        };
        declare().map_err(context(format!("{what} in vhost '{}'", vhost.name)))?;
    }
    for entry in section(defs, "queues")? {
        let name = required(entry, "queue", "name")?;
        let what = format!("queue '{name}'");
        let vhost = entry_vhost(ctx, entry, only, &what)?;
        if vhost.queue(name).is_some() {
            continue;
        }
        let declare = || -> ApiResult<()> {
            let arguments = arguments_field(entry)?;
            vhost.declare_queue(
                QueueDeclare {
                    name,
                    passive: false,
                    durable: bool_field(entry, "durable", true)?,
                    exclusive: false,
                    auto_delete: bool_field(entry, "auto_delete", false)?,
                    arguments: &arguments,
                },
                0,
            )?;
            Ok(())
        };
        declare().map_err(context(format!("{what} in vhost '{}'", vhost.name)))?;
    }
    for entry in section(defs, "bindings")? {
        let source = exchange_name(required(entry, "binding", "source")?);
        let destination = required(entry, "binding", "destination")?;
        let what = format!("binding of '{source}' to '{destination}'");
        let vhost = entry_vhost(ctx, entry, only, &what)?;
        if source.is_empty() {
            continue;
        }
        let bind = || -> ApiResult<()> {
            let key = string_field(entry, "routing_key")?.unwrap_or_default();
            let arguments = arguments_field(entry)?;
            match string_field(entry, "destination_type")? {
                Some("queue") | None => {
                    vhost.bind_queue(destination, source, key, &arguments, 0)?
                }
                Some("exchange") => vhost.bind_exchange(destination, source, key, &arguments)?,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown destination_type {other}"
                    )))
                }
            }
            Ok(())
        };
        bind().map_err(context(format!("{what} in vhost '{}'", vhost.name)))?;
    }
    Ok(())
}

/// `POST /api/definitions`: everything in the document.
async fn import_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let defs = json_body(&body)?;
    import_users(&ctx, &defs)?;
    import_objects(&ctx, &defs, None)?;
    Ok(no_content())
}

/// `POST /api/definitions/{vhost}`: exchanges, queues and bindings into
/// one existing vhost (their `vhost` fields, if any, are ignored).
async fn import_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let vhost = ctx.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let defs = json_body(&body)?;
    import_objects(&ctx, &defs, Some(&vhost))?;
    Ok(no_content())
}

fn queues(vhost: &VHost, with_vhost: bool) -> Vec<Value> {
    let mut queues = vhost.queues();
    queues.retain(|q| !q.is_exclusive());
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    queues
        .iter()
        .map(|q| {
            let mut v = json!({
                "name": q.name,
                "vhost": vhost.name,
                "durable": q.options.durable,
                "auto_delete": q.options.auto_delete,
                "arguments": table_to_json(&q.options.arguments),
            });
            if !with_vhost {
                strip_vhost(&mut v);
            }
            v
        })
        .collect()
}

fn exchanges(vhost: &VHost, with_vhost: bool) -> Vec<Value> {
    let mut exchanges = vhost.exchanges();
    exchanges.retain(|x| !x.name.starts_with("amq."));
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    exchanges
        .iter()
        .map(|x| {
            let mut v = json!({
                "name": x.name,
                "vhost": vhost.name,
                "type": x.type_name(),
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table_to_json(&x.arguments),
            });
            if !with_vhost {
                strip_vhost(&mut v);
            }
            v
        })
        .collect()
}

fn policies(vhost: &VHost, with_vhost: bool) -> Vec<Value> {
    let mut all = vhost.policies();
    all.sort_by(|a, b| a.name().cmp(b.name()));
    all.iter()
        .filter_map(|p| serde_json::to_value(&p.record).ok())
        .map(|mut v| {
            if !with_vhost {
                strip_vhost(&mut v);
            }
            v
        })
        .collect()
}

fn bindings(vhost: &VHost, with_vhost: bool) -> Vec<Value> {
    let mut all = explicit_bindings(vhost);
    if !with_vhost {
        all.iter_mut().for_each(strip_vhost);
    }
    all
}

fn vhost_entry(ctx: &Ctx, vhost: &VHost) -> Value {
    let record = ctx.broker.vhost_record(&vhost.name).unwrap_or_default();
    let mut metadata = json!({"description": record.description, "tags": record.tags});
    if let (Some(kind), Value::Object(m)) = (&record.default_queue_type, &mut metadata) {
        m.insert("default_queue_type".into(), json!(kind));
    }
    json!({
        "name": vhost.name,
        "description": record.description,
        "tags": record.tags,
        "metadata": metadata,
    })
}

fn strip_vhost(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("vhost");
    }
}

async fn all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let mut vhosts: Vec<Arc<VHost>> = ctx.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut users = ctx.broker.users.read().list();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(json!({
        "rabbit_version": VERSION,
        "rabbitmq_version": VERSION,
        "product_name": "Broker",
        "product_version": VERSION,
        "users": users.iter().map(user_json).collect::<Vec<_>>(),
        "vhosts": vhosts.iter().map(|v| vhost_entry(&ctx, v)).collect::<Vec<_>>(),
        "permissions": all_permissions(&ctx).iter().map(|(u, v, p)| permission_json(u, v, p)).collect::<Vec<_>>(),
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": vhosts.iter().flat_map(|v| policies(v, true)).collect::<Vec<_>>(),
        "queues": vhosts.iter().flat_map(|v| queues(v, true)).collect::<Vec<_>>(),
        "exchanges": vhosts.iter().flat_map(|v| exchanges(v, true)).collect::<Vec<_>>(),
        "bindings": vhosts.iter().flat_map(|v| bindings(v, true)).collect::<Vec<_>>(),
    })))
}

async fn one_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    Ok(Json(json!({
        "rabbit_version": VERSION,
        "rabbitmq_version": VERSION,
        "parameters": [],
        "policies": policies(&vhost, false),
        "queues": queues(&vhost, false),
        "exchanges": exchanges(&vhost, false),
        "bindings": bindings(&vhost, false),
    })))
}
