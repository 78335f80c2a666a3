//! Errors in Cloudify's shape: `{"message", "error_code", "server_traceback": null}` with the
//! status code Cloudify's REST client maps to its exception classes.

use serde_json::json;
use warp::http::StatusCode;

/// An error answered to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Cloudify's `error_code` (`not_found_error`, `conflict_error`, …).
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_parameters_error", message)
    }

    /// A 400 with a specific Cloudify error code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Cloudify's wording: ``Requested `Deployment` with ID `x` was not found``.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("Requested `{kind}` with ID `{id}` was not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized_error", message)
    }

    /// A backend (store, workflow service) failed: not the caller's fault.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            message,
        )
    }

    /// A backend is not reachable right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            message,
        )
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"message": self.message, "error_code": self.code, "server_traceback": null})
    }
}

impl From<drover_store::StoreError> for ApiError {
    fn from(e: drover_store::StoreError) -> Self {
        use drover_store::StoreError;
        match e {
            StoreError::Conflict { .. } => ApiError::conflict(e.to_string()),
            StoreError::InvalidId(_) | StoreError::InvalidCursor(_) => {
                ApiError::bad_request(e.to_string())
            }
            // Clients retry a 503; the state is intact.
            StoreError::Unavailable(_) => ApiError::unavailable(format!("state store: {e}")),
            other => {
                tracing::error!(error = %other, "state store failed");
                ApiError::internal(format!("state store: {other}"))
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use drover_store::StoreError;

    use super::*;

    /// A store that cannot answer now is a 503 (clients retry it); one that failed is a 500.
    #[test]
    fn store_errors_map_to_their_status() {
        let unavailable = ApiError::from(StoreError::Unavailable("search: 503".into()));
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code, "service_unavailable_error");
        let failed = ApiError::from(StoreError::OpenSearch("search: 400".into()));
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
