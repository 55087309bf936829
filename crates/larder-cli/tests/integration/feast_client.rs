//! Feast's own Python SDK (the pinned `feast` package, in the Python that
//! `LARDER_FEAST_PYTHON` names; `scripts/test.sh` installs it) against a live `larder serve`:
//! remote materialization, reads by features and by feature service, writes, pushes and
//! Feast's exceptions for Larder's errors, each checked against Larder's own HTTP answer
//! (`feast_client.py`).

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::util::{DemoRepo, Server, larder_ok};

const PUSH_VIEW_YAML: &str = "sources:
  - name: relevance_push
    type: push
feature_views:
  - name: relevance
    version: 1
    entities: [user]
    source: relevance_push
    ttl: 30d
    features:
      - {name: score, dtype: float64}
      - {name: label, dtype: string}
";

/// The Python that has `feast` installed; `None` outside CI when there is none.
fn feast_python() -> Option<PathBuf> {
    let configured = std::env::var_os("LARDER_FEAST_PYTHON").map(PathBuf::from);
    if let Some(python) = configured.filter(|python| python.is_file()) {
        return Some(python);
    }
    let hint = "scripts/test.sh installs feast==0.67.0 and sets LARDER_FEAST_PYTHON";
    if larder_testing::running_in_ci() {
        panic!("no Python with Feast's SDK, and CI requires it: {hint}");
    }
    eprintln!("\n!!!!! SKIPPED: no Python with Feast's SDK ({hint}). In CI this is a failure.\n");
    None
}

#[test]
fn feast_sdk_reads_writes_pushes_and_materializes_through_larder() {
    let Some(python) = feast_python() else {
        return;
    };
    let repo = DemoRepo::init(60);
    std::fs::write(repo.path.join("features/relevance.yaml"), PUSH_VIEW_YAML).unwrap();
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let feast_repo = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/feast_client.py"
    );
    let output = Command::new(&python)
        .arg(script)
        .arg(feast_repo.path())
        .arg(&server.base_url)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Feast's client failed against Larder:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert!(summary["checks"].as_u64().unwrap() >= 280, "{summary}");

    // What Feast's client wrote and pushed is what Larder serves, read without Feast.
    let first_user = summary["users"][0].as_i64().unwrap();
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_profile:age", "relevance:label"], "entities": {"user_id": [first_user]}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["results"][1]["values"], json!([77]), "{response}");
    assert_eq!(response["results"][2]["values"], json!(["a"]), "{response}");
    // Both Feast materializations were recorded as Larder runs.
    let runs = larder_ok(&repo.path, &["runs"]);
    assert!(runs.matches("user_activity").count() >= 2, "{runs}");
}
