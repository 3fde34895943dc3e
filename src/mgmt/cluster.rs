//! `/api/cluster`: this node's view of the cluster (members, leader, term)
//! and membership changes (`broker cluster join|leave|forget`, RabbitMQ's
//! `rabbitmqctl cluster_status`, `join_cluster`, `forget_cluster_node`).
//! A node without `[cluster]` answers 400 for the changes and a one-node
//! status.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::{json_body, no_content, Ctx};
use crate::cluster::{Cluster, ClusterError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/cluster", get(status))
        .route("/cluster/join", post(join))
        .route("/cluster/leave", post(leave))
        .route("/cluster/nodes/{node}", delete(forget))
}

async fn status(State(ctx): State<Ctx>) -> Json<Value> {
    Json(match ctx.broker.replication.cluster() {
        Some(cluster) => serde_json::to_value(cluster.status()).unwrap_or_default(),
        None => json!({
            "cluster_name": ctx.node,
            "node": ctx.node,
            "state": "alone",
            "leader": ctx.node,
            "members": [{"name": ctx.node, "voter": true, "reachable": true}],
        }),
    })
}

fn clustered(ctx: &Ctx) -> ApiResult<Cluster> {
    ctx.broker
        .replication
        .cluster()
        .cloned()
        .ok_or_else(|| ApiError::bad_request("this node runs without [cluster] enabled"))
}

fn failed(error: ClusterError) -> ApiError {
    let status = match error {
        ClusterError::NoQuorum | ClusterError::Timeout | ClusterError::Unreachable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ClusterError::Refused(_) => StatusCode::FORBIDDEN,
        ClusterError::Rejected(_) | ClusterError::NotMember => StatusCode::BAD_REQUEST,
        ClusterError::Shutdown | ClusterError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "cluster_error", error.to_string())
}

/// `POST /api/cluster/join {"node": "host:port"}`: this node joins the
/// cluster that node belongs to.
async fn join(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let cluster = clustered(&ctx)?;
    let body = json_body(&body)?;
    let Some(node) = body.get("node").and_then(Value::as_str) else {
        return Err(ApiError::bad_request("[{key_missing,node}]"));
    };
    if let Some(own) = own_definitions(&ctx) {
        return Err(ApiError::bad_request(format!(
            "this node has definitions of its own ({own}); only a fresh node joins a cluster \
             (RabbitMQ: reset it first)"
        )));
    }
    cluster.join(node).await.map_err(failed)?;
    Ok(no_content())
}

/// What a node made on its own that joining would leave unshared: vhosts
/// besides the default one, users besides the default user, declared
/// exchanges, queues.
fn own_definitions(ctx: &Ctx) -> Option<String> {
    let broker = &ctx.broker;
    let auth = &broker.config.auth;
    let mut own = Vec::new();
    for vhost in broker.vhosts() {
        if vhost.name != auth.default_vhost {
            own.push(format!("vhost '{}'", vhost.name));
        }
        let exchanges = vhost.exchanges();
        if let Some(x) = exchanges.iter().find(|x| !x.is_predeclared()) {
            own.push(format!("exchange '{}'", x.name));
        }
        if let Some(q) = vhost.queues().first() {
            own.push(format!("queue '{}'", q.name));
        }
    }
    if let Some(u) = broker
        .users
        .read()
        .list()
        .into_iter()
        .find(|u| u.name != auth.default_user)
    {
        own.push(format!("user '{}'", u.name));
    }
    (!own.is_empty()).then(|| own.join(", "))
}

/// `POST /api/cluster/leave`: this node leaves its cluster.
async fn leave(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    clustered(&ctx)?.leave().await.map_err(failed)?;
    Ok(no_content())
}

/// `DELETE /api/cluster/nodes/{node}`: the cluster forgets a node (one
/// that is gone for good).
async fn forget(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
) -> ApiResult<Response> {
    caller.require_admin()?;
    clustered(&ctx)?.forget(&node).await.map_err(failed)?;
    Ok(no_content())
}
