use std::collections::BTreeMap;

use larder_core::{
    DataSource, DataSourceKind, Entity, Feature, FeatureService, FeatureServiceItem, FeatureView,
    FileFormat, JoinKey, TtlDuration, ValueType,
};

use super::*;
use crate::test_support::{DEMO_SQL, demo_files, lines, write_file, write_repo};

fn load_errors(files: &[(&str, String)]) -> Diagnostics {
    let directory = write_repo(files);
    match FeatureRepo::load(directory.path()) {
        Ok(_) => panic!("the repo should not load"),
        Err(diagnostics) => diagnostics,
    }
}

/// Asserts that one diagnostic is at `file:line` and its message contains `fragment`.
#[track_caller]
fn assert_reported(diagnostics: &Diagnostics, file: &str, line: u32, fragment: &str) {
    let found = diagnostics.iter().any(|diagnostic| {
        diagnostic
            .location
            .as_ref()
            .is_some_and(|location| location.file == Path::new(file) && location.line == line)
            && diagnostic.message.contains(fragment)
    });
    assert!(
        found,
        "expected a diagnostic at {file}:{line} containing {fragment:?}; got:\n{diagnostics}"
    );
}

fn join_key(name: &str, dtype: ValueType) -> JoinKey {
    JoinKey {
        name: name.into(),
        dtype,
    }
}

fn feature(name: &str, dtype: ValueType, description: &str) -> Feature {
    Feature {
        name: name.into(),
        dtype,
        description: description.into(),
        vector_index: None,
    }
}

fn expected_demo_registry() -> Registry {
    let user = Entity {
        name: "user".into(),
        join_keys: vec![join_key("user_id", ValueType::Int64)],
        description: "a user".into(),
        owner: "growth@example.com".into(),
        tags: BTreeMap::from([("team".into(), "growth".into())]),
    };
    let merchant = Entity {
        name: "merchant".into(),
        join_keys: vec![join_key("merchant_id", ValueType::String)],
        description: String::new(),
        owner: String::new(),
        tags: BTreeMap::new(),
    };
    let source = |name: &str, kind: DataSourceKind, timestamp_field: &str| DataSource {
        name: name.into(),
        kind,
        timestamp_field: timestamp_field.into(),
        description: String::new(),
        owner: String::new(),
        tags: BTreeMap::new(),
    };
    let sources = [
        source(
            "profiles",
            DataSourceKind::File {
                path: "data/sources/profiles.parquet".into(),
                format: FileFormat::Parquet,
            },
            "event_timestamp",
        ),
        source(
            "activity",
            DataSourceKind::File {
                path: "data/sources/activity.csv".into(),
                format: FileFormat::Csv,
            },
            "ts",
        ),
        source(
            "clicks",
            DataSourceKind::Kafka {
                brokers: vec!["localhost:9092".into()],
                topic: "clicks".into(),
                consumer_group: None,
                start_offset: None,
                payload: Default::default(),
            },
            "ts",
        ),
        source("direct", DataSourceKind::Push, "event_timestamp"),
    ];
    let base_view = FeatureView {
        name: String::new(),
        version: 1,
        entities: vec!["user".into()],
        join_keys: vec![join_key("user_id", ValueType::Int64)],
        source: String::new(),
        transformation: None,
        transformation_path: None,
        timestamp_field: "ts".into(),
        features: Vec::new(),
        ttl: None,
        online: true,
        offline: true,
        owner: String::new(),
        tier: None,
        tags: BTreeMap::new(),
        description: String::new(),
        freshness_sla: None,
        checks: Vec::new(),
        ..larder_core::FeatureView::default()
    };
    let user_profile = FeatureView {
        name: "user_profile".into(),
        source: "profiles".into(),
        timestamp_field: "event_timestamp".into(),
        features: vec![
            feature("age", ValueType::Int64, "age in years"),
            feature("embedding", ValueType::Vector(4), ""),
        ],
        ttl: Some(TtlDuration::from_seconds(365 * 86_400)),
        owner: "growth@example.com".into(),
        tier: Some("tier1".into()),
        ..base_view.clone()
    };
    let user_activity = FeatureView {
        name: "user_activity".into(),
        version: 2,
        entities: vec!["user".into(), "merchant".into()],
        join_keys: vec![
            join_key("user_id", ValueType::Int64),
            join_key("merchant_id", ValueType::String),
        ],
        source: "activity".into(),
        transformation: Some(DEMO_SQL.into()),
        transformation_path: Some("features/user_activity.sql".into()),
        features: vec![feature("purchases_7d", ValueType::Int64, "")],
        online: false,
        ..base_view.clone()
    };
    let click_counts = FeatureView {
        name: "click_counts".into(),
        source: "clicks".into(),
        features: vec![feature("clicks_1h", ValueType::Int64, "")],
        ..base_view
    };
    let ranker = FeatureService {
        name: "ranker_v1".into(),
        items: vec![
            FeatureServiceItem {
                view: "user_profile".into(),
                features: Some(vec!["age".into()]),
            },
            FeatureServiceItem {
                view: "user_activity".into(),
                features: None,
            },
        ],
        description: String::new(),
        owner: String::new(),
        tags: BTreeMap::new(),
    };
    Registry {
        project: "demo".into(),
        applied_at: 0,
        entities: BTreeMap::from([("user".into(), user), ("merchant".into(), merchant)]),
        sources: sources
            .into_iter()
            .map(|source| (source.name.clone(), source))
            .collect(),
        feature_views: [user_profile, user_activity, click_counts]
            .into_iter()
            .map(|view| (view.name.clone(), view))
            .collect(),
        feature_services: BTreeMap::from([("ranker_v1".into(), ranker)]),
        stream_views: BTreeMap::new(),
        view_history: BTreeMap::new(),
    }
}

