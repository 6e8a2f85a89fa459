//! Every failed request answers a status and one line of JSON, `{"error": "…"}`, which the
//! page shows as it is.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use revflow::FlowError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds after which a refused request may be tried again (503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            // One line, whatever the cause said.
            message: message.into().replace(['\n', '\r'], " "),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn busy(queue: usize) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy: {queue} requests are already queued; try again in a second"),
            )
        }
    }
}

/// The library's errors: the caller's input (a bad option, a wrong shape, an unreadable
/// upload, too much memory) is a 400 or 413; only the server's own files failing is a 500.
impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        let status = match &e {
            FlowError::Memory { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FlowError::Io { .. } | FlowError::Weights { .. } | FlowError::Training(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Middleware: an error the framework answered itself (a malformed path, say) as plain text
/// becomes the same one line of JSON as every other error.
pub async fn as_json(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let json = (response.headers().get(header::CONTENT_TYPE))
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_string(),
        false => text,
    };
    ApiError::new(status, message).into_response()
}
