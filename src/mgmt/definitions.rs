//! `GET /api/definitions[/{vhost}]`: an export in RabbitMQ's format, for
//! administrators. Exclusive queues and the predeclared `amq.*` exchanges
//! are left out, as RabbitMQ does; policies and parameters are empty (the
//! broker has none yet). Import (POST) is not supported yet.

use super::auth::Caller;
use super::bindings::explicit_bindings;
use super::error::ApiResult;
use super::overview::VERSION;
use super::users::{all_permissions, permission_json, user_json};
use super::values::table_to_json;
use super::Ctx;
use crate::broker::vhost::VHost;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/definitions", get(all))
        .route("/definitions/{vhost}", get(one_vhost))
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

fn bindings(vhost: &VHost, with_vhost: bool) -> Vec<Value> {
    let mut all = explicit_bindings(vhost);
    if !with_vhost {
        all.iter_mut().for_each(strip_vhost);
    }
    all
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
        "vhosts": vhosts.iter().map(|v| json!({"name": v.name, "description": "", "tags": [], "metadata": {"description": "", "tags": []}})).collect::<Vec<_>>(),
        "permissions": all_permissions(&ctx).iter().map(|(u, v, p)| permission_json(u, v, p)).collect::<Vec<_>>(),
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
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
        "policies": [],
        "queues": queues(&vhost, false),
        "exchanges": exchanges(&vhost, false),
        "bindings": bindings(&vhost, false),
    })))
}
