//! Embedding features: a view's `vector_index` is kept in step with direct writes, newer
//! and older event times, null vectors and erasure, survives a `kill -9` and restart, is
//! searched over HTTP (`/retrieve-online-documents`, Feast's shape) and gRPC with filters,
//! and refuses bad input with 4xx; on the embedded index and on PostgreSQL + pgvector.

use larder_server::grpc::proto::{
    DocumentFilter, FeatureList, FilterOp, RetrieveOnlineDocumentsRequest,
    retrieve_online_documents_request, value::Val,
};
use serde_json::{Value, json};

use crate::util::{DemoRepo, Server, error_message, larder_ok, with_grpc_client};

const DOCUMENTS: &str = "\
sources:
  - name: documents_push
    type: push

feature_views:
  - name: documents
    version: 1
    entities: [user]
    source: documents_push
    ttl: 30d
    features:
      - name: embedding
        dtype: vector<4>
        vector_index: {metric: cosine}
      - {name: category, dtype: string}
      - {name: price, dtype: float64}
";

/// The seeded embedding of user `id` (never the zero vector).
fn embedding(id: i64) -> Vec<f32> {
    let angle = id as f32 * 0.37;
    vec![angle.cos(), angle.sin(), ((id % 5) as f32) * 0.2, 1.0]
}

fn cosine_distance(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    let norm = |vector: &[f32]| vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    1.0 - dot / (norm(left) * norm(right))
}

fn write(server: &Server, rows: &[(i64, &str, Value)]) -> Value {
    let body = json!({
        "feature_view_name": "documents",
        "df": {
            "user_id": rows.iter().map(|row| row.0).collect::<Vec<_>>(),
            "event_timestamp": rows.iter().map(|row| row.1).collect::<Vec<_>>(),
            "embedding": rows.iter().map(|row| row.2.clone()).collect::<Vec<_>>(),
            "category": rows.iter().map(|row| if row.0 % 2 == 0 { "even" } else { "odd" }).collect::<Vec<_>>(),
            "price": rows.iter().map(|row| row.0 as f64).collect::<Vec<_>>(),
        }
    });
    let (status, response) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 200, "{response}");
    response
}

/// The users of a search's hits, and its distances.
fn search(server: &Server, query: &[f32], top_k: usize, filters: Value) -> (Vec<i64>, Vec<f64>) {
    let body = json!({
        "features": ["documents:category", "documents:price"],
        "query": query,
        "top_k": top_k,
        "api_version": 2,
        "filters": filters,
    });
    let (status, response) = server.post("/retrieve-online-documents", &body.to_string());
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["metadata"]["feature_names"],
        json!(["user_id", "category", "price", "distance"])
    );
    let users = response["results"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_i64().unwrap())
        .collect();
    let distances = response["results"][3]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|value| value.as_f64().unwrap())
        .collect();
    for status in response["results"][1]["statuses"].as_array().unwrap() {
        assert_eq!(status, "PRESENT", "{response}");
    }
    (users, distances)
}

/// The exact answer over `live` users (brute force in the test).
fn expected(
    query: &[f32],
    live: &[(i64, Vec<f32>)],
    top_k: usize,
    keep: impl Fn(i64) -> bool,
) -> Vec<i64> {
    let mut scored: Vec<(f32, i64)> = live
        .iter()
        .filter(|(id, _)| keep(*id))
        .map(|(id, vector)| (cosine_distance(query, vector), *id))
        .collect();
    scored.sort_by(|left, right| left.0.total_cmp(&right.0).then(left.1.cmp(&right.1)));
    scored.into_iter().take(top_k).map(|(_, id)| id).collect()
}

