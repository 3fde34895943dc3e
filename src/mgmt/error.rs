//! Errors as RabbitMQ's management API reports them: a status code and a
//! JSON body `{"error": ..., "reason": ...}`.

use crate::protocol::error::code;
use crate::protocol::AmqpError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
    /// No credentials at all: empty body and a Basic challenge.
    challenge: bool,
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            challenge: false,
        }
    }

    /// Missing object, vhost or path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    pub fn not_json() -> Self {
        Self::bad_request("not_json")
    }

    pub fn not_authorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
    }

    /// No credentials: 401 with an empty body and `www-authenticate`.
    pub fn unauthenticated() -> Self {
        ApiError {
            challenge: true,
            ..Self::not_authorized("")
        }
    }

    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
    }

    /// A broker refusal, mapped as RabbitMQ's management API maps the AMQP
    /// error it got: 404 for missing objects, 403 for refused access,
    /// 400 for everything the request got wrong (inequivalent or invalid
    /// arguments, locked exclusive queues, unknown exchange types). The
    /// reason is the text after `CODE_NAME - `.
    pub fn from_amqp(err: AmqpError) -> Self {
        let detail = match err.text.split_once(" - ") {
            Some((_, detail)) => detail.to_string(),
            None => err.text.clone(),
        };
        match err.code {
            code::NOT_FOUND => Self::new(StatusCode::NOT_FOUND, "not_found", detail),
            code::ACCESS_REFUSED => Self::new(StatusCode::FORBIDDEN, "access_refused", detail),
            code::PRECONDITION_FAILED
            | code::RESOURCE_LOCKED
            | code::COMMAND_INVALID
            | code::SYNTAX_ERROR
            | code::NOT_ALLOWED
            | code::NOT_IMPLEMENTED => Self::bad_request(detail),
            _ => Self::internal(detail),
        }
    }
}

impl From<AmqpError> for ApiError {
    fn from(err: AmqpError) -> Self {
        Self::from_amqp(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.challenge {
            return (
                self.status,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"RabbitMQ Management\"",
                )],
            )
                .into_response();
        }
        let body = serde_json::json!({"error": self.error, "reason": self.reason});
        (self.status, Json(body)).into_response()
    }
}
