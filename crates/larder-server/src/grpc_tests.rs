//! Tests of the gRPC service through a real tonic client, over a loopback listener served by
//! [`crate::grpc::serve`] (so the transport's own layer is in the path): reads agree with
//! the HTTP API, partial pushes, and the status codes and `larder-code` metadata of errors.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder_core::codec::base64_encode;
use larder_core::{
    DataSource, DataSourceKind, EntityKey, FeatureView, Timestamp, TtlDuration, Value, ValueType,
    WriteLane,
};
use larder_ingest::{FeatureRow, WritePath};
use larder_online::MemoryOnlineStore;
use larder_registry::Registry;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::grpc::EncodedOnlineFeaturesResponse;
use crate::grpc::proto::feature_serving_client::FeatureServingClient;
use crate::grpc::proto::value::Val;
use crate::grpc::{LARDER_CODE_METADATA, proto};
use crate::push::PushService;
use crate::test_views::text;
use crate::{FeatureServer, RegistryHandle, Services, ServingLimits};

/// 2020-01-01: older than the one-day TTL of `kinds`.
const OLD: Timestamp = Timestamp(1_577_836_800_000_000);

fn view(name: &str, features: &[(&str, ValueType)]) -> FeatureView {
    let keys = [("user_id", ValueType::Int64)];
    crate::test_views::view(name, "scores_push", &keys, features)
}

