//! The HTTP/JSON API, compatible with Feast's feature server.
//!
//! * `POST /get-online-features`: Feast's request and response shapes. The body is read as
//!   JSON whatever its content type (so `curl -d` works).
//! * `GET /health`: 200 with the applied registry's timestamp.
//!
//! Every error is a JSON body `{"error": {"code": ..., "message": ...}}` with a status chosen
//! in [`status_of`], the one place that maps error kinds to HTTP.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::{ErrorKind, ServingError};
use crate::serving::{FeatureServer, OnlineFeaturesRequest};

/// The HTTP status for an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal {
            tracing::error!(message = %self.message, "internal error while serving");
        }
        let body =
            serde_json::json!({ "error": { "code": self.kind.code(), "message": self.message } });
        let mut response = (status_of(self.kind), axum::Json(body)).into_response();
        if self.kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The router for a feature server.
pub fn router(server: Arc<FeatureServer>) -> Router {
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route("/health", get(health))
        .route(
            "/get-historical-features",
            post(crate::training::get_historical_features),
        )
        .fallback(not_found)
        .with_state(server)
}

async fn not_found(request: Request) -> ServingError {
    ServingError::new(
        ErrorKind::NotFound,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn health(State(server): State<Arc<FeatureServer>>) -> Response {
    let registry = server.registry().snapshot();
    let body = serde_json::json!({
        "status": "ok",
        "project": registry.project,
        "registry_applied_at": registry.applied_timestamp().to_rfc3339(),
        "feature_views": registry.feature_views.len(),
    });
    axum::Json(body).into_response()
}

/// Reads a whole body up to `limit` bytes, answering 413 beyond it.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ServingError> {
    to_bytes(body, limit).await.map_err(|_| {
        ServingError::new(ErrorKind::PayloadTooLarge, format!("the request body is larger than the limit of {limit} bytes (serving.max_body_bytes)"))
    })
}

/// Parses a JSON request body with a message that says where it is malformed.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ServingError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let what = if error.is_data() {
            "invalid request"
        } else {
            "malformed JSON"
        };
        ServingError::invalid(format!("{what}: {error}"))
    })
}

async fn get_online_features(
    State(server): State<Arc<FeatureServer>>,
    request: Request,
) -> Result<Response, ServingError> {
    let bytes = read_body(request.into_body(), server.limits().max_body_bytes).await?;
    let parsed: OnlineFeaturesRequest = parse_json(&bytes)?;
    let response = server.get_online_features(parsed).await?;
    let body = serde_json::to_vec(&response).map_err(|error| {
        ServingError::new(
            ErrorKind::Internal,
            format!("encoding the response: {error}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Serves the router on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<FeatureServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}
