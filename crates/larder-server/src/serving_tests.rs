//! Tests of the protocol-agnostic read path, [`FeatureServer::get_online_features`], over the
//! in-memory online store: statuses, entity slots, column order and names, feature
//! services, the declared column types, and every way a request is refused.

use std::sync::Arc;

use larder_core::codec::ValueRef;
use larder_core::{
    EntityKey, FeatureService, FeatureServiceItem, FeatureView, Timestamp, TtlDuration, Value,
    ValueType, WriteLane,
};
use larder_ingest::{FeatureRow, WritePath};
use larder_online::MemoryOnlineStore;
use larder_registry::Registry;

use crate::error::{ErrorKind, FeastErrorClass, ServingError};
use crate::test_views::text;
use crate::{
    FeatureSelection, FeatureServer, FieldStatus, OnlineFeaturesRequest, OnlineFeaturesResult,
    RegistryHandle, ServingLimits,
};

/// 2020-01-01: older than any TTL here.
const OLD: Timestamp = Timestamp(1_577_836_800_000_000);

fn view(name: &str, keys: &[(&str, ValueType)], features: &[(&str, ValueType)]) -> FeatureView {
    crate::test_views::view(name, "push", keys, features)
}

/// Views `scores` (no TTL), `profile` (one day TTL), `trips` (composite key) and `archive`
/// (not online), a feature service `ranker`, and their rows; returns the rows' event time.
async fn server(limits: ServingLimits) -> (FeatureServer, Timestamp) {
    let user = [("user_id", ValueType::Int64)];
    let scores = view(
        "scores",
        &user,
        &[
            ("score", ValueType::Float64),
            ("tags", ValueType::List(Box::new(ValueType::String))),
        ],
    );
    let profile = FeatureView {
        ttl: Some(TtlDuration::from_seconds(86_400)),
        ..view(
            "profile",
            &user,
            &[
                ("age", ValueType::Int32),
                ("name", ValueType::String),
                ("joined", ValueType::Timestamp),
            ],
        )
    };
    let trips = view(
        "trips",
        &[("country", ValueType::String), ("zone", ValueType::Int32)],
        &[
            ("distance", ValueType::Float32),
            ("embedding", ValueType::Vector(3)),
            ("payload", ValueType::Bytes),
            ("active", ValueType::Bool),
        ],
    );
    let archive = FeatureView {
        online: false,
        ..view("archive", &user, &[("old", ValueType::Int64)])
    };
    let now = Timestamp::now();
    let store: larder_online::SharedOnlineStore = Arc::new(MemoryOnlineStore::new());
    let write_path = WritePath::new(Arc::clone(&store));
    let user_row = |user: i64, event_timestamp, values| FeatureRow {
        entity_key: EntityKey::from_int(user),
        event_timestamp,
        values,
    };
    let writes = [
        (
            &scores,
            vec![
                user_row(
                    1,
                    now,
                    vec![Value::Float64(0.5), Value::List(vec![text("a"), text("b")])],
                ),
                user_row(2, now, vec![Value::Float64(-0.0), Value::List(Vec::new())]),
            ],
        ),
        (
            &profile,
            vec![
                user_row(
                    1,
                    now,
                    vec![
                        Value::Int32(30),
                        text("ana"),
                        Value::Timestamp(Timestamp(-5)),
                    ],
                ),
                user_row(2, OLD, vec![Value::Int32(40), text("bo"), Value::Null]),
            ],
        ),
        (
            &trips,
            vec![FeatureRow {
                entity_key: EntityKey::from_values(&[text("fr"), Value::Int32(7)]).unwrap(),
                event_timestamp: now,
                values: vec![
                    Value::Float32(2.5),
                    Value::Vector(vec![1.0, -2.0, 0.25]),
                    Value::Bytes(vec![0, 255]),
                    Value::Bool(true),
                ],
            }],
        ),
    ];
    for (view, rows) in writes {
        write_path
            .write(view, WriteLane::Direct, rows)
            .await
            .unwrap();
    }
    let mut registry = Registry {
        project: "serving".to_string(),
        ..Registry::default()
    };
    for view in [scores, profile, trips, archive] {
        registry.feature_views.insert(view.name.clone(), view);
    }
    registry.feature_services.insert(
        "ranker".to_string(),
        FeatureService {
            name: "ranker".to_string(),
            items: vec![
                FeatureServiceItem {
                    view: "profile".to_string(),
                    features: Some(vec!["name".to_string()]),
                },
                FeatureServiceItem {
                    view: "scores".to_string(),
                    features: None,
                },
            ],
            description: String::new(),
            owner: String::new(),
            tags: Default::default(),
        },
    );
    let handle = Arc::new(RegistryHandle::new(registry));
    (FeatureServer::new(handle, store, limits), now)
}