#[test]
fn valid_repo_loads_into_the_expected_registry() {
    let directory = write_repo(&demo_files(2, "int64", "365d", DEMO_SQL));
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(repo.registry(), &expected_demo_registry());
    assert_eq!(repo.config().project, "demo");
    assert_eq!(repo.root(), directory.path());
    assert_eq!(
        repo.location_of(ObjectKind::FeatureView, "user_activity"),
        Some(Location::new("features/views.yaml", 13, 11))
    );
    assert_eq!(
        repo.location_of(ObjectKind::Entity, "merchant"),
        Some(Location::new("entities.yaml", 7, 11))
    );
    assert_eq!(
        repo.location_of(ObjectKind::DataSource, "direct"),
        Some(Location::new("sources.yaml", 15, 11))
    );
    assert_eq!(
        repo.location_of(ObjectKind::FeatureService, "ranker_v1"),
        Some(Location::new("services.yml", 2, 11))
    );
    assert_eq!(
        repo.location_of(ObjectKind::FeatureService, "user_activity"),
        None
    );
    assert_eq!(repo.into_registry(), expected_demo_registry());
}

#[test]
fn only_definition_files_are_read() {
    let mut files = demo_files(2, "int64", "365d", DEMO_SQL);
    let broken = "feature_views: [oops\n".to_string();
    for ignored in [
        "data/sources/junk.yaml",
        "nested/data/junk.yml",
        ".hidden/junk.yaml",
        ".junk.yaml",
        "target/junk.yaml",
        "state/junk.yaml",
        "offline_tables/junk.yaml",
        "online/junk.yaml",
    ] {
        files.push((ignored, broken.clone()));
    }
    files.push(("README.md", "not yaml: [".to_string()));
    files.push((
        "larder.yaml",
        lines(&[
            "project: demo",
            "registry: state/registry.json",
            "online_store: {type: embedded, path: online/store.redb}",
            "offline_store: {type: parquet, path: offline_tables}",
        ]),
    ));
    let directory = write_repo(&files);
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    let read: Vec<&Path> = repo
        .definition_files()
        .iter()
        .map(PathBuf::as_path)
        .collect();
    assert_eq!(
        read,
        [
            Path::new("entities.yaml"),
            Path::new("features/views.yaml"),
            Path::new("services.yml"),
            Path::new("sources.yaml")
        ]
    );
}

