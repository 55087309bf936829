//! The HTTP/JSON API, compatible with Feast's feature server.
//!
//! * `POST /get-online-features`: Feast's request and response shapes. The body is read as
//!   JSON whatever its content type (so `curl -d` works).
//! * `GET /health`: 200 with the applied registry's timestamp.
//! * `POST /push`, `POST /write-to-online-store`: direct writes (Feast's shapes), when the
//!   server is given a [`PushService`].
//! * `POST /materialize`, `POST /materialize-incremental`: the batch lane on request (what
//!   `feast materialize` sends to a remote feature server), when the server is given a
//!   [`Materializer`](crate::materialize::Materializer).
//! * `GET /metrics`: Prometheus text format.
//! * `GET /openapi.json`: the OpenAPI document of every route here and of the registry API
//!   and UI ([`crate::discovery`]), kept in `crates/larder-server/openapi.json`; open to anyone,
//!   like `/health`. A test checks that it lists every route of [`router`].
//!
//! Every error is Feast's error detail ([`ServingError::feast_error_detail`]: a JSON string
//! holding `{"module", "class", "message", "code"}`, so Feast's client raises the matching
//! `feast.errors` exception) with a status chosen in [`status_of`], the one place that maps
//! error kinds to HTTP. Requests beyond
//! `max_concurrent_requests` are shed at once with 503 and `Retry-After`, so memory stays
//! bounded under overload and the server recovers as soon as the load drops.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::Services;
use crate::arrow_http::{
    self, ARROW_STREAM, names_arrow_stream, parse_arrow_historical_features, parse_arrow_push,
    parse_arrow_write_to_online_store,
};
use crate::auth::{Authenticator, Principal};
use crate::error::{ErrorKind, ServingError};
use crate::json::{parse_online_features_request, write_online_features_response};
use crate::materialize::{
    MaterializeCall, parse_materialize, parse_materialize_incremental, wants_async,
};
use crate::push::{PushRequest, parse_push, parse_write_to_online_store};
use crate::serving::FeatureServer;
use crate::training::{ipc_stream, parse_historical_features_request};
use larder_registry::Scope;

/// The HTTP status for an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Unavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::RunFailed | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let mut response = (
            status_of(self.kind),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.feast_error_detail(),
        )
            .into_response();
        if self.kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"larder\""),
            );
        }
        if self.kind == ErrorKind::RequestTimeout {
            // What is left of the body would be read as the next request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub(crate) services: Services,
    admission: Arc<Semaphore>,
}

impl HttpState {
    /// The feature server behind the handlers.
    pub fn server(&self) -> &Arc<FeatureServer> {
        &self.services.features
    }

    /// A permit to serve one request, or the 503 of a server at its concurrency limit.
    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ServingError> {
        self.admission.try_acquire().map_err(|_| {
            metrics::counter!("larder_http_requests_rejected_total", "reason" => "overloaded")
                .increment(1);
            ServingError::new(
                ErrorKind::Overloaded,
                "the server is at its concurrency limit (serving.max_concurrent_requests); retry shortly",
            )
        })
    }
}

/// The router for `services`.
pub fn router(services: Services) -> Router {
    let admission = Arc::new(Semaphore::new(
        services.features.limits().max_concurrent_requests.max(1),
    ));
    let _ = crate::metrics::prometheus_handle();
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route(
            "/retrieve-online-documents",
            post(retrieve_online_documents),
        )
        .route("/push", post(push_rows))
        .route("/write-to-online-store", post(write_to_online_store))
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_document))
        .route("/status", get(status))
        .route("/metrics", get(render_metrics))
        .route("/get-historical-features", post(get_historical_features))
        .route("/materialize", post(materialize))
        .route(
            "/repair-future-event-times",
            post(repair_future_event_times),
        )
        .route("/materialize-incremental", post(materialize_incremental))
        .route("/forget", post(forget))
        .route("/api/v1/apply", post(apply_repo))
        .merge(crate::discovery::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&services.auth),
            authenticate,
        ))
        .layer(middleware::from_fn(record_request_metrics))
        .with_state(HttpState {
            services,
            admission,
        })
}

