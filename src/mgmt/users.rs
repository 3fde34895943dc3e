//! `/api/whoami`, `/api/users[/{user}[/permissions]]`, `/api/permissions`
//! (read only: the broker has no public way to change users yet). Users
//! and permissions are for administrators, as in RabbitMQ.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::{list, Ctx};
use crate::broker::users::{Permission, User};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/users", get(list_users))
        .route("/users/{user}", get(get_user))
        .route("/users/{user}/permissions", get(user_permissions))
        .route("/permissions", get(list_permissions))
        .route("/permissions/{vhost}/{user}", get(get_permission))
        .route("/vhosts/{vhost}/permissions", get(vhost_permissions))
}

pub(crate) const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

pub(crate) fn user_json(user: &User) -> Value {
    json!({
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": user.tags,
        "limits": {},
    })
}

pub(crate) fn permission_json(user: &str, vhost: &str, p: &Permission) -> Value {
    json!({
        "user": user,
        "vhost": vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

/// Every permission, sorted by user then vhost.
pub(crate) fn all_permissions(ctx: &Ctx) -> Vec<(String, String, Permission)> {
    let mut all = ctx.broker.users.read().permissions();
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    all
}

async fn whoami(Extension(caller): Extension<Caller>) -> Json<Value> {
    Json(json!({"name": caller.name, "tags": caller.tags}))
}

async fn list_users(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut users = ctx.broker.users.read().list();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    list(users.iter().map(user_json).collect(), &query)
}

async fn get_user(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let users = ctx.broker.users.read();
    let user = users.get(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(user)))
}

fn filtered(
    ctx: &Ctx,
    keep: impl Fn(&(String, String, Permission)) -> bool,
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let items = all_permissions(ctx)
        .iter()
        .filter(|p| keep(p))
        .map(|(u, v, p)| permission_json(u, v, p))
        .collect();
    list(items, query)
}

async fn list_permissions(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    filtered(&ctx, |_| true, &query)
}

async fn user_permissions(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    if ctx.broker.users.read().get(&user).is_none() {
        return Err(ApiError::not_found());
    }
    filtered(&ctx, |(u, _, _)| *u == user, &query)
}

async fn vhost_permissions(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    ctx.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    filtered(&ctx, |(_, v, _)| *v == vhost, &query)
}

async fn get_permission(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let users = ctx.broker.users.read();
    let p = users
        .permission(&user, &vhost)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(permission_json(&user, &vhost, p)))
}
