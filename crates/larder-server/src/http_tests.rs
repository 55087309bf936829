//! Handler tests of the HTTP API, through the router (`tower::ServiceExt::oneshot`), over the
//! in-memory online store (and a Parquet offline store in a temporary folder for training
//! sets): status codes, Feast's shapes, and the error detail.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder_core::{
    DataSource, DataSourceKind, EntityKey, Feature, FeatureView, JoinKey, Timestamp, TtlDuration,
    Value, ValueType, WriteLane,
};
use larder_ingest::{FeatureRow, WritePath};
use larder_offline::{OfflineStore, ParquetOfflineStore, ViewBatch};
use larder_online::MemoryOnlineStore;
use larder_registry::Registry;
use tower::ServiceExt;

use crate::push::PushService;
use crate::training::TrainingService;
use crate::{FeatureServer, RegistryHandle, Services, ServingLimits};

fn scores_view() -> FeatureView {
    FeatureView {
        name: "scores".to_string(),
        version: 3,
        join_keys: vec![JoinKey {
            name: "user_id".to_string(),
            dtype: ValueType::Int64,
        }],
        source: "scores_push".to_string(),
        timestamp_field: "event_timestamp".to_string(),
        features: vec![
            Feature {
                name: "score".to_string(),
                dtype: ValueType::Float64,
                description: String::new(),
                vector_index: None,
            },
            Feature {
                name: "tags".to_string(),
                dtype: ValueType::List(Box::new(ValueType::String)),
                description: String::new(),
                vector_index: None,
            },
        ],
        online: true,
        offline: true,
        ..FeatureView::default()
    }
}

/// Services over a memory store holding user 1's scores, with direct writes enabled.
async fn services(limits: ServingLimits) -> Services {
    services_and_store(limits).await.0
}

/// [`services`] and the online store behind them.
async fn services_and_store(limits: ServingLimits) -> (Services, larder_online::SharedOnlineStore) {
    services_over(scores_view(), Timestamp::now(), limits).await
}

/// Services over a memory store holding user 1's row of `view` (a score of 0.5 and no tags)
/// at `event_timestamp`, with direct writes enabled, and the online store behind them.
async fn services_over(
    view: FeatureView,
    event_timestamp: Timestamp,
    limits: ServingLimits,
) -> (Services, larder_online::SharedOnlineStore) {
    let mut registry = Registry {
        project: "handlers".to_string(),
        ..Registry::default()
    };
    registry.sources.insert(
        "scores_push".to_string(),
        DataSource {
            name: "scores_push".to_string(),
            kind: DataSourceKind::Push,
            timestamp_field: "event_timestamp".to_string(),
            description: String::new(),
            owner: String::new(),
            tags: Default::default(),
        },
    );
    registry
        .feature_views
        .insert(view.name.clone(), view.clone());
    let handle = Arc::new(RegistryHandle::new(registry));
    let store: larder_online::SharedOnlineStore = Arc::new(MemoryOnlineStore::new());
    let write_path = Arc::new(WritePath::new(Arc::clone(&store)));
    write_path
        .write(
            &view,
            WriteLane::Direct,
            vec![FeatureRow {
                entity_key: EntityKey::from_int(1),
                event_timestamp,
                values: vec![Value::Float64(0.5), Value::List(Vec::new())],
            }],
        )
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let services = Services {
        push: Some(Arc::new(PushService::new(
            Arc::clone(&handle),
            write_path,
            100,
        ))),
        training: None,
        materialize: None,
        forget: None,
        apply: None,
        auth: Arc::new(crate::auth::Authenticator::disabled()),
        write_audit: None,
        runs: None,
        documents: None,
        features: Arc::new(FeatureServer::new(handle, Arc::clone(&store), limits)),
    };
    (services, store)
}

async fn call(services: Services, path: &str, body: Body) -> (StatusCode, Vec<u8>) {
    let request = Request::post(path)
        .body(body)
        .unwrap_or_else(|error| panic!("{error}"));
    let response = crate::http::router(services)
        .oneshot(request)
        .await
        .unwrap_or_else(|error| match error {});
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .to_bytes()
        .to_vec();
    (status, bytes)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(bytes)))
}

