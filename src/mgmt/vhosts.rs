//! `/api/vhosts[/{vhost}]`: virtual hosts with their message totals.
//! Creating and deleting vhosts is not supported yet (the broker has no
//! public way to add one).

use super::auth::Caller;
use super::error::ApiResult;
use super::overview::Totals;
use super::{list, put_count, Ctx};
use crate::broker::vhost::VHost;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/vhosts", get(list_vhosts))
        .route("/vhosts/{vhost}", get(get_vhost))
}

pub(crate) fn vhost_json(ctx: &Ctx, vhost: &Arc<VHost>) -> Value {
    let totals = Totals::of(std::slice::from_ref(vhost));
    let (mut recv, mut send) = (0u64, 0u64);
    for c in ctx.broker.registry.connections() {
        if c.vhost == vhost.name {
            recv += c.recv_bytes.load(Ordering::Relaxed);
            send += c.send_bytes.load(Ordering::Relaxed);
        }
    }
    let mut obj = Map::new();
    obj.insert("name".into(), json!(vhost.name));
    obj.insert("description".into(), json!(""));
    obj.insert("tags".into(), json!([]));
    obj.insert("default_queue_type".into(), json!("classic"));
    obj.insert(
        "metadata".into(),
        json!({"description": "", "tags": [], "default_queue_type": "classic"}),
    );
    obj.insert("tracing".into(), json!(false));
    obj.insert(
        "cluster_state".into(),
        json!({ ctx.node.clone(): "running" }),
    );
    put_count(&mut obj, "messages", totals.ready + totals.unacked);
    put_count(&mut obj, "messages_ready", totals.ready);
    put_count(&mut obj, "messages_unacknowledged", totals.unacked);
    obj.insert("message_stats".into(), totals.message_stats());
    put_count(&mut obj, "recv_oct", recv);
    put_count(&mut obj, "send_oct", send);
    Value::Object(obj)
}

async fn list_vhosts(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let mut vhosts = ctx.broker.vhosts();
    vhosts.retain(|v| caller.can_read(&ctx, &v.name));
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list(vhosts.iter().map(|v| vhost_json(&ctx, v)).collect(), &query)
}

async fn get_vhost(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.readable_vhost(&ctx, &name)?;
    Ok(Json(vhost_json(&ctx, &vhost)))
}
