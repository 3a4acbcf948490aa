//! Errors as OpenAI's API shapes them: `{"error": {"message", "type", "param", "code"}}` with the
//! matching status. Messages never carry what an upstream wrote: provider errors name the
//! provider, the model and the kind of failure only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use moa_core::{MoaError, ProviderError};
use serde_json::json;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// The error body as JSON.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// A failed MoA run: 400 if the request itself was refused (a prompt over a local model's
    /// context), 504 if calls ran out of time, 502 otherwise. The message names the models and
    /// the kind of failure only; what upstreams said (which may echo keys, internal URLs or
    /// file paths) goes to the server's log, never to the client.
    pub fn from_run(error: &MoaError) -> Self {
        let errors = error.provider_errors();
        let all =
            |test: fn(&ProviderError) -> bool| !errors.is_empty() && errors.iter().all(|e| test(e));
        let (status, kind, code) = if matches!(error, MoaError::Format { .. }) {
            (StatusCode::BAD_GATEWAY, "upstream_error", "invalid_output")
        } else if matches!(error, MoaError::Budget { .. }) {
            (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "budget_too_small",
            )
        } else if all(ProviderError::is_invalid_request) {
            (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
            )
        } else if all(ProviderError::is_timeout) {
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
            )
        } else {
            (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error")
        };
        // The whole story (what the upstream said) goes to the operator's log, not the client.
        tracing::warn!(target: "moa::run", error = %error, "a run failed");
        Self::new(status, kind, code, error.summary())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
