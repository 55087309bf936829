//! The conformance suite: one set of checks that every [`OfflineStore`] backend runs
//! unchanged.
//!
//! Each `check_*` function tests one point of the [`OfflineStore`] specification and panics
//! with a message naming the backend, the check and what differed. [`run_all`] runs every
//! check; a backend's test calls it once, on a tokio runtime:
//!
//! ```no_run
//! # async fn example() {
//! use larder_offline::{ParquetOfflineStore, conformance};
//!
//! let folder = tempfile::tempdir().unwrap();
//! conformance::run_all(&ParquetOfflineStore::new(folder.path())).await;
//! # }
//! ```
//!
//! Every check writes to feature views of its own (`conformance_{check}`, version 1), so
//! checks never see each other's rows.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use futures::StreamExt;
use larder_core::{EntityKey, Feature, FeatureView, JoinKey, Timestamp, Value, ValueType};

use crate::columns::ViewBatch;
use crate::engine::TimeWindow;
use crate::store::{OfflineRows, OfflineStore};

/// One row of a check's view: (user id, event time in microseconds, score).
pub type SampleRow = (i64, i64, f64);

const DAY: i64 = 86_400_000_000;
/// 2026-01-01T00:00:00Z, the first day of the checks' rows.
const FIRST_DAY: i64 = 20_454 * DAY;

/// Runs every check against `store`.
pub async fn run_all(store: &dyn OfflineStore) {
    check_unwritten_views_have_no_rows(store).await;
    check_commit_replaces_and_abandoned_writes_change_nothing(store).await;
    check_window_write_replaces_only_the_window(store).await;
    check_appended_rows_come_after_earlier_rows(store).await;
    check_append_writes_add_rows_and_a_repeated_tag_replaces_its_rows(store).await;
    check_delete_entities_removes_only_their_rows(store).await;
    check_rows_taken_before_a_write_never_change(store).await;
    check_unsupported_and_invalid_requests_are_errors(store).await;
}

/// A view nobody wrote has no rows (and reading it is not an error).
pub async fn check_unwritten_views_have_no_rows(store: &dyn OfflineStore) {
    let view = check_view("unwritten");
    let rows = store.rows(&view).unwrap_or_else(|error| {
        panic!(
            "{}: rows of an unwritten view: {error}",
            store.backend_name()
        )
    });
    assert!(
        rows.is_none(),
        "{}: an unwritten view must have no rows",
        store.backend_name()
    );
}

/// A committed write replaces every row of the view version; a write dropped without commit
/// changes nothing; rows read twice come back the same, in the same order.
pub async fn check_commit_replaces_and_abandoned_writes_change_nothing(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("commit_replaces");
    let first = spread_rows(1..=6, 0);
    write(store, &view, &first);
    let read_once = read_all(store, &view).await;
    assert_eq!(
        sorted(&read_once),
        sorted(&first),
        "{name}: rows after the first commit"
    );
    assert_eq!(
        read_all(store, &view).await,
        read_once,
        "{name}: a second read's order"
    );
    let second = spread_rows(4..=9, 1);
    write(store, &view, &second);
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&second),
        "{name}: a commit replaces every earlier row"
    );
    {
        let mut abandoned = store
            .begin_write(&view)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        abandoned
            .write(&batch(&view, &spread_rows(100..=101, 2)))
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&second),
        "{name}: an abandoned write changes nothing"
    );
}

/// A windowed write replaces the rows whose event time lies in the window and keeps the
/// others.
pub async fn check_window_write_replaces_only_the_window(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("window_write");
    let before = spread_rows(1..=9, 0);
    write(store, &view, &before);
    let window = TimeWindow {
        start: Some(Timestamp(FIRST_DAY + DAY)),
        end: Some(Timestamp(FIRST_DAY + 2 * DAY)),
    };
    let replacement = vec![
        (50, FIRST_DAY + DAY + 7, 0.5),
        (51, FIRST_DAY + DAY + 8, 0.25),
    ];
    let mut writer = match store.begin_window_write(&view, window) {
        Ok(writer) => writer,
        Err(crate::OfflineError::Unsupported(_)) => return,
        Err(error) => panic!("{name}: windowed write: {error}"),
    };
    writer
        .write(&batch(&view, &replacement))
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    writer
        .commit()
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    let mut expected: Vec<SampleRow> = before
        .iter()
        .filter(|row| !(FIRST_DAY + DAY..FIRST_DAY + 2 * DAY).contains(&row.1))
        .copied()
        .collect();
    expected.extend(&replacement);
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&expected),
        "{name}: a windowed write replaces the window's rows only"
    );
}