fn request(features: &[&str], entities: Vec<(&str, Vec<Value>)>) -> OnlineFeaturesRequest {
    OnlineFeaturesRequest {
        selection: FeatureSelection::Features(features.iter().map(|f| f.to_string()).collect()),
        entities: entities
            .into_iter()
            .map(|(name, values)| (name.to_string(), values))
            .collect(),
        full_feature_names: false,
        include_feature_view_version_metadata: false,
    }
}

fn users(ids: &[i64]) -> Vec<(&'static str, Vec<Value>)> {
    vec![("user_id", ids.iter().copied().map(Value::Int64).collect())]
}

async fn serve(server: &FeatureServer, request: OnlineFeaturesRequest) -> OnlineFeaturesResult {
    server.get_online_features(request).await.unwrap()
}

async fn refuse(server: &FeatureServer, request: OnlineFeaturesRequest) -> ServingError {
    server.get_online_features(request).await.unwrap_err()
}

/// Values and statuses of feature column `column`, one per entity.
fn column(result: &OnlineFeaturesResult, column: usize) -> (Vec<Value>, Vec<FieldStatus>) {
    (0..result.entity_count)
        .map(|row| {
            let cell = result.cell(column, row);
            (cell.value.to_value(), cell.status)
        })
        .unzip()
}

#[tokio::test]
async fn statuses_are_present_not_found_and_outside_max_age() {
    let (server, now) = server(ServingLimits::default()).await;
    let result = serve(
        &server,
        request(&["profile:age", "profile:name"], users(&[1, 2, 3])),
    )
    .await;
    assert_eq!(result.entity_count, 3);
    use FieldStatus::{NotFound, OutsideMaxAge, Present};
    assert_eq!(
        column(&result, 0),
        (
            vec![Value::Int32(30), Value::Null, Value::Null],
            vec![Present, OutsideMaxAge, NotFound]
        )
    );
    assert_eq!(
        column(&result, 1),
        (
            vec![text("ana"), Value::Null, Value::Null],
            vec![Present, OutsideMaxAge, NotFound]
        )
    );
    // An aged-out value keeps its event time; a missing one has the epoch.
    let times: Vec<Timestamp> = (0..3)
        .map(|row| result.cell(0, row).event_timestamp)
        .collect();
    assert_eq!(times, [now, OLD, Timestamp::EPOCH]);
    // A view without TTL serves the same entity whatever its age... and only its own rows.
    let scores = serve(&server, request(&["scores:score"], users(&[2, 3]))).await;
    assert_eq!(
        column(&scores, 0),
        (
            vec![Value::Float64(-0.0), Value::Null],
            vec![Present, NotFound]
        )
    );
    let response = result.to_response();
    assert_eq!(response.results[0].values, users(&[1, 2, 3])[0].1);
    assert_eq!(response.results[0].statuses, [Present; 3]);
    assert_eq!(
        response.results[1].statuses,
        [Present, OutsideMaxAge, NotFound]
    );
    assert_eq!(
        response.results[2].values,
        [text("ana"), Value::Null, Value::Null]
    );
}

#[tokio::test]
async fn duplicate_entities_get_their_own_slots_in_request_order() {
    let (server, _) = server(ServingLimits::default()).await;
    let result = serve(
        &server,
        request(
            &["profile:name", "scores:score", "profile:age", "scores:tags"],
            users(&[1, 3, 1, 1]),
        ),
    )
    .await;
    assert_eq!(
        result.feature_names,
        ["user_id", "name", "score", "age", "tags"]
    );
    assert_eq!(result.entity_count, 4);
    assert_eq!(result.feature_column_count(), 4);
    assert_eq!(result.entity_columns, [users(&[1, 3, 1, 1])[0].1.clone()]);
    let ana = text("ana");
    assert_eq!(
        column(&result, 0).0,
        [ana.clone(), Value::Null, ana.clone(), ana]
    );
    assert_eq!(
        column(&result, 1).0,
        [
            Value::Float64(0.5),
            Value::Null,
            Value::Float64(0.5),
            Value::Float64(0.5)
        ]
    );
    assert_eq!(
        column(&result, 2).0,
        [
            Value::Int32(30),
            Value::Null,
            Value::Int32(30),
            Value::Int32(30)
        ]
    );
    let tags = Value::List(vec![text("a"), text("b")]);
    assert_eq!(
        column(&result, 3),
        (
            vec![tags.clone(), Value::Null, tags.clone(), tags],
            vec![
                FieldStatus::Present,
                FieldStatus::NotFound,
                FieldStatus::Present,
                FieldStatus::Present
            ]
        )
    );
    // The list is borrowed from the stored row, element by element.
    assert_eq!(
        result.cell(3, 2).value.list_elements().collect::<Vec<_>>(),
        [ValueRef::String("a"), ValueRef::String("b")]
    );
    // Reading one view twice is one view read, not two.
    let reads: Vec<(&str, usize)> = result.rows_read_per_view().collect();
    assert_eq!(reads, [("profile", 4), ("scores", 4)]);
    // The same feature twice is two columns.
    let twice = serve(
        &server,
        request(&["scores:score", "scores:score"], users(&[1])),
    )
    .await;
    assert_eq!(twice.feature_names, ["user_id", "score", "score"]);
    assert_eq!(column(&twice, 1).0, [Value::Float64(0.5)]);
}

