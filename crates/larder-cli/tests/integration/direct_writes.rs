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

/// The user_profile features of `user` as served: name → value.
fn profile_of(server: &Server, user: i64, features: &[&str]) -> Vec<Value> {
    let refs: Vec<String> = features
        .iter()
        .map(|feature| format!("user_profile:{feature}"))
        .collect();
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": refs, "entities": {"user_id": [user]}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    (1..=features.len())
        .map(|column| response["results"][column]["values"][0].clone())
        .collect()
}

#[test]
fn partial_updates_keep_other_features_follow_event_time_and_lose_nothing_under_concurrency() {
    let repo = DemoRepo::init(20);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);
    let now = chrono::Utc::now();
    let at = |seconds_ago: i64| (now - chrono::Duration::seconds(seconds_ago)).to_rfc3339();
    let before = profile_of(&server, 3, &["age", "country", "loyalty_points"]);

    // Only `age` is sent: it changes, every other feature keeps its value.
    let body = json!({"feature_view_name": "user_profile", "partial": true,
        "df": {"user_id": [3], "event_timestamp": [at(60)], "age": [77]}});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["feature_views"][0]["written"], 1);
    assert_eq!(
        profile_of(&server, 3, &["age", "country", "loyalty_points"]),
        vec![json!(77), before[1].clone(), before[2].clone()]
    );

    // An older event time than the stored row's is skipped, whatever it sends.
    let body = json!({"feature_view_name": "user_profile", "partial": true,
        "df": {"user_id": [3], "event_timestamp": [at(3600)], "country": ["XX"]}});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["feature_views"][0]["skipped_stale"], 1);
    assert_eq!(
        profile_of(&server, 3, &["country"]),
        vec![before[1].clone()]
    );

    // An entity with no row yet gets nulls for the features not sent.
    let body = json!({"feature_view_name": "user_profile", "partial": true,
        "df": {"user_id": [900_001], "event_timestamp": [at(30)], "country": ["PT"]}});
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        profile_of(&server, 900_001, &["age", "country"]),
        vec![Value::Null, json!("PT")]
    );

    // Without `partial`, a missing feature column is still refused; with it, a write that
    // sends no feature at all is refused; an unknown column is refused either way.
    for (partial, df, expected) in [
        (
            false,
            json!({"user_id": [3], "event_timestamp": [at(10)], "age": [1]}),
            "missing column 'country'",
        ),
        (
            true,
            json!({"user_id": [3], "event_timestamp": [at(10)]}),
            "sends no feature column",
        ),
        (
            true,
            json!({"user_id": [3], "event_timestamp": [at(10)], "agee": [1]}),
            "has no column 'agee'",
        ),
    ] {
        let body = json!({"feature_view_name": "user_profile", "partial": partial, "df": df});
        let (status, response) = server.post("/write-to-online-store", &body.to_string());
        assert_eq!(status, 400, "{response}");
        assert!(error_message(&response).contains(expected), "{response}");
    }

    // Eight writers update one feature each of the same entities at the same event time,
    // concurrently, 20 times over: no update is lost, so every feature holds its writer's
    // last value.
    let features = [
        ("age", json!(50)),
        ("account_age_days", json!(51)),
        ("orders_total", json!(52)),
        ("days_since_last_order", json!(53)),
        ("loyalty_points", json!(54)),
        ("country", json!("C8")),
        ("signup_channel", json!("S8")),
        ("email_verified", json!(true)),
    ];
    let users: Vec<i64> = (10..16).collect();
    let event_time = at(5);
    std::thread::scope(|scope| {
        for (feature, last_value) in &features {
            let server = &server;
            let users = &users;
            let event_time = &event_time;
            scope.spawn(move || {
                for round in 0..20 {
                    let value = match round {
                        19 => last_value.clone(),
                        _ if last_value.is_string() => json!(format!("r{round}")),
                        _ if last_value.is_boolean() => json!(round % 2 == 0),
                        _ => json!(round),
                    };
                    let body = json!({"feature_view_name": "user_profile", "partial": true,
                        "df": {"user_id": users, "event_timestamp": vec![event_time; users.len()],
                               *feature: vec![value; users.len()]}});
                    let (status, response) =
                        server.post("/write-to-online-store", &body.to_string());
                    assert_eq!(status, 200, "{feature} round {round}: {response}");
                    assert_eq!(response["feature_views"][0]["written"], users.len());
                }
            });
        }
    });
    let names: Vec<&str> = features.iter().map(|(name, _)| *name).collect();
    let expected: Vec<Value> = features.iter().map(|(_, value)| value.clone()).collect();
    for user in &users {
        assert_eq!(profile_of(&server, *user, &names), expected, "user {user}");
    }
}

/// `kill -9` of the server while four clients write: every write the server acknowledged
/// (200) is served after the restart, with its value. A write cut off by the kill may or may
/// not have landed; an acknowledged one may not be lost.
#[test]
fn acknowledged_direct_writes_survive_a_kill_9_under_load() {
    let repo = DemoRepo::init(20);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);
    let now = chrono::Utc::now().to_rfc3339();
    let acknowledged: Vec<(i64, i64)> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4i64)
            .map(|writer| {
                let (server, now) = (&server, &now);
                scope.spawn(move || {
                    let mut acknowledged = Vec::new();
                    for index in 0.. {
                        let user = 1_000_000 + writer * 1_000_000 + index;
                        let age = index % 90;
                        let body = json!({"feature_view_name": "user_profile", "df": profile_columns(&[user], now, json!([age]))});
                        match server.try_post("/write-to-online-store", &body.to_string()) {
                            Some(200) => acknowledged.push((user, age)),
                            Some(status) => panic!("write answered {status}"),
                            None => break,
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        writers
            .into_iter()
            .flat_map(|writer| writer.join().unwrap())
            .collect()
    });
    drop(server);
    assert!(
        acknowledged.len() > 100,
        "only {} writes",
        acknowledged.len()
    );
    let server = Server::start(&repo.path);
    for chunk in acknowledged.chunks(5_000) {
        let users: Vec<i64> = chunk.iter().map(|(user, _)| *user).collect();
        let served = ages(&server, &users);
        for ((user, age), value) in chunk.iter().zip(served) {
            assert_eq!(
                value,
                json!(age),
                "user {user}: an acknowledged write was lost"
            );
        }
    }
    eprintln!(
        "{} acknowledged writes, all served after kill -9 and a restart",
        acknowledged.len()
    );
}
