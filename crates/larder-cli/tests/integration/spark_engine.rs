//! The Spark offline engine end to end: the same demo repo materialized and joined once in
//! process (DataFusion) and once on a real local Spark Connect server must give the same
//! online rows, the same offline rows and the same training set, byte for byte.

use std::path::Path;

use larder_testing::SparkConnectServer;

use crate::util::{DemoRepo, Server, larder, larder_ok, parquet_files, read_parquet, sorted_rows};

const DAY: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z in microseconds.
const ANCHOR: i64 = 1_767_225_600_000_000;
const USERS: i64 = 400;

fn use_spark(repo: &DemoRepo, remote: &str) {
    let path = repo.path.join("larder.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "offline_engine:\n  type: spark\n  remote: \"{remote}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
}

fn online_rows(repo: &Path) -> serde_json::Value {
    let server = Server::start(repo);
    let users: Vec<i64> = (0..USERS + 2).collect();
    let body = serde_json::json!({
        "feature_service": "ranking_model",
        "entities": {"user_id": users},
    });
    let (status, answer) = server.post("/get-online-features", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn spark_engine_gives_the_same_online_rows_offline_rows_and_training_set_as_datafusion() {
    let Some(spark) = SparkConnectServer::start() else {
        return;
    };
    // A partitioned Delta table, read at its latest version (files the log removed stay
    // unread, the partition column is a feature).
    let lake = tempfile::tempdir().unwrap();
    let table = lake.path().join("merchants");
    crate::delta_sources::write_delta_table(&table);
    let repo = crate::delta_sources::merchant_repo(
        lake.path(),
        &table.display().to_string(),
        "",
        &format!(
            "offline_engine: {{type: spark, remote: \"{}\"}}\n",
            spark.remote()
        ),
    );
    larder_ok(&repo, &["apply"]);
    crate::delta_sources::assert_serves_latest_version(&repo);

    let in_process = DemoRepo::init_with(USERS as u64, &["--anchor", "2026-01-01"]);
    let on_spark = DemoRepo::init_with(USERS as u64, &["--anchor", "2026-01-01"]);
    use_spark(&on_spark, &spark.remote());
    // SQL that Spark rejects fails `apply`, naming the view; fixed, it applies.
    let sql_path = on_spark.path.join("features/user_activity.sql");
    let sql = std::fs::read_to_string(&sql_path).unwrap();
    std::fs::write(
        &sql_path,
        sql.replace(
            "FROM activity_events",
            "FROM activity_events WHERE no_such_column > 0",
        ),
    )
    .unwrap();
    let output = larder(&on_spark.path, &["apply"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "apply accepted SQL Spark rejects");
    assert!(
        stderr.contains("user_activity") && stderr.contains("Spark"),
        "{stderr}"
    );
    std::fs::write(&sql_path, sql).unwrap();
    // A declared type that Spark's plan contradicts points at the feature's line.
    let yaml_path = on_spark.path.join("features/users.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let wrong = "{name: clicks_7d, dtype: string}";
    std::fs::write(
        &yaml_path,
        yaml.replace("{name: clicks_7d, dtype: int64}", wrong),
    )
    .unwrap();
    let line = yaml
        .lines()
        .position(|line| line.contains("{name: clicks_7d, dtype: int64}"))
        .unwrap()
        + 1;
    let output = larder(&on_spark.path, &["apply"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "apply accepted a wrong dtype");
    assert!(
        stderr.contains(&format!("users.yaml:{line}")) && stderr.contains("clicks_7d"),
        "{stderr}"
    );
    std::fs::write(&yaml_path, yaml).unwrap();

    for repo in [&in_process, &on_spark] {
        larder_ok(&repo.path, &["apply"]);
        let stdout = larder_ok(&repo.path, &["materialize"]);
        assert!(stdout.contains("user_activity"), "{stdout}");
    }

    assert_eq!(
        online_rows(&in_process.path),
        online_rows(&on_spark.path),
        "online rows"
    );
    for view in ["user_activity", "user_profile"] {
        let offline_a = parquet_files(&in_process.path.join("data/offline").join(view));
        let offline_b = parquet_files(&on_spark.path.join("data/offline").join(view));
        assert!(!offline_a.is_empty(), "{view} has offline rows");
        let expected = sorted_rows(&offline_a, None);
        assert_eq!(
            expected,
            sorted_rows(&offline_b, Some(expected.schema())),
            "offline rows of {view}"
        );
        assert!(
            offline_b.iter().all(|file| file
                .file_name()
                .is_some_and(|name| name.to_string_lossy().contains(".snappy.parquet"))),
            "Spark wrote {view}'s offline files: {offline_b:?}"
        );
    }

    // A training set over both views: every user at instants before, inside and past each
    // TTL, an unknown user, and a row with no time.
    let mut csv = String::from("user_id,event_timestamp,label\n");
    let mut label = 0;
    for user in 0..USERS + 2 {
        for offset in [0, -DAY / 2, -3 * DAY, -8 * DAY, 30 * DAY] {
            let time = chrono::DateTime::from_timestamp_micros(ANCHOR + offset).unwrap();
            csv.push_str(&format!("{user},{},{label}\n", time.to_rfc3339()));
            label += 1;
        }
    }
    csv.push_str(&format!("7,,{label}\n"));
    let features = "user_activity:clicks_7d,user_activity:ctr_7d,user_activity:last_category,user_activity:recent_item_ids,user_profile:age,user_profile:churn_risk";
    let mut outputs = Vec::new();
    for repo in [&in_process, &on_spark] {
        std::fs::write(repo.path.join("entities.csv"), &csv).unwrap();
        larder_ok(
            &repo.path,
            &[
                "training-set",
                "--entities",
                "entities.csv",
                "--features",
                features,
                "--output",
                "training.parquet",
            ],
        );
        let batches = read_parquet(&repo.path.join("training.parquet"));
        outputs.push(arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap());
    }
    assert_eq!(outputs[0].num_rows(), label as usize + 1);
    assert_eq!(outputs[0], outputs[1], "training sets");
    assert!(
        outputs[0].column_by_name("clicks_7d").unwrap().null_count() < outputs[0].num_rows(),
        "the training set found features"
    );

    // Per view: only user_activity on Spark, user_profile in process.
    let config_path = on_spark.path.join("larder.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, format!("{config}  views: [user_activity]\n")).unwrap();
    std::fs::remove_dir_all(on_spark.path.join("data/offline")).unwrap();
    larder_ok(&on_spark.path, &["materialize", "--full-refresh"]);
    let written_by_spark = |view: &str| {
        let files = parquet_files(&on_spark.path.join("data/offline").join(view));
        assert!(!files.is_empty(), "{view} has offline files");
        files.iter().all(|file| {
            file.file_name()
                .is_some_and(|name| name.to_string_lossy().contains(".snappy.parquet"))
        })
    };
    assert!(written_by_spark("user_activity"));
    assert!(!written_by_spark("user_profile"));

    // Spark gone: materialize fails, names the server, and writes nothing.
    let remote = spark.remote();
    drop(spark);
    let activity = on_spark.path.join("data/offline/user_activity");
    let before = sorted_rows(&parquet_files(&activity), None);
    let output = larder(&on_spark.path, &["materialize"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&remote), "{stderr}");
    assert_eq!(
        sorted_rows(&parquet_files(&activity), None),
        before,
        "a failed run keeps the offline rows"
    );
}
