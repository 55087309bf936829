//! init → apply → materialize → serve → read over HTTP, checked against the generated data.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use larder_core::Timestamp;
use serde_json::{Value, json};

use crate::util::{DemoRepo, Server, larder_ok, read_parquet};

/// One source row as JSON values by column name, plus its event time.
type SourceRow = (HashMap<String, Value>, i64);

fn cell(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => json!(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::List(_) => {
            let elements = array.as_list::<i32>().value(row);
            let elements = elements.as_primitive::<Int64Type>();
            json!(elements.values().iter().collect::<Vec<_>>())
        }
        DataType::Timestamp(_, _) => {
            json!(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        other => panic!("unexpected column type {other}"),
    }
}

/// The newest source row per user_id.
fn newest_rows(path: &Path) -> HashMap<i64, SourceRow> {
    let mut newest: HashMap<i64, SourceRow> = HashMap::new();
    for batch in read_parquet(path) {
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            let mut values = HashMap::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                values.insert(field.name().clone(), cell(column.as_ref(), row));
            }
            let user = values["user_id"].as_i64().unwrap();
            let timestamp = values["event_timestamp"].as_i64().unwrap();
            if newest
                .get(&user)
                .is_none_or(|(_, existing)| timestamp >= *existing)
            {
                newest.insert(user, (values, timestamp));
            }
        }
    }
    newest
}

/// What `user_activity.sql` computes from a raw activity row.
fn derive_activity(raw: &HashMap<String, Value>) -> HashMap<String, Value> {
    let number = |name: &str| raw[name].as_f64().unwrap();
    let mut derived = raw.clone();
    let ratio = |numerator: f64, denominator: f64| {
        if denominator > 0.0 {
            numerator / denominator
        } else {
            0.0
        }
    };
    derived.insert(
        "ctr_7d".into(),
        json!(ratio(number("clicks_7d"), number("impressions_7d"))),
    );
    derived.insert(
        "avg_session_minutes".into(),
        json!(f64::from(
            ratio(number("session_minutes_7d"), number("sessions_7d")) as f32
        )),
    );
    derived.insert(
        "conversion_rate_30d".into(),
        json!(ratio(number("purchases_30d"), number("clicks_30d"))),
    );
    derived.insert("is_active_7d".into(), json!(number("sessions_7d") > 0.0));
    derived
}

fn assert_same_value(feature: &str, served: &Value, expected: &Value) {
    match (served, expected) {
        (Value::Number(served_number), Value::Number(expected_number))
            if expected_number.is_f64() || served_number.is_f64() =>
        {
            let (served_float, expected_float) = (
                served_number.as_f64().unwrap(),
                expected_number.as_f64().unwrap(),
            );
            let tolerance = 1e-6 * expected_float.abs().max(1.0);
            assert!(
                (served_float - expected_float).abs() <= tolerance,
                "{feature}: served {served_float}, expected {expected_float}"
            );
        }
        _ => assert_eq!(served, expected, "{feature}"),
    }
}