#[test]
fn registry_at_the_repo_root_does_not_hide_the_repo() {
    let mut files = demo_files(2, "int64", "365d", DEMO_SQL);
    files.push((
        "larder.yaml",
        "project: demo\nregistry: registry.json\n".to_string(),
    ));
    let directory = write_repo(&files);
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(repo.registry().feature_views.len(), 3);
}

#[test]
fn missing_larder_yaml_is_not_a_feature_repo() {
    let directory = tempfile::tempdir().expect("temp dir");
    let diagnostics = FeatureRepo::load(directory.path()).expect_err("no config");
    assert!(
        diagnostics.to_string().contains("larder init"),
        "{diagnostics}"
    );
}

#[test]
fn broken_yaml_points_at_file_and_line() {
    let mut files = demo_files(2, "int64", "365d", DEMO_SQL);
    files.push((
        "more/broken.yaml",
        lines(&[
            "feature_views:",
            "  - name: x",
            "    entities: [user",
            "    version: 1",
        ]),
    ));
    let diagnostics = load_errors(&files);
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    let location = diagnostics.0[0].location.clone().expect("located");
    assert_eq!(location.file, Path::new("more/broken.yaml"));
    assert!((3..=5).contains(&location.line), "{diagnostics}");
}

#[test]
fn shape_errors_of_every_file_are_reported_with_lines_and_keys() {
    let diagnostics = load_errors(&[
        (
            "a.yaml",
            lines(&[
                "feature_views:",
                "  - name: v",
                "    version: 1",
                "    entities: [user]",
                "    source: s",
                "    features:",
                "      - {name: a, dtype: int64, colour: red}",
            ]),
        ),
        ("b.yaml", lines(&["entities: []", "models: []"])),
        (
            "c.yaml",
            lines(&[
                "sources:",
                "  - name: s",
                "    type: file",
                "    timestamp_field: ts",
                "  - name: t",
            ]),
        ),
    ]);
    assert_eq!(diagnostics.len(), 3, "{diagnostics}");
    assert_reported(&diagnostics, "a.yaml", 7, "unknown field `colour`");
    assert_eq!(
        diagnostics.0[0].key.as_deref(),
        Some("feature_views[0].features[0].colour")
    );
    assert_reported(&diagnostics, "b.yaml", 2, "unknown field `models`");
    assert_reported(&diagnostics, "c.yaml", 5, "missing field `type`");
    assert_eq!(diagnostics.0[2].key.as_deref(), Some("sources[1]"));
}

fn broken_entities() -> String {
    lines(&[
        "entities:",
        "  - name: user",
        "    join_keys: [{name: user_id, dtype: int64}]",
        "  - name: account",
        "    join_keys: [{name: user_id, dtype: string}]",
        "  - name: user",
        "    join_keys: [{name: uid, dtype: int64}]",
        "  - name: price",
        "    join_keys: [{name: price_id, dtype: float64}]",
        "  - name: bad-name",
        "    join_keys: [{name: x, dtype: int64}]",
        "  - name: keyless",
        "    join_keys: []",
    ])
}

fn broken_sources() -> String {
    lines(&[
        "sources:",
        "  - name: events",
        "    type: file",
        "    path: data/events.parquet",
        "    timestamp_field: ts",
        "  - name: stream",
        "    type: kafka",
        "    topic: t",
        "    path: x.parquet",
        "    timestamp_field: ts",
        "  - name: weird",
        "    type: ftp",
        "    timestamp_field: ts",
        "  - name: json_files",
        "    type: file",
        "    path: data/x.json",
        "    timestamp_field: ts",
        "  - name: no_time",
        "    type: file",
        "    path: data/y.csv",
    ])
}

