use std::path::Path;

use super::*;
use crate::diagnostics::Location;
use crate::test_support::{
    DEMO_SQL, demo_files, demo_services, demo_views, lines, write_file, write_repo,
};

fn load(root: &Path) -> FeatureRepo {
    FeatureRepo::load(root).unwrap_or_else(|diagnostics| panic!("{diagnostics}"))
}

/// A demo repo applied once, and its recorded registry.
fn applied_demo() -> (tempfile::TempDir, Registry) {
    let directory = write_repo(&demo_files(2, "int64", "365d", DEMO_SQL));
    let recorded = load(directory.path()).into_registry();
    (directory, recorded)
}

#[test]
fn first_apply_adds_everything() {
    let (directory, _) = applied_demo();
    let plan = plan_apply(None, &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(plan.counts(), (10, 0, 0));
    assert!(
        plan.changes
            .iter()
            .all(|change| matches!(change, ObjectChange::Added { .. }))
    );
    let text = plan.to_string();
    assert_eq!(
        text,
        "\
+ entity merchant
+ entity user
+ source activity (file)
+ source clicks (kafka)
+ source direct (push)
+ source profiles (file)
+ feature view click_counts (v1)
+ feature view user_activity (v2)
+ feature view user_profile (v1)
+ feature service ranker_v1

10 to add, 0 to change, 0 to remove"
    );
}

#[test]
fn unchanged_repo_has_no_changes() {
    let (directory, recorded) = applied_demo();
    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert!(plan.is_empty());
    assert_eq!(plan.to_string(), "no changes");
}

#[test]
fn metadata_changes_and_removals_are_allowed_without_a_version_bump() {
    let (directory, recorded) = applied_demo();
    let changed_views = demo_views(2, "int64", "30d")
        .replace("owner: growth@example.com", "owner: ranking@example.com")
        .replace(
            "description: age in years",
            "description: age in whole years",
        )
        .replace("    online: false", "    online: true");
    write_file(directory.path(), "features/views.yaml", &changed_views);
    std::fs::remove_file(directory.path().join("services.yml")).expect("remove");
    // Whitespace-only edits of the SQL are not data changes either.
    write_file(
        directory.path(),
        "features/user_activity.sql",
        &DEMO_SQL.replace('\n', "\n    "),
    );

    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(plan.counts(), (0, 2, 1));
    assert_eq!(
        plan.changes,
        vec![
            ObjectChange::Changed {
                kind: ObjectKind::FeatureView,
                name: "user_activity".into(),
                summary: Some("v2".into()),
                details: vec![
                    "transformation (features/user_activity.sql): whitespace only".into(),
                    "online: false -> true".into()
                ],
            },
            ObjectChange::Changed {
                kind: ObjectKind::FeatureView,
                name: "user_profile".into(),
                summary: Some("v1".into()),
                details: vec![
                    "feature age: description changed".into(),
                    "ttl: 365d -> 30d".into(),
                    "owner: growth@example.com -> ranking@example.com".into(),
                ],
            },
            ObjectChange::Removed {
                kind: ObjectKind::FeatureService,
                name: "ranker_v1".into(),
                summary: None
            },
        ]
    );
    let text = plan.to_string();
    assert!(text.contains("~ feature view user_profile (v1)\n    feature age: description changed\n    ttl: 365d -> 30d"), "{text}");
    assert!(text.contains("- feature service ranker_v1"), "{text}");
    assert!(
        text.ends_with("0 to add, 2 to change, 1 to remove"),
        "{text}"
    );
}

#[test]
fn changed_sql_without_a_version_bump_is_refused_at_the_version_line() {
    let (directory, recorded) = applied_demo();
    write_file(
        directory.path(),
        "features/user_activity.sql",
        &DEMO_SQL.replace("count(*)", "sum(amount)"),
    );
    let diagnostics = plan_apply(Some(&recorded), &load(directory.path())).expect_err("refused");
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    let diagnostic = &diagnostics.0[0];
    assert_eq!(
        diagnostic.location,
        Some(Location::new("features/views.yaml", 14, 14))
    );
    assert_eq!(
        diagnostic.key.as_deref(),
        Some("feature_views.user_activity.version")
    );
    assert_eq!(
        diagnostic.message,
        "feature view 'user_activity' changed its SQL transformation (features/user_activity.sql) but kept version 2: bump version to 3"
    );

    // The same change with a bump is accepted.
    write_file(
        directory.path(),
        "features/views.yaml",
        &demo_views(3, "int64", "365d"),
    );
    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(
        plan.changes,
        vec![ObjectChange::Changed {
            kind: ObjectKind::FeatureView,
            name: "user_activity".into(),
            summary: Some("v2 -> v3".into()),
            details: vec![
                "version: 2 -> 3 (new tables: materialize to fill them)".into(),
                "transformation (features/user_activity.sql): SQL changed".into(),
            ],
        }]
    );
    assert!(
        plan.to_string()
            .starts_with("~ feature view user_activity (v2 -> v3)\n"),
        "{plan}"
    );
}

#[test]
fn changed_dtype_without_a_version_bump_is_refused() {
    let (directory, recorded) = applied_demo();
    write_file(
        directory.path(),
        "features/views.yaml",
        &demo_views(2, "int32", "365d"),
    );
    let diagnostics = plan_apply(Some(&recorded), &load(directory.path())).expect_err("refused");
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert_eq!(
        diagnostics.0[0].location,
        Some(Location::new("features/views.yaml", 3, 14))
    );
    assert_eq!(
        diagnostics.0[0].message,
        "feature view 'user_profile' changed the dtype of feature 'age' (int64 -> int32) but kept version 1: bump version to 2"
    );
}

#[test]
fn several_data_changes_are_named_together() {
    let (directory, recorded) = applied_demo();
    let views = demo_views(2, "int64", "365d")
        .replace("    entities: [user, merchant]", "    entities: [user]")
        .replace(
            "    transformation: user_activity.sql",
            "    timestamp_field: event_time",
        )
        .replace("      - name: purchases_7d", "      - name: purchases_30d");
    write_file(directory.path(), "features/views.yaml", &views);
    write_file(
        directory.path(),
        "services.yml",
        &demo_services().replace(", user_activity", ""),
    );
    let diagnostics = plan_apply(Some(&recorded), &load(directory.path())).expect_err("refused");
    assert_eq!(
        diagnostics.0[0].message,
        "feature view 'user_activity' removed its SQL transformation (features/user_activity.sql), \
         changed its entities ([user, merchant] -> [user]), changed its timestamp field (ts -> event_time), \
         added feature 'purchases_30d' (int64) and removed feature 'purchases_7d' but kept version 2: bump version to 3"
    );
}

#[test]
fn a_changed_join_key_of_an_entity_needs_a_bump_of_its_views() {
    let (directory, recorded) = applied_demo();
    let entities = crate::test_support::demo_entities().replace("dtype: string", "dtype: int64");
    write_file(directory.path(), "entities.yaml", &entities);
    let diagnostics = plan_apply(Some(&recorded), &load(directory.path())).expect_err("refused");
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert!(
        diagnostics.0[0].message.starts_with(
            "feature view 'user_activity' changed the join keys of its entities (user_id int64, merchant_id string -> user_id int64, merchant_id int64)"
        ),
        "{diagnostics}"
    );
}

#[test]
fn a_version_decrease_is_refused() {
    let (directory, recorded) = applied_demo();
    write_file(
        directory.path(),
        "features/views.yaml",
        &demo_views(1, "int64", "365d"),
    );
    let diagnostics = plan_apply(Some(&recorded), &load(directory.path())).expect_err("refused");
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert_eq!(
        diagnostics.0[0].location,
        Some(Location::new("features/views.yaml", 14, 14))
    );
    assert!(
        diagnostics.0[0]
            .message
            .contains("went from version 2 to version 1: versions cannot decrease"),
        "{diagnostics}"
    );
}

#[test]
fn added_and_changed_objects_of_other_kinds_are_described() {
    let (directory, recorded) = applied_demo();
    let sources = crate::test_support::demo_sources().replace("topic: clicks", "topic: clicks_v2");
    write_file(directory.path(), "sources.yaml", &sources);
    write_file(
        directory.path(),
        "more.yaml",
        &lines(&[
            "entities:",
            "  - name: store",
            "    join_keys: [{name: store_id, dtype: int32}]",
        ]),
    );
    write_file(
        directory.path(),
        "services.yml",
        &demo_services().replace("user_profile:age, ", ""),
    );
    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(
        plan.to_string(),
        "\
+ entity store
~ source clicks (kafka)
    origin: kafka topic clicks on localhost:9092 -> kafka topic clicks_v2 on localhost:9092
~ feature service ranker_v1
    features: [user_profile:age, user_activity] -> [user_activity]

1 to add, 2 to change, 0 to remove"
    );
}

/// A second views file: `purchase_stats` reads the same source as `user_activity`.
fn purchase_stats_views(features: &[&str]) -> String {
    let mut text = lines(&[
        "feature_views:",
        "  - name: purchase_stats",
        "    version: 1",
        "    entities: [user, merchant]",
        "    source: activity",
        "    transformation: purchase_stats.sql",
        "    features:",
    ]);
    for feature in features {
        text.push_str(&format!("      - {{name: {feature}, dtype: int64}}\n"));
    }
    text
}

const PURCHASE_STATS_SQL: &str = "SELECT a.user_id, a.merchant_id, a.ts,\n  COUNT( * ) AS orders,\n  sum(amount) AS purchase_7d,\n  max(age) AS age,\n  sum(amount) FILTER (WHERE ts > now() - INTERVAL '30 days') AS purchases_30d,\n  count(DISTINCT item_id) AS distinct_items\nFROM activity a\nGROUP BY 1, 2, 3\n";

#[test]
fn a_new_feature_like_an_existing_one_is_warned_about() {
    let (directory, recorded) = applied_demo();
    write_file(
        directory.path(),
        "features/purchase_stats.yaml",
        &purchase_stats_views(&["orders", "purchase_7d", "age"]),
    );
    write_file(
        directory.path(),
        "features/purchase_stats.sql",
        PURCHASE_STATS_SQL,
    );
    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(plan.counts(), (1, 0, 0));
    assert_eq!(
        plan.warnings,
        vec![
            "feature purchase_stats:orders computes the same expression as user_activity:purchases_7d (count(*), similarity 1.00); reuse it or rename",
            "feature purchase_stats:purchase_7d looks like user_activity:purchases_7d (name similarity 0.90); reuse it or rename",
            "feature purchase_stats:age looks like user_profile:age (name similarity 1.00); reuse it or rename",
        ]
    );
    assert_eq!(
        plan.to_string(),
        "\
+ feature view purchase_stats (v1)

1 to add, 0 to change, 0 to remove

warning: feature purchase_stats:orders computes the same expression as user_activity:purchases_7d (count(*), similarity 1.00); reuse it or rename
warning: feature purchase_stats:purchase_7d looks like user_activity:purchases_7d (name similarity 0.90); reuse it or rename
warning: feature purchase_stats:age looks like user_profile:age (name similarity 1.00); reuse it or rename"
    );
}

#[test]
fn reapplying_an_unchanged_repo_warns_about_nothing() {
    let mut files = demo_files(2, "int64", "365d", DEMO_SQL);
    files.push((
        "features/purchase_stats.yaml",
        purchase_stats_views(&["orders", "purchase_7d"]),
    ));
    files.push((
        "features/purchase_stats.sql",
        PURCHASE_STATS_SQL.to_string(),
    ));
    let directory = write_repo(&files);
    let first = plan_apply(None, &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(first.warnings.len(), 2, "{first}");

    let recorded = load(directory.path()).into_registry();
    let again = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert!(again.is_empty());
    assert!(again.warnings.is_empty(), "{again}");
    assert_eq!(again.to_string(), "no changes");
}

#[test]
fn a_genuinely_different_feature_is_not_warned_about() {
    let (directory, recorded) = applied_demo();
    // Another window of the same aggregate, and another aggregate.
    write_file(
        directory.path(),
        "features/purchase_stats.yaml",
        &purchase_stats_views(&["purchases_30d", "distinct_items"]),
    );
    write_file(
        directory.path(),
        "features/purchase_stats.sql",
        PURCHASE_STATS_SQL,
    );
    let plan = plan_apply(Some(&recorded), &load(directory.path()))
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(plan.counts(), (1, 0, 0));
    assert!(plan.warnings.is_empty(), "{plan}");
    assert!(!plan.to_string().contains("warning"), "{plan}");
}
