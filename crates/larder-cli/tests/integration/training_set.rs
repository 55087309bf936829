//! `larder training-set` on the materialized demo, checked against the generated source data.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};

use crate::util::{DemoRepo, Server, error_detail, larder, larder_ok, read_parquet};

const DAY: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z in microseconds.
const ANCHOR: i64 = 1_767_225_600_000_000;

fn int64_column(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let column = cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
    let values = column.as_primitive::<Int64Type>();
    (0..values.len())
        .map(|row| values.is_valid(row).then(|| values.value(row)))
        .collect()
}

fn micros_column(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = batch.column_by_name(name).unwrap();
    let column = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap();
    let column = cast(&column, &DataType::Int64).unwrap();
    column.as_primitive::<Int64Type>().values().to_vec()
}

/// Source rows per user: (event time, value of `feature`).
fn history(path: &Path, feature: &str) -> HashMap<i64, Vec<(i64, Option<i64>)>> {
    let mut rows: HashMap<i64, Vec<(i64, Option<i64>)>> = HashMap::new();
    for batch in read_parquet(path) {
        let users = int64_column(&batch, "user_id");
        let times = micros_column(&batch, "event_timestamp");
        let values = int64_column(&batch, feature);
        for row in 0..batch.num_rows() {
            rows.entry(users[row].unwrap())
                .or_default()
                .push((times[row], values[row]));
        }
    }
    rows
}

/// The model: the latest source row at or before `time` and newer than `time - ttl`.
fn expected(
    history: &HashMap<i64, Vec<(i64, Option<i64>)>>,
    user: i64,
    time: i64,
    ttl: i64,
) -> Option<i64> {
    history
        .get(&user)?
        .iter()
        .filter(|(event_time, _)| *event_time <= time && *event_time > time - ttl)
        .max_by_key(|(event_time, _)| *event_time)
        .and_then(|(_, value)| *value)
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339()
}

#[test]
fn training_set_is_point_in_time_correct_and_keeps_every_row_in_order() {
    let repo = DemoRepo::init_with(300, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let activity = history(
        &repo.path.join("data/sources/activity.parquet"),
        "clicks_7d",
    );
    let profiles = history(&repo.path.join("data/sources/profiles.parquet"), "age");
    assert!(!activity.is_empty() && !profiles.is_empty());

    // Every user at several instants (some before any row, some past the TTL), an unknown
    // user, in a scrambled order, with a label column and a +02:00 offset on some rows.
    let offsets = [
        0,
        -DAY / 2,
        -DAY - 3_600_000_000,
        -3 * DAY,
        -20 * DAY,
        30 * DAY,
    ];
    let mut entity_rows: Vec<(i64, i64)> = Vec::new();
    for user in 0..=301i64 {
        for offset in offsets {
            entity_rows.push((user, ANCHOR + offset));
        }
    }
    entity_rows.push((99_999_999, ANCHOR));
    let count = entity_rows.len();
    let scrambled: Vec<(i64, i64)> = (0..count)
        .map(|index| entity_rows[(index * 7919) % count])
        .collect();
    let mut csv = String::from("user_id,event_timestamp,label\n");
    for (index, (user, time)) in scrambled.iter().enumerate() {
        let text = if index % 2 == 0 {
            rfc3339(*time)
        } else {
            chrono::DateTime::from_timestamp_micros(*time)
                .unwrap()
                .with_timezone(&chrono::FixedOffset::east_opt(7200).unwrap())
                .to_rfc3339()
        };
        csv.push_str(&format!("{user},{text},{index}\n"));
    }
    std::fs::write(repo.path.join("entities.csv"), csv).unwrap();

    let stdout = larder_ok(
        &repo.path,
        &[
            "training-set",
            "--entities",
            "entities.csv",
            "--features",
            "user_activity:clicks_7d,user_profile:age",
            "--output",
            "training.parquet",
        ],
    );
    assert!(stdout.contains(&format!("Wrote {count} rows")), "{stdout}");

    let mut labels = Vec::new();
    let mut clicks = Vec::new();
    let mut ages = Vec::new();
    for batch in read_parquet(&repo.path.join("training.parquet")) {
        labels.extend(int64_column(&batch, "label"));
        clicks.extend(int64_column(&batch, "clicks_7d"));
        ages.extend(int64_column(&batch, "age"));
    }
    assert_eq!(labels.len(), count, "no entity row is dropped");
    let mut found = 0;
    let mut missing = 0;
    for (index, (user, time)) in scrambled.iter().enumerate() {
        assert_eq!(labels[index], Some(index as i64), "row order is kept");
        let expected_clicks = expected(&activity, *user, *time, 7 * DAY);
        assert_eq!(
            clicks[index], expected_clicks,
            "clicks_7d of user {user} at {time}"
        );
        assert_eq!(
            ages[index],
            expected(&profiles, *user, *time, 365 * DAY),
            "age of user {user} at {time}"
        );
        if expected_clicks.is_some() {
            found += 1;
        } else {
            missing += 1;
        }
    }
    assert!(
        found > 100 && missing > 100,
        "found {found}, missing {missing}"
    );
}

#[test]
fn training_set_errors_are_clear() {
    let repo = DemoRepo::init_with(20, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    std::fs::write(
        repo.path.join("entities.csv"),
        "user_id,when\n1,2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let run = |features: &str| {
        let output = larder(
            &repo.path,
            &[
                "training-set",
                "--entities",
                "entities.csv",
                "--features",
                features,
                "--output",
                "out.parquet",
            ],
        );
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    assert!(run("user_profile:agee").contains("feature view 'user_profile' has no feature 'agee'"));
    assert!(run("nope:age").contains("unknown feature view 'nope'"));
    assert!(run("user_profile:age").contains("no offline rows: run `larder materialize` first"));
    larder_ok(&repo.path, &["materialize"]);
    assert!(run("user_profile:age").contains("no timestamp column 'event_timestamp'"));
}

#[test]
fn training_set_over_http_streams_arrow_ipc() {
    let repo = DemoRepo::init_with(50, &["--anchor", "2026-01-01"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    let activity = history(
        &repo.path.join("data/sources/activity.parquet"),
        "clicks_7d",
    );
    let server = Server::start(&repo.path);
    let users = [3i64, 1, 99_999, 3];
    let times = [ANCHOR, ANCHOR - DAY / 2, ANCHOR, ANCHOR - 30 * DAY];
    let body = serde_json::json!({
        "features": ["user_activity:clicks_7d"],
        "entities": {
            "user_id": users,
            "event_timestamp": times.iter().map(|time| rfc3339(*time)).collect::<Vec<_>>(),
            "label": [10, 11, 12, 13],
        },
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&format!("{}/get-historical-features", server.base_url))
        .content_type("application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.body_mut().read_to_vec().unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut labels = Vec::new();
    let mut clicks = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        labels.extend(int64_column(&batch, "label"));
        clicks.extend(int64_column(&batch, "clicks_7d"));
    }
    assert_eq!(labels, vec![Some(10), Some(11), Some(12), Some(13)]);
    for index in 0..4 {
        assert_eq!(
            clicks[index],
            expected(&activity, users[index], times[index], 7 * DAY),
            "row {index}"
        );
    }
    assert_eq!(clicks[2], None);

    let (status, error) = server.post(
        "/get-historical-features",
        r#"{"features": ["user_activity:nope"], "entities": {"user_id": [1], "event_timestamp": ["2026-01-01"]}}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(
        error_detail(&error)["message"],
        "feature view 'user_activity' has no feature 'nope'"
    );
}