/// The scope a route needs; `None`: open to anyone (liveness, the API's description, the UI's
/// login page).
pub fn scope_of_route(path: &str) -> Option<Scope> {
    match path {
        "/health" | "/openapi.json" | "/ui/login" => None,
        "/push" | "/write-to-online-store" => Some(Scope::Write),
        "/forget" => Some(Scope::Forget),
        "/materialize"
        | "/materialize-incremental"
        | "/repair-future-event-times"
        | "/api/v1/apply" => Some(Scope::Admin),
        _ => Some(Scope::Read),
    }
}

/// Checks the request's token against the scope its route needs and hands the
/// [`Principal`] to the handler (401/403 otherwise). The UI's cookie counts for GET requests
/// only, so a cross-site form can never write with it.
async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |path| path.as_str().to_string(),
    );
    let principal = match scope_of_route(&path) {
        None => Ok(Principal::Open),
        Some(scope) => {
            let headers = request.headers();
            let from_header = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(crate::auth::bearer);
            let from_cookie = (request.method() == axum::http::Method::GET)
                .then(|| {
                    headers
                        .get(header::COOKIE)
                        .and_then(|value| value.to_str().ok())
                        .and_then(crate::auth::cookie_token)
                })
                .flatten();
            auth.authenticate(from_header.or(from_cookie), scope)
        }
    };
    match principal {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        // The UI sends a person to its login page instead of an error body.
        Err(error) if path.starts_with("/ui") && request.method() == axum::http::Method::GET => {
            crate::ui::login_redirect(&error, request.uri())
        }
        Err(error) => error.into_response(),
    }
}

/// The principal that [`authenticate`] attached to the request.
fn principal_of(request: &Request) -> Result<Principal, ServingError> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ServingError::internal("the request was not authenticated", "no principal"))
}

async fn record_request_metrics(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let started = Instant::now();
    metrics::gauge!("larder_http_requests_in_flight").increment(1.0);
    let response = next.run(request).await;
    metrics::gauge!("larder_http_requests_in_flight").decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("larder_http_requests_total", "endpoint" => endpoint.clone(), "status" => status.clone()).increment(1);
    metrics::histogram!("larder_http_request_duration_seconds", "endpoint" => endpoint, "status" => status).record(started.elapsed().as_secs_f64());
    response
}

async fn not_found(request: Request) -> ServingError {
    ServingError::new(
        ErrorKind::NotFound,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn status(State(state): State<HttpState>) -> Response {
    let registry = state.server().registry().snapshot();
    let board = state
        .services
        .push
        .as_ref()
        .map(|push| push.write_path().freshness().snapshot())
        .unwrap_or_default();
    axum::Json(crate::status::report(
        &registry,
        &board,
        larder_core::Timestamp::now(),
    ))
    .into_response()
}

async fn health(State(state): State<HttpState>) -> Response {
    let registry = state.server().registry().snapshot();
    let body = serde_json::json!({
        "status": "ok",
        "project": registry.project,
        "registry_applied_at": registry.applied_timestamp().to_rfc3339(),
        "feature_views": registry.feature_views.len(),
    });
    axum::Json(body).into_response()
}

/// The OpenAPI document of the HTTP API, compiled in.
pub const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

/// `GET /openapi.json`.
async fn openapi_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_DOCUMENT,
    )
        .into_response()
}

async fn render_metrics() -> Response {
    match crate::metrics::prometheus_handle() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )],
            handle.render(),
        )
            .into_response(),
        None => ServingError::new(
            ErrorKind::Unavailable,
            "metrics are not available in this process",
        )
        .into_response(),
    }
}

