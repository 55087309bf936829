//! Direct writes over gRPC with typed values, pushes to the offline store (read back by
//! training sets), and training sets over gRPC with an Arrow IPC entity table.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{
    FeatureList, GetHistoricalFeaturesRequest, PushRequest, PushTo, RepeatedValue, Value,
    get_historical_features_request, push_request,
};
use serde_json::json;

use crate::util::{DemoRepo, Server, larder_ok, with_grpc_client};

pub(crate) const RELEVANCE: &str = "\
sources:
  - name: relevance_push
    type: push
    description: Scores computed by the relevance model service

feature_views:
  - name: relevance
    version: 1
    entities: [user]
    source: relevance_push
    ttl: 30d
    features:
      - {name: score, dtype: float64}
      - {name: model, dtype: string}
";

fn column(values: Vec<Val>) -> RepeatedValue {
    RepeatedValue {
        val: values
            .into_iter()
            .map(|val| Value { val: Some(val) })
            .collect(),
    }
}

/// A typed gRPC push of (user, event time, score) rows for the relevance view.
fn relevance_push(rows: &[(i64, i64, Val)], to: PushTo) -> PushRequest {
    let users = rows.iter().map(|row| Val::Int32Val(row.0 as i32)).collect();
    let times = rows
        .iter()
        .map(|row| Val::TimestampMicrosVal(row.1))
        .collect();
    let scores = rows.iter().map(|row| row.2.clone()).collect();
    let models = rows
        .iter()
        .map(|_| Val::StringVal("v2".to_string()))
        .collect();
    PushRequest {
        target: Some(push_request::Target::PushSourceName(
            "relevance_push".into(),
        )),
        columns: [
            ("user_id".to_string(), column(users)),
            ("event_timestamp".to_string(), column(times)),
            ("score".to_string(), column(scores)),
            ("model".to_string(), column(models)),
        ]
        .into_iter()
        .collect(),
        to: to as i32,
        partial: false,
    }
}

fn online_scores(server: &Server, users: &[i64]) -> Vec<serde_json::Value> {
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["relevance:score"], "entities": {"user_id": users}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    response["results"][1]["values"].as_array().unwrap().clone()
}

fn entity_table_ipc(users: &[i64], times: &[i64]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("label", DataType::Int64, false),
    ]));
    let labels: Vec<i64> = (0..users.len() as i64).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(users.to_vec())),
            Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")),
            Arc::new(Int64Array::from(labels)),
        ],
    )
    .unwrap();
    ipc_of(&batch)
}

