//! The demo on a real DynamoDB-compatible server (moto): apply creates the tables,
//! materialize writes, serve reads the same values as the embedded store; a down server
//! gives a 503 naming the backend and materialize fails instead of reporting success.

use larder_testing::MotoServer;
use serde_json::json;

use crate::util::{DemoRepo, Server, error_message, larder, larder_ok};

fn use_dynamodb(repo: &DemoRepo, server: &MotoServer) {
    repo.use_online_store(&format!(
        "  type: dynamodb\n  endpoint: {}\n  region: eu-west-1\n  table_prefix: demo.\n  access_key_id: test\n  secret_access_key: test\n",
        server.endpoint()
    ));
}

#[test]
fn demo_serves_from_dynamodb_like_from_the_embedded_store() {
    let Some(mut moto) = MotoServer::start() else {
        return;
    };
    let embedded = DemoRepo::init(60);
    larder_ok(&embedded.path, &["apply"]);
    larder_ok(&embedded.path, &["materialize"]);
    let repo = DemoRepo::init(60);
    use_dynamodb(&repo, &moto);
    let applied = larder_ok(&repo.path, &["apply"]);
    assert!(
        applied.contains("Prepared 2 online tables in the dynamodb store"),
        "{applied}"
    );
    let materialized = larder_ok(&repo.path, &["materialize"]);
    assert!(materialized.contains("60 written online"), "{materialized}");

    let body =
        json!({"feature_service": "ranking_model", "entities": {"user_id": [1, 2, 59, 100000]}})
            .to_string();
    let reference = Server::start(&embedded.path);
    let (status, expected) = reference.post("/get-online-features", &body);
    assert_eq!(status, 200, "{expected}");
    drop(reference);
    let server = Server::start(&repo.path);
    let (status, response) = server.post("/get-online-features", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["results"], expected["results"]);
    assert_eq!(response["results"][1]["statuses"][3], "NOT_FOUND");

    moto.kill();
    let (status, response) = server.post("/get-online-features", &body);
    assert_eq!(status, 503, "{response}");
    let message = error_message(&response);
    assert!(message.contains("'dynamodb'"), "{response}");
    let output = larder(&repo.path, &["materialize", "--full-refresh"]);
    assert!(
        !output.status.success(),
        "materialize succeeded with dynamodb down"
    );
}
