//! The batch lane writes online only the rows that changed, reports every run and keeps the
//! run history; windowed runs replace only the window's offline rows.

use std::path::Path;

use crate::util::{DemoRepo, copy_tree, larder_ok, served_users, use_source_folders};

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

fn add_profile_checks(repo: &Path, checks: &str) {
    let path = repo.join("features/users.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let marker = "    description: Who the user is\n";
    assert!(yaml.contains(marker));
    let replaced = yaml.replace(marker, &format!("{marker}    checks:\n{checks}"));
    std::fs::write(&path, replaced).unwrap();
}

#[test]
fn a_failing_blocking_check_stops_the_run_before_anything_is_written() {
    let repo = DemoRepo::init_with(500, &["--anchor", "2026-01-10"]);
    add_profile_checks(
        &repo.path,
        "      - {type: not_null, column: age}\n      - {type: range, column: age, min: 18, max: 30}\n      - {type: allowed_values, column: country, values: [XX], severity: warn}\n      - {type: unique_entity_per_timestamp}\n",
    );
    larder_ok(&repo.path, &["apply"]);
    let output = crate::util::larder(&repo.path, &["materialize", "--views", "user_profile"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("check range(age) failed") && stderr.contains("user_id="),
        "the failure names the check with example rows: {stderr}"
    );
    assert!(!stderr.contains("not_null(age)"), "{stderr}");
    assert!(
        !repo.path.join("data/offline/user_profile").exists(),
        "nothing may be written offline"
    );
    let runs = larder_ok(&repo.path, &["runs"]);
    assert!(
        runs.contains("failed") && runs.contains("range(age)"),
        "{runs}"
    );
    let get = crate::util::larder(
        &repo.path,
        &[
            "get",
            "--entity",
            "user_id=1",
            "--features",
            "user_profile:age",
        ],
    );
    let get_stdout = String::from_utf8_lossy(&get.stdout);
    assert!(
        get_stdout
            .lines()
            .any(|line| line.starts_with("age") && line.contains("NOT_FOUND")),
        "nothing may be written online: {get_stdout}"
    );
}

#[test]
fn a_failing_warning_is_reported_and_the_run_goes_on() {
    let repo = DemoRepo::init_with(300, &["--anchor", "2026-01-10"]);
    add_profile_checks(
        &repo.path,
        "      - {type: allowed_values, column: country, values: [XX], severity: warn}\n      - {type: freshness, max_age: 1d, severity: warn}\n      - {type: row_count, max_change_percent: 10}\n      - {type: unique_entity_per_timestamp, severity: warn}\n",
    );
    // The first three source rows twice: three (user, event time) pairs repeat.
    rewrite_profiles(&repo.path, |mut batches| {
        let copies = batches[0].slice(0, 3);
        batches.push(copies);
        batches
    });
    larder_ok(&repo.path, &["apply"]);
    let output = larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    assert!(
        output.contains("warning: check allowed_values(country) failed")
            && output.contains("warning: check freshness failed"),
        "{output}"
    );
    let uniqueness = output
        .lines()
        .find(|line| line.contains("check unique_entity_per_timestamp failed"))
        .unwrap_or_else(|| panic!("no uniqueness warning in {output}"));
    assert!(
        uniqueness.contains("3 (entity, event time) pairs have more than one row")
            && uniqueness.contains("user_id=0")
            && uniqueness.contains("row_count=2"),
        "{uniqueness}"
    );
    assert_eq!(written_online(&output, "user_profile:v1"), 300);
}

/// Replaces the demo's profile source with `change` applied to its batches.
fn rewrite_profiles(
    repo: &Path,
    change: impl FnOnce(Vec<arrow::array::RecordBatch>) -> Vec<arrow::array::RecordBatch>,
) {
    let path = repo.join("data/sources/profiles.parquet");
    let batches = change(crate::util::read_parquet(&path));
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
}

/// Keeps only the source rows of users with `user_id >= first_kept`.
fn drop_profiles_below(repo: &Path, first_kept: i64) {
    use arrow::array::{AsArray, BooleanArray};
    rewrite_profiles(repo, |batches| {
        batches
            .iter()
            .map(|batch| {
                let ids = arrow::compute::cast(
                    batch.column_by_name("user_id").unwrap(),
                    &arrow::datatypes::DataType::Int64,
                )
                .unwrap();
                let ids = ids.as_primitive::<arrow::datatypes::Int64Type>();
                let keep: BooleanArray = ids
                    .iter()
                    .map(|id| Some(id.unwrap() >= first_kept))
                    .collect();
                arrow::compute::filter_record_batch(batch, &keep).unwrap()
            })
            .collect()
    });
}

/// The number after `label` in a view's summary line (`12 deleted`).
fn summary_count(stdout: &str, view: &str, label: &str) -> u64 {
    let line = stdout.lines().find(|line| line.starts_with(view)).unwrap();
    let before = line.split(label).next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn entities_gone_from_the_source_are_kept_by_default_and_deleted_with_on_missing_delete() {
    let repo = DemoRepo::init_with(500, &["--anchor", "2026-01-10"]);
    let get_age = |user: &str| {
        larder_ok(
            &repo.path,
            &[
                "get",
                "--json",
                "--entity",
                &format!("user_id={user}"),
                "--features",
                "user_profile:age",
            ],
        )
    };
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    drop_profiles_below(&repo.path, 100);

    // Default (keep): the vanished users keep their last value.
    let kept = larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    assert_eq!(
        summary_count(&kept, "user_profile:v1", " deleted"),
        0,
        "{kept}"
    );
    assert!(get_age("5").contains("PRESENT"));

    // on_missing: delete: the next full run deletes them online, once.
    let path = repo.path.join("features/users.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let marker = "    description: Who the user is\n";
    std::fs::write(
        &path,
        yaml.replace(marker, &format!("{marker}    on_missing: delete\n")),
    )
    .unwrap();
    larder_ok(&repo.path, &["apply"]);
    // A windowed run sees only part of the source: it deletes nothing.
    let windowed = larder_ok(
        &repo.path,
        &[
            "materialize",
            "--views",
            "user_profile",
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-05",
        ],
    );
    assert_eq!(
        summary_count(&windowed, "user_profile:v1", " deleted"),
        0,
        "{windowed}"
    );
    let deleted = larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    assert_eq!(
        summary_count(&deleted, "user_profile:v1", " deleted"),
        100,
        "{deleted}"
    );
    assert!(get_age("5").contains("NOT_FOUND"), "{}", get_age("5"));
    assert!(get_age("150").contains("PRESENT"));
    let again = larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);
    assert_eq!(
        summary_count(&again, "user_profile:v1", " deleted"),
        0,
        "{again}"
    );
    let runs = larder_ok(&repo.path, &["runs", "user_profile"]);
    assert!(runs.contains("deleted"), "{runs}");
}

/// `kill -9` in the middle of a run that writes changed rows, then another run: the online
/// store converges to exactly what an uninterrupted run serves (no digest was kept for a
/// row whose value was not written), and the run after that finds nothing to write.
#[test]
fn a_run_killed_midway_converges_on_the_next_run() {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use crate::util::{Server, larder_binary};

    let users = 20_000;
    let repo = DemoRepo::init(users);
    // Small batches, so that the run is killed between batches of the same view.
    let config_path = repo.path.join("larder.yaml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str("materialize:\n  batch_rows: 1000\n");
    std::fs::write(&config_path, config).unwrap();
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    larder_ok(
        &repo.path,
        &["demo-mutate", "--fraction", "0.3", "--seed", "11"],
    );
    // The same run, uninterrupted, on a copy of the repo.
    let control = tempfile::tempdir().unwrap();
    copy_tree(&repo.path, control.path());
    let started = Instant::now();
    let uninterrupted = larder_ok(control.path(), &["materialize"]);
    let run_time = started.elapsed();
    assert!(
        written_online(&uninterrupted, "user_profile:v1") > 5_000,
        "{uninterrupted}"
    );

    // Killed at about half its run time, while it writes.
    let mut killed = Command::new(larder_binary())
        .arg("materialize")
        .current_dir(&repo.path)
        .env_remove("LARDER_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(run_time / 2);
    killed.kill().unwrap();
    killed.wait().unwrap();

    let recovery = larder_ok(&repo.path, &["materialize"]);
    let settled = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(written_online(&settled, "user_profile:v1"), 0, "{settled}");
    assert_eq!(written_online(&settled, "user_activity:v1"), 0, "{settled}");

    let served = Server::start(&repo.path);
    let expected = Server::start(control.path());
    let ids: Vec<u64> = (0..users).collect();
    for chunk in ids.chunks(5_000) {
        let body =
            serde_json::json!({"feature_service": "ranking_model", "entities": {"user_id": chunk}})
                .to_string();
        let (status, answer) = served.post("/get-online-features", &body);
        assert_eq!(status, 200, "{answer}");
        let (_, wanted) = expected.post("/get-online-features", &body);
        assert!(
            answer == wanted,
            "users {}..{} differ from an uninterrupted run after the recovery run:\n{recovery}",
            chunk[0],
            chunk[chunk.len() - 1]
        );
    }
    // The comparison is not vacuous: the served values are present and fresh.
    let (_, sample) = served.post(
        "/get-online-features",
        &serde_json::json!({"feature_service": "ranking_model", "entities": {"user_id": [1]}})
            .to_string(),
    );
    assert!(
        !sample.to_string().contains("OUTSIDE_MAX_AGE") && sample.to_string().contains("PRESENT"),
        "{sample}"
    );
}

/// The `source files: N read, M unchanged` note of a view's summary line.
fn files_note(stdout: &str, view: &str) -> String {
    let line = stdout
        .lines()
        .find(|line| line.starts_with(view))
        .unwrap_or_else(|| panic!("no summary line for {view} in:\n{stdout}"));
    line.split("; source files: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no source files note in {line}"))
        .to_string()
}

/// A run over sources whose earlier files are unchanged reads only the added files, and
/// ends where a run over every file ends: the same online rows, the same training set, the
/// same offline row count. A run over unchanged files reads nothing; a rewritten file makes
/// the next run read every file again, without duplicating offline rows.
#[test]
fn a_run_reads_only_the_source_files_added_since_the_last_one() {
    let users = 2_000_u64;
    let repo = DemoRepo::init_with(users, &["--anchor", "2026-01-10"]);
    use_source_folders(&repo.path);
    larder_ok(&repo.path, &["apply"]);
    let first = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(files_note(&first, "user_profile:v1"), "1 read, 0 unchanged");
    assert_eq!(written_online(&first, "user_activity:v1"), users, "{first}");
    let nothing = larder_ok(&repo.path, &["materialize"]);
    for view in ["user_profile:v1", "user_activity:v1"] {
        assert_eq!(
            files_note(&nothing, view),
            "0 read, 1 unchanged",
            "{nothing}"
        );
        assert_eq!(
            summary_count(&nothing, view, " rows scanned in"),
            0,
            "{nothing}"
        );
    }

    let mut entities = String::from("user_id,event_timestamp\n");
    for user in 0..users {
        entities.push_str(&format!(
            "{user},2026-01-09T12:00:00Z\n{user},2026-01-13T00:00:00Z\n"
        ));
    }
    let training_set = |repo: &Path, output: &str| {
        std::fs::write(repo.join("entities.csv"), &entities).unwrap();
        larder_ok(
            repo,
            &[
                "training-set",
                "--entities",
                "entities.csv",
                "--feature-service",
                "ranking_model",
                "--output",
                output,
            ],
        );
        std::fs::read(repo.join(output)).unwrap()
    };
    let before = training_set(&repo.path, "before.parquet");

    let mutated = larder_ok(
        &repo.path,
        &[
            "demo-mutate",
            "--fraction",
            "0.05",
            "--seed",
            "3",
            "--append-events",
        ],
    );
    let changed_users: u64 = mutated
        .trim()
        .trim_start_matches("Changed ")
        .trim_end_matches(" users.")
        .parse()
        .unwrap();
    assert!(changed_users > 40 && changed_users < 200, "{mutated}");
    // The control: the same repo without the record of files read, so it reads every file.
    let control = tempfile::tempdir().unwrap();
    copy_tree(&repo.path, control.path());
    std::fs::remove_dir_all(control.path().join("data/inputs")).unwrap();

    let added = larder_ok(&repo.path, &["materialize"]);
    let full = larder_ok(control.path(), &["materialize"]);
    for view in ["user_profile:v1", "user_activity:v1"] {
        assert_eq!(files_note(&added, view), "1 read, 1 unchanged", "{added}");
        assert_eq!(files_note(&full, view), "2 read, 0 unchanged", "{full}");
        assert_eq!(written_online(&added, view), changed_users, "{added}");
        assert_eq!(written_online(&full, view), changed_users, "{full}");
    }
    assert_eq!(
        summary_count(&added, "user_profile:v1", " rows scanned in"),
        changed_users,
        "only the added file's rows are read: {added}"
    );
    for view in ["user_profile", "user_activity"] {
        assert_eq!(
            offline_row_count(&repo.path, view),
            offline_row_count(control.path(), view),
            "{view}"
        );
    }
    assert_eq!(
        offline_row_count(&repo.path, "user_profile"),
        (users + changed_users) as usize
    );

    let after = training_set(&repo.path, "after.parquet");
    assert!(after != before, "the added events reach the training set");
    assert!(
        after == training_set(control.path(), "after.parquet"),
        "the training set differs from one over every file"
    );
    let served = served_users(&repo.path, users);
    assert!(
        served.to_string().contains("PRESENT"),
        "nothing served: {served}"
    );
    assert!(
        served == served_users(control.path(), users),
        "online rows differ from a run over every file"
    );

    // Rewriting a file read before (a correction in place) makes the next run read them all.
    larder_ok(
        &repo.path,
        &["demo-mutate", "--fraction", "0.05", "--seed", "4"],
    );
    let rewritten = larder_ok(&repo.path, &["materialize"]);
    assert_eq!(
        files_note(&rewritten, "user_profile:v1"),
        "2 read, 0 unchanged",
        "{rewritten}"
    );
    assert_eq!(
        offline_row_count(&repo.path, "user_profile"),
        (users + changed_users) as usize,
        "a run over every file replaces the appended rows"
    );
}
