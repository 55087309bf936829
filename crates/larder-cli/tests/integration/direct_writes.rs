//! Direct writes (`/write-to-online-store`, `/push`): validated, all-or-nothing, ordered by
//! event time with the batch lane's rows, and readable as soon as the call returns.

use serde_json::{Value, json};

use crate::util::{DemoRepo, Server, error_message, larder_ok};

fn profile_columns(users: &[i64], timestamp: &str, age: Value) -> Value {
    let count = users.len();
    let repeat = |value: Value| json!(vec![value; count]);
    json!({
        "user_id": users,
        "event_timestamp": repeat(json!(timestamp)),
        "age": age,
        "country": repeat(json!("FR")),
        "account_age_days": repeat(json!(10)),
        "is_premium": repeat(json!(true)),
        "lifetime_value": repeat(json!(12.5)),
        "avg_order_value": repeat(json!(3.25)),
        "orders_total": repeat(json!(4)),
        "days_since_last_order": repeat(json!(2)),
        "credit_score": repeat(json!(700.0)),
        "email_verified": repeat(json!(false)),
        "signup_channel": repeat(json!("ads")),
        "loyalty_points": repeat(json!(99)),
        "churn_risk": repeat(json!(0.25)),
    })
}

fn ages(server: &Server, users: &[i64]) -> Vec<Value> {
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_profile:age"], "entities": {"user_id": users}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    response["results"][1]["values"].as_array().unwrap().clone()
}

#[test]
fn direct_writes_are_validated_ordered_and_readable_at_once() {
    let repo = DemoRepo::init(20);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);
    let materialized = ages(&server, &[5, 6, 7]);
    let now = chrono::Utc::now().to_rfc3339();

    // A newer value lands and is read back at once.
    let body = json!({"feature_view_name": "user_profile", "df": profile_columns(&[5, 6], &now, json!([41, 42]))});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["feature_views"][0]["written"], 2);
    assert_eq!(
        ages(&server, &[5, 6, 7]),
        vec![json!(41), json!(42), materialized[2].clone()]
    );

    // An older value (by event time) never overwrites a newer one.
    let body = json!({"feature_view_name": "user_profile", "df": profile_columns(&[5], "2020-01-01T00:00:00Z", json!([1]))});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        (
            response["feature_views"][0]["written"].as_u64(),
            response["feature_views"][0]["skipped_stale"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(ages(&server, &[5])[0], json!(41));

    // One bad row refuses the whole batch: user 7 is not written either.
    let body = json!({"feature_view_name": "user_profile", "df": profile_columns(&[7, 8], &now, json!([70, "eighty"]))});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 400, "{response}");
    let message = error_message(&response);
    assert!(
        message.contains("row 1, column 'age'") && message.contains("int64"),
        "{message}"
    );
    assert_eq!(
        ages(&server, &[7])[0],
        materialized[2],
        "a refused batch writes nothing"
    );

    // Clear errors for the rest of the shape.
    let mut missing = profile_columns(&[9], &now, json!([9]));
    missing.as_object_mut().unwrap().remove("churn_risk");
    let cases = [
        (
            "/write-to-online-store",
            json!({"feature_view_name": "user_profile", "df": missing}),
            "missing column 'churn_risk'",
        ),
        (
            "/write-to-online-store",
            json!({"feature_view_name": "nope", "df": profile_columns(&[9], &now, json!([9]))}),
            "unknown feature view 'nope'",
        ),
        (
            "/push",
            json!({"push_source_name": "user_profiles", "df": profile_columns(&[9], &now, json!([9]))}),
            "not a push source",
        ),
        (
            "/push",
            json!({"push_source_name": "nope", "df": profile_columns(&[9], &now, json!([9]))}),
            "unknown push source 'nope'",
        ),
        (
            "/write-to-online-store",
            json!({"feature_view_name": "user_profile", "df": {"user_id": [1, 2], "age": [1]}}),
            "different lengths",
        ),
        (
            "/write-to-online-store",
            json!({"feature_view_name": "user_profile", "df": profile_columns(&[9], "yesterday", json!([9]))}),
            "column 'event_timestamp'",
        ),
    ];
    for (route, body, expected) in cases {
        let (status, response) = server.post(route, &body.to_string());
        assert_eq!(status, 400, "{body}: {response}");
        let message = error_message(&response);
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}