fn broken_views() -> String {
    lines(&[
        "feature_views:",
        "  - name: v_unknown_refs",
        "    version: 1",
        "    entities: [user, ghost]",
        "    source: nowhere",
        "    features:",
        "      - {name: a, dtype: int64}",
        "  - name: v_bad_features",
        "    version: 0",
        "    entities: [user]",
        "    source: events",
        "    ttl: 10x",
        "    transformation: missing.sql",
        "    features:",
        "      - {name: user_id, dtype: int64}",
        "      - {name: score, dtype: flaot}",
        "      - {name: score2, dtype: float64}",
        "      - {name: score2, dtype: float64}",
        "  - name: v_conflict",
        "    version: 1",
        "    entities: [user, account]",
        "    source: events",
        "    features:",
        "      - {name: b, dtype: int64}",
        "  - name: v_account",
        "    version: 1",
        "    entities: [account]",
        "    source: events",
        "    features:",
        "      - {name: c, dtype: string}",
        "  - name: v_user",
        "    version: 1",
        "    entities: [user]",
        "    source: events",
        "    freshness_sla: 1h",
        "    features:",
        "      - {name: d, dtype: bool}",
        "  - name: v_user",
        "    version: 1",
        "    entities: [user]",
        "    source: events",
        "    features: []",
    ])
}

fn broken_services() -> String {
    lines(&[
        "feature_services:",
        "  - name: s1",
        "    features: [v_user:d, v_user:nope, ghost_view, v_user:d, a:b:c]",
        "  - name: s2",
        "    features:",
        "      - v_user",
        "      - v_account",
    ])
}

#[test]
fn every_semantic_problem_is_reported_at_its_line() {
    let diagnostics = load_errors(&[
        ("entities.yaml", broken_entities()),
        ("sources.yaml", broken_sources()),
        ("views/views.yaml", broken_views()),
        ("services.yaml", broken_services()),
    ]);
    // Duplicate names point at the second and mention the first.
    assert_reported(
        &diagnostics,
        "entities.yaml",
        6,
        "duplicate entity 'user' (first declared at entities.yaml:2:11)",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        38,
        "duplicate feature view 'v_user' (first declared at views/views.yaml:31:11)",
    );
    // Names and dtypes.
    assert_reported(
        &diagnostics,
        "entities.yaml",
        9,
        "type float64 cannot be used as a join key",
    );
    assert_reported(
        &diagnostics,
        "entities.yaml",
        10,
        "invalid entity name 'bad-name'",
    );
    assert_reported(
        &diagnostics,
        "entities.yaml",
        13,
        "entity 'keyless' declares no join keys",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        16,
        "unknown dtype 'flaot'",
    );
    // Sources.
    assert_reported(
        &diagnostics,
        "sources.yaml",
        7,
        "source 'stream' of type kafka needs 'brokers'",
    );
    assert_reported(
        &diagnostics,
        "sources.yaml",
        9,
        "field 'path' does not apply to a source of type kafka",
    );
    assert_reported(
        &diagnostics,
        "sources.yaml",
        12,
        "unknown source type 'ftp'",
    );
    assert_reported(
        &diagnostics,
        "sources.yaml",
        16,
        "cannot tell the format of 'data/x.json'",
    );
    assert_reported(&diagnostics, "sources.yaml", 19, "needs 'timestamp_field'");
    // References.
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        4,
        "unknown entity 'ghost' (declared entities: account, bad-name, keyless, price, user)",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        5,
        "unknown source 'nowhere'",
    );
    assert_reported(
        &diagnostics,
        "services.yaml",
        3,
        "feature view 'v_user' has no feature 'nope' (its features: d)",
    );
    assert_reported(
        &diagnostics,
        "services.yaml",
        3,
        "unknown feature view 'ghost_view'",
    );
    assert_reported(
        &diagnostics,
        "services.yaml",
        3,
        "feature 'v_user:d' is listed more than once",
    );
    assert_reported(
        &diagnostics,
        "services.yaml",
        3,
        "invalid feature reference 'a:b:c'",
    );
    // Feature views.
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        9,
        "version must be an integer from 1",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        12,
        "invalid duration '10x'",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        13,
        "transformation file 'missing.sql' not found (looked for views/missing.sql)",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        15,
        "feature 'user_id' has the name of a join key of entity 'user'",
    );
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        18,
        "duplicate feature 'score2' in feature view 'v_bad_features' (first declared at views/views.yaml:17:16)",
    );
    // Join keys with different dtypes used together.
    assert_reported(
        &diagnostics,
        "views/views.yaml",
        21,
        "join key 'user_id' is int64 in entity 'user' but string in entity 'account'",
    );
    assert_reported(
        &diagnostics,
        "services.yaml",
        7,
        "join key 'user_id' is int64 in feature view 'v_user' but string in feature view 'v_account'",
    );
    assert_eq!(diagnostics.len(), 24, "{diagnostics}");

    // Keys name the object, and the output is sorted by file and line.
    let dtype_problem = diagnostics
        .iter()
        .find(|diagnostic| diagnostic.message.contains("flaot"))
        .expect("dtype problem");
    assert_eq!(
        dtype_problem.key.as_deref(),
        Some("feature_views.v_bad_features.features.score.dtype")
    );
    assert_eq!(
        dtype_problem.location,
        Some(Location::new("views/views.yaml", 16, 30))
    );
    assert!(
        dtype_problem.to_string().starts_with("views/views.yaml:16:30: feature_views.v_bad_features.features.score.dtype: unknown dtype 'flaot'"),
        "{dtype_problem}"
    );
    let positions: Vec<Option<Location>> = diagnostics
        .iter()
        .map(|diagnostic| diagnostic.location.clone())
        .collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn a_zero_freshness_sla_is_refused() {
    let diagnostics = load_errors(&[
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        (
            "views.yaml",
            lines(&[
                "feature_views:",
                "  - name: pushed",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    ttl: 0",
                "    freshness_sla: 0s",
                "    features: [{name: score, dtype: float32}]",
            ]),
        ),
    ]);
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert_reported(
        &diagnostics,
        "views.yaml",
        7,
        "duration must be positive (omit it for no limit)",
    );
}

