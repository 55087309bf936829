//! The registry API (`/api/v1/...`, JSON) and the UI (`/ui`, HTML) over [`crate::catalog`].
//!
//! * `GET /api/v1/feature-views?q=&owner=&tier=&tag=&entity=&source=`: search views;
//! * `GET /api/v1/feature-views/{name}`: describe one (schema, SQL, source, TTL, SLA, checks,
//!   schedule, versions with what changed, freshness, last runs);
//! * `GET /api/v1/features?q=...`: search features;
//! * `GET /api/v1/lineage` and `/api/v1/lineage/{name}`: the lineage graph and the feature
//!   services a change would touch;
//! * `GET /api/v1/entities`, `/api/v1/sources`, `/api/v1/feature-services`: the definitions.
//!
//! All need the `read` scope; a token limited to some views sees only those.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use larder_core::Timestamp;
use serde_json::json;

use crate::auth::Principal;
use crate::catalog::{self, SearchFilters};
use crate::error::{ErrorKind, ServingError};
use crate::http::HttpState;
use crate::ui;

/// The routes of the registry API and the UI.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/feature-views", get(api_views))
        .route("/api/v1/feature-views/{name}", get(api_view))
        .route("/api/v1/features", get(api_features))
        .route("/api/v1/lineage", get(api_full_lineage))
        .route("/api/v1/lineage/{name}", get(api_lineage))
        .route("/api/v1/entities", get(api_entities))
        .route("/api/v1/sources", get(api_sources))
        .route("/api/v1/feature-services", get(api_services))
        .route("/ui", get(ui_search))
        .route("/ui/views/{name}", get(ui_view))
        .route("/ui/lineage", get(ui_lineage))
        .route("/ui/login", get(ui_login_form).post(ui_login))
}

/// The query string's parameters (the last of repeated ones).
fn query_of(request: &Request) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn principal(request: &Request) -> Principal {
    // The authentication layer always attaches one; without it nothing is visible.
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(|| Principal::Token(std::sync::Arc::new(no_access())))
}

fn no_access() -> larder_registry::TokenRecord {
    larder_registry::TokenRecord {
        id: "unauthenticated".to_string(),
        sha256: String::new(),
        scopes: Vec::new(),
        views: vec![String::new()],
        feature_services: Vec::new(),
        description: String::new(),
        created_at: None,
    }
}

fn filters_of(query: &HashMap<String, String>) -> Result<SearchFilters, ServingError> {
    let mut filters = SearchFilters::default();
    for (key, value) in query {
        let value = Some(value.clone()).filter(|value| !value.trim().is_empty());
        match key.as_str() {
            "q" => filters.q = value,
            "owner" => filters.owner = value,
            "tier" => filters.tier = value,
            "tag" => filters.tag = value,
            "entity" => filters.entity = value,
            "source" => filters.source = value,
            other => {
                return Err(ServingError::invalid(format!(
                    "unknown search parameter '{other}' (known: q, owner, tier, tag, entity, source)"
                )));
            }
        }
    }
    Ok(filters)
}

fn not_found(kind: &str, name: &str) -> ServingError {
    ServingError::new(ErrorKind::NotFound, format!("no {kind} named '{name}'"))
}

/// The view's description as this server knows it: run history and its own writes.
fn describe(
    state: &HttpState,
    principal: &Principal,
    name: &str,
) -> Result<(catalog::ViewDescription, catalog::LineageGraph), ServingError> {
    let registry = state.server().registry().snapshot();
    if !registry.feature_views.contains_key(name) {
        return Err(not_found("feature view", name));
    }
    principal.check_views([name])?;
    let runs = match &state.services.runs {
        Some(history) => history
            .runs(Some(name))
            .map_err(|error| ServingError::internal("reading the run history failed", error))?,
        None => Vec::new(),
    };
    let newest_written = state.services.push.as_ref().and_then(|push| {
        push.write_path()
            .freshness()
            .snapshot()
            .into_iter()
            .find(|entry| entry.view == name)
            .map(|entry| entry.newest_event_time)
    });
    let description =
        catalog::describe_view(&registry, name, &runs, newest_written, Timestamp::now())
            .ok_or_else(|| not_found("feature view", name))?;
    let allowed = |view: &str| principal.allows_view(view);
    let lineage = catalog::lineage_of(&registry, name, &allowed)
        .unwrap_or_else(|| catalog::full_lineage(&registry, &|_| false));
    Ok((description, lineage))
}