fn scenario(repo: &DemoRepo) {
    std::fs::write(repo.path.join("features/documents.yaml"), DOCUMENTS).unwrap();
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let now = chrono::Utc::now();
    let at = |minutes_ago: i64| (now - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    let first = at(10);
    let rows: Vec<(i64, &str, Value)> = (1..=60)
        .map(|id| (id, first.as_str(), json!(embedding(id))))
        .collect();
    write(&server, &rows);
    let mut live: Vec<(i64, Vec<f32>)> = (1..=60).map(|id| (id, embedding(id))).collect();

    // Nearest first, with the metric's distances; filters on other features of the view.
    let query = embedding(7);
    let (users, distances) = search(&server, &query, 5, json!([]));
    assert_eq!(users, expected(&query, &live, 5, |_| true));
    assert_eq!(users[0], 7);
    assert!(distances[0].abs() < 1e-5, "{distances:?}");
    let (users, _) = search(
        &server,
        &query,
        5,
        json!([{"feature": "category", "eq": "even"}]),
    );
    assert_eq!(users, expected(&query, &live, 5, |id| id % 2 == 0));
    let (users, _) = search(
        &server,
        &query,
        4,
        json!([{"feature": "price", "gte": 30, "lt": 41}]),
    );
    assert_eq!(
        users,
        expected(&query, &live, 4, |id| (30..41).contains(&id))
    );
    let (users, _) = search(
        &server,
        &query,
        3,
        json!([{"feature": "price", "in": [58.0, 59, 3]}]),
    );
    assert_eq!(
        users,
        expected(&query, &live, 3, |id| [58, 59, 3].contains(&id))
    );

    // A newer vector moves user 7; an older one never comes back; a newer null hides user 9.
    let newer = at(5);
    let far = vec![-1.0f32, 0.0, 0.0, -1.0];
    write(&server, &[(7, newer.as_str(), json!(far))]);
    let older = at(20);
    let response = write(&server, &[(7, older.as_str(), json!(embedding(7)))]);
    assert_eq!(
        response["feature_views"][0]["skipped_stale"], 1,
        "{response}"
    );
    write(&server, &[(9, newer.as_str(), Value::Null)]);
    live.retain(|(id, _)| *id != 9);
    live.iter_mut()
        .filter(|(id, _)| *id == 7)
        .for_each(|(_, vector)| *vector = far.clone());
    let (users, _) = search(&server, &query, 6, json!([]));
    assert_eq!(users, expected(&query, &live, 6, |_| true));
    assert!(!users.contains(&7) && !users.contains(&9), "{users:?}");

    // Erasure reaches the index.
    let (status, body) = server.post(
        "/forget",
        &json!({"entities": {"user_id": [8]}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    live.retain(|(id, _)| *id != 8);
    let (users, _) = search(&server, &embedding(8), 5, json!([]));
    assert_eq!(users, expected(&embedding(8), &live, 5, |_| true));
    assert!(!users.contains(&8));

    // Bad input: 4xx with a message that says what is wrong, and nothing served wrong after.
    let bad = [
        (
            json!({"features": ["documents:price"], "query": [1.0, 2.0], "top_k": 3}),
            400,
            "2 components; 'documents:embedding' is vector<4>",
        ),
        (
            json!({"features": ["documents:price"], "query": [1e39, 0, 0, 1], "top_k": 3}),
            400,
            "non-finite",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "top_k": 0}),
            400,
            "top_k must be between 1 and 1000",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "top_k": 5000}),
            400,
            "top_k must be between 1 and 1000",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "filters": [{"feature": "colour", "eq": "red"}]}),
            400,
            "unknown filter feature 'colour'",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "filters": [{"feature": "price", "eq": "cheap"}]}),
            400,
            "not a float64",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "distance_metric": "L2"}),
            400,
            "uses cosine",
        ),
        (
            json!({"features": ["user_profile:age"], "query": [1, 0, 0, 1]}),
            400,
            "has no vector_index",
        ),
        (
            json!({"features": ["documents:nope"], "query": [1, 0, 0, 1]}),
            400,
            "nope",
        ),
        (
            json!({"features": ["documents:price"], "query_string": "shoes"}),
            400,
            "query_string",
        ),
        (
            json!({"features": ["documents:price"], "query": [1, 0, 0, 1], "topk": 3}),
            400,
            "unknown field",
        ),
    ];
    for (body, expected_status, expected_message) in bad {
        let (status, answer) = server.post("/retrieve-online-documents", &body.to_string());
        assert_eq!(status, expected_status, "{body}: {answer}");
        assert!(
            error_message(&answer).contains(expected_message),
            "{body}: {answer}"
        );
    }
    let (status, _) = server.post("/retrieve-online-documents", "{\"features\": [");
    assert_eq!(status, 400);
    // A write of a wrong-sized vector is refused whole: user 61 is not written either.
    let body = json!({"feature_view_name": "documents", "df": {
        "user_id": [61, 62], "event_timestamp": [newer, newer],
        "embedding": [embedding(61), [1.0, 2.0]], "category": ["x", "x"], "price": [1.0, 2.0]}});
    let (status, answer) = server.post("/write-to-online-store", &body.to_string());
    assert_eq!(status, 400, "{answer}");
    let (users, _) = search(&server, &embedding(61), 1, json!([]));
    assert_ne!(users, vec![61]);

    // gRPC answers the same as HTTP.
    let (http_users, http_distances) = search(
        &server,
        &query,
        5,
        json!([{"feature": "category", "eq": "odd"}]),
    );
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let response = client
            .retrieve_online_documents(RetrieveOnlineDocumentsRequest {
                kind: Some(retrieve_online_documents_request::Kind::Features(
                    FeatureList {
                        val: vec!["documents:category".into(), "documents:price".into()],
                    },
                )),
                query: embedding(7),
                top_k: 5,
                filters: vec![DocumentFilter {
                    feature: "category".into(),
                    op: FilterOp::Eq as i32,
                    values: vec![larder_server::grpc::proto::Value {
                        val: Some(Val::StringVal("odd".into())),
                    }],
                }],
                ..RetrieveOnlineDocumentsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let users: Vec<i64> = response.results[0]
            .values
            .iter()
            .map(|value| match value.val {
                Some(Val::Int64Val(id)) => id,
                ref other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(users, http_users);
        let distances: Vec<f64> = response.results[3]
            .values
            .iter()
            .map(|value| match value.val {
                Some(Val::FloatVal(distance)) => f64::from(distance),
                ref other => panic!("{other:?}"),
            })
            .collect();
        for (grpc, http) in distances.iter().zip(&http_distances) {
            assert!(
                (grpc - http).abs() < 1e-6,
                "{distances:?} vs {http_distances:?}"
            );
        }
        let refused = client
            .retrieve_online_documents(RetrieveOnlineDocumentsRequest {
                kind: Some(retrieve_online_documents_request::Kind::Features(
                    FeatureList {
                        val: vec!["documents:price".into()],
                    },
                )),
                query: vec![1.0],
                ..RetrieveOnlineDocumentsRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    });

    // kill -9 and restart: the index comes back with every change (nothing rebuilt by hand).
    let before = search(&server, &query, 10, json!([]));
    drop(server);
    let server = Server::start(&repo.path);
    assert_eq!(search(&server, &query, 10, json!([])), before);
    assert_eq!(before.0, expected(&query, &live, 10, |_| true));
}

#[test]
fn embeddings_are_searched_and_kept_in_step_on_the_embedded_index() {
    let repo = DemoRepo::init(20);
    scenario(&repo);
    // The index lives beside the online store, in its own folder.
    assert!(repo.path.join("data/vectors/index.redb").exists());
}

#[test]
fn embeddings_are_searched_and_kept_in_step_on_pgvector() {
    let Some(postgres) = larder_testing::PgvectorServer::start() else {
        return;
    };
    let repo = DemoRepo::init(20);
    let config_path = repo.path.join("larder.yaml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "vector_store:\n  type: pgvector\n  url: {}\n  table_prefix: it_\n",
        postgres.url()
    ));
    std::fs::write(&config_path, config).unwrap();
    scenario(&repo);
    assert!(!repo.path.join("data/vectors").exists());
}