#[test]
fn a_zero_ttl_means_no_age_limit() {
    let directory = write_repo(&[
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        (
            "views.yaml",
            lines(&[
                "feature_views:",
                "  - name: bare_zero",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    ttl: 0",
                "    features: [{name: score, dtype: float32}]",
                "  - name: quoted_zero",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    ttl: \"0\"",
                "    features: [{name: score, dtype: float32}]",
                "  - name: zero_seconds",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    ttl: 0s",
                "    features: [{name: score, dtype: float32}]",
                "  - name: omitted",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    features: [{name: score, dtype: float32}]",
            ]),
        ),
    ]);
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    let views = &repo.registry().feature_views;
    // A zero TTL is no TTL: stored as none, so serving, training sets and online expiry all
    // see "no age limit", and changing `ttl: 0` to no `ttl` (or back) is no change.
    for name in ["bare_zero", "quoted_zero", "zero_seconds", "omitted"] {
        assert_eq!(views[name].ttl, None, "{name}");
    }
}

#[test]
fn a_view_over_a_streaming_or_push_source_is_allowed() {
    let directory = write_repo(&[
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        (
            "views.yaml",
            lines(&[
                "feature_views:",
                "  - name: pushed",
                "    version: 1",
                "    entities: [user]",
                "    source: direct",
                "    features: [{name: score, dtype: float32}]",
            ]),
        ),
    ]);
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    assert_eq!(
        repo.registry().feature_views["pushed"].timestamp_field,
        "event_timestamp"
    );
}