/// Reads a whole request body, before the request takes a concurrency slot (so a slow or
/// stalled upload never holds one): 413 beyond `serving.max_body_bytes`, 408 when it takes
/// longer than `serving.read_body_timeout`.
async fn read_body(state: &HttpState, body: Body) -> Result<axum::body::Bytes, ServingError> {
    let limits = state.server().limits();
    let limit = limits.max_body_bytes;
    match tokio::time::timeout(limits.read_body_timeout, to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ServingError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the request body is larger than the limit of {limit} bytes (serving.max_body_bytes), or it ended early"
            ),
        )),
        Err(_) => {
            metrics::counter!("larder_http_requests_rejected_total", "reason" => "body_timeout")
                .increment(1);
            Err(ServingError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request body did not arrive within {}s (serving.read_body_timeout)",
                    limits.read_body_timeout.as_secs()
                ),
            ))
        }
    }
}

async fn get_online_features(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let wants_arrow = names_arrow_stream(request.headers().get(header::ACCEPT));
    let principal = principal_of(&request)?;
    let bytes = read_body(&state, request.into_body()).await?;
    let _permit = state.admit()?;
    let parsed = parse_online_features_request(&bytes)?;
    principal.check_selection(&state.server().registry().snapshot(), &parsed.selection)?;
    let result = state.server().get_online_features(parsed).await?;
    for (view, rows) in result.rows_read_per_view() {
        metrics::counter!("larder_online_rows_read_total", "feature_view" => view.to_string())
            .increment(rows as u64);
    }
    if wants_arrow {
        let batch = arrow_http::online_features_batch(&result)?;
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM))],
            arrow_http::ipc_stream_bytes(&batch)?,
        )
            .into_response());
    }
    Ok(online_features_json(&result))
}

/// The JSON answer of a read or a search (Feast's `/get-online-features` shape).
fn online_features_json(result: &crate::OnlineFeaturesResult) -> Response {
    // ~53 bytes a cell in a typical answer (value, status, event time): sized so that the
    // body is not copied into a larger buffer while it is written.
    let mut body = Vec::with_capacity(256 + result.entity_count * result.feature_names.len() * 64);
    write_online_features_response(result, &mut body);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn retrieve_online_documents(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let principal = principal_of(&request)?;
    let bytes = read_body(&state, request.into_body()).await?;
    let _permit = state.admit()?;
    let parsed = crate::documents::parse_documents_request(&bytes)?;
    let result = state
        .services
        .retrieve_documents_as(&principal, parsed)
        .await?;
    Ok(online_features_json(&result))
}

/// The parsers of one direct-write route: its JSON body, or an Arrow IPC body with the
/// target in the query string.
struct DirectWriteParsers {
    json: fn(&[u8]) -> Result<PushRequest, ServingError>,
    arrow: fn(Option<&str>, &[u8]) -> Result<PushRequest, ServingError>,
}

async fn direct_write(
    state: &HttpState,
    request: Request,
    parsers: DirectWriteParsers,
) -> Result<Response, ServingError> {
    state.services.push_service()?;
    let principal = principal_of(&request)?;
    let arrow_body = names_arrow_stream(request.headers().get(header::CONTENT_TYPE));
    let query_string = request.uri().query().map(str::to_string);
    let bytes = read_body(state, request.into_body()).await?;
    let _permit = state.admit()?;
    let parsed = match arrow_body {
        true => (parsers.arrow)(query_string.as_deref(), &bytes)?,
        false => (parsers.json)(&bytes)?,
    };
    let pushed = state.services.push_as(&principal, "http", parsed).await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "feature_views": pushed })).into_response())
}

/// `POST /get-historical-features`: the training set as an Arrow IPC stream.
async fn get_historical_features(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let training = state.services.training_service()?;
    let principal = principal_of(&request)?;
    let arrow_body = names_arrow_stream(request.headers().get(header::CONTENT_TYPE));
    let query_string = request.uri().query().map(str::to_string);
    let bytes = read_body(&state, request.into_body()).await?;
    let query = match arrow_body {
        true => parse_arrow_historical_features(query_string.as_deref(), &bytes)?,
        false => parse_historical_features_request(&bytes)?,
    };
    principal.check_selection(&state.server().registry().snapshot(), &query.selection)?;
    let batches = training.historical_features(query).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.apache.arrow.stream"),
        )],
        Body::from_stream(ipc_stream(batches)?),
    )
        .into_response())
}

