//! Sources on S3-compatible object storage (a real moto server): Parquet by key and by
//! prefix, CSV by prefix; materialized values equal those of the same files read locally;
//! a missing object is a clear error naming the source.

use std::path::Path;

use larder_testing::MotoServer;
use serde_json::json;

use crate::util::{DemoRepo, Server, larder, larder_ok};

/// An S3 client good enough for test fixtures: moto accepts unsigned requests.
pub struct S3Fixture {
    endpoint: String,
}

impl S3Fixture {
    pub fn new(server: &MotoServer) -> Self {
        Self {
            endpoint: server.endpoint(),
        }
    }

    pub fn create_bucket(&self, bucket: &str) {
        ureq::put(&format!("{}/{bucket}", self.endpoint))
            .send_empty()
            .unwrap_or_else(|error| panic!("creating bucket {bucket}: {error}"));
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        ureq::put(&format!("{}/{bucket}/{key}", self.endpoint))
            .send(body)
            .unwrap_or_else(|error| panic!("putting s3://{bucket}/{key}: {error}"));
    }

    pub fn put_file(&self, bucket: &str, key: &str, file: &Path) {
        self.put(bucket, key, &std::fs::read(file).unwrap());
    }

    /// The `s3:` section of a `larder.yaml` that reads from this server.
    pub fn config_section(&self) -> String {
        format!(
            "s3:\n  endpoint: {}\n  region: us-east-1\n  access_key_id: test\n  secret_access_key: test\n",
            self.endpoint
        )
    }

    /// Points `repo`'s `larder.yaml` at this server.
    pub fn configure(&self, repo: &Path) {
        let config_path = repo.join("larder.yaml");
        let mut text = std::fs::read_to_string(&config_path).unwrap();
        text.push_str(&self.config_section());
        std::fs::write(&config_path, text).unwrap();
    }
}

/// Replaces a source path in the demo's definitions.
pub fn repoint_source(repo: &Path, from: &str, to: &str) {
    let definitions = repo.join("features/users.yaml");
    let text = std::fs::read_to_string(&definitions).unwrap();
    assert!(text.contains(from), "{from} not in the demo definitions");
    std::fs::write(&definitions, text.replace(from, to)).unwrap();
}

#[test]
fn parquet_and_csv_sources_on_s3_materialize_like_local_files() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let s3 = S3Fixture::new(&moto);
    s3.create_bucket("lake");

    let local = DemoRepo::init(300);
    larder_ok(&local.path, &["apply"]);
    larder_ok(&local.path, &["materialize"]);

    // The same files, on S3: profiles by key, activity split under a prefix.
    let remote = DemoRepo::init(300);
    let sources = remote.path.join("data/sources");
    s3.put_file(
        "lake",
        "profiles/snapshot.parquet",
        &sources.join("profiles.parquet"),
    );
    s3.put_file(
        "lake",
        "activity/part-0.parquet",
        &sources.join("activity.parquet"),
    );
    s3.put("lake", "activity/_SUCCESS", b"");
    std::fs::remove_dir_all(&sources).unwrap();
    s3.configure(&remote.path);
    repoint_source(
        &remote.path,
        "data/sources/profiles.parquet",
        "s3://lake/profiles/snapshot.parquet",
    );
    repoint_source(
        &remote.path,
        "data/sources/activity.parquet",
        "s3://lake/activity/",
    );
    larder_ok(&remote.path, &["apply"]);
    let materialized = larder_ok(&remote.path, &["materialize"]);
    assert!(
        materialized.contains("300 written online"),
        "{materialized}"
    );

    let body =
        json!({"feature_service": "ranking_model", "entities": {"user_id": [1, 2, 150, 299]}})
            .to_string();
    let reference = Server::start(&local.path);
    let (status, expected) = reference.post("/get-online-features", &body);
    assert_eq!(status, 200, "{expected}");
    drop(reference);
    let server = Server::start(&remote.path);
    let (status, served) = server.post("/get-online-features", &body);
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["results"], expected["results"]);
    drop(server);

    // CSV files under a prefix.
    s3.put(
        "lake",
        "ratings/2026-01-01.csv",
        b"merchant_id,rating,reviews,event_timestamp\n1,4.5,10,2026-01-01T00:00:00Z\n2,3.0,4,2026-01-01T00:00:00Z\n",
    );
    s3.put(
        "lake",
        "ratings/2026-01-02.csv",
        b"merchant_id,rating,reviews,event_timestamp\n1,4.75,12,2026-01-02T00:00:00Z\n",
    );
    std::fs::write(
        remote.path.join("features/merchants.yaml"),
        "entities:\n  - name: merchant\n    join_keys: [{name: merchant_id, dtype: int64}]\n\
         sources:\n  - name: merchant_ratings\n    type: file\n    path: s3://lake/ratings/\n    format: csv\n    timestamp_field: event_timestamp\n\
         feature_views:\n  - name: merchant_rating\n    version: 1\n    entities: [merchant]\n    source: merchant_ratings\n    features:\n      - {name: rating, dtype: float64}\n      - {name: reviews, dtype: int64}\n",
    )
    .unwrap();
    larder_ok(&remote.path, &["apply"]);
    let materialized = larder_ok(&remote.path, &["materialize", "--views", "merchant_rating"]);
    assert!(materialized.contains("3 rows scanned"), "{materialized}");
    let server = Server::start(&remote.path);
    let (status, served) = server.post(
        "/get-online-features",
        &json!({"features": ["merchant_rating:rating", "merchant_rating:reviews"], "entities": {"merchant_id": [1, 2]}})
            .to_string(),
    );
    assert_eq!(status, 200, "{served}");
    assert_eq!(
        served["results"][1]["values"],
        json!([4.75, 3.0]),
        "{served}"
    );
    assert_eq!(served["results"][2]["values"], json!([12, 4]), "{served}");
    drop(server);

    // A key that is not there: a clear error naming the source, nothing half-done.
    repoint_source(
        &remote.path,
        "s3://lake/profiles/snapshot.parquet",
        "s3://lake/profiles/missing.parquet",
    );
    let output = larder(&remote.path, &["apply"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("user_profiles"), "{stderr}");
}
