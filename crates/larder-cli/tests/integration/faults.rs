//! The fault matrix of the batch lane: `kill -9` at every stage of a run (crash points,
//! `LARDER_CRASH_AT`, see `larder_core::fault`), then a restart. Whatever the point, the
//! next run converges to exactly what an uninterrupted run gives: the same served values,
//! the same offline rows (none lost, none twice), no leftover staging or aside folder, and a
//! run after that finds nothing to write.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{
    DemoRepo, Server, copy_tree, larder_binary, larder_ok, parquet_files, served_users,
    sorted_rows, use_source_folders,
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

/// What a repo serves for every user (and two unknown ones), through a real `larder serve`.
fn served(repo: &Path) -> serde_json::Value {
    served_users(repo, USERS + 2)
}

/// Each view's committed offline rows, sorted; and no folder a run left behind.
fn offline_rows(repo: &Path) -> Vec<arrow::array::RecordBatch> {
    offline_rows_at(&repo.join("data/offline"))
}

/// Runs `larder materialize` in `repo` until `LARDER_CRASH_AT=point` kills it, then once
/// more: the repo must then serve `expected_online` and hold `expected_offline`, what an
/// uninterrupted run gives. Returns the output of the recovery run.
fn kill_and_recover(
    repo: &Path,
    point: &str,
    expected_online: &serde_json::Value,
    expected_offline: &[arrow::array::RecordBatch],
) -> String {
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
        served(repo) == *expected_online,
        "{point}: served values differ from an uninterrupted run after:\n{recovery}"
    );
    assert_eq!(
        offline_rows(repo),
        expected_offline,
        "{point}: offline rows differ from an uninterrupted run after:\n{recovery}"
    );
    recovery
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
        kill_and_recover(repo, point, &expected_online, &expected_offline);
        let settled = larder_ok(repo, &["materialize"]);
        assert!(
            settled.matches(" 0 written online").count() == VIEWS.len(),
            "{point}: the run after the recovery wrote again:\n{settled}"
        );
        eprintln!("{point}: killed, recovered, identical to an uninterrupted run");
    }
}

/// Every crash point of a run that reads only the source files added since the last run
/// (its offline rows are appended to the partitions, not replaced), in the order it passes
/// them.
const ADDED_FILES_CRASH_POINTS: &[&str] = &[
    "materialize.after_checks",
    "materialize.after_offline_batch",
    "materialize.after_online_batch",
    "materialize.before_digest_sync",
    "materialize.before_offline_commit",
    "offline.append.after_partition",
    "materialize.after_offline_commit",
];

/// `kill -9` at every stage of a run that reads only added source files, then a restart:
/// the restart reads every file (the killed run had removed its manifest) and gives the
/// same served values and offline rows as an uninterrupted run (the appended rows neither
/// lost nor twice); a run after that reads nothing.
#[test]
fn a_run_of_added_files_killed_at_every_stage_converges_to_an_uninterrupted_run() {
    // Each repo is built afresh: a copy would give every file a new identity, and the copy's
    // next run would read every file.
    let prepare = || {
        let repo = DemoRepo::init_with(USERS, &["--anchor", "2026-01-01"]);
        let config_path = repo.path.join("larder.yaml");
        let mut config = std::fs::read_to_string(&config_path).unwrap();
        config.push_str("materialize:\n  batch_rows: 500\n");
        std::fs::write(&config_path, config).unwrap();
        use_source_folders(&repo.path);
        larder_ok(&repo.path, &["apply"]);
        larder_ok(&repo.path, &["materialize"]);
        larder_ok(
            &repo.path,
            &[
                "demo-mutate",
                "--fraction",
                "0.3",
                "--seed",
                "5",
                "--append-events",
            ],
        );
        repo
    };
    let control = prepare();
    let uninterrupted = larder_ok(&control.path, &["materialize"]);
    assert_eq!(
        uninterrupted
            .matches("source files: 1 read, 1 unchanged")
            .count(),
        VIEWS.len(),
        "{uninterrupted}"
    );
    let expected_online = served(&control.path);
    let expected_offline = offline_rows(&control.path);

    for point in ADDED_FILES_CRASH_POINTS {
        let repo = prepare();
        let recovery = kill_and_recover(&repo.path, point, &expected_online, &expected_offline);
        // The view that reached the point had removed its record of files read, so the
        // recovery reads all of its files (the other view may not have started yet).
        assert!(
            recovery.contains("source files: 2 read, 0 unchanged"),
            "{point}: the recovery run read no view's files all again:\n{recovery}"
        );
        let settled = larder_ok(&repo.path, &["materialize"]);
        assert_eq!(
            settled.matches("source files: 0 read, 2 unchanged").count(),
            VIEWS.len(),
            "{point}: the run after the recovery read again:\n{settled}"
        );
        eprintln!("{point}: killed, recovered, identical to an uninterrupted run");
    }
}