/// The object inside Feast's error detail (a JSON string).
fn detail(bytes: &[u8]) -> serde_json::Value {
    let outer = json(bytes);
    let text = outer
        .as_str()
        .unwrap_or_else(|| panic!("an error body is a JSON string: {outer}"));
    json(text.as_bytes())
}

#[tokio::test]
async fn reads_answer_feasts_shape_with_view_versions_on_request() {
    let body = r#"{"features": ["scores:score", "scores:tags"], "entities": {"user_id": [1, 2]},
                   "include_feature_view_version_metadata": true}"#;
    let (status, bytes) = call(
        services(ServingLimits::default()).await,
        "/get-online-features",
        Body::from(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = json(&bytes);
    assert_eq!(
        answer["metadata"]["feature_names"],
        serde_json::json!(["user_id", "score", "tags"])
    );
    assert_eq!(
        answer["metadata"]["feature_view_metadata"],
        serde_json::json!([{"name": "scores", "version": 3}])
    );
    assert_eq!(
        answer["results"][1]["values"],
        serde_json::json!([0.5, null])
    );
    assert_eq!(
        answer["results"][1]["statuses"],
        serde_json::json!(["PRESENT", "NOT_FOUND"])
    );
    // An empty list is served as [], as Feast's own server serves it.
    assert_eq!(answer["results"][2]["values"][0], serde_json::json!([]));
}

#[tokio::test]
async fn errors_are_feasts_error_detail_with_larders_code() {
    let services = services(ServingLimits::default()).await;
    let cases = [
        (
            "/get-online-features",
            r#"{"features": ["nope:x"], "entities": {"user_id": [1]}}"#,
            StatusCode::BAD_REQUEST,
            "FeatureViewNotFoundException",
            "INVALID_ARGUMENT",
        ),
        (
            "/get-online-features",
            r#"{"features": ["scores:score"], "entities": {"user_id": [1]}, "typo": 1}"#,
            StatusCode::BAD_REQUEST,
            "FeastError",
            "INVALID_ARGUMENT",
        ),
        (
            "/push",
            r#"{"push_source_name": "nope", "df": {"user_id": [1]}}"#,
            StatusCode::BAD_REQUEST,
            "PushSourceNotFoundException",
            "INVALID_ARGUMENT",
        ),
        (
            "/materialize",
            r#"{"disable_event_timestamp": true}"#,
            StatusCode::NOT_FOUND,
            "FeastObjectNotFoundException",
            "NOT_FOUND",
        ),
    ];
    for (path, body, status, class, code) in cases {
        let (got, bytes) = call(services.clone(), path, Body::from(body)).await;
        assert_eq!(got, status, "{path} {body}");
        let detail = detail(&bytes);
        assert_eq!(detail["module"], "feast.errors", "{detail}");
        assert_eq!(detail["class"], class, "{detail}");
        assert_eq!(detail["code"], code, "{detail}");
    }
}

#[tokio::test]
async fn writes_accept_feasts_keys_and_refuse_bad_floats_and_times() {
    let services = services(ServingLimits::default()).await;
    let now = Timestamp::now().to_rfc3339();
    let write = |score: serde_json::Value, time: serde_json::Value| {
        serde_json::json!({"feature_view_name": "scores", "allow_registry_cache": false,
            "transform_on_write": true,
            "df": {"user_id": [7], "event_timestamp": [time], "score": [score],
                   "tags": [["a"]], "created": [null]}})
        .to_string()
    };
    let (status, bytes) = call(
        services.clone(),
        "/write-to-online-store",
        Body::from(write(serde_json::json!(0.25), serde_json::json!(now))),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let refusals = [
        (
            serde_json::json!(1e308),
            serde_json::json!("x"),
            "column 'event_timestamp'",
        ),
        (
            serde_json::json!(0.5),
            serde_json::json!(Timestamp::now().as_micros() / 1000),
            "looks like milliseconds",
        ),
    ];
    for (score, time, expected) in refusals {
        let (status, bytes) = call(
            services.clone(),
            "/write-to-online-store",
            Body::from(write(score, time)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = detail(&bytes)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408() {
    let limits = ServingLimits {
        read_body_timeout: Duration::from_millis(200),
        ..ServingLimits::default()
    };
    let never = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let (status, bytes) = call(
        services(limits).await,
        "/get-online-features",
        Body::from_stream(never),
    )
    .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(detail(&bytes)["code"], "REQUEST_TIMEOUT");
}

#[tokio::test]
async fn internal_errors_show_what_failed_and_a_request_id_never_the_details() {
    let (services, store) = services_and_store(ServingLimits::default()).await;
    let corrupt = larder_online::OnlineRow {
        entity_key: EntityKey::from_int(9),
        event_timestamp: Timestamp::now(),
        write_timestamp: Timestamp::now(),
        lane: WriteLane::Direct,
        values: vec![0xff, 0xfe, 0xfd],
    };
    store
        .write_rows(&scores_view().id(), vec![corrupt])
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let (status, bytes) = call(
        services,
        "/get-online-features",
        Body::from(r#"{"features": ["scores:score"], "entities": {"user_id": [9]}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let detail = detail(&bytes);
    assert_eq!(detail["code"], "INTERNAL");
    let message = detail["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "a stored row of feature view 'scores' is unreadable (internal error, request id "
        ),
        "{message}"
    );
    assert!(
        !message.contains("corrupt"),
        "the codec's own words stay in the log: {message}"
    );
}

#[tokio::test]
async fn a_zero_ttl_serves_values_of_any_age() {
    // 2020-01-01: years older than any TTL a test could give.
    let old = Timestamp(1_577_836_800_000_000);
    let statuses = |ttl: Option<u64>| async move {
        let view = FeatureView {
            ttl: ttl.map(TtlDuration::from_seconds),
            ..scores_view()
        };
        let (services, _) = services_over(view, old, ServingLimits::default()).await;
        let body = r#"{"features": ["scores:score"], "entities": {"user_id": [1]}}"#;
        let (status, bytes) = call(services, "/get-online-features", Body::from(body)).await;
        assert_eq!(status, StatusCode::OK);
        json(&bytes)["results"][1]["statuses"].clone()
    };
    // Zero is no age limit, like no TTL; a real TTL ages the same value out.
    assert_eq!(statuses(Some(0)).await, serde_json::json!(["PRESENT"]));
    assert_eq!(statuses(None).await, serde_json::json!(["PRESENT"]));
    assert_eq!(
        statuses(Some(86_400)).await,
        serde_json::json!(["OUTSIDE_MAX_AGE"])
    );
}

#[tokio::test]
async fn historical_features_keep_the_entity_columns_in_request_order() {
    let (services, _) = services_and_store(ServingLimits::default()).await;
    let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let offline = Arc::new(ParquetOfflineStore::new(folder.path()));
    let view = scores_view();
    let day = Timestamp::parse("2026-01-01T00:00:00Z").unwrap_or_else(|| panic!("a time"));
    let (keys, values) = (
        [Value::Int64(1)],
        [Value::Float64(0.5), Value::List(Vec::new())],
    );
    let batch = ViewBatch::from_rows(&view, [(&keys[..], day, &values[..])])
        .unwrap_or_else(|error| panic!("{error}"));
    let mut writer = offline
        .begin_write(&view)
        .unwrap_or_else(|error| panic!("{error}"));
    writer
        .write(&batch)
        .unwrap_or_else(|error| panic!("{error}"));
    writer.commit().unwrap_or_else(|error| panic!("{error}"));
    let services = Services {
        training: Some(Arc::new(TrainingService::new(
            Arc::clone(services.features.registry()),
            offline,
            1,
        ))),
        ..services
    };

    // Neither alphabetical ("event_timestamp", "label", "user_id") nor the view's order.
    let body = r#"{"features": ["scores:score"],
        "entities": {"user_id": [1, 2], "label": [1, 0],
                     "event_timestamp": ["2026-01-02T00:00:00Z", "2026-01-02"]}}"#;
    let (status, bytes) = call(services, "/get-historical-features", Body::from(body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap_or_else(|error| panic!("{error}"));
    let schema = reader.schema();
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .collect();
    assert_eq!(names, ["user_id", "label", "event_timestamp", "score"]);
    let batches: Vec<arrow::array::RecordBatch> = reader
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("{error}"));
    let rows =
        arrow::compute::concat_batches(&schema, &batches).unwrap_or_else(|error| panic!("{error}"));
    let score = arrow::util::display::array_value_to_string(rows.column(3), 0)
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(score, "0.5");
    assert!(
        arrow::array::Array::is_null(rows.column(3), 1),
        "user 2 has no offline row"
    );
}

/// The routes the router's source declares, as `(path, method)`: every `.route("PATH", ...)`
/// of `http.rs` and `discovery.rs`, with the methods of its method router (`get(..).post(..)`).
fn declared_routes() -> std::collections::BTreeSet<(String, String)> {
    let mut routes = std::collections::BTreeSet::new();
    for source in [include_str!("http.rs"), include_str!("discovery.rs")] {
        let mut rest = source;
        while let Some(start) = rest.find(".route(") {
            let call = &rest[start + ".route(".len()..];
            // The call's arguments: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, character)| {
                    match character {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(index, _)| index)
                .unwrap_or_else(|| panic!("unclosed .route( in the source"));
            let arguments = &call[..end];
            rest = &call[end..];
            let Some(opening) = arguments.find('"') else {
                continue; // not a route declaration (e.g. this function's own text)
            };
            let path = &arguments[opening + 1..];
            let path = &path[..path.find('"').unwrap_or_else(|| panic!("unclosed path"))];
            let handlers = &arguments[opening + path.len() + 2..];
            let mut methods = 0;
            for method in ["get", "post", "put", "patch", "delete"] {
                let spelled = format!("{method}(");
                let found = handlers.match_indices(&spelled).any(|(index, _)| {
                    index == 0
                        || !handlers.as_bytes()[index - 1].is_ascii_alphanumeric()
                            && handlers.as_bytes()[index - 1] != b'_'
                });
                if found {
                    routes.insert((path.to_string(), method.to_string()));
                    methods += 1;
                }
            }
            assert!(methods > 0, "no method found for route {path}: {handlers}");
        }
    }
    routes
}

/// The node at a JSON pointer such as `#/components/schemas/Health`.
fn resolve_pointer<'a>(document: &'a serde_json::Value, reference: &str) -> &'a serde_json::Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local references are used: {reference}"));
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("the reference {reference} resolves to nothing"))
}

/// Every `$ref` under `node`.
fn references(node: &serde_json::Value, found: &mut Vec<String>) {
    match node {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", serde_json::Value::String(reference)) => found.push(reference.clone()),
                    _ => references(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_of_the_router() {
    let services = services(ServingLimits::default()).await;
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .unwrap_or_else(|error| panic!("{error}"));
    let response = crate::http::router(services.clone())
        .oneshot(request)
        .await
        .unwrap_or_else(|error| match error {});
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[axum::http::header::CONTENT_TYPE],
        "application/json"
    );
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .to_bytes();
    let document = json(&bytes);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.")),
        "{}",
        document["openapi"]
    );

    // Every route of the router is documented, with its methods, and nothing else is.
    let paths = document["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("the document has no paths"));
    let documented: std::collections::BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .into_iter()
                .flat_map(|operations| operations.keys())
                .filter(|key| ["get", "post", "put", "patch", "delete"].contains(&key.as_str()))
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    let declared = declared_routes();
    assert!(
        declared.len() >= 27,
        "the route scan found too few routes: {declared:?}"
    );
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&declared).collect();
    assert!(
        unserved.is_empty(),
        "openapi.json documents routes the router does not declare: {unserved:?}"
    );

    // And the router really serves each documented operation (its fallback answers "no route").
    for (path, method) in &documented {
        let concrete = path.replace("{name}", "user_profile");
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&concrete)
            .body(Body::from("{}"))
            .unwrap_or_else(|error| panic!("{error}"));
        let response = crate::http::router(services.clone())
            .oneshot(request)
            .await
            .unwrap_or_else(|error| match error {});
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|error| panic!("{error}"))
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no route"),
            "{method} {concrete}: {status} {body}"
        );
    }

    // Every reference resolves, and every operation says how it answers.
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty());
    for reference in &found {
        resolve_pointer(&document, reference);
    }
    for (path, method) in &documented {
        let responses = &document["paths"][path][method]["responses"];
        assert!(
            responses.as_object().is_some_and(|map| !map.is_empty()),
            "{method} {path} documents no response"
        );
    }
    // The open routes are the ones the document marks open.
    for (path, method) in &documented {
        let open = document["paths"][path][method]["security"]
            .as_array()
            .is_some_and(Vec::is_empty);
        assert_eq!(
            open,
            crate::http::scope_of_route(path).is_none(),
            "{method} {path}: the document and scope_of_route disagree on whether it is open"
        );
    }
}
