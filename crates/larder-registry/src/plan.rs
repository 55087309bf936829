//! Planning `larder apply`: what changes between the recorded registry and the repo, and
//! whether those changes are allowed.
//!
//! A feature view's online and offline tables are named after its name *and version*, so data
//! computed by one definition is never mixed with data of another. Whatever decides the data
//! of a view (its SQL, source, entities, timestamp field and the names and dtypes of its
//! features) can therefore only change together with a higher version. Metadata (descriptions,
//! ttl, owner, tags, tier, the online/offline flags, the freshness SLA) may change freely.

use std::collections::BTreeMap;
use std::fmt;

use larder_core::{
    DataSource, DataSourceKind, Entity, FeatureService, FeatureView, JoinKey, TtlDuration,
};

use crate::Registry;
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::object_kind::ObjectKind;
use crate::repo::FeatureRepo;

mod similar;

/// One change that applying the repo makes to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectChange {
    /// A new object.
    Added {
        /// What kind of object.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// A short description shown in parentheses (`v1` for a feature view, the type of a
        /// source).
        summary: Option<String>,
    },
    /// An object whose definition changed.
    Changed {
        /// What kind of object.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// A short description shown in parentheses (`v1 -> v2` for a feature view).
        summary: Option<String>,
        /// What changed, one human-readable line each (`ttl: 30d -> 365d`).
        details: Vec<String>,
    },
    /// An object that is no longer declared.
    Removed {
        /// What kind of object.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// A short description shown in parentheses.
        summary: Option<String>,
    },
}

impl ObjectChange {
    /// The kind of the changed object.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Self::Added { kind, .. } | Self::Changed { kind, .. } | Self::Removed { kind, .. } => {
                *kind
            }
        }
    }

    /// The name of the changed object.
    pub fn name(&self) -> &str {
        match self {
            Self::Added { name, .. } | Self::Changed { name, .. } | Self::Removed { name, .. } => {
                name
            }
        }
    }

    /// `+`, `~` or `-`.
    pub fn symbol(&self) -> char {
        match self {
            Self::Added { .. } => '+',
            Self::Changed { .. } => '~',
            Self::Removed { .. } => '-',
        }
    }

    fn summary(&self) -> Option<&str> {
        match self {
            Self::Added { summary, .. }
            | Self::Changed { summary, .. }
            | Self::Removed { summary, .. } => summary.as_deref(),
        }
    }
}

impl fmt::Display for ObjectChange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} {} {}",
            self.symbol(),
            self.kind(),
            self.name()
        )?;
        if let Some(summary) = self.summary() {
            write!(formatter, " ({summary})")?;
        }
        if let Self::Changed { details, .. } = self {
            for detail in details {
                write!(formatter, "\n    {detail}")?;
            }
        }
        Ok(())
    }
}

/// What `larder apply` would change, in the order entities, sources, feature views, feature
/// services, and by name within each kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyPlan {
    /// The changes.
    pub changes: Vec<ObjectChange>,
    /// New features that nearly duplicate another feature (see `similar.rs` for the rule),
    /// one message each without the `warning: ` prefix. Warnings never refuse an apply and
    /// do not count as changes.
    pub warnings: Vec<String>,
}

impl ApplyPlan {
    /// Whether applying changes nothing (warnings aside).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The number of added, changed and removed objects.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |symbol: char| {
            self.changes
                .iter()
                .filter(|change| change.symbol() == symbol)
                .count()
        };
        (count('+'), count('~'), count('-'))
    }
}

impl fmt::Display for ApplyPlan {
    /// Prints the plan like terraform: one line per object, details of changes indented,
    /// and a count at the end; `no changes` when there are none. Warnings follow after a
    /// blank line, one `warning: ` line each.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            formatter.write_str("no changes")?;
        } else {
            for change in &self.changes {
                writeln!(formatter, "{change}")?;
            }
            let (added, changed, removed) = self.counts();
            write!(
                formatter,
                "\n{added} to add, {changed} to change, {removed} to remove"
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(formatter)?;
        }
        for warning in &self.warnings {
            write!(formatter, "\nwarning: {warning}")?;
        }
        Ok(())
    }
}