#[test]
fn transformation_paths_are_relative_to_their_yaml_file() {
    let directory = write_repo(&[
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        ("sql/shared.sql", "SELECT * FROM profiles".to_string()),
        (
            "views/deep/views.yaml",
            lines(&[
                "feature_views:",
                "  - name: shared",
                "    version: 1",
                "    entities: [user]",
                "    source: profiles",
                "    transformation: ../../sql/./shared.sql",
                "    timestamp_field: created_at",
                "    features: [{name: score, dtype: float32}]",
                "  - name: escaping",
                "    version: 1",
                "    entities: [user]",
                "    source: profiles",
                "    transformation: ../../../outside.sql",
                "    features: [{name: score, dtype: float32}]",
            ]),
        ),
    ]);
    let diagnostics = FeatureRepo::load(directory.path()).expect_err("one escapes the repo");
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert_reported(
        &diagnostics,
        "views/deep/views.yaml",
        13,
        "inside the feature repo",
    );

    write_file(
        directory.path(),
        "views/deep/views.yaml",
        &lines(&[
            "feature_views:",
            "  - name: shared",
            "    version: 1",
            "    entities: [user]",
            "    source: profiles",
            "    transformation: ../../sql/./shared.sql",
            "    timestamp_field: created_at",
            "    features: [{name: score, dtype: float32}]",
        ]),
    );
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    let view = &repo.registry().feature_views["shared"];
    assert_eq!(view.transformation_path.as_deref(), Some("sql/shared.sql"));
    assert_eq!(
        view.transformation.as_deref(),
        Some("SELECT * FROM profiles")
    );
    assert_eq!(view.timestamp_field, "created_at");
}

fn column(name: &str, dtype: Option<ValueType>, arrow_type: &str) -> SchemaColumn {
    SchemaColumn {
        name: name.into(),
        dtype,
        arrow_type: arrow_type.into(),
    }
}

#[test]
fn view_schema_mismatches_point_at_the_declared_dtype() {
    let directory = write_repo(&demo_files(2, "int64", "365d", DEMO_SQL));
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));

    let matching = [
        column("user_id", Some(ValueType::Int64), "Int64"),
        column(
            "event_timestamp",
            Some(ValueType::Timestamp),
            "Timestamp(Microsecond, None)",
        ),
        column("age", Some(ValueType::Int64), "Int64"),
        column(
            "embedding",
            Some(ValueType::List(Box::new(ValueType::Float64))),
            "List(Float64)",
        ),
    ];
    repo.check_view_schema("user_profile", &matching)
        .unwrap_or_else(|diagnostics| panic!("{diagnostics}"));

    let mismatching = [
        column("user_id", Some(ValueType::Int64), "Int64"),
        column("age", Some(ValueType::Int32), "Int32"),
        column(
            "embedding",
            Some(ValueType::List(Box::new(ValueType::Int64))),
            "List(Int64)",
        ),
    ];
    let diagnostics = repo
        .check_view_schema("user_profile", &mismatching)
        .expect_err("mismatches");
    assert_eq!(diagnostics.len(), 3, "{diagnostics}");
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        2,
        "timestamp field 'event_timestamp' (inherited from source 'profiles')",
    );
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        10,
        "feature 'age' is declared int64 but source 'profiles' has int32 (arrow Int32)",
    );
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        10,
        "CAST(age AS BIGINT) AS age",
    );
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        11,
        "feature 'embedding' is declared vector<4> but source 'profiles' has list<int64>",
    );
    let age = diagnostics
        .iter()
        .find(|diagnostic| diagnostic.message.contains("'age'"))
        .expect("age");
    assert_eq!(
        age.location,
        Some(Location::new("features/views.yaml", 10, 28))
    );
    assert_eq!(
        age.key.as_deref(),
        Some("feature_views.user_profile.features.age.dtype")
    );

    let sql_output = [
        column("user_id", Some(ValueType::Int64), "Int64"),
        column(
            "ts",
            Some(ValueType::Timestamp),
            "Timestamp(Microsecond, None)",
        ),
        column("purchases_7d", None, "Decimal128(20, 0)"),
    ];
    let diagnostics = repo
        .check_view_schema("user_activity", &sql_output)
        .expect_err("mismatches");
    assert_eq!(diagnostics.len(), 2, "{diagnostics}");
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        15,
        "join key 'merchant_id' of feature view 'user_activity' is not a column of the output of its transformation (features/user_activity.sql)",
    );
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        21,
        "arrow type Decimal128(20, 0), which Larder cannot store; cast it in the SQL: CAST(purchases_7d AS BIGINT)",
    );

    let missing_feature = [
        column("user_id", Some(ValueType::Int64), "Int64"),
        column("ts", Some(ValueType::Timestamp), "Timestamp"),
    ];
    let diagnostics = repo
        .check_view_schema("click_counts", &missing_feature)
        .expect_err("missing feature");
    assert_reported(
        &diagnostics,
        "features/views.yaml",
        28,
        "feature 'clicks_1h' is not a column of source 'clicks' (columns: user_id, ts)",
    );

    assert!(repo.check_view_schema("nope", &matching).is_err());
}

