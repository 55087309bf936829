//! Delta Lake sources, locally and on S3-compatible storage (moto): the table is read at its
//! latest version through its log (appends, a `replaceWhere` overwrite that removes files, a
//! checkpoint), never by listing its folder, and partition columns are features like others.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use larder_testing::MotoServer;
use serde_json::json;

use crate::s3_sources::S3Fixture;
use crate::util::{Server, larder_ok};

fn merchants(rows: &[(i64, &str, f64, &str)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("merchant_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("rating", DataType::Float64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let micros = |day: &str| {
        chrono::DateTime::parse_from_rfc3339(&format!("{day}T00:00:00Z"))
            .unwrap()
            .timestamp_micros()
    };
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|row| row.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|row| row.2))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|row| micros(row.3)))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

/// Writes a Delta table partitioned by region in four versions and a checkpoint; its
/// latest version holds merchants 1 (eu, 4.5), 2 (us, 3.0) and 4 (us, 2.0). Merchant 3 and
/// the first row of merchant 1 are in files the log removed.
pub fn write_delta_table(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    let url = url::Url::from_directory_path(folder).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let table = DeltaTable::try_from_url(url).await.unwrap();
        let table = table
            .write(vec![merchants(&[
                (1, "eu", 4.0, "2026-11-01"),
                (2, "us", 3.0, "2026-11-01"),
            ])])
            .with_partition_columns(["region"])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
        let table = table
            .write(vec![merchants(&[(3, "eu", 5.0, "2026-11-02")])])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .unwrap();
        let table = table
            .write(vec![merchants(&[(1, "eu", 4.5, "2026-11-03")])])
            .with_save_mode(SaveMode::Overwrite)
            .with_replace_where("region = 'eu'")
            .await
            .unwrap();
        table
            .write(vec![merchants(&[(4, "us", 2.0, "2026-11-03")])])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
    });
}

/// A feature repo with one view over a Delta source at `path` (`format` line optional).
pub fn merchant_repo(
    parent: &Path,
    path: &str,
    format_line: &str,
    extra_config: &str,
) -> std::path::PathBuf {
    let repo = parent.join("repo");
    std::fs::create_dir_all(repo.join("features")).unwrap();
    std::fs::write(
        repo.join("larder.yaml"),
        format!("project: delta_demo\n{extra_config}"),
    )
    .unwrap();
    std::fs::write(
        repo.join("features/merchants.yaml"),
        format!(
            "entities:\n  - name: merchant\n    join_keys: [{{name: merchant_id, dtype: int64}}]\n\
             sources:\n  - name: merchant_ratings\n    type: file\n    path: {path}\n{format_line}    timestamp_field: event_timestamp\n\
             feature_views:\n  - name: merchant_rating\n    version: 1\n    entities: [merchant]\n    source: merchant_ratings\n    features:\n      - {{name: rating, dtype: float64}}\n      - {{name: region, dtype: string}}\n"
        ),
    )
    .unwrap();
    repo
}

pub fn assert_serves_latest_version(repo: &Path) {
    let materialized = larder_ok(repo, &["materialize"]);
    assert!(materialized.contains("3 rows scanned"), "{materialized}");
    let server = Server::start(repo);
    let (status, served) = server.post(
        "/get-online-features",
        &json!({"features": ["merchant_rating:rating", "merchant_rating:region"], "entities": {"merchant_id": [1, 2, 3, 4]}})
            .to_string(),
    );
    assert_eq!(status, 200, "{served}");
    assert_eq!(
        served["results"][1]["values"],
        json!([4.5, 3.0, null, 2.0]),
        "{served}"
    );
    assert_eq!(
        served["results"][1]["statuses"],
        json!(["PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"]),
        "{served}"
    );
    assert_eq!(
        served["results"][2]["values"],
        json!(["eu", "us", null, "us"]),
        "{served}"
    );
}

#[test]
fn delta_tables_are_read_through_their_log() {
    let temp = tempfile::tempdir().unwrap();
    let table = temp.path().join("lake/merchants");
    write_delta_table(&table);

    // Local, format inferred from the `_delta_log` folder.
    let local = tempfile::tempdir().unwrap();
    let repo = merchant_repo(local.path(), &table.display().to_string(), "", "");
    larder_ok(&repo, &["apply"]);
    let registry = std::fs::read_to_string(repo.join("data/registry.json")).unwrap();
    assert!(registry.contains(r#""format": "delta""#), "{registry}");
    assert_serves_latest_version(&repo);

    // The same table on S3.
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let s3 = S3Fixture::new(&moto);
    s3.create_bucket("lake");
    let mut uploaded = 0;
    for entry in walk(&table) {
        let key = entry.strip_prefix(temp.path().join("lake")).unwrap();
        s3.put_file("lake", &key.to_string_lossy(), &entry);
        uploaded += 1;
    }
    assert!(uploaded >= 8, "{uploaded} files");
    let remote = tempfile::tempdir().unwrap();
    let repo = merchant_repo(
        remote.path(),
        "s3://lake/merchants",
        "    format: delta\n",
        &s3.config_section(),
    );
    larder_ok(&repo, &["apply"]);
    assert_serves_latest_version(&repo);
}

/// Every file below `folder`.
fn walk(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
