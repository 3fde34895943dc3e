//! `/api/policies[/{vhost}[/{name}]]`: policies (see `broker/policy.rs`).
//! PUT takes `{"pattern", "definition", "priority", "apply-to"}` and answers
//! 201 (new) or 204 (replaced); an invalid definition is a 400 with
//! RabbitMQ's validation text. Changing policies needs the administrator
//! tag, or the policymaker tag and a permission entry for the vhost (as
//! RabbitMQ's `is_authorized_policies`).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::{created, json_body, list, no_content, string_field, Ctx};
use crate::broker::policy::{ApplyTo, Policy, PolicyRecord};
use crate::broker::vhost::PolicyError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/policies", get(list_all))
        .route("/policies/{vhost}", get(list_vhost))
        .route(
            "/policies/{vhost}/{name}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
}

pub(crate) fn policy_json(policy: &Policy) -> Value {
    let r = &policy.record;
    json!({
        "vhost": r.vhost,
        "name": r.name,
        "pattern": r.pattern,
        "apply-to": r.apply_to.as_str(),
        "definition": r.definition,
        "priority": r.priority,
    })
}

/// A policy record from a PUT body or a definitions entry.
pub(crate) fn policy_from_json(
    vhost: &str,
    name: &str,
    body: &serde_json::Map<String, Value>,
) -> ApiResult<PolicyRecord> {
    let pattern = string_field(body, "pattern")?
        .ok_or_else(|| ApiError::bad_request("[{key_missing,pattern}]"))?;
    let definition = match body.get("definition") {
        Some(Value::Object(d)) => d.clone(),
        None => return Err(ApiError::bad_request("[{key_missing,definition}]")),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "definition must be an object, got {other}"
            )))
        }
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("priority must be an integer"))?,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::bad_request("priority must be an integer"))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "priority must be an integer, got {other}"
            )))
        }
    };
    let apply_to = match string_field(body, "apply-to")? {
        None => ApplyTo::All,
        Some(s) => ApplyTo::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Validation failed\n\n&lt;&lt;\"{s}\"&gt;&gt; was not one of [&lt;&lt;\"all\"&gt;&gt;,&lt;&lt;\"exchanges\"&gt;&gt;,&lt;&lt;\"queues\"&gt;&gt;]\n"
            ))
        })?,
    };
    Ok(PolicyRecord {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern: pattern.to_string(),
        apply_to,
        definition,
        priority,
    })
}

/// RabbitMQ HTML-escapes validation texts in its JSON errors.
pub(crate) fn validation_error(text: &str) -> ApiError {
    ApiError::bad_request(text.replace('<', "&lt;").replace('>', "&gt;"))
}

async fn list_all(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut all = Vec::new();
    let mut vhosts = ctx.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    for vhost in vhosts {
        if caller.can_read(&ctx, &vhost.name) {
            let mut policies = vhost.policies();
            policies.sort_by(|a, b| a.name().cmp(b.name()));
            all.extend(policies.iter().map(|p| policy_json(p)));
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
    let mut policies = vhost.policies();
    policies.sort_by(|a, b| a.name().cmp(b.name()));
    list(policies.iter().map(|p| policy_json(p)).collect(), &query)
}

async fn get_policy(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(&ctx, &vhost)?;
    vhost
        .policies()
        .iter()
        .find(|p| p.name() == name)
        .map(|p| Json(policy_json(p)))
        .ok_or_else(ApiError::not_found)
}

async fn put_policy(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let vhost = caller.policy_vhost(&ctx, &vhost)?;
    let body = json_body(&body)?;
    let record = policy_from_json(&vhost.name, &name, &body)?;
    match vhost.put_policy(record) {
        Ok(true) => Ok(created()),
        Ok(false) => Ok(no_content()),
        Err(PolicyError::Invalid(text)) => Err(validation_error(&text)),
        Err(PolicyError::Unavailable(error)) => Err(error.into()),
    }
}

async fn delete_policy(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vhost = caller.policy_vhost(&ctx, &vhost)?;
    if vhost.delete_policy(&name)? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}
