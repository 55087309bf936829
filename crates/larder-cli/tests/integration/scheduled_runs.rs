//! `larder serve` runs batch views on their cron `schedule`: a missed schedule runs once at
//! start-up, schedules follow `larder apply` without a restart, runs of one view never
//! overlap, and a bad schedule is refused at its line.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{DemoRepo, Server, larder, larder_ok};

/// The recorded runs of `view`, oldest first.
fn runs(repo: &Path, view: &str) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(repo.join("data/runs.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|run| run["view"] == view)
        .collect()
}

fn wait_for_runs(
    repo: &Path,
    view: &str,
    count: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let found = runs(repo, view);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs of {view} after {within:?}, expected {count}: {found:?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets (or, with `None`, removes) the schedule of the demo's `user_profile` view.
fn set_schedule(repo: &Path, schedule: Option<&str>) {
    let path = repo.join("features/users.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let without: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("schedule:"))
        .map(|line| format!("{line}\n"))
        .collect();
    let marker = "    source: user_profiles\n";
    assert!(without.contains(marker));
    let updated = match schedule {
        Some(schedule) => {
            without.replace(marker, &format!("{marker}    schedule: \"{schedule}\"\n"))
        }
        None => without,
    };
    std::fs::write(&path, updated).unwrap();
}

fn timestamp_micros(text: &serde_json::Value) -> i64 {
    let text = text.as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .timestamp_micros()
}

#[test]
fn serve_runs_scheduled_views() {
    let repo = DemoRepo::init(200);

    // A bad schedule is refused at its line.
    set_schedule(&repo.path, Some("61 * * * *"));
    let output = larder(&repo.path, &["apply"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("users.yaml:")
            && stderr.contains("schedule")
            && stderr.contains("61 * * * *"),
        "{stderr}"
    );

    // Daily at midnight: never run yet, so the missed run happens at start-up.
    set_schedule(&repo.path, Some("0 0 * * *"));
    larder_ok(&repo.path, &["apply"]);
    let server = Server::start(&repo.path);
    let first = wait_for_runs(&repo.path, "user_profile", 1, Duration::from_secs(60));
    assert_eq!(first[0]["status"], "succeeded", "{first:?}");
    assert_eq!(first[0]["rows_written"], 200, "{first:?}");
    assert!(
        runs(&repo.path, "user_activity").is_empty(),
        "not scheduled"
    );
    let (status, served) = server.post(
        "/get-online-features",
        &json!({"features": ["user_profile:age"], "entities": {"user_id": [1, 2]}}).to_string(),
    );
    assert_eq!(status, 200, "{served}");
    assert_eq!(
        served["results"][1]["statuses"],
        json!(["PRESENT", "PRESENT"]),
        "{served}"
    );

    // Restarted after today's run: nothing was missed, nothing runs until midnight, which
    // `/status` shows.
    drop(server);
    let server = Server::start(&repo.path);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&repo.path, "user_profile").len(), 1);
    let (status, report) = server.get("/status");
    assert_eq!(status, 200, "{report}");
    let profile = report["views"]
        .as_array()
        .unwrap()
        .iter()
        .find(|view| view["view"] == "user_profile")
        .unwrap()
        .clone();
    assert_eq!(profile["schedule"], "0 0 * * *", "{profile}");
    let next = profile["next_scheduled_run"].as_str().unwrap();
    assert!(next.ends_with("T00:00:00Z"), "{profile}");
    assert!(
        timestamp_micros(&profile["next_scheduled_run"]) > timestamp_micros(&report["now"]),
        "{profile}"
    );

    // Every two seconds, applied while serving: runs follow, never overlap, and change
    // detection writes nothing the second time.
    set_schedule(&repo.path, Some("*/2 * * * * *"));
    larder_ok(&repo.path, &["apply"]);
    let recorded = wait_for_runs(&repo.path, "user_profile", 4, Duration::from_secs(60));
    for pair in recorded.windows(2) {
        let end_of_previous = timestamp_micros(&pair[0]["started_at"])
            + pair[0]["duration_ms"].as_i64().unwrap() * 1000;
        assert!(
            end_of_previous <= timestamp_micros(&pair[1]["started_at"]),
            "overlapping runs: {pair:?}"
        );
    }
    for run in &recorded[1..] {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["rows_written"], 0, "{run}");
    }

    // Schedule removed: runs stop.
    set_schedule(&repo.path, None);
    larder_ok(&repo.path, &["apply"]);
    std::thread::sleep(Duration::from_secs(2));
    let settled = runs(&repo.path, "user_profile").len();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs(&repo.path, "user_profile").len(), settled);
    drop(server);
}