/// `POST /materialize` and `POST /materialize-incremental` (Feast's remote materialization).
async fn run_materialize(
    state: &HttpState,
    request: Request,
    parse: fn(&[u8], &larder_registry::Registry) -> Result<MaterializeCall, ServingError>,
) -> Result<Response, ServingError> {
    let materializer = state.services.materializer()?;
    let principal = principal_of(&request)?;
    let run_async = wants_async(request.uri().query());
    let bytes = read_body(state, request.into_body()).await?;
    let call = parse(&bytes, &state.server().registry().snapshot())?;
    principal.check_views(call.feature_views.iter().map(String::as_str))?;
    let (accepted, body) = crate::materialize::run(materializer, call, run_async).await?;
    let status = if accepted {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(body)).into_response())
}

async fn materialize(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    run_materialize(&state, request, parse_materialize).await
}

async fn materialize_incremental(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    run_materialize(&state, request, parse_materialize_incremental).await
}

/// `POST /forget`: erases entities everywhere (see [`crate::forget::ForgetService`]), or
/// with `"verify": true` counts what is left of them per store.
async fn forget(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let service = state.services.forget_service()?;
    let principal = principal_of(&request)?;
    let bytes = read_body(&state, request.into_body()).await?;
    let _permit = state.admit()?;
    let outcome = service
        .forget(
            crate::json::parse_forget_request(&bytes)?,
            &principal,
            "http",
        )
        .await?;
    Ok(axum::Json(outcome).into_response())
}

/// `POST /api/v1/apply`: applies the repo on disk (see [`crate::apply`]).
async fn apply_repo(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let applier = state.services.apply.as_ref().ok_or_else(|| {
        ServingError::new(ErrorKind::NotFound, "apply is not enabled on this server")
    })?;
    // An apply may change any view: a token limited to some views may not.
    let registry = state.server().registry().snapshot();
    principal_of(&request)?.check_views(registry.feature_views.keys().map(String::as_str))?;
    let bytes = read_body(&state, request.into_body()).await?;
    let dry_run = crate::apply::parse_apply(&bytes)?;
    Ok(axum::Json(applier.apply(dry_run).await?).into_response())
}

/// `POST /repair-future-event-times`: deletes online rows whose event time is beyond the
/// direct writes' bounds (see [`crate::push::PushService::repair_future_event_times`]).
async fn repair_future_event_times(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let push_service = state.services.push_service()?;
    let principal = principal_of(&request)?;
    let bytes = read_body(&state, request.into_body()).await?;
    let _permit = state.admit()?;
    let repair = crate::push::parse_repair(&bytes)?;
    principal.check_views([repair.feature_view.as_str()])?;
    let repaired = push_service.repair_future_event_times(repair).await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "deleted": repaired })).into_response())
}

async fn push_rows(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let parsers = DirectWriteParsers {
        json: parse_push,
        arrow: parse_arrow_push,
    };
    direct_write(&state, request, parsers).await
}

async fn write_to_online_store(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    let parsers = DirectWriteParsers {
        json: parse_write_to_online_store,
        arrow: parse_arrow_write_to_online_store,
    };
    direct_write(&state, request, parsers).await
}

/// How long a graceful shutdown waits for requests in flight before closing connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the router on a bound listener until `shutdown` completes, then lets requests in
/// flight finish (for up to 10 s).
///
/// Connections are HTTP/1.1 with keep-alive. A client must send each request's headers
/// within `serving.read_header_timeout`, which also bounds how long a kept-alive connection
/// may stay idle; the body is read under `serving.read_body_timeout` by the handlers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_header_timeout = services.features.limits().read_header_timeout;
    let app = router(services);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait for connections to close.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Responses are written whole; Nagle's algorithm would only hold them back
        // waiting for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(read_header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; closing them");
    }
    Ok(())
}
