//! `/api/whoami`, `/api/users[/{user}[/permissions]]`,
//! `/api/users/without-permissions`, `/api/users/bulk-delete`,
//! `/api/permissions[/{vhost}/{user}]` and
//! `/api/vhosts/{vhost}/permissions`: GET, PUT and DELETE as RabbitMQ's
//! API (201 created, 204 updated or deleted, 404 missing, 400 with a JSON
//! reason). Changes are stored in the catalog before the answer. Users and
//! permissions are for administrators, as in RabbitMQ.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::{created, json_body, list, no_content, string_field, Ctx};
use crate::broker::users::{self, Permission, User};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/users", get(list_users))
        .route("/users/without-permissions", get(users_without_permissions))
        .route("/users/bulk-delete", post(bulk_delete_users))
        .route(
            "/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/users/{user}/permissions", get(user_permissions))
        .route("/permissions", get(list_permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/vhosts/{vhost}/permissions", get(vhost_permissions))
}

/// `tags` as RabbitMQ takes them: `"a,b"` or `["a","b"]`.
fn parse_tags(value: &Value) -> ApiResult<Vec<String>> {
    let tags: Vec<String> = match value {
        Value::Null => Vec::new(),
        Value::String(s) => s.split(',').map(|t| t.trim().to_string()).collect(),
        Value::Array(items) => items
            .iter()
            .map(|t| match t {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(ApiError::bad_request(format!(
                    "tags must be strings, got {other}"
                ))),
            })
            .collect::<ApiResult<_>>()?,
        other => {
            return Err(ApiError::bad_request(format!(
                "tags must be a string or a list, got {other}"
            )))
        }
    };
    Ok(tags.into_iter().filter(|t| !t.is_empty()).collect())
}

/// A user from a PUT body or a definitions entry, as RabbitMQ's
/// `put_user`: `password` (hashed here) or `password_hash` with
/// `hashing_algorithm`, never both; neither means no password login (and
/// clears the password of an existing user). `tags` (or the legacy
/// `administrator` flag) are required, new user or not
/// (`tags_not_present`).
pub(crate) fn user_from_json(name: &str, body: &Map<String, Value>) -> ApiResult<User> {
    if name.is_empty() {
        return Err(ApiError::bad_request("user name must not be empty"));
    }
    let tags = match (body.get("tags"), body.get("administrator")) {
        (Some(v), _) => parse_tags(v)?,
        (None, Some(admin)) => {
            let admin = matches!(admin, Value::Bool(true))
                || matches!(admin, Value::String(s) if s == "true");
            if admin {
                vec!["administrator".to_string()]
            } else {
                Vec::new()
            }
        }
        (None, None) => return Err(ApiError::bad_request("tags_not_present")),
    };
    let password = string_field(body, "password")?;
    let hash = string_field(body, "password_hash")?;
    let algorithm = string_field(body, "hashing_algorithm")?
        .unwrap_or(users::SHA256)
        .to_string();
    if !users::known_algorithm(&algorithm) {
        return Err(ApiError::bad_request(format!(
            "unsupported hashing_algorithm {algorithm}"
        )));
    }
    let user = match (password, hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ))
        }
        (Some(password), None) => User::with_password(name, password, tags),
        (None, Some(hash)) => {
            if !users::valid_hash(&algorithm, hash) {
                return Err(ApiError::bad_request(format!(
                    "password_hash is not a valid {algorithm} hash"
                )));
            }
            User {
                name: name.to_string(),
                password_hash: hash.to_string(),
                hashing_algorithm: algorithm,
                tags,
            }
        }
        (None, None) => User {
            name: name.to_string(),
            password_hash: String::new(),
            hashing_algorithm: users::SHA256.to_string(),
            tags,
        },
    };
    Ok(user)
}

/// A permission from a PUT body or a definitions entry: all three
/// patterns are required.
pub(crate) fn permission_from_json(body: &Map<String, Value>) -> ApiResult<Permission> {
    let missing: Vec<String> = ["configure", "write", "read"]
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let field = |k: &str| -> ApiResult<String> {
        Ok(string_field(body, k)?.unwrap_or_default().to_string())
    };
    Ok(Permission {
        configure: field("configure")?,
        write: field("write")?,
        read: field("read")?,
    })
}

pub(crate) fn user_json(user: &User) -> Value {
    json!({
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": user.hashing_algorithm,
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

async fn put_user(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let body = json_body(&body)?;
    let user = user_from_json(&name, &body)?;
    Ok(if ctx.broker.put_user(user)? {
        created()
    } else {
        no_content()
    })
}

async fn delete_user(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    if ctx.broker.delete_user(&name)? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

/// `POST /api/users/bulk-delete` `{"users": [...]}`: missing users are
/// skipped, as RabbitMQ does.
async fn bulk_delete_users(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let body = json_body(&body)?;
    let Some(Value::Array(names)) = body.get("users") else {
        return Err(ApiError::bad_request("[{key_missing,users}]"));
    };
    for name in names.iter().filter_map(Value::as_str) {
        ctx.broker.delete_user(name)?;
    }
    Ok(no_content())
}

async fn users_without_permissions(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let (mut users, perms) = {
        let users = ctx.broker.users.read();
        (users.list(), users.permissions())
    };
    users.retain(|u| !perms.iter().any(|(pu, _, _)| *pu == u.name));
    users.sort_by(|a, b| a.name.cmp(&b.name));
    list(users.iter().map(user_json).collect(), &query)
}

async fn put_permission(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let body = json_body(&body)?;
    if ctx.broker.vhost(&vhost).is_none() || ctx.broker.users.read().get(&user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let permission = permission_from_json(&body)?;
    Ok(if ctx.broker.set_permission(&user, &vhost, permission)? {
        created()
    } else {
        no_content()
    })
}

async fn delete_permission(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    if ctx.broker.clear_permission(&user, &vhost)? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}
