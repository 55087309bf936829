//! The batch lane writes online only the rows that changed, reports every run and keeps the
//! run history; windowed runs replace only the window's offline rows.

use std::path::Path;

use crate::util::{DemoRepo, larder_ok};

/// The `N written online` figure of a view's summary line.
fn written_online(stdout: &str, view: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(view))
        .unwrap_or_else(|| panic!("no summary line for {view} in:\n{stdout}"));
    let before = line
        .split(" written online")
        .next()
        .unwrap_or_else(|| panic!("no written count in {line}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no written count in {line}"))
}

fn offline_row_count(repo: &Path, view: &str) -> usize {
    let mut rows = 0;
    let folder = repo.join("data/offline").join(view).join("v1");
    for partition in std::fs::read_dir(&folder).unwrap() {
        for file in std::fs::read_dir(partition.unwrap().path()).unwrap() {
            let file = std::fs::File::open(file.unwrap().path()).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
            rows += reader.map(|batch| batch.unwrap().num_rows()).sum::<usize>();
        }
    }
    rows
}

#[test]
fn only_changed_rows_are_written_and_runs_are_recorded() {
    let repo = DemoRepo::init_with(2_000, &["--anchor", "2026-01-10"]);
    larder_ok(&repo.path, &["apply"]);
    let first = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(written_online(&first, "user_profile:v1"), 2_000, "{first}");
    assert_eq!(written_online(&first, "user_activity:v1"), 2_000, "{first}");

    let unchanged = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(
        written_online(&unchanged, "user_profile:v1"),
        0,
        "{unchanged}"
    );
    assert_eq!(
        written_online(&unchanged, "user_activity:v1"),
        0,
        "{unchanged}"
    );

    let mutated = larder_ok(
        &repo.path,
        &["demo-mutate", "--fraction", "0.05", "--seed", "3"],
    );
    let changed_users: u64 = mutated
        .trim()
        .trim_start_matches("Changed ")
        .trim_end_matches(" users.")
        .parse()
        .unwrap();
    assert!(changed_users > 40 && changed_users < 200, "{mutated}");
    let second = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(
        written_online(&second, "user_profile:v1"),
        changed_users,
        "a changed value at an unchanged event time must be written: {second}"
    );
    assert_eq!(written_online(&second, "user_activity:v1"), changed_users);

    let full = larder_ok(
        &repo.path,
        &["materialize", "--full-refresh", "--views", "user_profile"],
    );
    assert_eq!(written_online(&full, "user_profile:v1"), 2_000, "{full}");

    let runs = larder_ok(&repo.path, &["runs", "user_profile"]);
    let run_lines: Vec<&str> = runs
        .lines()
        .filter(|line| line.contains("user_profile:v1"))
        .collect();
    assert_eq!(run_lines.len(), 4, "{runs}");
    assert!(
        run_lines.iter().all(|line| line.contains("succeeded")),
        "{runs}"
    );
    assert!(!runs.contains("user_activity"), "{runs}");
}

#[test]
fn a_windowed_run_replaces_only_the_windows_offline_rows() {
    let repo = DemoRepo::init_with(1_000, &["--anchor", "2026-01-10"]);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize", "--views", "user_activity"]);
    let all_rows = offline_row_count(&repo.path, "user_activity");
    assert_eq!(all_rows, 2_000, "two activity rows per user");
    // The activity rows are on the two days before the anchor; re-run only the last day.
    let windowed = larder_ok(
        &repo.path,
        &[
            "materialize",
            "--views",
            "user_activity",
            "--start",
            "2026-01-09",
            "--end",
            "2026-01-10",
        ],
    );
    assert!(windowed.contains("user_activity:v1"), "{windowed}");
    assert_eq!(
        offline_row_count(&repo.path, "user_activity"),
        all_rows,
        "rows outside the window are kept, rows inside replaced (not duplicated)"
    );
    let incremental = larder_ok(
        &repo.path,
        &["materialize-incremental", "--views", "user_activity"],
    );
    assert_eq!(
        written_online(&incremental, "user_activity:v1"),
        0,
        "{incremental}"
    );
    assert_eq!(offline_row_count(&repo.path, "user_activity"), all_rows);
}
