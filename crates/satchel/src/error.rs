//! The error contract.
//!
//! Policy: domain code returns [`ApiError`] values made with the helpers below for client
//! mistakes (each a 4xx with a stable snake_case `code` and a message that says what to do
//! next), and `?`-converts anything unexpected (database, storage, I/O) into
//! [`ApiError::Internal`], which answers a generic 500 carrying the request id and logs the
//! real cause. Internals never reach the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    Internal(anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    #[must_use]
    pub fn field(self, name: &str) -> Self {
        match self {
            ApiError::Client {
                status, code, message, ..
            } => ApiError::Client {
                status,
                code,
                message,
                field: Some(name.to_string()),
            },
            other => other,
        }
    }
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Client { code, .. } => code,
            ApiError::Internal(_) => "internal_error",
        }
    }
}

pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}
pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}
pub fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
}
pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}
pub fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}
pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The payment provider could not do what was asked (nothing was charged or refunded).
pub fn provider_unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "payment_provider_unavailable", message)
}

impl<E: Into<anyhow::Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError::Internal(e.into())
    }
}

tokio::task_local! {
    /// The current request's id, for 500 bodies and logs.
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client {
                status,
                code,
                message,
                field,
            } => {
                let mut err = json!({ "code": code, "message": message });
                if let Some(f) = field {
                    err["field"] = json!(f);
                }
                let mut resp = (status, axum::Json(json!({ "error": err }))).into_response();
                resp.extensions_mut().insert(ErrorCode(code));
                resp
            }
            ApiError::Internal(e) => {
                let rid = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
                tracing::error!(request_id = %rid, error = ?e, "internal error");
                let body = json!({ "error": {
                    "code": "internal_error",
                    "message": format!("Something went wrong on our side. Try again; if it persists, contact the store with request id {rid}."),
                    "request_id": rid,
                }});
                (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
            }
        }
    }
}

/// Marks a response as a client error of this code (read by the HTML error pages).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);