/// A catalog search: the registry, the filters, and which views may be seen.
type Search<T> = fn(&larder_registry::Registry, &SearchFilters, &dyn Fn(&str) -> bool) -> Vec<T>;

/// A search answer: `key` holding what `search` finds for the request's filters, among the
/// views the principal may see.
fn search_answer<T: serde::Serialize>(
    state: &HttpState,
    request: &Request,
    key: &str,
    search: Search<T>,
) -> Result<Response, ServingError> {
    let principal = principal(request);
    let filters = filters_of(&query_of(request))?;
    let registry = state.server().registry().snapshot();
    let found = search(&registry, &filters, &|view| principal.allows_view(view));
    Ok(axum::Json(json!({ key: found })).into_response())
}

async fn api_views(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    search_answer(&state, &request, "feature_views", catalog::search_views)
}

async fn api_view(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ServingError> {
    let (description, _) = describe(&state, &principal(&request), &name)?;
    Ok(axum::Json(description).into_response())
}

async fn api_features(
    State(state): State<HttpState>,
    request: Request,
) -> Result<Response, ServingError> {
    search_answer(&state, &request, "features", catalog::search_features)
}

async fn api_full_lineage(State(state): State<HttpState>, request: Request) -> Response {
    let principal = principal(&request);
    let registry = state.server().registry().snapshot();
    axum::Json(catalog::full_lineage(&registry, &|view| {
        principal.allows_view(view)
    }))
    .into_response()
}

async fn api_lineage(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ServingError> {
    let principal = principal(&request);
    let registry = state.server().registry().snapshot();
    catalog::lineage_of(&registry, &name, &|view| principal.allows_view(view))
        .map(|graph| axum::Json(graph).into_response())
        .ok_or_else(|| not_found("source, feature view, feature or feature service", &name))
}

async fn api_entities(State(state): State<HttpState>) -> Response {
    let registry = state.server().registry().snapshot();
    axum::Json(json!({ "entities": registry.entities.values().collect::<Vec<_>>() }))
        .into_response()
}

async fn api_sources(State(state): State<HttpState>) -> Response {
    let registry = state.server().registry().snapshot();
    axum::Json(json!({ "sources": registry.sources.values().collect::<Vec<_>>() })).into_response()
}

async fn api_services(State(state): State<HttpState>, request: Request) -> Response {
    let principal = principal(&request);
    let registry = state.server().registry().snapshot();
    let services: Vec<_> = registry
        .feature_services
        .values()
        .filter(|service| principal.check_service(&registry, &service.name).is_ok())
        .collect();
    axum::Json(json!({ "feature_services": services })).into_response()
}

async fn ui_search(State(state): State<HttpState>, request: Request) -> Response {
    let query = query_of(&request);
    let principal = principal(&request);
    let filters = match filters_of(&query) {
        Ok(filters) => filters,
        Err(error) => return ui::error_page(&error),
    };
    let registry = state.server().registry().snapshot();
    let allowed = |view: &str| principal.allows_view(view);
    let runs = state
        .services
        .runs
        .as_ref()
        .and_then(|history| history.runs(None).ok())
        .unwrap_or_default();
    let newest = state
        .services
        .push
        .as_ref()
        .map(|push| push.write_path().freshness().snapshot())
        .unwrap_or_default();
    let now = Timestamp::now();
    let views: Vec<_> = catalog::search_views(&registry, &filters, &allowed)
        .into_iter()
        .map(|view| {
            let written = newest
                .iter()
                .find(|entry| entry.view == view.name)
                .map(|entry| entry.newest_event_time);
            let status = catalog::describe_view(&registry, &view.name, &runs, written, now)
                .map_or_else(
                    || "unknown".to_string(),
                    |description| description.freshness.status,
                );
            (view, status)
        })
        .collect();
    let features = catalog::search_features(&registry, &filters, &allowed);
    ui::search_page(&filters, &views, &features)
}

async fn ui_view(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let query = query_of(&request);
    let principal = principal(&request);
    let (description, lineage) = match describe(&state, &principal, &name) {
        Ok(described) => described,
        Err(error) => return ui::error_page(&error),
    };
    let view = &description.definition;
    let entity: Vec<(String, String)> = view
        .join_keys
        .iter()
        .filter_map(|key| {
            query
                .get(&key.name)
                .filter(|value| !value.trim().is_empty())
                .map(|value| (key.name.clone(), value.trim().to_string()))
        })
        .collect();
    let sample = if entity.is_empty() {
        None
    } else if !view.online {
        Some(ui::Sample {
            entity,
            values: Err(format!("feature view '{name}' is not served online")),
        })
    } else {
        let values = sample_values(&state, view, &entity).await;
        Some(ui::Sample { entity, values })
    };
    ui::view_page(&description, &lineage, sample.as_ref())
}

/// Reads one entity's online values of `view` through the same parser and server as
/// `/get-online-features`.
async fn sample_values(
    state: &HttpState,
    view: &larder_core::FeatureView,
    entity: &[(String, String)],
) -> Result<Vec<(String, String, String, String)>, String> {
    let entities: serde_json::Map<String, serde_json::Value> = entity
        .iter()
        .map(|(key, value)| {
            let parsed = value
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::from(value.as_str()));
            (key.clone(), json!([parsed]))
        })
        .collect();
    let features: Vec<String> = view
        .features
        .iter()
        .map(|feature| format!("{}:{}", view.name, feature.name))
        .collect();
    let body = json!({ "features": features, "entities": entities }).to_string();
    let request = crate::json::parse_online_features_request(body.as_bytes())
        .map_err(|error| error.public_message())?;
    let result = state
        .server()
        .get_online_features(request)
        .await
        .map_err(|error| error.public_message())?;
    let mut encoded = Vec::new();
    crate::json::write_online_features_response(&result, &mut encoded);
    let response: serde_json::Value =
        serde_json::from_slice(&encoded).map_err(|error| error.to_string())?;
    let names = response["metadata"]["feature_names"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let results = response["results"].as_array().cloned().unwrap_or_default();
    Ok(names
        .iter()
        .zip(results.iter())
        .skip(entity.len())
        .map(|(name, column)| {
            (
                name.as_str().unwrap_or_default().to_string(),
                column["values"][0].to_string(),
                column["statuses"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                column["event_timestamps"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

async fn ui_lineage(State(state): State<HttpState>, request: Request) -> Response {
    let query = query_of(&request);
    let principal = principal(&request);
    let registry = state.server().registry().snapshot();
    let allowed = |view: &str| principal.allows_view(view);
    let graph = match query.get("name").filter(|name| !name.is_empty()) {
        Some(name) => match catalog::lineage_of(&registry, name, &allowed) {
            Some(graph) => graph,
            None => {
                return ui::error_page(&not_found(
                    "source, feature view, feature or feature service",
                    name,
                ));
            }
        },
        None => catalog::full_lineage(&registry, &allowed),
    };
    ui::lineage_page(&graph)
}

async fn ui_login_form(State(state): State<HttpState>, request: Request) -> Response {
    let query = query_of(&request);
    let next = query.get("next").map_or("/ui", String::as_str);
    let message = if state.services.auth.is_enabled() {
        "Paste an API token with the read scope."
    } else {
        "Access control is off on this server: no token needed."
    };
    ui::login_page(message, ui::safe_next(next))
}

async fn ui_login(State(state): State<HttpState>, request: Request) -> Response {
    let bytes = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ui::error_page(&ServingError::new(
                ErrorKind::PayloadTooLarge,
                "the login form is larger than 64 KiB",
            ));
        }
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&bytes).into_owned().collect();
    let token = form.get("token").map_or("", |token| token.trim());
    let next = form.get("next").map_or("/ui", String::as_str);
    match state
        .services
        .auth
        .authenticate(Some(token), larder_registry::Scope::Read)
    {
        Ok(_) => ui::login_success(token, next),
        Err(error) => ui::login_redirect(&error, &axum::http::Uri::from_static("/ui")),
    }
}