#[test]
fn grpc_pushes_typed_rows_online_and_offline_and_serves_training_sets() {
    let repo = DemoRepo::init(10);
    std::fs::write(repo.path.join("features/relevance.yaml"), RELEVANCE).unwrap();
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let now = chrono::Utc::now().timestamp_micros();
    let hour = 3_600_000_000_i64;
    let (earlier, later) = (now - 2 * hour, now - hour);

    // HTTP push of JSON rows, to both stores.
    let body = json!({
        "push_source_name": "relevance_push",
        "to": "online_and_offline",
        "df": {
            "user_id": [1, 2],
            "event_timestamp": [earlier / 1_000_000, earlier / 1_000_000],
            "score": [0.1, 0.2],
            "model": ["v1", "v1"],
        },
    });
    let (status, response) = server.post("/push", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["feature_views"][0]["written"], 2);
    assert_eq!(response["feature_views"][0]["written_offline"], 2);
    assert_eq!(
        online_scores(&server, &[1, 2]),
        vec![json!(0.1), json!(0.2)]
    );

    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        // A typed push to the offline store only: history grows, the online value stays.
        // int32 user ids and an int64 score are converted to the declared types.
        let pushed = client
            .push(relevance_push(
                &[(1, later, Val::Int64Val(9))],
                PushTo::Offline,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pushed.feature_views[0].written, 0);
        assert_eq!(pushed.feature_views[0].written_offline, 1);
        assert_eq!(online_scores(&server, &[1]), vec![json!(0.1)]);

        // Online only, read back at once over HTTP.
        let pushed = client
            .push(relevance_push(
                &[(3, later, Val::DoubleVal(0.5))],
                PushTo::Online,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                pushed.feature_views[0].written,
                pushed.feature_views[0].written_offline
            ),
            (1, 0)
        );
        assert_eq!(online_scores(&server, &[3]), vec![json!(0.5)]);

        // A bad row refuses the whole push and names the row and column.
        let refused = client
            .push(relevance_push(
                &[
                    (4, later, Val::DoubleVal(0.4)),
                    (5, later, Val::StringVal("high".into())),
                ],
                PushTo::OnlineAndOffline,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("row 1, column 'score'"),
            "{}",
            refused.message()
        );
        assert_eq!(online_scores(&server, &[4]), vec![serde_json::Value::Null]);

        // A batch view takes no offline pushes: its next run would replace them.
        let mut batch_view = relevance_push(&[(6, later, Val::DoubleVal(0.6))], PushTo::Offline);
        batch_view.target = Some(push_request::Target::FeatureViewName("user_profile".into()));
        let refused = client.push(batch_view).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("not a push source"),
            "{}",
            refused.message()
        );

        // The training set sees both offline pushes, point in time: user 1 had 0.1 before
        // the later push and 9.0 after it; user 3 was pushed online only; row order is kept.
        let users = [1_i64, 1, 2, 3];
        let times = [earlier + 1, later + 1, now, now];
        let request = GetHistoricalFeaturesRequest {
            kind: Some(get_historical_features_request::Kind::Features(
                FeatureList {
                    val: vec!["relevance:score".into()],
                },
            )),
            entities_arrow_ipc: entity_table_ipc(&users, &times),
            entity_timestamp_column: String::new(),
            full_feature_names: false,
        };
        let mut stream = client
            .get_historical_features(request)
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            bytes.extend(chunk.data);
        }
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let (mut labels, mut scores) = (Vec::new(), Vec::new());
        for batch in reader {
            let batch = batch.unwrap();
            let label = batch.column_by_name("label").unwrap();
            let label = label.as_any().downcast_ref::<Int64Array>().unwrap();
            let score = batch.column_by_name("score").unwrap();
            let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
            for row in 0..batch.num_rows() {
                labels.push(label.value(row));
                scores.push(score.is_valid(row).then(|| score.value(row)));
            }
        }
        assert_eq!(labels, vec![0, 1, 2, 3]);
        assert_eq!(scores, vec![Some(0.1), Some(9.0), Some(0.2), None]);

        // Errors keep their meaning over gRPC.
        let unknown = GetHistoricalFeaturesRequest {
            kind: Some(get_historical_features_request::Kind::Features(
                FeatureList {
                    val: vec!["relevance:nope".into()],
                },
            )),
            entities_arrow_ipc: entity_table_ipc(&[1], &[now]),
            entity_timestamp_column: String::new(),
            full_feature_names: false,
        };
        let error = client.get_historical_features(unknown).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("no feature 'nope'"),
            "{}",
            error.message()
        );
        let garbage = GetHistoricalFeaturesRequest {
            kind: Some(get_historical_features_request::Kind::FeatureService(
                "ranking_model".into(),
            )),
            entities_arrow_ipc: b"not arrow".to_vec(),
            entity_timestamp_column: String::new(),
            full_feature_names: false,
        };
        let error = client.get_historical_features(garbage).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("Arrow IPC"), "{}", error.message());
    });
}

const ARROW: &str = "application/vnd.apache.arrow.stream";

