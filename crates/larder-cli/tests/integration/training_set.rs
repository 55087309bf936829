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

/// Writes the demo's profile source with every row twice at the same user and event time
/// (the copy with one more loyalty point), in small row groups so that scans run in
/// parallel, the rows in the given order.
fn write_tied_profiles(repo: &Path, original: &[RecordBatch], reversed: bool) {
    use arrow::array::{Int64Array, UInt32Array};
    let schema = original[0].schema();
    let mut rows = Vec::new();
    for batch in original {
        let mut bumped = batch.columns().to_vec();
        let index = schema.index_of("loyalty_points").unwrap();
        let points = bumped[index].as_primitive::<Int64Type>();
        bumped[index] = std::sync::Arc::new(Int64Array::from_iter(
            points.iter().map(|value| value.map(|points| points + 1)),
        ));
        rows.push(batch.clone());
        rows.push(RecordBatch::try_new(schema.clone(), bumped).unwrap());
    }
    let mut all = arrow::compute::concat_batches(&schema, &rows).unwrap();
    if reversed {
        let indices = UInt32Array::from_iter_values((0..all.num_rows() as u32).rev());
        all = arrow::compute::take_record_batch(&all, &indices).unwrap();
    }
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(256))
        .build();
    let file = std::fs::File::create(repo.join("data/sources/profiles.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, Some(properties)).unwrap();
    writer.write(&all).unwrap();
    writer.close().unwrap();
}

/// Each user's served `loyalty_points`, in user order.
fn served_points(repo: &Path, users: i64) -> Vec<serde_json::Value> {
    let server = Server::start(repo);
    let body = serde_json::json!({
        "features": ["user_profile:loyalty_points"],
        "entities": {"user_id": (0..users).collect::<Vec<_>>()},
    });
    let (status, answer) = server.post("/get-online-features", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer["results"][1]["values"].as_array().unwrap().clone()
}

/// The source holds two rows of every user at each event time. Materialized twice, the
/// second time from the same rows in reverse order, the training sets are byte-identical,
/// the online rows are the same, and each user's online value is the one the training set
/// picks at the user's latest time.
#[test]
fn ties_give_the_same_training_set_and_online_rows_whatever_the_source_order() {
    const USERS: i64 = 400;
    let repo = DemoRepo::init_with(USERS as u64, &["--anchor", "2026-01-01"]);
    let original = read_parquet(&repo.path.join("data/sources/profiles.parquet"));
    let mut csv = String::from("user_id,event_timestamp\n");
    for user in 0..USERS {
        csv.push_str(&format!("{user},{}\n", rfc3339(ANCHOR + 30 * DAY)));
    }
    std::fs::write(repo.path.join("entities.csv"), csv).unwrap();
    let training_set = |output: &str| {
        larder_ok(
            &repo.path,
            &[
                "training-set",
                "--entities",
                "entities.csv",
                "--features",
                "user_profile:loyalty_points,user_profile:age",
                "--output",
                output,
            ],
        );
        std::fs::read(repo.path.join(output)).unwrap()
    };

    write_tied_profiles(&repo.path, &original, false);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    let first_set = training_set("first.parquet");
    let first_online = served_points(&repo.path, USERS);

    write_tied_profiles(&repo.path, &original, true);
    larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    let second_set = training_set("second.parquet");
    let second_online = served_points(&repo.path, USERS);

    assert!(first_set == second_set, "the training sets differ");
    assert_eq!(first_online, second_online);
    let mut trained = Vec::new();
    for batch in read_parquet(&repo.path.join("first.parquet")) {
        trained.extend(int64_column(&batch, "loyalty_points"));
    }
    assert_eq!(trained.len(), USERS as usize);
    let mut present = 0;
    for (user, (online, offline)) in first_online.iter().zip(&trained).enumerate() {
        assert_eq!(online.as_i64(), *offline, "user {user}");
        present += usize::from(offline.is_some());
    }
    assert!(
        present > USERS as usize / 2,
        "only {present} users have values"
    );
}