/// A small tmpfs, unmounted on drop: a disk that fills up. Mounting needs root (as CI runs);
/// elsewhere the full-disk test says why it cannot run, and in CI that fails it.
pub struct SmallDisk {
    folder: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(megabytes: u32) -> Option<Self> {
        let folder = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(folder.path())
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self { folder }),
            other => {
                let reason = format!("cannot mount a {megabytes} MB tmpfs (needs root): {other:?}");
                assert!(std::env::var("CI").is_err(), "{reason}");
                eprintln!("skipped: {reason}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.folder.path()
    }

    /// Bytes free on the disk.
    fn free(&self) -> u64 {
        let output = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .unwrap()
    }

    /// Fills the disk until `left` bytes are free (a file `filler`, removed by `empty`). A
    /// server writing to the disk meanwhile may fill it first: the filler then stops short.
    pub fn fill_leaving(&self, left: u64) {
        use std::io::Write;
        let size = self.free().saturating_sub(left);
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        match filler.write_all(&vec![0u8; size as usize]) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => {}
            Err(error) => panic!("filling the disk: {error}"),
        }
    }

    pub fn empty(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.folder.path()).status();
    }
}

/// Bytes under `folder`.
fn bytes_under(folder: &Path) -> u64 {
    parquet_files(folder)
        .iter()
        .map(|file| std::fs::metadata(file).unwrap().len())
        .sum()
}