/// Reads an Arrow IPC stream into one batch.
fn read_ipc(bytes: &[u8]) -> RecordBatch {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap_or_else(|error| {
            panic!(
                "not Arrow IPC ({error}): {}",
                String::from_utf8_lossy(bytes)
            )
        });
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn ipc_of(batch: &RecordBatch) -> Vec<u8> {
    let mut writer =
        arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
    writer.write(batch).unwrap();
    writer.into_inner().unwrap()
}

#[test]
fn arrow_bodies_and_answers_keep_types_and_partial_updates_work_over_grpc() {
    let repo = DemoRepo::init(10);
    std::fs::write(repo.path.join("features/relevance.yaml"), RELEVANCE).unwrap();
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let now = chrono::Utc::now().timestamp_micros();
    let hour = 3_600_000_000_i64;

    // Rows as Arrow (int32 ids, float64 scores): written online and offline.
    let rows = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(arrow::array::Int32Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![now - 2 * hour; 2]).with_timezone("UTC")),
        ),
        ("score", Arc::new(Float64Array::from(vec![0.25, 0.5]))),
        (
            "model",
            Arc::new(arrow::array::StringArray::from(vec!["v1", "v1"])),
        ),
    ])
    .unwrap();
    let (status, _, body) = server.post_bytes(
        "/push?push_source_name=relevance_push&to=online_and_offline",
        ARROW,
        "application/json",
        &ipc_of(&rows),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let response: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["feature_views"][0]["written_offline"], 2);

    // A partial update over gRPC: only `model` changes, `score` stays.
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let request = PushRequest {
            target: Some(push_request::Target::FeatureViewName("relevance".into())),
            columns: [
                ("user_id".to_string(), column(vec![Val::Int64Val(1)])),
                (
                    "event_timestamp".to_string(),
                    column(vec![Val::TimestampMicrosVal(now - hour)]),
                ),
                (
                    "model".to_string(),
                    column(vec![Val::StringVal("v2".into())]),
                ),
            ]
            .into_iter()
            .collect(),
            to: PushTo::Online as i32,
            partial: true,
        };
        let pushed = client.push(request).await.unwrap().into_inner();
        assert_eq!(pushed.feature_views[0].written, 1);
    });

    // The online answer as Arrow: declared types, statuses and event times.
    let request = json!({"features": ["relevance:score", "relevance:model"],
                         "entities": {"user_id": [1, 2, 3]}});
    let (status, content_type, body) = server.post_bytes(
        "/get-online-features",
        "application/json",
        ARROW,
        request.to_string().as_bytes(),
    );
    assert_eq!((status, content_type.as_str()), (200, ARROW));
    let answer = read_ipc(&body);
    let schema = answer.schema();
    let names: Vec<&str> = schema
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .collect();
    assert_eq!(
        names,
        [
            "user_id",
            "score",
            "score__status",
            "score__event_timestamp",
            "model",
            "model__status",
            "model__event_timestamp"
        ]
    );
    let scores = answer
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(
        (scores.value(0), scores.value(1), scores.is_null(2)),
        (0.25, 0.5, true)
    );
    let models = answer
        .column(4)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!((models.value(0), models.value(1)), ("v2", "v1"));
    let statuses = answer
        .column(2)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(
        (statuses.value(0), statuses.value(2)),
        ("PRESENT", "NOT_FOUND")
    );
    let times = answer
        .column(3)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(
        (times.value(0), times.value(1), times.is_null(2)),
        (now - hour, now - 2 * hour, true)
    );

    // A training set from an Arrow entity table, features in the query string.
    let entities = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int64Array::from(vec![2, 1])) as arrow::array::ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(vec![now, now - 3 * hour]).with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap();
    let (status, _, body) = server.post_bytes(
        "/get-historical-features?features=relevance:score",
        ARROW,
        ARROW,
        &ipc_of(&entities),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let training = read_ipc(&body);
    let scores = training
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    // User 2 sees its pushed score; user 1 asks before any row existed.
    assert_eq!((scores.value(0), scores.is_null(1)), (0.5, true));

    // A body that is not Arrow is a clear 400.
    let (status, _, body) = server.post_bytes(
        "/write-to-online-store?feature_view_name=relevance",
        ARROW,
        "application/json",
        b"not arrow at all",
    );
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not a readable Arrow IPC stream"));
}
