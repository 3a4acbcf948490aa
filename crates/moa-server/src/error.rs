//! Errors as OpenAI's API shapes them: `{"error": {"message", "type", "param", "code"}}` with the
//! matching status. Messages never carry upstream keys: provider errors name the provider, the
//! status and the upstream's message only.

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

    /// A failed MoA run: 504 if a call ran out of time, 502 otherwise.
    pub fn from_run(error: &MoaError) -> Self {
        let timed_out = match error {
            MoaError::Aggregator { source, .. } => matches!(source, ProviderError::Timeout { .. }),
            MoaError::TooFewProposals { failures, .. } => {
                !failures.is_empty()
                    && failures
                        .iter()
                        .all(|f| f.error.contains("no answer within"))
            }
        };
        let (status, code) = if timed_out {
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        } else {
            (StatusCode::BAD_GATEWAY, "upstream_error")
        };
        Self::new(status, "upstream_error", code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
