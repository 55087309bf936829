//! Bad requests get a 4xx whose message names the problem, and the server keeps serving.

use serde_json::json;

use crate::util::{DemoRepo, Server, error_message, larder_ok};

#[test]
fn bad_requests_get_clear_4xx_answers() {
    let repo = DemoRepo::init(20);
    let config_path = repo.path.join("larder.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config.replace(
        "max_entities_per_request: 10000",
        "max_entities_per_request: 5\n  max_body_bytes: 2048",
    );
    std::fs::write(&config_path, config).unwrap();
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", r#"{"features": ["user_profile:age"], "entities": {"user_id": [1,}"#.to_string(), 400, "malformed JSON"),
        ("not an object", "[1, 2]".to_string(), 400, "invalid request"),
        ("unknown field", json!({"feature": ["user_profile:age"], "entities": {"user_id": [1]}}).to_string(), 400, "unknown field `feature`"),
        ("no features", json!({"entities": {"user_id": [1]}}).to_string(), 400, "names no features"),
        (
            "both features and service",
            json!({"features": ["user_profile:age"], "feature_service": "ranking_model", "entities": {"user_id": [1]}}).to_string(),
            400,
            "not both",
        ),
        ("unknown view", json!({"features": ["user_profle:age"], "entities": {"user_id": [1]}}).to_string(), 400, "unknown feature view 'user_profle'"),
        ("unknown feature", json!({"features": ["user_profile:agee"], "entities": {"user_id": [1]}}).to_string(), 400, "has no feature 'agee'"),
        ("bad reference", json!({"features": ["age"], "entities": {"user_id": [1]}}).to_string(), 400, "invalid feature reference 'age'"),
        ("unknown service", json!({"feature_service": "nope", "entities": {"user_id": [1]}}).to_string(), 400, "unknown feature service 'nope'"),
        ("wrong entity type", json!({"features": ["user_profile:age"], "entities": {"user_id": [1, "two"]}}).to_string(), 400, "expected a value of type int64, got a string"),
        ("float entity", json!({"features": ["user_profile:age"], "entities": {"user_id": [1.5]}}).to_string(), 400, "expected a value of type int64, got a decimal number"),
        ("missing entity column", json!({"features": ["user_profile:age"], "entities": {}}).to_string(), 400, "missing entity column 'user_id'"),
        ("unknown entity column", json!({"features": ["user_profile:age"], "entities": {"user_id": [1], "uid": [1]}}).to_string(), 400, "'uid' is not a join key"),
        ("entity column not an array", json!({"features": ["user_profile:age"], "entities": {"user_id": 1}}).to_string(), 400, "expected an array of entity key values"),
        ("too many entities", json!({"features": ["user_profile:age"], "entities": {"user_id": [1, 2, 3, 4, 5, 6]}}).to_string(), 413, "limit is 5"),
        ("oversized body", format!(r#"{{"features": ["user_profile:age"], "entities": {{"user_id": [1]}}, "pad": "{}"}}"#, "x".repeat(4096)), 413, "larger than the limit"),
    ];
    for (name, body, expected_status, expected_message) in cases {
        let (status, response) = server.post("/get-online-features", &body);
        let message = error_message(&response);
        assert_eq!(status, expected_status, "{name}: {response}");
        assert!(
            message.contains(expected_message),
            "{name}: message {message:?} should contain {expected_message:?}"
        );
    }
    let (status, _) = server.get("/no-such-route");
    assert_eq!(status, 404);

    // The server is still healthy and serving after all of that.
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_profile:age"], "entities": {"user_id": [1]}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["results"][1]["statuses"][0], "PRESENT");
}

/// Synchronous `POST /materialize` calls of one view sent at once: one run claims the view,
/// the others are answered 409 (never 500, which schemathesis once got when a call's claim
/// lost the race after its in-progress check had passed), and every run that answered 200
/// wrote the view's rows.
#[test]
fn concurrent_materialize_calls_of_one_view_conflict() {
    let repo = DemoRepo::init(2000);
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let body = json!({
        "start_ts": "2020-01-01T00:00:00Z",
        "end_ts": "2100-01-01T00:00:00Z",
        "feature_views": ["user_profile"],
    })
    .to_string();
    for round in 0..3 {
        let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..6)
                .map(|_| scope.spawn(|| server.post("/materialize?async=false", &body)))
                .collect();
            calls
                .into_iter()
                .map(|call| call.join().expect("the call thread ends"))
                .collect()
        });
        let mut succeeded = 0;
        for (status, response) in &answers {
            match status {
                200 => succeeded += 1,
                409 => assert!(
                    error_message(response).contains("is in progress"),
                    "round {round}: {response}"
                ),
                _ => panic!("round {round}: status {status}: {response}"),
            }
        }
        assert!(succeeded >= 1, "round {round}: no call ran: {answers:?}");
    }
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_profile:age"], "entities": {"user_id": [1]}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["results"][1]["statuses"][0], "PRESENT");
}
