//! Seeds that are binary encodings (gRPC messages, Arrow IPC bodies), built from the real
//! message types so they stay valid as the protocol grows. The text seeds are files in
//! `fuzz/seeds/<target>`; `larder-fuzz-seeds` writes these beside them for libFuzzer.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use larder_core::{EntityKey, Timestamp, Value};
use larder_server::grpc::proto;
use prost::Message;

/// The generated seeds of the target `name` (none for targets whose seeds are all text).
pub fn generated(name: &str) -> Vec<Vec<u8>> {
    match name {
        "grpc_api" => grpc_seeds(),
        "http_api" => vec![
            selected(3, &arrow_rows(true)),
            selected(5, &arrow_rows(true)),
            selected(7, &arrow_rows(false)),
        ],
        "row_codec" => rows()
            .iter()
            .map(|row| larder_core::codec::encode_row_to_vec(row))
            .collect(),
        "entity_key" => [
            vec![Value::Int64(1)],
            vec![
                Value::Int64(i64::MIN),
                Value::String("merchant é".to_string()),
            ],
            vec![Value::String(String::new()), Value::String("x".repeat(200))],
        ]
        .iter()
        .filter_map(|values| EntityKey::from_values(values).ok())
        .map(|key| key.as_bytes().to_vec())
        .collect(),
        _ => Vec::new(),
    }
}

/// Rows with a value of every type, nulls, empty and nested lists, and extremes.
fn rows() -> Vec<Vec<Value>> {
    vec![
        vec![
            Value::Int32(-1),
            Value::Int64(i64::MAX),
            Value::Float32(f32::NAN),
            Value::Float64(-0.0),
            Value::Bool(true),
            Value::String("naïve".to_string()),
            Value::Bytes(vec![0, 255]),
            Value::Timestamp(Timestamp::from_seconds(1_767_225_600)),
        ],
        vec![
            Value::Null,
            Value::List(Vec::new()),
            Value::List(vec![Value::Int64(1), Value::Null]),
            Value::List(vec![Value::List(vec![Value::String("a".to_string())])]),
            Value::Vector(vec![0.5, -1.0, f32::INFINITY, 3.0]),
        ],
    ]
}

/// `body` behind the selector byte that picks a route or method.
fn selected(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut input = vec![selector];
    input.extend_from_slice(body);
    input
}

/// An Arrow IPC stream of two users' rows: join key and event time, with features or a label.
pub fn arrow_rows(with_features: bool) -> Vec<u8> {
    let mut fields = vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![1_700_000_000_000_000, 1_700_000_100_000_000])
                .with_timezone("UTC"),
        ),
    ];
    if with_features {
        fields.push(Field::new("f_int64", DataType::Int64, true));
        fields.push(Field::new("f_string", DataType::Utf8, true));
        columns.push(Arc::new(Int64Array::from(vec![Some(7), None])));
        columns.push(Arc::new(StringArray::from(vec![Some("x"), Some("y")])));
    } else {
        fields.push(Field::new("label", DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from(vec![0, 1])));
    }
    let schema = Arc::new(Schema::new(fields));
    let mut bytes = Vec::new();
    let written = RecordBatch::try_new(Arc::clone(&schema), columns).and_then(|batch| {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)?;
        writer.write(&batch)?;
        writer.finish()
    });
    match written {
        Ok(()) => bytes,
        Err(error) => panic!("harness: an Arrow seed cannot be written: {error}"),
    }
}

fn int64(value: i64) -> proto::Value {
    proto::Value {
        val: Some(proto::value::Val::Int64Val(value)),
    }
}

fn column(values: Vec<proto::Value>) -> proto::RepeatedValue {
    proto::RepeatedValue { val: values }
}

fn features(names: &[&str]) -> proto::FeatureList {
    proto::FeatureList {
        val: names.iter().map(|name| name.to_string()).collect(),
    }
}

fn grpc_seeds() -> Vec<Vec<u8>> {
    let users = HashMap::from([("user_id".to_string(), column(vec![int64(1), int64(2)]))]);
    let online = proto::GetOnlineFeaturesRequest {
        kind: Some(proto::get_online_features_request::Kind::Features(
            features(&[
                "all_types:f_int64",
                "all_types:f_vector",
                "all_types:f_list_string",
            ]),
        )),
        entities: users.clone(),
        ..Default::default()
    };
    let by_service = proto::GetOnlineFeaturesRequest {
        kind: Some(proto::get_online_features_request::Kind::FeatureService(
            "ranking".to_string(),
        )),
        entities: users.clone(),
        ..Default::default()
    };
    let documents = proto::RetrieveOnlineDocumentsRequest {
        kind: Some(proto::retrieve_online_documents_request::Kind::Features(
            features(&["all_types:f_vector", "all_types:f_string"]),
        )),
        query: vec![0.1, 0.2, 0.3, 0.4],
        top_k: 3,
        ..Default::default()
    };
    let push = proto::PushRequest {
        target: Some(proto::push_request::Target::FeatureViewName(
            "all_types".to_string(),
        )),
        columns: HashMap::from([
            ("user_id".to_string(), column(vec![int64(4)])),
            (
                "event_timestamp".to_string(),
                column(vec![proto::Value {
                    val: Some(proto::value::Val::TimestampMicrosVal(1_700_000_000_000_000)),
                }]),
            ),
            ("f_int64".to_string(), column(vec![int64(9)])),
            (
                "f_string".to_string(),
                column(vec![proto::Value {
                    val: Some(proto::value::Val::StringVal("z".to_string())),
                }]),
            ),
        ]),
        partial: true,
        ..Default::default()
    };
    let historical = proto::GetHistoricalFeaturesRequest {
        kind: Some(proto::get_historical_features_request::Kind::Features(
            features(&["all_types:f_int64"]),
        )),
        entities_arrow_ipc: arrow_rows(false),
        ..Default::default()
    };
    let forget = proto::ForgetRequest {
        entities: users,
        verify: true,
    };
    vec![
        selected(0, &online.encode_to_vec()),
        selected(0, &by_service.encode_to_vec()),
        selected(1, &documents.encode_to_vec()),
        selected(2, &push.encode_to_vec()),
        selected(3, &historical.encode_to_vec()),
        selected(4, &forget.encode_to_vec()),
    ]
}
