//! `larder forget` and `POST /forget` on the materialized demo: entities erased from the
//! online store, the digests and the offline history; audited; proved gone by `--verify`;
//! finished after a crash at every step; bad input refused with nothing erased.

use std::path::Path;

use arrow::array::Array;
use serde_json::{Value, json};

use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{ForgetRequest, RepeatedValue, Value as GrpcValue};

use crate::util::{
    DemoRepo, Server, error_message, larder, larder_ok, read_parquet, with_grpc_client,
};

fn forget_json(repo: &Path, arguments: &[&str]) -> Value {
    let mut all = vec!["forget", "--json"];
    all.extend_from_slice(arguments);
    serde_json::from_str(&larder_ok(repo, &all)).unwrap()
}

/// Rows of the entities left per store, from `larder forget --verify`.
fn left(repo: &Path, entity: &str) -> Value {
    let output = larder(repo, &["forget", "--verify", "--json", "--entity", entity]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("{error}: {stdout} {:?}", output.stderr));
    let clean = report["stores"]
        .as_object()
        .unwrap()
        .values()
        .all(|rows| rows == 0);
    assert_eq!(
        output.status.success(),
        clean,
        "exit code follows the counts: {report}"
    );
    report["stores"].clone()
}

/// Statuses of `user_profile:age` for the users, read by `larder get`.
fn statuses(repo: &Path, users: &str) -> Vec<String> {
    let response: Value = serde_json::from_str(&larder_ok(
        repo,
        &[
            "get",
            "--json",
            "--entity",
            &format!("user_id={users}"),
            "--features",
            "user_profile:age",
        ],
    ))
    .unwrap();
    response["results"][1]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|status| status.as_str().unwrap().to_string())
        .collect()
}

/// The user ids of a training set over the whole offline history.
fn training_users(repo: &Path) -> Vec<i64> {
    larder_ok(
        repo,
        &[
            "training-set",
            "--start",
            "2025-01-01",
            "--end",
            "2027-01-01",
            "--features",
            "user_profile:age,user_activity:clicks_7d",
            "--output",
            "all.parquet",
        ],
    );
    let mut users = Vec::new();
    for batch in read_parquet(&repo.join("all.parquet")) {
        let column = batch.column_by_name("user_id").unwrap();
        let column = column
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        users.extend(column.values().iter().copied());
    }
    users
}