/// Compares the repo's definitions with the recorded registry (`None`: nothing applied yet)
/// and lists the changes. Refuses, with a diagnostic at the view's `version`, a feature view
/// whose data-defining parts changed while its version stayed the same, and any feature view
/// whose version decreased. Removing objects is allowed. New features that nearly duplicate
/// another feature are listed in [`ApplyPlan::warnings`] (see `similar.rs` for the rule).
pub fn plan_apply(
    recorded: Option<&Registry>,
    repo: &FeatureRepo,
) -> Result<ApplyPlan, Diagnostics> {
    let empty = Registry::default();
    let recorded = recorded.unwrap_or(&empty);
    let desired = repo.registry();
    let mut changes = Vec::new();
    diff_objects(
        ObjectKind::Entity,
        &recorded.entities,
        &desired.entities,
        |_| None,
        entity_details,
        &mut changes,
    );
    diff_objects(
        ObjectKind::DataSource,
        &recorded.sources,
        &desired.sources,
        |source| Some(source.kind.kind_name().to_string()),
        source_details,
        &mut changes,
    );
    diff_objects(
        ObjectKind::FeatureView,
        &recorded.feature_views,
        &desired.feature_views,
        |view| Some(format!("v{}", view.version)),
        feature_view_details,
        &mut changes,
    );
    add_stream_aggregation_changes(recorded, desired, &mut changes);
    for change in &mut changes {
        if let ObjectChange::Changed {
            kind: ObjectKind::FeatureView,
            name,
            summary,
            ..
        } = change
            && let (Some(old), Some(new)) = (
                recorded.feature_views.get(name.as_str()),
                desired.feature_views.get(name.as_str()),
            )
            && old.version != new.version
        {
            *summary = Some(format!("v{} -> v{}", old.version, new.version));
        }
    }
    diff_objects(
        ObjectKind::FeatureService,
        &recorded.feature_services,
        &desired.feature_services,
        |_| None,
        feature_service_details,
        &mut changes,
    );

    let mut diagnostics = Diagnostics::new();
    for (name, new) in &desired.feature_views {
        let Some(old) = recorded.feature_views.get(name) else {
            continue;
        };
        let message = if new.version < old.version {
            format!(
                "feature view '{name}' went from version {} to version {}: versions cannot decrease (use version {} for a new definition)",
                old.version,
                new.version,
                old.version.saturating_add(1)
            )
        } else if new.version == old.version {
            let mut data_changes = data_defining_changes(old, new);
            if let Some(change) = aggregation_change(
                recorded.stream_views.get(name),
                desired.stream_views.get(name),
            ) {
                data_changes.push(change);
            }
            if data_changes.is_empty() {
                continue;
            }
            format!(
                "feature view '{name}' {} but kept version {}: bump version to {}",
                join_phrases(&data_changes),
                new.version,
                new.version.saturating_add(1)
            )
        } else {
            continue;
        };
        let diagnostic = Diagnostic::new(message).with_key(format!("feature_views.{name}.version"));
        diagnostics.push(match repo.feature_view_locations(name) {
            Some(locations) => diagnostic.with_location(locations.version.clone()),
            None => diagnostic,
        });
    }
    let warnings = similar::similarity_warnings(recorded, desired);
    diagnostics.into_result(ApplyPlan { changes, warnings })
}

/// Describes how a stream view's aggregations changed (allowed lateness aside, which may
/// change freely), as a verb phrase; `None` when they did not.
fn aggregation_change(
    old: Option<&larder_core::StreamAggregations>,
    new: Option<&larder_core::StreamAggregations>,
) -> Option<String> {
    let old_aggregations = old.map(|old| &old.aggregations);
    let new_aggregations = new.map(|new| &new.aggregations);
    if old_aggregations == new_aggregations {
        return None;
    }
    Some(format!(
        "changed its aggregations ({} -> {})",
        describe_aggregations(old),
        describe_aggregations(new)
    ))
}