/// Services with direct writes over a memory store: `scores` (users 1 and 3) and `kinds`
/// (one feature of every type, one-day TTL: user 1 fresh, user 2 aged out).
async fn services() -> Services {
    let scores = view(
        "scores",
        &[
            ("score", ValueType::Float64),
            ("tags", ValueType::List(Box::new(ValueType::String))),
        ],
    );
    let kinds = FeatureView {
        ttl: Some(TtlDuration::from_seconds(86_400)),
        ..view(
            "kinds",
            &[
                ("count", ValueType::Int32),
                ("ratio", ValueType::Float32),
                ("seen", ValueType::Timestamp),
                ("flag", ValueType::Bool),
                ("blob", ValueType::Bytes),
                ("embedding", ValueType::Vector(2)),
                ("ids", ValueType::List(Box::new(ValueType::Int64))),
            ],
        )
    };
    let store: larder_online::SharedOnlineStore = Arc::new(MemoryOnlineStore::new());
    let write_path = Arc::new(WritePath::new(Arc::clone(&store)));
    let now = Timestamp::now();
    let row = |user: i64, event_timestamp, values| FeatureRow {
        entity_key: EntityKey::from_int(user),
        event_timestamp,
        values,
    };
    let kinds_row = |count, seen| {
        vec![
            Value::Int32(count),
            Value::Float32(0.1),
            Value::Timestamp(seen),
            Value::Bool(true),
            Value::Bytes(vec![0, 1, 254, 255]),
            Value::Vector(vec![0.1, -1e-40]),
            Value::List(vec![Value::Int64(i64::MIN), Value::Null, Value::Int64(-1)]),
        ]
    };
    let writes = [
        (
            &scores,
            vec![
                row(
                    1,
                    now,
                    vec![
                        Value::Float64(0.1 + 0.2),
                        Value::List(vec![text("a"), text("é")]),
                    ],
                ),
                row(3, now, vec![Value::Null, Value::List(Vec::new())]),
                // Before 1970, and not a whole second.
                row(
                    5,
                    Timestamp(-86_400_000_001),
                    vec![Value::Float64(-0.0), Value::List(vec![text("")])],
                ),
            ],
        ),
        (
            &kinds,
            vec![
                row(1, now, kinds_row(-7, Timestamp(1_700_000_000_123_456))),
                row(2, OLD, kinds_row(8, Timestamp(-1_500_000))),
                row(
                    5,
                    now,
                    vec![
                        Value::Int32(i32::MIN),
                        Value::Float32(-0.0),
                        Value::Timestamp(Timestamp(-1_500_001)),
                        Value::Bool(false),
                        Value::Bytes(Vec::new()),
                        Value::Vector(vec![f32::MAX, f32::MIN_POSITIVE]),
                        Value::List(Vec::new()),
                    ],
                ),
            ],
        ),
    ];
    for (view, rows) in writes {
        write_path
            .write(view, WriteLane::Direct, rows)
            .await
            .unwrap();
    }
    let mut registry = Registry {
        project: "grpc".to_string(),
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
    for view in [scores, kinds] {
        registry.feature_views.insert(view.name.clone(), view);
    }
    let handle = Arc::new(RegistryHandle::new(registry));
    Services {
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
        features: Arc::new(FeatureServer::new(handle, store, ServingLimits::default())),
    }
}

/// Serves `services` over gRPC on a loopback port (until the test's runtime ends) and
/// connects to it.
async fn start(services: Services) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(crate::grpc::serve(
        listener,
        services,
        std::future::pending(),
    ));
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn client(services: Services) -> FeatureServingClient<Channel> {
    FeatureServingClient::new(start(services).await)
}

fn int64(number: i64) -> proto::Value {
    proto::Value {
        val: Some(Val::Int64Val(number)),
    }
}

fn column(values: Vec<proto::Value>) -> proto::RepeatedValue {
    proto::RepeatedValue { val: values }
}

fn read_request(features: &[&str], users: &[i64]) -> proto::GetOnlineFeaturesRequest {
    proto::GetOnlineFeaturesRequest {
        kind: Some(proto::get_online_features_request::Kind::Features(
            proto::FeatureList {
                val: features.iter().map(|feature| feature.to_string()).collect(),
            },
        )),
        entities: [(
            "user_id".to_string(),
            column(users.iter().copied().map(int64).collect()),
        )]
        .into_iter()
        .collect(),
        full_feature_names: false,
    }
}

/// A float32 as the HTTP API writes it (its shortest text), read back as JSON.
fn json_f32(number: f32) -> serde_json::Value {
    serde_json::from_str(&serde_json::to_string(&number).unwrap()).unwrap()
}

/// A gRPC value as the HTTP API writes it: bytes as base64, timestamps as RFC 3339.
fn json_of(value: &proto::Value) -> serde_json::Value {
    use serde_json::json;
    match &value.val {
        None => serde_json::Value::Null,
        Some(Val::BoolVal(flag)) => json!(flag),
        Some(Val::Int32Val(number)) => json!(number),
        Some(Val::Int64Val(number)) => json!(number),
        Some(Val::FloatVal(number)) => json_f32(*number),
        Some(Val::DoubleVal(number)) => json!(number),
        Some(Val::StringVal(text)) => json!(text),
        Some(Val::BytesVal(bytes)) => json!(base64_encode(bytes)),
        Some(Val::TimestampMicrosVal(micros)) => json!(Timestamp(*micros).to_rfc3339()),
        Some(Val::ListVal(list)) => list.val.iter().map(json_of).collect(),
        Some(Val::VectorVal(vector)) => vector.val.iter().copied().map(json_f32).collect(),
    }
}

/// A gRPC answer in the HTTP API's JSON shape.
fn as_http_json(response: &proto::GetOnlineFeaturesResponse) -> serde_json::Value {
    let results: Vec<serde_json::Value> = response
        .results
        .iter()
        .map(|vector| {
            let statuses: Vec<&str> = vector
                .statuses
                .iter()
                .map(|status| {
                    proto::FieldStatus::try_from(*status).map_or("?", |status| status.as_str_name())
                })
                .collect();
            let times: Vec<String> = vector
                .event_timestamps_micros
                .iter()
                .map(|micros| Timestamp(*micros).to_rfc3339())
                .collect();
            serde_json::json!({
                "values": vector.values.iter().map(json_of).collect::<Vec<_>>(),
                "statuses": statuses,
                "event_timestamps": times,
            })
        })
        .collect();
    serde_json::json!({
        "metadata": {"feature_names": response.feature_names},
        "results": results,
    })
}

async fn http_read(services: Services, body: serde_json::Value) -> serde_json::Value {
    let request = Request::post("/get-online-features")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = crate::http::router(services)
        .oneshot(request)
        .await
        .unwrap_or_else(|error| match error {});
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The code and `larder-code` metadata of a refusal.
fn refusal(status: &Status) -> (Code, Option<&str>) {
    let larder_code = status
        .metadata()
        .get(LARDER_CODE_METADATA)
        .map(|code| code.to_str().unwrap());
    (status.code(), larder_code)
}

#[tokio::test]
async fn reads_answer_the_same_values_and_statuses_as_http() {
    let services = services().await;
    let features = [
        "kinds:ratio",
        "scores:score",
        "kinds:count",
        "kinds:seen",
        "kinds:flag",
        "kinds:blob",
        "kinds:embedding",
        "kinds:ids",
        "scores:tags",
    ];
    let users = [1, 2, 3, 1, 4];
    let mut request = read_request(&features, &users);
    request.full_feature_names = true;
    let mut client = client(services.clone()).await;
    let grpc = client
        .get_online_features(request)
        .await
        .unwrap()
        .into_inner();
    let http = http_read(
        services.clone(),
        serde_json::json!({"features": features, "entities": {"user_id": users},
                           "full_feature_names": true}),
    )
    .await;
    assert_eq!(as_http_json(&grpc), http);
    // Edge values (i32::MIN, -0.0, empty bytes and lists, times before 1970) and no
    // entities at all agree too.
    for users in [&[5, 1, 5][..], &[]] {
        let other = client
            .get_online_features(read_request(&features, users))
            .await
            .unwrap()
            .into_inner();
        let body = serde_json::json!({"features": features, "entities": {"user_id": users}});
        assert_eq!(
            as_http_json(&other),
            http_read(services.clone(), body).await,
            "{users:?}"
        );
        assert_eq!(other.results.len(), 1 + features.len());
    }

    // And what both say, spelled out for a few columns.
    assert_eq!(
        grpc.feature_names[..3],
        ["user_id", "kinds__ratio", "scores__score"]
    );
    assert_eq!(grpc.results.len(), 1 + features.len());
    let present = proto::FieldStatus::Present as i32;
    let not_found = proto::FieldStatus::NotFound as i32;
    let aged_out = proto::FieldStatus::OutsideMaxAge as i32;
    assert_eq!(grpc.results[0].values, users.map(int64));
    assert_eq!(
        grpc.results[3].values[0].val,
        Some(Val::Int32Val(-7)),
        "int32 stays int32"
    );
    assert_eq!(
        grpc.results[3].statuses,
        [present, aged_out, not_found, present, not_found]
    );
    assert_eq!(grpc.results[1].values[3].val, Some(Val::FloatVal(0.1)));
    assert_eq!(
        grpc.results[2].values[0].val,
        Some(Val::DoubleVal(0.1 + 0.2))
    );
    assert_eq!(
        grpc.results[2].statuses,
        [present, not_found, present, present, not_found]
    );
    assert_eq!(grpc.results[2].values[2].val, None, "a stored null");
    assert_eq!(
        grpc.results[4].values[0].val,
        Some(Val::TimestampMicrosVal(1_700_000_000_123_456))
    );
    assert_eq!(
        grpc.results[6].values[0].val,
        Some(Val::BytesVal(vec![0, 1, 254, 255]))
    );
    let Some(Val::VectorVal(vector)) = &grpc.results[7].values[0].val else {
        panic!("a vector: {:?}", grpc.results[7].values[0]);
    };
    assert_eq!(
        vector.val.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        [0.1f32.to_bits(), (-1e-40f32).to_bits()]
    );
    assert_eq!(http["results"][9]["values"][2], serde_json::json!([]));
    assert_eq!(
        http["results"][8]["values"][0],
        serde_json::json!([i64::MIN, null, -1])
    );
    assert_eq!(
        http["results"][4]["event_timestamps"][1],
        serde_json::json!(OLD.to_rfc3339()),
        "an aged-out value keeps its event time"
    );
}

#[tokio::test]
async fn a_partial_push_changes_only_the_feature_sent() {
    let mut client = client(services().await).await;
    let read = |client: &FeatureServingClient<Channel>| {
        let mut client = client.clone();
        async move {
            let response = client
                .get_online_features(read_request(&["scores:score", "scores:tags"], &[1, 3]))
                .await
                .unwrap()
                .into_inner();
            (
                response.results[1].values.clone(),
                response.results[2].values.clone(),
                response.results[1].event_timestamps_micros.clone(),
            )
        }
    };
    let (_, tags_before, _) = read(&client).await;
    let pushed_at = Timestamp::now();
    let push = |score: f64, at: Timestamp| proto::PushRequest {
        target: Some(proto::push_request::Target::FeatureViewName(
            "scores".to_string(),
        )),
        columns: [
            ("user_id".to_string(), column(vec![int64(1)])),
            (
                "event_timestamp".to_string(),
                column(vec![proto::Value {
                    val: Some(Val::TimestampMicrosVal(at.as_micros())),
                }]),
            ),
            (
                "score".to_string(),
                column(vec![proto::Value {
                    val: Some(Val::DoubleVal(score)),
                }]),
            ),
        ]
        .into_iter()
        .collect(),
        to: proto::PushTo::Online as i32,
        partial: true,
    };
    let answer = client
        .push(push(0.75, pushed_at))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.feature_views,
        [proto::PushedView {
            feature_view: "scores".to_string(),
            rows: 1,
            written: 1,
            skipped_stale: 0,
            written_offline: 0,
        }]
    );
    let (scores, tags, times) = read(&client).await;
    let double = |number| proto::Value {
        val: Some(Val::DoubleVal(number)),
    };
    assert_eq!(scores, [double(0.75), proto::Value { val: None }]);
    assert_eq!(tags, tags_before, "the tags were not sent: unchanged");
    assert_eq!(
        tags[0].val,
        Some(Val::ListVal(proto::ListValue {
            val: vec![
                proto::Value {
                    val: Some(Val::StringVal("a".to_string()))
                },
                proto::Value {
                    val: Some(Val::StringVal("é".to_string()))
                },
            ]
        }))
    );
    assert_eq!(
        times[0],
        pushed_at.as_micros(),
        "the row takes the event time"
    );

    // An older partial update is stale: nothing changes.
    let stale = client.push(push(9.0, OLD)).await.unwrap().into_inner();
    assert_eq!(
        (
            stale.feature_views[0].written,
            stale.feature_views[0].skipped_stale
        ),
        (0, 1)
    );
    let (scores, tags_after, _) = read(&client).await;
    assert_eq!(scores[0], double(0.75));
    assert_eq!(tags_after, tags_before);
}

#[tokio::test]
async fn refusals_carry_their_code_and_larders_metadata() {
    let services = services().await;
    let mut grpc = client(services.clone()).await;
    let push_to = |target, to| proto::PushRequest {
        target,
        columns: [("user_id".to_string(), column(vec![int64(1)]))]
            .into_iter()
            .collect(),
        to,
        partial: false,
    };
    use proto::push_request::Target;
    let unknown_view = grpc
        .push(push_to(
            Some(Target::FeatureViewName("nope".to_string())),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&unknown_view),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    assert_eq!(unknown_view.message(), "unknown feature view 'nope'");
    let unknown_source = grpc
        .push(push_to(Some(Target::PushSourceName("nope".to_string())), 0))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&unknown_source),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    assert_eq!(unknown_source.message(), "unknown push source 'nope'");

    // Malformed requests: no target, an unknown `to`, no features, a bad feature reference.
    let no_target = grpc.push(push_to(None, 0)).await.unwrap_err();
    assert_eq!(
        refusal(&no_target),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    let bad_to = grpc
        .push(push_to(
            Some(Target::FeatureViewName("scores".to_string())),
            7,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&bad_to),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    assert_eq!(bad_to.message(), "unknown 'to' value 7");
    let mut no_features = read_request(&[], &[1]);
    no_features.kind = None;
    let no_features = grpc.get_online_features(no_features).await.unwrap_err();
    assert_eq!(
        refusal(&no_features),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );
    assert_eq!(
        no_features.message(),
        "the request names no features: set 'features' or 'feature_service'"
    );
    let bad_entity = grpc
        .get_online_features(proto::GetOnlineFeaturesRequest {
            entities: [(
                "user_id".to_string(),
                column(vec![proto::Value {
                    val: Some(Val::BoolVal(true)),
                }]),
            )]
            .into_iter()
            .collect(),
            ..read_request(&["scores:score"], &[])
        })
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&bad_entity),
        (Code::InvalidArgument, Some("INVALID_ARGUMENT"))
    );

    // Without direct writes, a push is NOT_FOUND.
    let mut reads_only = client(Services::reads_only(Arc::clone(&services.features))).await;
    let disabled = reads_only
        .push(push_to(
            Some(Target::FeatureViewName("scores".to_string())),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(refusal(&disabled), (Code::NotFound, Some("NOT_FOUND")));
    assert_eq!(
        disabled.message(),
        "direct writes are not enabled on this server"
    );
}

#[tokio::test]
async fn undecodable_requests_are_invalid_arguments_from_the_transport() {
    let channel = start(services().await).await;
    let garbage = [
        // A field key whose varint never ends.
        vec![0xff, 0xff, 0xff],
        // `feature_service` (field 2) holding invalid UTF-8.
        vec![0x12, 0x02, 0xff, 0xfe],
        // `features` (field 1) cut short: 5 bytes announced, 1 sent.
        vec![0x0a, 0x05, 0x0a],
    ];
    for bytes in garbage {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<
            EncodedOnlineFeaturesResponse,
            proto::GetOnlineFeaturesResponse,
        >::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/larder.serving.v1.FeatureServing/GetOnlineFeatures",
        );
        let status = grpc
            .unary(
                // Any message is its wire bytes: send garbage as one.
                tonic::Request::new(EncodedOnlineFeaturesResponse::from_wire_bytes(
                    bytes.clone(),
                )),
                path,
                codec,
            )
            .await
            .unwrap_err();
        // The transport's answer, not Larder's: no larder-code, but the client's fault.
        assert_eq!(
            refusal(&status),
            (Code::InvalidArgument, None),
            "{bytes:?}: {status:?}"
        );
    }
    // The same channel still serves a good request.
    let mut client = FeatureServingClient::new(channel);
    let answer = client
        .get_online_features(read_request(&["scores:score"], &[1]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.results[1].values[0].val,
        Some(Val::DoubleVal(0.1 + 0.2))
    );
}