fn views_with_checks(checks: &[&str]) -> Vec<(&'static str, String)> {
    let mut view_lines = vec![
        "feature_views:",
        "  - name: pushed",
        "    version: 1",
        "    entities: [user]",
        "    source: direct",
        "    features: [{name: score, dtype: float64}, {name: country, dtype: string}]",
        "    checks:",
    ];
    view_lines.extend_from_slice(checks);
    vec![
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        ("views.yaml", lines(&view_lines)),
    ]
}

#[test]
fn data_quality_checks_resolve_to_rules_with_sql_literals() {
    use larder_core::{CheckRule, CheckSeverity};
    let files = views_with_checks(&[
        "      - {type: not_null, column: score}",
        "      - {type: range, column: score, min: 0, max: 1.5, severity: warn}",
        "      - {type: allowed_values, column: country, values: [FR, \"it's\", 3]}",
        "      - {type: unique_entity_per_timestamp}",
        "      - {type: row_count, max_change_percent: 20}",
        "      - {type: freshness, max_age: 2d}",
    ]);
    let directory = write_repo(&files);
    let repo = FeatureRepo::load(directory.path()).unwrap_or_else(|error| panic!("{error}"));
    let checks = &repo.registry.feature_views["pushed"].checks;
    assert_eq!(checks.len(), 6);
    assert_eq!(
        checks[1].rule,
        CheckRule::Range {
            column: "score".into(),
            min: Some("0".into()),
            max: Some("1.5".into())
        }
    );
    assert_eq!(checks[1].severity, CheckSeverity::Warn);
    assert_eq!(checks[0].severity, CheckSeverity::Error);
    assert_eq!(
        checks[2].rule,
        CheckRule::AllowedValues {
            column: "country".into(),
            values: vec!["'FR'".into(), "'it''s'".into(), "3".into()]
        }
    );
}

#[test]
fn bad_data_quality_checks_point_at_their_line() {
    let diagnostics = load_errors(&views_with_checks(&[
        "      - {type: not_nul, column: score}",
        "      - {type: not_null, column: nope}",
        "      - {type: range, column: score}",
        "      - {type: row_count, max_change_percent: 5, severity: fatal}",
    ]));
    assert_eq!(diagnostics.len(), 4, "{diagnostics}");
    assert_reported(
        &diagnostics,
        "views.yaml",
        8,
        "unknown check type 'not_nul'",
    );
    assert_reported(&diagnostics, "views.yaml", 9, "unknown column 'nope'");
    assert_reported(&diagnostics, "views.yaml", 10, "needs min, max or both");
    assert_reported(&diagnostics, "views.yaml", 11, "unknown severity 'fatal'");
}

fn protobuf_source(proto_file: &str, message: &str) -> String {
    lines(&[
        "sources:",
        "  - name: clicks",
        "    type: nats",
        "    url: nats://127.0.0.1:4222",
        "    stream: CLICKS",
        "    subject: clicks",
        "    message_format: protobuf",
        &format!("    proto_file: {proto_file}"),
        &format!("    proto_message: {message}"),
        "    timestamp_field: ts",
    ])
}