fn describe_aggregations(aggregations: Option<&larder_core::StreamAggregations>) -> String {
    let Some(aggregations) = aggregations else {
        return "none".to_string();
    };
    aggregations
        .aggregations
        .iter()
        .map(|aggregation| {
            let function = match aggregation.function {
                larder_core::AggregationFunction::LastN { n } => format!("last_n({n})"),
                other => other.name().to_string(),
            };
            let column = aggregation.column.as_deref().unwrap_or("*");
            format!(
                "{} = {function}({column}) over {}",
                aggregation.feature,
                format_duration(aggregation.window)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lists changes of stream views' aggregations and allowed lateness that leave the
/// [`FeatureView`] itself unchanged (a window from 1h to 2h keeps the feature's name and
/// dtype), and adds them to the details of views that changed otherwise.
fn add_stream_aggregation_changes(
    recorded: &Registry,
    desired: &Registry,
    changes: &mut Vec<ObjectChange>,
) {
    for (name, new_view) in &desired.feature_views {
        if !recorded.feature_views.contains_key(name) {
            continue;
        }
        let old = recorded.stream_views.get(name);
        let new = desired.stream_views.get(name);
        let mut details = Vec::new();
        if let Some(change) = aggregation_change(old, new) {
            details.push(change.replacen("changed its aggregations", "aggregations:", 1));
        }
        let lateness = |aggregations: Option<&larder_core::StreamAggregations>| {
            aggregations.map(|aggregations| aggregations.allowed_lateness)
        };
        if lateness(old) != lateness(new) {
            details.push(format!(
                "allowed_lateness: {} -> {}",
                optional_or_none(lateness(old).as_ref()),
                optional_or_none(lateness(new).as_ref())
            ));
        }
        if details.is_empty() {
            continue;
        }
        let existing = changes.iter_mut().find(|change| {
            change.kind() == ObjectKind::FeatureView && change.name() == name.as_str()
        });
        match existing {
            Some(ObjectChange::Changed {
                details: existing_details,
                ..
            }) => {
                existing_details.retain(|detail| detail != "definition changed");
                existing_details.extend(details);
            }
            Some(_) => {}
            None => {
                let position = changes
                    .iter()
                    .position(|change| {
                        change.kind() > ObjectKind::FeatureView
                            || (change.kind() == ObjectKind::FeatureView
                                && change.name() > name.as_str())
                    })
                    .unwrap_or(changes.len());
                changes.insert(
                    position,
                    ObjectChange::Changed {
                        kind: ObjectKind::FeatureView,
                        name: name.clone(),
                        summary: Some(format!("v{}", new_view.version)),
                        details,
                    },
                );
            }
        }
    }
}

fn diff_objects<T: PartialEq>(
    kind: ObjectKind,
    recorded: &BTreeMap<String, T>,
    desired: &BTreeMap<String, T>,
    summary: impl Fn(&T) -> Option<String>,
    details: impl Fn(&T, &T) -> Vec<String>,
    changes: &mut Vec<ObjectChange>,
) {
    let mut names: Vec<&String> = recorded.keys().chain(desired.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (recorded.get(name), desired.get(name)) {
            (None, Some(new)) => changes.push(ObjectChange::Added {
                kind,
                name: name.clone(),
                summary: summary(new),
            }),
            (Some(old), None) => changes.push(ObjectChange::Removed {
                kind,
                name: name.clone(),
                summary: summary(old),
            }),
            (Some(old), Some(new)) if old != new => {
                let mut change_details = details(old, new);
                if change_details.is_empty() {
                    change_details.push("definition changed".to_string());
                }
                changes.push(ObjectChange::Changed {
                    kind,
                    name: name.clone(),
                    summary: summary(new),
                    details: change_details,
                });
            }
            _ => {}
        }
    }
}

/// "a", "a and b", "a, b and c".
fn join_phrases(phrases: &[String]) -> String {
    match phrases {
        [] => String::new(),
        [only] => only.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// SQL with every run of whitespace replaced by one space, for comparisons.
fn normalize_sql_whitespace(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text_or_none(text: &str) -> &str {
    if text.is_empty() { "(none)" } else { text }
}

fn optional_or_none<T: fmt::Display>(value: Option<&T>) -> String {
    value.map_or_else(|| "none".to_string(), ToString::to_string)
}

/// A duration in the largest single unit that divides it (`365d`, `36h`), the way people
/// write them; mixed units otherwise.
fn format_duration(duration: TtlDuration) -> String {
    let seconds = duration.as_seconds();
    for (suffix, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds > 0 && seconds.is_multiple_of(size) {
            return format!("{}{suffix}", seconds / size);
        }
    }
    duration.to_string()
}

fn format_join_keys(join_keys: &[JoinKey]) -> String {
    join_keys
        .iter()
        .map(|join_key| format!("{} {}", join_key.name, join_key.dtype))
        .collect::<Vec<_>>()
        .join(", ")
}

fn format_tags(tags: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = tags
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Details shared by every kind: description, owner, tags.
fn push_metadata_details(
    details: &mut Vec<String>,
    (old_description, new_description): (&str, &str),
    (old_owner, new_owner): (&str, &str),
    (old_tags, new_tags): (&BTreeMap<String, String>, &BTreeMap<String, String>),
) {
    if old_description != new_description {
        details.push("description changed".to_string());
    }
    if old_owner != new_owner {
        details.push(format!(
            "owner: {} -> {}",
            text_or_none(old_owner),
            text_or_none(new_owner)
        ));
    }
    if old_tags != new_tags {
        details.push(format!(
            "tags: {} -> {}",
            format_tags(old_tags),
            format_tags(new_tags)
        ));
    }
}

fn entity_details(old: &Entity, new: &Entity) -> Vec<String> {
    let mut details = Vec::new();
    if old.join_keys != new.join_keys {
        details.push(format!(
            "join keys: {} -> {}",
            format_join_keys(&old.join_keys),
            format_join_keys(&new.join_keys)
        ));
    }
    push_metadata_details(
        &mut details,
        (&old.description, &new.description),
        (&old.owner, &new.owner),
        (&old.tags, &new.tags),
    );
    details
}

fn describe_source_kind(kind: &DataSourceKind) -> String {
    match kind {
        DataSourceKind::File { path, format } => {
            format!("file {path} ({})", format.name())
        }
        DataSourceKind::Kafka {
            brokers,
            topic,
            consumer_group,
            start_offset,
            ..
        } => {
            let mut text = format!("kafka topic {topic} on {}", brokers.join(","));
            if let Some(group) = consumer_group {
                text.push_str(&format!(", group {group}"));
            }
            if let Some(offset) = start_offset {
                text.push_str(&format!(", from {offset}"));
            }
            text
        }
        DataSourceKind::Nats {
            url,
            stream,
            subject,
            durable,
            ..
        } => {
            let mut text = format!("nats subject {subject} of stream {stream} at {url}");
            if let Some(durable) = durable {
                text.push_str(&format!(", durable {durable}"));
            }
            text
        }
        DataSourceKind::Push => "push".to_string(),
    }
}

fn source_details(old: &DataSource, new: &DataSource) -> Vec<String> {
    let mut details = Vec::new();
    if old.kind != new.kind {
        details.push(format!(
            "origin: {} -> {}",
            describe_source_kind(&old.kind),
            describe_source_kind(&new.kind)
        ));
    }
    if old.timestamp_field != new.timestamp_field {
        details.push(format!(
            "timestamp_field: {} -> {}",
            old.timestamp_field, new.timestamp_field
        ));
    }
    push_metadata_details(
        &mut details,
        (&old.description, &new.description),
        (&old.owner, &new.owner),
        (&old.tags, &new.tags),
    );
    details
}

/// What changed in the data-defining parts of a feature view, as verb phrases for the
/// refusal message ("changed its source (a -> b)").
fn data_defining_changes(old: &FeatureView, new: &FeatureView) -> Vec<String> {
    let mut changes = Vec::new();
    let path_of = |view: &FeatureView| {
        view.transformation_path
            .clone()
            .unwrap_or_else(|| "inline".to_string())
    };
    match (&old.transformation, &new.transformation) {
        (Some(old_sql), Some(new_sql))
            if normalize_sql_whitespace(old_sql) != normalize_sql_whitespace(new_sql) =>
        {
            changes.push(format!("changed its SQL transformation ({})", path_of(new)));
        }
        (None, Some(_)) => changes.push(format!("added a SQL transformation ({})", path_of(new))),
        (Some(_), None) => {
            changes.push(format!("removed its SQL transformation ({})", path_of(old)))
        }
        _ => {}
    }
    if old.source != new.source {
        changes.push(format!(
            "changed its source ({} -> {})",
            old.source, new.source
        ));
    }
    if old.entities != new.entities {
        changes.push(format!(
            "changed its entities ([{}] -> [{}])",
            old.entities.join(", "),
            new.entities.join(", ")
        ));
    } else if old.join_keys != new.join_keys {
        changes.push(format!(
            "changed the join keys of its entities ({} -> {})",
            format_join_keys(&old.join_keys),
            format_join_keys(&new.join_keys)
        ));
    }
    if old.timestamp_field != new.timestamp_field {
        changes.push(format!(
            "changed its timestamp field ({} -> {})",
            old.timestamp_field, new.timestamp_field
        ));
    }
    let old_features: BTreeMap<&str, &larder_core::Feature> = old
        .features
        .iter()
        .map(|feature| (feature.name.as_str(), feature))
        .collect();
    let new_features: BTreeMap<&str, &larder_core::Feature> = new
        .features
        .iter()
        .map(|feature| (feature.name.as_str(), feature))
        .collect();
    let mut features_changed = false;
    for feature in &new.features {
        match old_features.get(feature.name.as_str()) {
            None => {
                changes.push(format!(
                    "added feature '{}' ({})",
                    feature.name, feature.dtype
                ));
                features_changed = true;
            }
            Some(old_feature) if old_feature.dtype != feature.dtype => {
                changes.push(format!(
                    "changed the dtype of feature '{}' ({} -> {})",
                    feature.name, old_feature.dtype, feature.dtype
                ));
                features_changed = true;
            }
            Some(_) => {}
        }
    }
    for feature in &old.features {
        if !new_features.contains_key(feature.name.as_str()) {
            changes.push(format!("removed feature '{}'", feature.name));
            features_changed = true;
        }
    }
    let old_order: Vec<&str> = old
        .features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    let new_order: Vec<&str> = new
        .features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    if !features_changed && old_order != new_order {
        changes.push("reordered its features".to_string());
    }
    changes
}

/// What changed between two definitions of a feature view, one human-readable line each.
pub fn feature_view_details(old: &FeatureView, new: &FeatureView) -> Vec<String> {
    let mut details = Vec::new();
    if old.version != new.version {
        details.push(format!(
            "version: {} -> {} (new tables: materialize to fill them)",
            old.version, new.version
        ));
    }
    match (&old.transformation, &new.transformation) {
        (Some(old_sql), Some(new_sql)) if old_sql != new_sql => {
            let path = new.transformation_path.as_deref().unwrap_or("inline");
            if normalize_sql_whitespace(old_sql) == normalize_sql_whitespace(new_sql) {
                details.push(format!("transformation ({path}): whitespace only"));
            } else {
                details.push(format!("transformation ({path}): SQL changed"));
            }
        }
        (None, Some(_)) => details.push(format!(
            "transformation: none -> {}",
            new.transformation_path.as_deref().unwrap_or("inline")
        )),
        (Some(_), None) => details.push(format!(
            "transformation: {} -> none",
            old.transformation_path.as_deref().unwrap_or("inline")
        )),
        _ => {}
    }
    if old.transformation.is_some()
        && new.transformation.is_some()
        && old.transformation_path != new.transformation_path
    {
        details.push(format!(
            "transformation path: {} -> {}",
            old.transformation_path.as_deref().unwrap_or("inline"),
            new.transformation_path.as_deref().unwrap_or("inline")
        ));
    }
    if old.source != new.source {
        details.push(format!("source: {} -> {}", old.source, new.source));
    }
    if old.entities != new.entities {
        details.push(format!(
            "entities: [{}] -> [{}]",
            old.entities.join(", "),
            new.entities.join(", ")
        ));
    }
    if old.join_keys != new.join_keys {
        details.push(format!(
            "join keys: {} -> {}",
            format_join_keys(&old.join_keys),
            format_join_keys(&new.join_keys)
        ));
    }
    if old.timestamp_field != new.timestamp_field {
        details.push(format!(
            "timestamp_field: {} -> {}",
            old.timestamp_field, new.timestamp_field
        ));
    }
    let old_features: BTreeMap<&str, &larder_core::Feature> = old
        .features
        .iter()
        .map(|feature| (feature.name.as_str(), feature))
        .collect();
    for feature in &new.features {
        match old_features.get(feature.name.as_str()) {
            None => details.push(format!(
                "feature {} added ({})",
                feature.name, feature.dtype
            )),
            Some(old_feature) => {
                if old_feature.dtype != feature.dtype {
                    details.push(format!(
                        "feature {}: {} -> {}",
                        feature.name, old_feature.dtype, feature.dtype
                    ));
                }
                if old_feature.description != feature.description {
                    details.push(format!("feature {}: description changed", feature.name));
                }
            }
        }
    }
    for feature in &old.features {
        if new.feature_index(&feature.name).is_none() {
            details.push(format!("feature {} removed", feature.name));
        }
    }
    let old_order: Vec<&str> = old
        .features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    let new_order: Vec<&str> = new
        .features
        .iter()
        .map(|feature| feature.name.as_str())
        .collect();
    let same_feature_set = old.features.len() == new.features.len()
        && new
            .features
            .iter()
            .all(|feature| old.feature_index(&feature.name).is_some());
    if same_feature_set && old_order != new_order {
        details.push(format!(
            "features reordered: [{}] -> [{}]",
            old_order.join(", "),
            new_order.join(", ")
        ));
    }
    let format_duration = |duration: Option<&TtlDuration>| {
        duration.map_or_else(|| "none".to_string(), |duration| format_duration(*duration))
    };
    if old.ttl != new.ttl {
        details.push(format!(
            "ttl: {} -> {}",
            format_duration(old.ttl.as_ref()),
            format_duration(new.ttl.as_ref())
        ));
    }
    if old.freshness_sla != new.freshness_sla {
        details.push(format!(
            "freshness_sla: {} -> {}",
            format_duration(old.freshness_sla.as_ref()),
            format_duration(new.freshness_sla.as_ref())
        ));
    }
    if old.checks != new.checks {
        details.push(format!(
            "checks: {} -> {}",
            old.checks.len(),
            new.checks.len()
        ));
    }
    if old.schedule != new.schedule {
        details.push(format!(
            "schedule: {} -> {}",
            optional_or_none(old.schedule.as_ref()),
            optional_or_none(new.schedule.as_ref())
        ));
    }
    if old.on_missing != new.on_missing {
        let name = |on_missing: larder_core::OnMissing| match on_missing {
            larder_core::OnMissing::Keep => "keep",
            larder_core::OnMissing::Delete => "delete",
        };
        details.push(format!(
            "on_missing: {} -> {}",
            name(old.on_missing),
            name(new.on_missing)
        ));
    }
    if old.online != new.online {
        details.push(format!("online: {} -> {}", old.online, new.online));
    }
    if old.offline != new.offline {
        details.push(format!("offline: {} -> {}", old.offline, new.offline));
    }
    if old.tier != new.tier {
        details.push(format!(
            "tier: {} -> {}",
            optional_or_none(old.tier.as_ref()),
            optional_or_none(new.tier.as_ref())
        ));
    }
    push_metadata_details(
        &mut details,
        (&old.description, &new.description),
        (&old.owner, &new.owner),
        (&old.tags, &new.tags),
    );
    details
}

fn format_service_items(service: &FeatureService) -> String {
    let items: Vec<String> = service
        .items
        .iter()
        .flat_map(|item| match &item.features {
            Some(features) => features
                .iter()
                .map(|feature| format!("{}:{feature}", item.view))
                .collect(),
            None => vec![item.view.clone()],
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn feature_service_details(old: &FeatureService, new: &FeatureService) -> Vec<String> {
    let mut details = Vec::new();
    if old.items != new.items {
        details.push(format!(
            "features: {} -> {}",
            format_service_items(old),
            format_service_items(new)
        ));
    }
    push_metadata_details(
        &mut details,
        (&old.description, &new.description),
        (&old.owner, &new.owner),
        (&old.tags, &new.tags),
    );
    details
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
