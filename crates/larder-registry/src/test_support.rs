//! Fixtures shared by the unit tests: feature repos written to temporary directories.

use std::path::Path;

/// Joins lines with newlines (and a final newline), so that a fixture's line numbers are the
/// indexes of its lines plus one.
pub(crate) fn lines(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Writes files (paths relative to the repo root) into a new temporary directory. A
/// `larder.yaml` with `project: demo` is added unless one is given.
pub(crate) fn write_repo(files: &[(&str, String)]) -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("temp dir");
    if !files.iter().any(|(path, _)| *path == "larder.yaml") {
        write_file(directory.path(), "larder.yaml", "project: demo\n");
    }
    for (path, text) in files {
        write_file(directory.path(), path, text);
    }
    directory
}

/// Writes one file, creating its directories.
pub(crate) fn write_file(root: &Path, relative_path: &str, text: &str) {
    let path = root.join(relative_path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create directories");
    }
    std::fs::write(path, text).expect("write file");
}

/// The entities of the valid demo repo.
pub(crate) fn demo_entities() -> String {
    lines(&[
        "entities:",
        "  - name: user",
        "    join_keys: [{name: user_id, dtype: int64}]",
        "    description: a user",
        "    owner: growth@example.com",
        "    tags: {team: growth}",
        "  - name: merchant",
        "    join_keys:",
        "      - name: merchant_id",
        "        dtype: string",
    ])
}

/// The sources of the valid demo repo.
pub(crate) fn demo_sources() -> String {
    lines(&[
        "sources:",
        "  - name: profiles",
        "    type: file",
        "    path: data/sources/profiles.parquet",
        "    timestamp_field: event_timestamp",
        "  - name: activity",
        "    type: file",
        "    path: data/sources/activity.csv",
        "    timestamp_field: ts",
        "  - name: clicks",
        "    type: kafka",
        "    brokers: [localhost:9092]",
        "    topic: clicks",
        "    timestamp_field: ts",
        "  - name: direct",
        "    type: push",
    ])
}

/// The feature views of the valid demo repo (`features/views.yaml`). `version` and `ttl`
/// are line 3 and line 6, `age`'s dtype is on line 10, `user_activity`'s version on line 14.
pub(crate) fn demo_views(user_activity_version: u32, age_dtype: &str, ttl: &str) -> String {
    lines(&[
        "feature_views:",
        "  - name: user_profile",
        "    version: 1",
        "    entities: [user]",
        "    source: profiles",
        &format!("    ttl: {ttl}"),
        "    owner: growth@example.com",
        "    tier: tier1",
        "    features:",
        &format!("      - {{name: age, dtype: {age_dtype}, description: age in years}}"),
        "      - {name: embedding, dtype: vector<4>}",
        "",
        "  - name: user_activity",
        &format!("    version: {user_activity_version}"),
        "    entities: [user, merchant]",
        "    source: activity",
        "    transformation: user_activity.sql",
        "    online: false",
        "    features:",
        "      - name: purchases_7d",
        "        dtype: int64",
        "",
        "  - name: click_counts",
        "    version: 1",
        "    entities: [user]",
        "    source: clicks",
        "    features:",
        "      - {name: clicks_1h, dtype: int64}",
    ])
}

/// The SQL of `user_activity`.
pub(crate) const DEMO_SQL: &str =
    "SELECT user_id, merchant_id, ts, count(*) AS purchases_7d\nFROM activity\nGROUP BY 1, 2, 3\n";

/// The feature services of the valid demo repo.
pub(crate) fn demo_services() -> String {
    lines(&[
        "feature_services:",
        "  - name: ranker_v1",
        "    features: [user_profile:age, user_activity]",
    ])
}

/// Every file of the valid demo repo.
pub(crate) fn demo_files(
    user_activity_version: u32,
    age_dtype: &str,
    ttl: &str,
    sql: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("entities.yaml", demo_entities()),
        ("sources.yaml", demo_sources()),
        (
            "features/views.yaml",
            demo_views(user_activity_version, age_dtype, ttl),
        ),
        ("features/user_activity.sql", sql.to_string()),
        ("services.yml", demo_services()),
    ]
}