#[test]
fn served_features_match_the_generated_source_data() {
    let repo = DemoRepo::init(600);
    let plan = larder_ok(&repo.path, &["apply"]);
    assert!(
        plan.contains("user_profile")
            && plan.contains("user_activity")
            && plan.contains("ranking_model"),
        "plan:\n{plan}"
    );
    let again = larder_ok(&repo.path, &["apply"]);
    assert!(
        again.to_lowercase().contains("no changes"),
        "a second apply must change nothing:\n{again}"
    );
    let materialized = larder_ok(&repo.path, &["materialize"]);
    assert!(
        materialized.contains("Materialized 1800 rows"),
        "600 profile rows + 1200 activity rows:\n{materialized}"
    );
    assert!(
        repo.path.join("data/offline/user_activity/v1").is_dir(),
        "offline rows are written"
    );

    let profiles = newest_rows(&repo.path.join("data/sources/profiles.parquet"));
    let activity = newest_rows(&repo.path.join("data/sources/activity.parquet"));
    assert_eq!((profiles.len(), activity.len()), (600, 600));

    let server = Server::start(&repo.path);
    let (status, health) = server.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let users = [0_i64, 1, 299, 599, 100_000];
    let body =
        json!({"feature_service": "ranking_model", "entities": {"user_id": users}}).to_string();
    let (status, response) = server.post("/get-online-features", &body);
    assert_eq!(status, 200, "{response}");
    let names: Vec<&str> = response["metadata"]["feature_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 27, "user_id + 26 features: {names:?}");
    assert_eq!(names[0], "user_id");
    let results = response["results"].as_array().unwrap();
    assert_eq!(results[0]["values"], json!(users));

    for (column_index, feature) in names.iter().enumerate().skip(1) {
        let column = &results[column_index];
        let from_profile = column_index <= 13;
        for (row, user) in users.iter().enumerate() {
            let status = column["statuses"][row].as_str().unwrap();
            let served = &column["values"][row];
            let source = if from_profile {
                profiles.get(user).cloned()
            } else {
                activity
                    .get(user)
                    .map(|(raw, time)| (derive_activity(raw), *time))
            };
            let Some((expected_row, expected_time)) = source else {
                assert_eq!(
                    (status, served),
                    ("NOT_FOUND", &Value::Null),
                    "{feature} of unknown user {user}"
                );
                continue;
            };
            assert_eq!(status, "PRESENT", "{feature} of user {user}");
            assert_same_value(
                &format!("{feature} of user {user}"),
                served,
                &expected_row[*feature],
            );
            let served_time =
                Timestamp::parse(column["event_timestamps"][row].as_str().unwrap()).unwrap();
            assert_eq!(
                served_time.as_micros(),
                expected_time,
                "{feature} timestamp of user {user}"
            );
        }
    }

    // Feature lists, full names, and the CLI read through the running server.
    let body = json!({"features": ["user_profile:age", "user_activity:clicks_7d"], "entities": {"user_id": [1, 2, 3]}, "full_feature_names": true});
    let (status, response) = server.post("/get-online-features", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["metadata"]["feature_names"],
        json!(["user_id", "user_profile__age", "user_activity__clicks_7d"])
    );
    assert_eq!(response["results"][1]["values"][0], profiles[&1].0["age"]);
    let cli = larder_ok(
        &repo.path,
        &[
            "get",
            "--entity",
            "user_id=1",
            "--features",
            "user_profile:age",
            "--json",
        ],
    );
    let cli_json: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(
        cli_json["results"][1]["values"][0], profiles[&1].0["age"],
        "larder get while serving"
    );
    drop(server);
    let cli = larder_ok(
        &repo.path,
        &[
            "get",
            "--entity",
            "user_id=1",
            "--features",
            "user_profile:age",
            "--json",
        ],
    );
    let cli_json: Value = serde_json::from_str(&cli).unwrap();
    assert_eq!(
        cli_json["results"][1]["values"][0], profiles[&1].0["age"],
        "larder get reading the store directly"
    );
}

#[test]
fn values_older_than_the_ttl_are_served_as_outside_max_age() {
    // Data from 2020: older than both views' TTLs (365d and 7d).
    let repo = DemoRepo::init_with(50, &["--anchor", "2020-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let output = larder_ok(
        &repo.path,
        &[
            "get",
            "--entity",
            "user_id=3,77",
            "--features",
            "user_profile:age,user_activity:clicks_7d",
            "--json",
        ],
    );
    let response: Value = serde_json::from_str(&output).unwrap();
    for column in 1..=2 {
        assert_eq!(
            response["results"][column]["statuses"],
            json!(["OUTSIDE_MAX_AGE", "NOT_FOUND"]),
            "{response}"
        );
        assert_eq!(response["results"][column]["values"], json!([null, null]));
    }
}