/// A run that fills the offline store's disk fails with the OS error and the file it was
/// writing, keeps the committed offline rows intact and leaves no staging behind; once space
/// is freed, the next run gives exactly what an uninterrupted run gives.
#[test]
fn a_full_disk_during_materialize_fails_cleanly_and_the_next_run_converges() {
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let base = DemoRepo::init_with(USERS, &["--anchor", "2026-01-01"]);
    let offline = disk.path().join("offline");
    let config_path = base.path.join("larder.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let on_disk = config.replace(
        "  path: data/offline\n",
        &format!("  path: {}\n", offline.display()),
    );
    assert_ne!(config, on_disk);
    std::fs::write(&config_path, on_disk).unwrap();
    larder_ok(&base.path, &["apply"]);
    larder_ok(&base.path, &["materialize"]);
    larder_ok(
        &base.path,
        &["demo-mutate", "--fraction", "0.3", "--seed", "5"],
    );
    let committed = offline_rows_at(&offline);
    let needed = bytes_under(&offline);

    // What an uninterrupted run gives, with room to spare.
    let control = tempfile::tempdir().unwrap();
    copy_tree(&base.path, control.path());
    copy_tree(&offline, &control.path().join("data/offline"));
    std::fs::write(control.path().join("larder.yaml"), config).unwrap();
    larder_ok(control.path(), &["materialize"]);
    let expected_online = served(control.path());
    let expected_offline = offline_rows(control.path());

    disk.fill_leaving(needed / 3);
    let full = crate::util::larder(&base.path, &["materialize"]);
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "a run on a full disk succeeded");
    assert!(
        stderr.contains("No space left on device") && stderr.contains(&*offline.to_string_lossy()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Views run side by side: each one's offline rows are either its last committed ones
    // (its run failed) or the new ones (its run finished before the disk filled), never a
    // mix.
    for ((now, before), after) in offline_rows_at(&offline)
        .iter()
        .zip(&committed)
        .zip(&expected_offline)
    {
        assert!(
            now == before || now == after,
            "a view's offline rows are a mix"
        );
    }

    disk.empty();
    larder_ok(&base.path, &["materialize"]);
    assert!(
        served(&base.path) == expected_online,
        "served values differ"
    );
    let converged: Vec<_> = VIEWS
        .iter()
        .map(|view| sorted_rows(&parquet_files(&offline.join(view).join("v1")), None))
        .collect();
    assert_eq!(converged, expected_offline);
}

/// Each view's committed offline rows under an offline store root, and no leftover folder.
fn offline_rows_at(root: &Path) -> Vec<arrow::array::RecordBatch> {
    VIEWS
        .iter()
        .map(|view| {
            let folder = root.join(view);
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

/// A truncated or overwritten registry, online store, run history, offline or source file:
/// the next command either fails with a message naming the file (never a panic), or
/// succeeds and serves exactly what an intact repo serves (never silent loss).
#[test]
fn a_corrupted_state_file_is_named_or_repaired_never_a_panic_or_silent_loss() {
    let base = DemoRepo::init_with(500, &["--anchor", "2026-01-01"]);
    larder_ok(&base.path, &["apply"]);
    larder_ok(&base.path, &["materialize"]);
    let users: Vec<u64> = (0..502).collect();
    let body =
        serde_json::json!({"feature_service": "ranking_model", "entities": {"user_id": users}})
            .to_string();
    let expected = Server::start(&base.path)
        .post("/get-online-features", &body)
        .1;
    let first_parquet = |folder: &str| {
        parquet_files(&base.path.join(folder))[0]
            .strip_prefix(&base.path)
            .unwrap()
            .to_path_buf()
    };
    let files = [
        std::path::PathBuf::from("data/registry.json"),
        std::path::PathBuf::from("data/online.redb"),
        std::path::PathBuf::from("data/runs.jsonl"),
        first_parquet("data/offline/user_profile"),
        first_parquet("data/sources"),
    ];
    for file in &files {
        for corruption in ["truncated", "overwritten"] {
            let copy = tempfile::tempdir().unwrap();
            copy_tree(&base.path, copy.path());
            let path = copy.path().join(file);
            let mut bytes = std::fs::read(&path).unwrap();
            let half = bytes.len() / 2;
            if corruption == "truncated" {
                bytes.truncate(half);
            } else {
                let end = (half + 4096).min(bytes.len());
                bytes[half..end].fill(0xA5);
            }
            std::fs::write(&path, bytes).unwrap();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            for command in [
                &["materialize"][..],
                &[
                    "get",
                    "--entity",
                    "user_id=1",
                    "--features",
                    "user_profile:age",
                ][..],
            ] {
                let output = crate::util::larder(copy.path(), command);
                let stderr = String::from_utf8_lossy(&output.stderr);
                // A dependency's assertion that Larder catches still prints through the
                // panic hook; what must not happen is the process dying of it (exit 101).
                assert!(
                    output.status.code().is_some_and(|code| code != 101),
                    "{} {corruption}: `larder {}` crashed: {stderr}",
                    file.display(),
                    command.join(" ")
                );
                if !output.status.success() {
                    assert!(
                        stderr.contains(&name),
                        "{} {corruption}: `larder {}` failed without naming the file: {stderr}",
                        file.display(),
                        command.join(" ")
                    );
                    eprintln!(
                        "{} {corruption}: `larder {}` refused: {}",
                        file.display(),
                        command.join(" "),
                        stderr.trim()
                    );
                }
            }
            let materialized = crate::util::larder(copy.path(), &["materialize"]);
            if materialized.status.success() {
                let answer = Server::start(copy.path())
                    .post("/get-online-features", &body)
                    .1;
                assert!(
                    answer == expected,
                    "{} {corruption}: materialize succeeded but serves other values",
                    file.display()
                );
                eprintln!("{} {corruption}: repaired by the next run", file.display());
            }
        }
    }
}
