//! The gRPC API answers like the HTTP API, with typed values.

use larder_server::grpc::proto::get_online_features_request::Kind;
use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{
    FeatureList, FieldStatus, GetOnlineFeaturesRequest, RepeatedValue, Value,
};
use serde_json::json;

use crate::util::{DemoRepo, Server, larder_ok, with_grpc_client};

pub(crate) fn int_values(values: &[i64]) -> RepeatedValue {
    RepeatedValue {
        val: values
            .iter()
            .map(|value| Value {
                val: Some(Val::Int64Val(*value)),
            })
            .collect(),
    }
}

#[test]
fn grpc_returns_the_same_values_as_http() {
    let repo = DemoRepo::init(30);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);
    let users = [3_i64, 7, 1_000];
    let (status, http) = server.post(
        "/get-online-features",
        &json!({"feature_service": "ranking_model", "entities": {"user_id": users}}).to_string(),
    );
    assert_eq!(status, 200);

    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let request = GetOnlineFeaturesRequest {
            kind: Some(Kind::FeatureService("ranking_model".into())),
            entities: [("user_id".to_string(), int_values(&users))]
                .into_iter()
                .collect(),
            full_feature_names: false,
        };
        let response = client
            .get_online_features(request)
            .await
            .unwrap()
            .into_inner();
        let http_names: Vec<String> =
            serde_json::from_value(http["metadata"]["feature_names"].clone()).unwrap();
        assert_eq!(response.feature_names, http_names);
        for (column, vector) in response.results.iter().enumerate() {
            let http_column = &http["results"][column];
            for (row, value) in vector.values.iter().enumerate() {
                let as_json = match &value.val {
                    None => serde_json::Value::Null,
                    Some(Val::Int64Val(number)) => json!(number),
                    Some(Val::Int32Val(number)) => json!(number),
                    Some(Val::DoubleVal(number)) => json!(number),
                    Some(Val::FloatVal(number)) => json!(number),
                    Some(Val::BoolVal(flag)) => json!(flag),
                    Some(Val::StringVal(text)) => json!(text),
                    Some(Val::ListVal(list)) => json!(
                        list.val
                            .iter()
                            .map(|element| match element.val {
                                Some(Val::Int64Val(number)) => json!(number),
                                _ => serde_json::Value::Null,
                            })
                            .collect::<Vec<_>>()
                    ),
                    other => panic!("unexpected value {other:?}"),
                };
                let expected = &http_column["values"][row];
                let name = &response.feature_names[column];
                match (as_json.as_f64(), expected.as_f64()) {
                    // float32 values print shortest-as-f32 in JSON; compare closely.
                    (Some(got), Some(want)) => assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{name} row {row}: {got} vs {want}"
                    ),
                    _ => assert_eq!(&as_json, expected, "{name} row {row}"),
                }
                let status = FieldStatus::try_from(vector.statuses[row]).unwrap();
                assert_eq!(
                    status.as_str_name(),
                    http_column["statuses"][row].as_str().unwrap()
                );
                let http_time = http_column["event_timestamps"][row].as_str().unwrap();
                let http_micros = chrono::DateTime::parse_from_rfc3339(http_time)
                    .unwrap()
                    .timestamp_micros();
                assert_eq!(
                    vector.event_timestamps_micros[row], http_micros,
                    "{name} row {row}"
                );
            }
        }
        assert_eq!(
            FieldStatus::try_from(response.results[1].statuses[2]).unwrap(),
            FieldStatus::NotFound,
            "user 1000 does not exist"
        );

        let bad = GetOnlineFeaturesRequest {
            kind: Some(Kind::Features(FeatureList {
                val: vec!["user_profile:nope".into()],
            })),
            entities: [("user_id".to_string(), int_values(&[1]))]
                .into_iter()
                .collect(),
            full_feature_names: false,
        };
        let error = client.get_online_features(bad).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("has no feature 'nope'"),
            "{}",
            error.message()
        );
    });
}