/// Appended rows are added without replacing any, and come after the rows that were there
/// (so that at equal event time the later write wins in training sets).
pub async fn check_appended_rows_come_after_earlier_rows(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("append");
    let materialized = spread_rows(1..=6, 0);
    write(store, &view, &materialized);
    let first_push = vec![(3, materialized[2].1, 35.0)];
    let second_push = vec![(3, materialized[2].1, 31.0), (7, FIRST_DAY + 5, 7.0)];
    for push in [&first_push, &second_push] {
        match store.append(&view, &batch(&view, push)) {
            Ok(summary) => assert_eq!(summary.rows, push.len() as u64, "{name}: appended rows"),
            Err(crate::OfflineError::Unsupported(_)) => return,
            Err(error) => panic!("{name}: append: {error}"),
        }
    }
    let rows = read_all(store, &view).await;
    let mut expected = materialized.clone();
    expected.extend(&first_push);
    expected.extend(&second_push);
    assert_eq!(
        sorted(&rows),
        sorted(&expected),
        "{name}: rows after two appends"
    );
    let position = |row: &SampleRow| rows.iter().position(|read| read == row);
    assert!(
        position(&materialized[2]) < position(&first_push[0])
            && position(&first_push[0]) < position(&second_push[0]),
        "{name}: rows of one entity and time must come in write order: {rows:?}"
    );
}

/// An append write (the batch lane's rows of added source files) adds its rows when it
/// commits, and not before; an append started again with the same tag (a run repeated after
/// a crash) replaces what the first one added instead of adding it twice; one with another
/// tag adds more. A store that only replaces answers `None`.
pub async fn check_append_writes_add_rows_and_a_repeated_tag_replaces_its_rows(
    store: &dyn OfflineStore,
) {
    let name = store.backend_name();
    let view = check_view("append_write");
    let materialized = spread_rows(1..=6, 0);
    write(store, &view, &materialized);
    let added = spread_rows(7..=12, 1);
    let append = |tag: &str, rows: &[SampleRow]| {
        let Some(mut writer) = store
            .begin_append_write(&view, tag)
            .unwrap_or_else(|error| panic!("{name}: begin_append_write: {error}"))
        else {
            return false;
        };
        let (head, tail) = rows.split_at(rows.len() / 2);
        for part in [head, tail] {
            writer
                .write(&batch(&view, part))
                .unwrap_or_else(|error| panic!("{name}: append write: {error}"));
        }
        let summary = writer
            .commit()
            .unwrap_or_else(|error| panic!("{name}: append commit: {error}"));
        assert_eq!(summary.rows, rows.len() as u64, "{name}: appended rows");
        true
    };
    {
        let Some(mut abandoned) = store
            .begin_append_write(&view, "abandoned")
            .unwrap_or_else(|error| panic!("{name}: begin_append_write: {error}"))
        else {
            return;
        };
        abandoned
            .write(&batch(&view, &added))
            .unwrap_or_else(|error| panic!("{name}: append write: {error}"));
    }
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&materialized),
        "{name}: an append dropped without commit adds nothing"
    );
    assert!(append("first", &added));
    assert!(append("first", &added));
    let mut expected = materialized.clone();
    expected.extend(&added);
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&expected),
        "{name}: an append repeated with its tag replaces its rows"
    );
    let more = spread_rows(13..=14, 2);
    assert!(append("second", &more));
    expected.extend(&more);
    assert_eq!(
        sorted(&read_all(store, &view).await),
        sorted(&expected),
        "{name}: an append with another tag adds its rows"
    );
}

/// Deleting entities removes all of their rows, leaves the others (values and order) as they
/// were, and rewrites only the storage that held them.
pub async fn check_delete_entities_removes_only_their_rows(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("delete_entities");
    let rows = spread_rows(1..=9, 0);
    write(store, &view, &rows);
    let pushed = vec![(2, FIRST_DAY + 10, 20.0)];
    let appended = store.append(&view, &batch(&view, &pushed)).is_ok();
    let before = read_all(store, &view).await;
    let keys =
        [EntityKey::from_values(&[Value::Int64(2)]).unwrap_or_else(|error| panic!("{error}"))];
    let summary = match store.delete_entities(&view, &keys) {
        Ok(summary) => summary,
        Err(crate::OfflineError::Unsupported(_)) => return,
        Err(error) => panic!("{name}: delete_entities: {error}"),
    };
    let expected_deleted = 1 + u64::from(appended);
    assert_eq!(summary.rows, expected_deleted, "{name}: rows deleted");
    assert!(
        summary.files_rewritten < summary.files_scanned + summary.files_pruned,
        "{name}: only what holds the entity is rewritten: {summary:?}"
    );
    let after = read_all(store, &view).await;
    let kept: Vec<SampleRow> = before.iter().filter(|row| row.0 != 2).copied().collect();
    assert_eq!(after, kept, "{name}: the other rows, in their order");
    let again = store
        .delete_entities(&view, &keys)
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    assert_eq!(
        (again.rows, again.files_rewritten),
        (0, 0),
        "{name}: deleting an absent entity changes nothing"
    );
}

