//! `larder apply`: plans, refusals and located diagnostics.

use crate::util::{DemoRepo, larder, larder_ok};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn changed_sql_without_a_version_bump_is_refused() {
    let repo = DemoRepo::init(10);
    larder_ok(&repo.path, &["apply"]);
    let sql_path = repo.path.join("features/user_activity.sql");
    let sql = std::fs::read_to_string(&sql_path).unwrap();
    std::fs::write(
        &sql_path,
        sql.replace("clicks_1d,", "clicks_1d * 2 AS clicks_1d,"),
    )
    .unwrap();

    let refused = larder(&repo.path, &["apply"]);
    assert!(
        !refused.status.success(),
        "apply must refuse a changed SQL without a version bump"
    );
    let message = stderr_of(&refused);
    assert!(
        message.contains("user_activity") && message.to_lowercase().contains("version"),
        "{message}"
    );
    assert!(
        message.contains("features/users.yaml:"),
        "the refusal points at the view's file and line: {message}"
    );

    let features_path = repo.path.join("features/users.yaml");
    let features = std::fs::read_to_string(&features_path).unwrap();
    let bumped = features.replacen(
        "  - name: user_activity\n    version: 1",
        "  - name: user_activity\n    version: 2",
        1,
    );
    assert_ne!(bumped, features);
    std::fs::write(&features_path, bumped).unwrap();
    let accepted = larder_ok(&repo.path, &["apply"]);
    assert!(accepted.contains("user_activity"), "{accepted}");
}

#[test]
fn a_dtype_that_does_not_match_the_sql_output_is_located() {
    let repo = DemoRepo::init(10);
    let features_path = repo.path.join("features/users.yaml");
    let features = std::fs::read_to_string(&features_path).unwrap();
    let line = features
        .lines()
        .position(|line| line.contains("{name: ctr_7d, dtype: float64"))
        .unwrap()
        + 1;
    std::fs::write(
        &features_path,
        features.replace(
            "{name: ctr_7d, dtype: float64",
            "{name: ctr_7d, dtype: int64",
        ),
    )
    .unwrap();
    let output = larder(&repo.path, &["apply"]);
    assert!(!output.status.success());
    let message = stderr_of(&output);
    assert!(
        message.contains(&format!("features/users.yaml:{line}")),
        "expected a pointer at line {line}: {message}"
    );
    assert!(
        message.contains("ctr_7d") && message.contains("float64"),
        "{message}"
    );
}

#[test]
fn broken_yaml_points_at_file_and_line() {
    let repo = DemoRepo::init(10);
    let broken = "entities:\n  - name: shop\n    join_keys: [{name: shop_id, dtype: int64}\n";
    std::fs::write(repo.path.join("features/shops.yaml"), broken).unwrap();
    let output = larder(&repo.path, &["apply"]);
    assert!(!output.status.success());
    let message = stderr_of(&output);
    assert!(message.contains("features/shops.yaml:"), "{message}");
}

#[test]
fn unknown_references_are_reported_with_their_location() {
    let repo = DemoRepo::init(10);
    let features_path = repo.path.join("features/users.yaml");
    let features = std::fs::read_to_string(&features_path).unwrap();
    let line = features
        .lines()
        .position(|line| line.contains("source: activity_events"))
        .unwrap()
        + 1;
    std::fs::write(
        &features_path,
        features.replace("source: activity_events", "source: activity_evnts"),
    )
    .unwrap();
    let output = larder(&repo.path, &["apply"]);
    assert!(!output.status.success());
    let message = stderr_of(&output);
    assert!(
        message.contains(&format!("features/users.yaml:{line}"))
            && message.contains("activity_evnts"),
        "line {line}: {message}"
    );
}
