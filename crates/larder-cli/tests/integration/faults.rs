//! The fault matrix of the batch lane: `kill -9` at every stage of a run (crash points,
//! `LARDER_CRASH_AT`, see `larder_core::fault`), then a restart. Whatever the point, the
//! next run converges to exactly what an uninterrupted run gives: the same served values,
//! the same offline rows (none lost, none twice), no leftover staging or aside folder, and a
//! run after that finds nothing to write.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{
    DemoRepo, Server, copy_tree, larder_binary, larder_ok, parquet_files, sorted_rows,
};

/// Every crash point a `larder materialize` passes, in the order it passes them.
const MATERIALIZE_CRASH_POINTS: &[&str] = &[
    "materialize.after_checks",
    "materialize.after_offline_batch",
    "materialize.after_online_batch",
    "materialize.before_digest_sync",
    "materialize.before_offline_commit",
    "offline.commit.after_move_aside",
    "offline.commit.after_publish",
    "materialize.after_offline_commit",
];

const USERS: u64 = 3_000;
const VIEWS: &[&str] = &["user_profile", "user_activity"];

/// What a repo serves for every user, through a real `larder serve`.
fn served(repo: &Path) -> serde_json::Value {
    let server = Server::start(repo);
    let users: Vec<u64> = (0..USERS + 2).collect();
    let body =
        serde_json::json!({"feature_service": "ranking_model", "entities": {"user_id": users}});
    let (status, answer) = server.post("/get-online-features", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Each view's committed offline rows, sorted; and no folder a run left behind.
fn offline_rows(repo: &Path) -> Vec<arrow::array::RecordBatch> {
    VIEWS
        .iter()
        .map(|view| {
            let folder = repo.join("data/offline").join(view);
            let leftovers: Vec<String> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with('.'))
                .collect();
            assert!(leftovers.is_empty(), "{view}: left behind: {leftovers:?}");
            sorted_rows(&parquet_files(&folder.join("v1")), None)
        })
        .collect()
}

#[test]
fn materialize_killed_at_every_stage_converges_to_an_uninterrupted_run() {
    let base = DemoRepo::init_with(USERS, &["--anchor", "2026-01-01"]);
    // Small batches: the run is killed between batches of one view.
    let config_path = base.path.join("larder.yaml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str("materialize:\n  batch_rows: 500\n");
    std::fs::write(&config_path, config).unwrap();
    larder_ok(&base.path, &["apply"]);
    larder_ok(&base.path, &["materialize"]);
    larder_ok(
        &base.path,
        &["demo-mutate", "--fraction", "0.3", "--seed", "5"],
    );

    let control = tempfile::tempdir().unwrap();
    copy_tree(&base.path, control.path());
    larder_ok(control.path(), &["materialize"]);
    let expected_online = served(control.path());
    let expected_offline = offline_rows(control.path());
    assert!(
        expected_online.to_string().contains("PRESENT"),
        "{expected_online}"
    );

    for point in MATERIALIZE_CRASH_POINTS {
        let copy = tempfile::tempdir().unwrap();
        copy_tree(&base.path, copy.path());
        let repo = copy.path();
        let killed = Command::new(larder_binary())
            .arg("materialize")
            .current_dir(repo)
            .env_remove("LARDER_REPO")
            .env("LARDER_CRASH_AT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point}: not killed there: {}",
            String::from_utf8_lossy(&killed.stderr)
        );
        let recovery = larder_ok(repo, &["materialize"]);
        assert!(
            served(repo) == expected_online,
            "{point}: served values differ from an uninterrupted run after:\n{recovery}"
        );
        assert_eq!(
            offline_rows(repo),
            expected_offline,
            "{point}: offline rows differ from an uninterrupted run after:\n{recovery}"
        );
        let settled = larder_ok(repo, &["materialize"]);
        assert!(
            settled.matches(" 0 written online").count() == VIEWS.len(),
            "{point}: the run after the recovery wrote again:\n{settled}"
        );
        eprintln!("{point}: killed, recovered, identical to an uninterrupted run");
    }
}