const CLICK_PROTO: &str = "syntax = \"proto3\";\npackage acme.events;\nimport \"google/protobuf/timestamp.proto\";\nmessage Click {\n  int64 user_id = 1;\n  double amount = 2;\n  google.protobuf.Timestamp ts = 3;\n}\n";

#[test]
fn protobuf_sources_are_compiled_at_apply() {
    let directory = write_repo(&[
        ("protos/click.proto", CLICK_PROTO.to_string()),
        (
            "sources.yaml",
            protobuf_source("protos/click.proto", "acme.events.Click"),
        ),
    ]);
    let repo =
        FeatureRepo::load(directory.path()).unwrap_or_else(|diagnostics| panic!("{diagnostics}"));
    let payload = repo.registry().sources["clicks"]
        .kind
        .stream_payload()
        .cloned()
        .unwrap();
    assert_eq!(payload.format, larder_core::MessageFormat::Protobuf);
    let schema = payload.protobuf.unwrap();
    assert_eq!(schema.message, "acme.events.Click");
    // The descriptor set holds the file and its import, so serving needs neither.
    assert!(
        schema.descriptor_set.len() > 100,
        "{}",
        schema.descriptor_set.len()
    );
}

#[test]
fn protobuf_errors_name_the_yaml_key_and_the_proto_problem() {
    let diagnostics = load_errors(&[
        ("protos/click.proto", CLICK_PROTO.to_string()),
        (
            "sources.yaml",
            protobuf_source("protos/click.proto", "acme.events.Klick"),
        ),
    ]);
    assert_reported(
        &diagnostics,
        "sources.yaml",
        9,
        "declares no message 'acme.events.Klick' (it declares: acme.events.Click)",
    );
    let diagnostics = load_errors(&[
        (
            "protos/click.proto",
            "syntax = \"proto3\";\nmessage Click {\n  int64 user_id = ;\n}\n".to_string(),
        ),
        (
            "sources.yaml",
            protobuf_source("protos/click.proto", "Click"),
        ),
    ]);
    assert_reported(
        &diagnostics,
        "sources.yaml",
        8,
        "cannot compile 'protos/click.proto'",
    );
}

fn views_with_schedule(source: &str, schedule: &str) -> Vec<(&'static str, String)> {
    let view_lines = [
        "feature_views:".to_string(),
        "  - name: scheduled".to_string(),
        "    version: 1".to_string(),
        "    entities: [user]".to_string(),
        format!("    source: {source}"),
        format!("    schedule: \"{schedule}\""),
        "    features: [{name: score, dtype: float64}]".to_string(),
    ];
    let view_lines: Vec<&str> = view_lines.iter().map(String::as_str).collect();
    vec![
        ("entities.yaml", crate::test_support::demo_entities()),
        ("sources.yaml", crate::test_support::demo_sources()),
        ("views.yaml", lines(&view_lines)),
    ]
}

#[test]
fn schedules_are_recorded_and_bad_ones_point_at_their_line() {
    let directory = write_repo(&views_with_schedule("profiles", "  */15 * * * * "));
    let repo = FeatureRepo::load(directory.path()).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        repo.registry.feature_views["scheduled"].schedule.as_deref(),
        Some("*/15 * * * *")
    );

    let diagnostics = load_errors(&views_with_schedule("profiles", "*/15 * * *"));
    assert_reported(&diagnostics, "views.yaml", 6, "has 4 fields");
    let diagnostics = load_errors(&views_with_schedule("profiles", "0 25 * * *"));
    assert_reported(&diagnostics, "views.yaml", 6, "not a cron schedule");
    let diagnostics = load_errors(&views_with_schedule("clicks", "*/15 * * * *"));
    assert_reported(&diagnostics, "views.yaml", 6, "only batch feature views");
}