#[tokio::test]
async fn full_feature_names_prefix_the_view_and_metadata_lists_views_read() {
    let (server, _) = server(ServingLimits::default()).await;
    let mut asked = request(&["scores:score", "profile:age", "scores:tags"], users(&[1]));
    let plain = serve(&server, asked.clone()).await;
    assert_eq!(plain.feature_names, ["user_id", "score", "age", "tags"]);
    assert_eq!(plain.feature_view_metadata, None);
    asked.full_feature_names = true;
    asked.include_feature_view_version_metadata = true;
    let full = serve(&server, asked).await;
    assert_eq!(
        full.feature_names,
        ["user_id", "scores__score", "profile__age", "scores__tags"]
    );
    assert_eq!(
        full.feature_view_metadata,
        Some(vec![("scores".to_string(), 1), ("profile".to_string(), 1)])
    );
    assert_eq!(full.to_response().results, plain.to_response().results);
}

#[tokio::test]
async fn a_feature_service_serves_its_features_in_its_order() {
    let (server, _) = server(ServingLimits::default()).await;
    let mut asked = request(&[], users(&[2, 1]));
    asked.selection = FeatureSelection::Service("ranker".to_string());
    asked.full_feature_names = true;
    let result = serve(&server, asked).await;
    assert_eq!(
        result.feature_names,
        ["user_id", "profile__name", "scores__score", "scores__tags"]
    );
    assert_eq!(
        result.column_types,
        [
            ValueType::Int64,
            ValueType::String,
            ValueType::Float64,
            ValueType::List(Box::new(ValueType::String))
        ]
    );
    assert_eq!(
        column(&result, 0),
        (
            vec![Value::Null, text("ana")],
            vec![FieldStatus::OutsideMaxAge, FieldStatus::Present]
        )
    );
    assert_eq!(
        column(&result, 1).0,
        [Value::Float64(-0.0), Value::Float64(0.5)]
    );
    assert_eq!(
        column(&result, 2).0,
        [
            Value::List(Vec::new()),
            Value::List(vec![text("a"), text("b")])
        ]
    );
}

