//! Health checks: `/api/aliveness-test/{vhost}` (declares the queue
//! `aliveness-test`, publishes a message to it and takes it back, as
//! RabbitMQ does), `/api/health/checks/alarms` and `local-alarms` (this
//! broker raises no resource alarms yet, so they always pass),
//! `/api/health/checks/virtual-hosts`.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::Ctx;
use crate::broker::message::Message;
use crate::broker::vhost::QueueDeclare;
use crate::protocol::{encode, BasicProperties, FieldTable};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/aliveness-test/{vhost}", get(aliveness))
        .route("/health/checks/alarms", get(ok))
        .route("/health/checks/local-alarms", get(ok))
        .route("/health/checks/virtual-hosts", get(ok))
}

async fn ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn aliveness(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    let vhost = caller.writable_vhost(&ctx, &vhost)?;
    let args = FieldTable::default();
    let (queue, _, _) = vhost.declare_queue(
        QueueDeclare {
            name: "aliveness-test",
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: &args,
        },
        0,
    )?;
    let props = BasicProperties::default();
    let raw = encode::properties(&props);
    let message = Message::new(
        String::new(),
        "aliveness-test".into(),
        props,
        raw,
        Bytes::from_static(b"test_message"),
    );
    queue.publish(Arc::new(message));
    match queue.get(true) {
        Some(_) => Ok(Json(json!({"status": "ok"}))),
        None => Err(ApiError::internal("aliveness test message not received")),
    }
}