#[test]
fn forget_erases_everywhere_audits_and_verifies() {
    let repo = DemoRepo::init_with(60, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    assert_eq!(
        statuses(&repo.path, "7,8,9"),
        ["PRESENT", "PRESENT", "PRESENT"]
    );
    let before = left(&repo.path, "user_id=7,8");
    assert!(
        before["online"].as_u64().unwrap() == 4,
        "two users in two views: {before}"
    );
    assert!(before["offline"].as_u64().unwrap() > 0, "{before}");
    let users_before = training_users(&repo.path);

    let report = forget_json(&repo.path, &["--entity", "user_id=7,8"]);
    assert_eq!(report["entities"], 2);
    assert_eq!(report["stores"]["online"]["rows"], 4, "{report}");
    // The embedded store derives its digests from its rows: erasing the rows erased them
    // (the remote stores' test below counts a digest file of their own).
    assert_eq!(report["stores"]["digests"]["rows"], 0, "{report}");
    let offline = &report["stores"]["offline"];
    assert_eq!(offline["rows"], before["offline"], "{report}");
    assert!(
        offline["files_rewritten"].as_u64().unwrap() <= offline["files_scanned"].as_u64().unwrap()
    );
    assert_eq!(report["entity_key_hashes"].as_array().unwrap().len(), 2);

    assert_eq!(
        statuses(&repo.path, "7,8,9"),
        ["NOT_FOUND", "NOT_FOUND", "PRESENT"]
    );
    assert_eq!(
        left(&repo.path, "user_id=7,8"),
        json!({"online": 0, "digests": 0, "offline": 0, "stream_state": 0})
    );
    let users_after = training_users(&repo.path);
    assert!(!users_after.contains(&7) && !users_after.contains(&8));
    let others = |users: &[i64]| {
        users
            .iter()
            .filter(|user| **user != 7 && **user != 8)
            .count()
    };
    assert_eq!(
        others(&users_after),
        others(&users_before),
        "other users' history is kept"
    );
    assert!(left(&repo.path, "user_id=9")["offline"].as_u64().unwrap() > 0);
    // A training set over the erased users gives nulls; over the others, values.
    std::fs::write(
        repo.path.join("entities.csv"),
        "user_id,event_timestamp\n7,2026-01-01T00:00:00Z\n9,2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    larder_ok(
        &repo.path,
        &[
            "training-set",
            "--entities",
            "entities.csv",
            "--features",
            "user_profile:age",
            "--output",
            "two.parquet",
        ],
    );
    let mut ages = std::collections::BTreeMap::new();
    for batch in read_parquet(&repo.path.join("two.parquet")) {
        let users = batch.column_by_name("user_id").unwrap();
        let users = users
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        let age = batch.column_by_name("age").unwrap();
        for row in 0..batch.num_rows() {
            ages.insert(users.value(row), age.is_valid(row));
        }
    }
    assert_eq!(
        ages,
        [(7, false), (9, true)].into_iter().collect(),
        "age present per user"
    );

    // The audit log: one line, hashed keys only.
    let audit = std::fs::read_to_string(repo.path.join("data/erasure/audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["request_id"], report["request_id"]);
    assert!(
        lines[0]["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("cli:")
    );
    assert_eq!(lines[0]["entity_key_hashes"], report["entity_key_hashes"]);

    // Forgetting again, or an entity nobody holds: success with zero counts, still audited.
    let again = forget_json(&repo.path, &["--entity", "user_id=7,123456"]);
    assert_eq!(again["stores"]["online"]["rows"], 0);
    assert_eq!(again["stores"]["offline"]["rows"], 0);
    let audit = std::fs::read_to_string(repo.path.join("data/erasure/audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 2);

    // A later batch run writes the entities again because the source still holds them, and
    // says so (in its output and in the run history), for each view.
    let output = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(
        output
            .matches("2 entities erased earlier (larder forget) are in the sources again")
            .count(),
        2,
        "{output}"
    );
    assert_eq!(statuses(&repo.path, "7"), ["PRESENT"]);
    let runs = std::fs::read_to_string(repo.path.join("data/runs.jsonl")).unwrap();
    let last: Vec<Value> = runs
        .lines()
        .rev()
        .take(2)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        last.iter().all(|run| run["forgotten_reintroduced"] == 2),
        "{last:?}"
    );
    let first_runs: Vec<Value> = runs
        .lines()
        .take(2)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        first_runs
            .iter()
            .all(|run| run.get("forgotten_reintroduced").is_none())
    );
}

#[test]
fn forget_refuses_bad_input_and_erases_nothing() {
    let repo = DemoRepo::init_with(20, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let refused = |arguments: &[&str]| {
        let mut all = vec!["forget"];
        all.extend_from_slice(arguments);
        let output = larder(&repo.path, &all);
        assert!(!output.status.success(), "{arguments:?} was accepted");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let unknown = refused(&["--entity", "account_id=3"]);
    assert!(
        unknown.contains("no feature view has a join key named 'account_id'"),
        "{unknown}"
    );
    let wrong_type = refused(&["--entity", "user_id=3,abc"]);
    assert!(
        wrong_type.contains("join key 'user_id' is int64"),
        "{wrong_type}"
    );
    let malformed = refused(&["--entity", "user_id"]);
    assert!(malformed.contains("join_key=value"), "{malformed}");
    let nothing = refused(&[]);
    assert!(nothing.contains("name the entities"), "{nothing}");
    assert_eq!(statuses(&repo.path, "3"), ["PRESENT"]);
    assert!(!repo.path.join("data/erasure/audit.jsonl").exists());
}

#[test]
fn forget_finishes_after_a_crash_at_every_step() {
    let repo = DemoRepo::init_with(30, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    // Two views × (stream state + one version × three stores): eight steps; crash after
    // each of the first seven.
    for (crash_after, user) in (1..=7).zip(11..) {
        let entity = format!("user_id={user}");
        let output = std::process::Command::new(crate::util::larder_binary())
            .current_dir(&repo.path)
            .env(
                "LARDER_CRASH_AT",
                format!("erasure.after_step.{crash_after}"),
            )
            .args(["forget", "--entity", &entity])
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&output.status),
            Some(9),
            "the erasure was not killed after step {crash_after}"
        );
        let pending = std::fs::read_dir(repo.path.join("data/erasure/pending"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|extension| extension == "json")
            })
            .count();
        assert_eq!(
            pending, 1,
            "one job pending after a crash at step {crash_after}"
        );
        // The next `larder forget` (here a verification) finishes it first.
        assert_eq!(
            left(&repo.path, &entity),
            json!({"online": 0, "digests": 0, "offline": 0, "stream_state": 0})
        );
        assert_eq!(statuses(&repo.path, &user.to_string()), ["NOT_FOUND"]);
    }
    let audit = std::fs::read_to_string(repo.path.join("data/erasure/audit.jsonl")).unwrap();
    let records: Vec<Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 7, "one audit record per erasure, none twice");
    for record in &records {
        assert_eq!(record["stores"]["online"]["rows"], 2, "{record}");
    }
}

#[test]
fn forget_over_http_while_serving() {
    let repo = DemoRepo::init_with(20, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let server = Server::start(&repo.path);
    let read = |user: i64| {
        let (status, body) = server.post(
            "/get-online-features",
            &json!({"features": ["user_profile:age"], "entities": {"user_id": [user]}}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        body["results"][1]["statuses"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(read(5), "PRESENT");
    let (status, body) = server.post(
        "/forget",
        &json!({"entities": {"user_id": [5]}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stores"]["online"]["rows"], 2, "{body}");
    assert_eq!(body["requested_by"], "http");
    assert_eq!(read(5), "NOT_FOUND");
    assert_eq!(read(6), "PRESENT");
    // The CLI asks the server that holds the embedded store.
    assert_eq!(
        left(&repo.path, "user_id=5"),
        json!({"online": 0, "digests": 0, "offline": 0, "stream_state": 0})
    );
    let cli = forget_json(&repo.path, &["--entity", "user_id=6"]);
    assert_eq!(cli["stores"]["online"]["rows"], 2, "{cli}");
    assert_eq!(read(6), "NOT_FOUND");

    for (body, expected) in [
        (
            json!({"entities": {"user_id": ["x"]}}),
            "join key 'user_id' is int64",
        ),
        (
            json!({"entities": {"nope": [1]}}),
            "no feature view has a join key named 'nope'",
        ),
        (json!({"entities": {}}), "name at least one entity"),
        (
            json!({"entities": {"user_id": [1]}, "extra": 1}),
            "unknown field",
        ),
    ] {
        let (status, answer) = server.post("/forget", &body.to_string());
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            error_message(&answer).contains(expected),
            "{body}: {answer}"
        );
    }
    let (status, _) = server.post("/forget", "{not json");
    assert_eq!(status, 400);
    assert_eq!(read(7), "PRESENT");

    // gRPC Forget: the same erasure and verification; bad input is INVALID_ARGUMENT.
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let entities = |value: Val| -> std::collections::HashMap<String, RepeatedValue> {
            let values = RepeatedValue {
                val: vec![GrpcValue { val: Some(value) }],
            };
            [("user_id".to_string(), values)].into_iter().collect()
        };
        let erased = client
            .forget(ForgetRequest {
                entities: entities(Val::Int64Val(7)),
                verify: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(erased.request_id.starts_with("erase-"), "{erased:?}");
        assert_eq!(erased.stores["online"].rows, 2, "{erased:?}");
        assert_eq!(erased.entity_key_hashes.len(), 1);
        let verified = client
            .forget(ForgetRequest {
                entities: entities(Val::Int64Val(7)),
                verify: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            verified.stores.values().all(|counts| counts.rows == 0),
            "{verified:?}"
        );
        assert_eq!(verified.stores.len(), 4, "{verified:?}");
        let refused = client
            .forget(ForgetRequest {
                entities: entities(Val::StringVal("seven".into())),
                verify: false,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("join key 'user_id' is int64"),
            "{refused:?}"
        );
    });
    assert_eq!(read(7), "NOT_FOUND");
    let audit = std::fs::read_to_string(repo.path.join("data/erasure/audit.jsonl")).unwrap();
    let who: Vec<String> = audit
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["requested_by"].to_string())
        .collect();
    assert_eq!(who.len(), 3, "{who:?}");
    assert_eq!(who[0], "\"http\"");
    assert!(
        who[1].starts_with("\"http"),
        "the CLI asked the server: {who:?}"
    );
    assert_eq!(who[2], "\"grpc\"");
}

/// `larder forget` on the remote online stores: a 3-node Redis Cluster and DynamoDB (moto),
/// with the digests in the local file; the same counts, reads and proof as on the embedded
/// store.
#[test]
fn forget_erases_from_redis_cluster_and_dynamodb() {
    let Some(cluster) = larder_testing::RedisCluster::start() else {
        return;
    };
    let Some(moto) = larder_testing::MotoServer::start() else {
        return;
    };
    let cluster_urls: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect();
    let stores = [
        format!(
            "  type: redis\n  cluster: true\n  urls: [{}]\n  key_prefix: \"forget:\"\n",
            cluster_urls.join(", ")
        ),
        format!(
            "  type: dynamodb\n  endpoint: {}\n  region: eu-west-1\n  table_prefix: forget.\n  access_key_id: test\n  secret_access_key: test\n",
            moto.endpoint()
        ),
    ];
    for store in &stores {
        let repo = DemoRepo::init_with(40, &["--anchor", "2026-01-01"]);
        repo.use_online_store(store);
        larder_ok(&repo.path, &["apply"]);
        larder_ok(&repo.path, &["materialize"]);
        assert_eq!(
            statuses(&repo.path, "5,6"),
            ["PRESENT", "PRESENT"],
            "{store}"
        );
        let report = forget_json(&repo.path, &["--entity", "user_id=5"]);
        assert_eq!(report["stores"]["online"]["rows"], 2, "{store}: {report}");
        assert_eq!(report["stores"]["digests"]["rows"], 2, "{store}: {report}");
        assert!(
            report["stores"]["offline"]["rows"].as_u64().unwrap() > 0,
            "{report}"
        );
        assert_eq!(
            statuses(&repo.path, "5,6"),
            ["NOT_FOUND", "PRESENT"],
            "{store}"
        );
        assert_eq!(
            left(&repo.path, "user_id=5"),
            json!({"online": 0, "digests": 0, "offline": 0, "stream_state": 0}),
            "{store}"
        );
    }
}

/// Forgetting `user_id=5` also erases a view keyed by (user_id, item_id): its full keys are
/// found in the digests and the offline history, and only user 5's pairs go.
#[test]
fn forget_by_part_of_a_composite_key_finds_the_full_keys() {
    let repo = DemoRepo::init_with(20, &["--anchor", "2026-01-01"]);
    std::fs::write(
        repo.path.join("data/user_items.csv"),
        "user_id,item_id,affinity,event_timestamp\n5,100,0.5,2025-12-30T00:00:00Z\n5,101,0.7,2025-12-31T00:00:00Z\n6,100,0.2,2025-12-31T00:00:00Z\n",
    )
    .unwrap();
    std::fs::write(
        repo.path.join("features/user_items.yaml"),
        "entities:\n  - name: item\n    join_keys: [{name: item_id, dtype: int64}]\n\
         sources:\n  - name: user_items\n    type: file\n    path: data/user_items.csv\n    format: csv\n    timestamp_field: event_timestamp\n\
         feature_views:\n  - name: user_item_affinity\n    version: 1\n    entities: [user, item]\n    source: user_items\n    ttl: 3650d\n    features:\n      - {name: affinity, dtype: float64}\n",
    )
    .unwrap();
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let pairs = || -> Vec<String> {
        let response: Value = serde_json::from_str(&larder_ok(
            &repo.path,
            &[
                "get",
                "--json",
                "--entity",
                "user_id=5,5,6",
                "--entity",
                "item_id=100,101,100",
                "--features",
                "user_item_affinity:affinity",
            ],
        ))
        .unwrap();
        let names: Vec<String> =
            serde_json::from_value(response["metadata"]["feature_names"].clone()).unwrap();
        let column = names.iter().position(|name| name == "affinity").unwrap();
        response["results"][column]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|status| status.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(pairs(), ["PRESENT", "PRESENT", "PRESENT"]);
    let report = forget_json(&repo.path, &["--entity", "user_id=5"]);
    assert!(
        report["views"]
            .as_array()
            .unwrap()
            .contains(&json!("user_item_affinity:v1..v1")),
        "{report}"
    );
    assert_eq!(report["skipped"], json!([]), "{report}");
    // user_profile, user_activity and the two (5, item) pairs.
    assert_eq!(report["stores"]["online"]["rows"], 4, "{report}");
    assert_eq!(
        report["entity_key_hashes"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    assert_eq!(pairs(), ["NOT_FOUND", "NOT_FOUND", "PRESENT"]);
    // User 6's pair keeps its offline row; user 5 has none left anywhere.
    assert!(left(&repo.path, "user_id=6")["offline"].as_u64().unwrap() >= 1);
    assert_eq!(
        left(&repo.path, "user_id=5"),
        json!({"online": 0, "digests": 0, "offline": 0, "stream_state": 0})
    );
}