/// Rows taken before a write read the same rows afterwards, or fail; never other rows.
pub async fn check_rows_taken_before_a_write_never_change(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("stable_rows");
    let first = spread_rows(1..=6, 0);
    write(store, &view, &first);
    let taken = rows_of(store, &view);
    let before = read_rows(&*taken)
        .await
        .unwrap_or_else(|error| panic!("{name}: {error}"));
    write(store, &view, &spread_rows(10..=12, 3));
    if let Ok(after) = read_rows(&*taken).await {
        assert_eq!(after, before, "{name}: rows taken before a write");
    }
}

/// Asking for a column the view does not have is an invalid request.
pub async fn check_unsupported_and_invalid_requests_are_errors(store: &dyn OfflineStore) {
    let name = store.backend_name();
    let view = check_view("invalid_requests");
    write(store, &view, &spread_rows(1..=2, 0));
    let rows = rows_of(store, &view);
    match rows.read(&["no_such_column".to_string()]).await {
        Err(crate::OfflineError::InvalidRequest(_)) => {}
        Err(error) => panic!("{name}: an unknown column is an invalid request, not {error}"),
        Ok(_) => panic!("{name}: reading an unknown column must fail"),
    }
}

/// The view of one check: `user_id` (int64) → `score` (float64), event time `ts`.
pub fn check_view(check: &str) -> FeatureView {
    FeatureView {
        name: format!("conformance_{check}"),
        version: 1,
        join_keys: vec![JoinKey {
            name: "user_id".to_string(),
            dtype: ValueType::Int64,
        }],
        source: "conformance".to_string(),
        timestamp_field: "ts".to_string(),
        features: vec![Feature {
            name: "score".to_string(),
            dtype: ValueType::Float64,
            description: String::new(),
            vector_index: None,
        }],
        online: true,
        offline: true,
        ..FeatureView::default()
    }
}

/// One row per user, spread over three days (user `u` on day `u % 3`), scores offset by
/// `variant`.
fn spread_rows(users: std::ops::RangeInclusive<i64>, variant: i64) -> Vec<SampleRow> {
    users
        .map(|user| {
            let time = FIRST_DAY + (user % 3) * DAY + user * 1_000_000;
            (user, time, (user * 10 + variant) as f64)
        })
        .collect()
}

fn batch(view: &FeatureView, rows: &[SampleRow]) -> ViewBatch {
    let values: Vec<(Vec<Value>, Timestamp, Vec<Value>)> = rows
        .iter()
        .map(|(user, time, score)| {
            (
                vec![Value::Int64(*user)],
                Timestamp(*time),
                vec![Value::Float64(*score)],
            )
        })
        .collect();
    ViewBatch::from_rows(
        view,
        values
            .iter()
            .map(|(keys, time, features)| (keys.as_slice(), *time, features.as_slice())),
    )
    .unwrap_or_else(|error| panic!("building a batch: {error}"))
}

/// Replaces the view's rows with `rows` (two batches, to exercise several writes).
fn write(store: &dyn OfflineStore, view: &FeatureView, rows: &[SampleRow]) {
    let name = store.backend_name();
    let mut writer = store
        .begin_write(view)
        .unwrap_or_else(|error| panic!("{name}: begin_write: {error}"));
    let (head, tail) = rows.split_at(rows.len() / 2);
    for part in [head, tail] {
        writer
            .write(&batch(view, part))
            .unwrap_or_else(|error| panic!("{name}: write: {error}"));
    }
    let summary = writer
        .commit()
        .unwrap_or_else(|error| panic!("{name}: commit: {error}"));
    assert_eq!(summary.rows, rows.len() as u64, "{name}: committed rows");
}

fn rows_of(store: &dyn OfflineStore, view: &FeatureView) -> std::sync::Arc<dyn OfflineRows> {
    let name = store.backend_name();
    store
        .rows(view)
        .unwrap_or_else(|error| panic!("{name}: rows: {error}"))
        .unwrap_or_else(|| panic!("{name}: a written view has rows"))
}

async fn read_rows(rows: &dyn OfflineRows) -> Result<Vec<SampleRow>, crate::OfflineError> {
    let columns = ["user_id", "ts", "score"].map(String::from);
    let mut stream = rows.read(&columns).await?;
    let mut read = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|error| crate::OfflineError::Schema(error.to_string()))?;
        let users = batch.column(0).as_primitive::<Int64Type>();
        let times = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Int64)
            .map_err(|error| crate::OfflineError::Schema(error.to_string()))?;
        let times = times.as_primitive::<Int64Type>();
        let scores = batch.column(2).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            assert!(users.is_valid(row) && times.is_valid(row));
            read.push((users.value(row), times.value(row), scores.value(row)));
        }
    }
    Ok(read)
}

async fn read_all(store: &dyn OfflineStore, view: &FeatureView) -> Vec<SampleRow> {
    read_rows(&*rows_of(store, view))
        .await
        .unwrap_or_else(|error| panic!("{}: reading rows: {error}", store.backend_name()))
}

fn sorted(rows: &[SampleRow]) -> Vec<SampleRow> {
    let mut sorted = rows.to_vec();
    sorted.sort_by(|left, right| left.partial_cmp(right).unwrap_or(std::cmp::Ordering::Equal));
    sorted
}