#[tokio::test]
async fn column_types_are_the_declared_types_join_keys_first() {
    let (server, _) = server(ServingLimits::default()).await;
    let result = serve(
        &server,
        request(
            &[
                "trips:embedding",
                "scores:tags",
                "profile:joined",
                "trips:distance",
                "trips:payload",
                "trips:active",
            ],
            vec![
                ("user_id", vec![Value::Int64(1), Value::Int32(2)]),
                ("zone", vec![Value::Int64(7), Value::Int32(8)]),
                ("country", vec![text("fr"), text("fr")]),
            ],
        ),
    )
    .await;
    assert_eq!(
        result.feature_names,
        [
            "country",
            "zone",
            "user_id",
            "embedding",
            "tags",
            "joined",
            "distance",
            "payload",
            "active"
        ]
    );
    assert_eq!(
        result.column_types,
        [
            ValueType::String,
            ValueType::Int32,
            ValueType::Int64,
            ValueType::Vector(3),
            ValueType::List(Box::new(ValueType::String)),
            ValueType::Timestamp,
            ValueType::Float32,
            ValueType::Bytes,
            ValueType::Bool,
        ]
    );
    // Entity values are converted to the join keys' types.
    assert_eq!(
        result.entity_columns,
        [
            vec![text("fr"), text("fr")],
            vec![Value::Int32(7), Value::Int32(8)],
            vec![Value::Int64(1), Value::Int64(2)],
        ]
    );
    let first_row: Vec<Value> = (0..result.feature_column_count())
        .map(|column| result.cell(column, 0).value.to_value())
        .collect();
    assert_eq!(
        first_row,
        [
            Value::Vector(vec![1.0, -2.0, 0.25]),
            Value::List(vec![text("a"), text("b")]),
            Value::Timestamp(Timestamp(-5)),
            Value::Float32(2.5),
            Value::Bytes(vec![0, 255]),
            Value::Bool(true),
        ]
    );
    // Every served value conforms to its column's declared type.
    let entity_columns = result.entity_columns.len();
    for column in 0..result.feature_column_count() {
        for row in 0..result.entity_count {
            let value = result.cell(column, row).value.to_value();
            let dtype = &result.column_types[entity_columns + column];
            assert!(value.conforms_to(dtype), "{value:?} is not a {dtype}");
        }
    }
    // ("fr", 8) has no trip; user 2's profile has aged out.
    assert_eq!(result.cell(0, 1).status, FieldStatus::NotFound);
    assert_eq!(result.cell(2, 1).status, FieldStatus::OutsideMaxAge);
    assert_eq!(result.cell(1, 1).status, FieldStatus::Present);
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_is_wrong() {
    let (server, _) = server(ServingLimits {
        max_entities_per_request: 3,
        ..ServingLimits::default()
    })
    .await;
    let by_service = |name: &str| OnlineFeaturesRequest {
        selection: FeatureSelection::Service(name.to_string()),
        ..request(&[], users(&[1]))
    };
    let trips = |country: Vec<Value>, zone: Vec<Value>| {
        request(
            &["trips:distance"],
            vec![("country", country), ("zone", zone)],
        )
    };
    let cases = [
        (
            request(&["nope:x"], users(&[1])),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeatureViewNotFound,
            "unknown feature view 'nope'",
        ),
        (
            request(&["scores:nope"], users(&[1])),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "feature view 'scores' has no feature 'nope'",
        ),
        (
            request(&["scores"], users(&[1])),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "invalid feature reference 'scores'",
        ),
        (
            by_service("nope"),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeatureServiceNotFound,
            "unknown feature service 'nope'",
        ),
        (
            request(&[], users(&[1])),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "the request names no features",
        ),
        (
            request(&["archive:old"], users(&[1])),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "feature view 'archive' is not online",
        ),
        (
            request(&["scores:score"], Vec::new()),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "missing entity column 'user_id'",
        ),
        (
            request(
                &["scores:score"],
                vec![
                    ("user_id", vec![Value::Int64(1)]),
                    ("zone", vec![Value::Int64(1)]),
                ],
            ),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'zone' is not a join key of the requested feature views (expected: user_id)",
        ),
        (
            request(
                &["scores:score"],
                vec![
                    ("user_id", vec![Value::Int64(1)]),
                    ("user_id", vec![Value::Int64(2)]),
                ],
            ),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'user_id' is given twice",
        ),
        (
            request(
                &["scores:score"],
                vec![("user_id", vec![Value::Int64(1), text("2")])],
            ),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'user_id' at index 1: expected a value of type int64",
        ),
        (
            request(
                &["scores:score"],
                vec![("user_id", vec![Value::Float64(1.0)])],
            ),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'user_id' at index 0: expected a value of type int64",
        ),
        (
            request(&["scores:score"], vec![("user_id", vec![Value::Null])]),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'user_id' at index 0: expected a value of type int64, got null",
        ),
        (
            trips(vec![text("fr")], vec![Value::Int64(1 << 40)]),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'zone' at index 0: expected a value of type int32",
        ),
        (
            trips(vec![Value::Int64(1)], vec![Value::Int32(7)]),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity column 'country' at index 0: expected a value of type string",
        ),
        (
            trips(vec![text("fr"), text("de")], vec![Value::Int32(7)]),
            ErrorKind::InvalidArgument,
            FeastErrorClass::FeastError,
            "entity columns have different lengths (2 and 1 for 'zone')",
        ),
        (
            request(&["scores:score"], users(&[1, 2, 3, 4])),
            ErrorKind::PayloadTooLarge,
            FeastErrorClass::FeastError,
            "the request asks for 4 entities; the limit is 3 per request",
        ),
    ];
    for (asked, kind, class, message) in cases {
        let shown = format!("{asked:?}");
        let error = refuse(&server, asked).await;
        assert_eq!(error.kind, kind, "{shown}: {error:?}");
        assert_eq!(error.feast_class, class, "{shown}: {error:?}");
        assert!(
            error.message.starts_with(message),
            "{shown}: '{}' should start with '{message}'",
            error.message
        );
    }
    // At the limit is fine; duplicates count.
    let at_limit = serve(&server, request(&["scores:score"], users(&[1, 1, 1]))).await;
    assert_eq!(at_limit.entity_count, 3);
}
