//! Discovery over the registry: search views and features, describe a view, trace lineage.
//!
//! One implementation serves the registry API (`/api/v1/...`), the UI (`/ui`) and the CLI
//! (`larder features`, `larder describe`, `larder lineage`), so they always agree.

use std::collections::{BTreeMap, BTreeSet};

use larder_core::{FeatureView, Timestamp};
use larder_ingest::RunReport;
use larder_registry::Registry;
use serde::Serialize;

/// Filters of a search; every given one must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchFilters {
    /// Words that must each appear (case-insensitively) in a name, description, owner,
    /// tier, tag, entity or source of the view or feature.
    pub q: Option<String>,
    /// Exact owner.
    pub owner: Option<String>,
    /// Exact tier.
    pub tier: Option<String>,
    /// A tag key, or `key=value`.
    pub tag: Option<String>,
    /// An entity name.
    pub entity: Option<String>,
    /// A source name.
    pub source: Option<String>,
}

impl SearchFilters {
    /// Only a free-text query.
    pub fn query(text: &str) -> Self {
        Self {
            q: Some(text.to_string()).filter(|text| !text.trim().is_empty()),
            ..Self::default()
        }
    }

    fn admits_view(&self, registry: &Registry, view: &FeatureView) -> bool {
        let exact = |wanted: &Option<String>, actual: Option<&str>| {
            wanted
                .as_deref()
                .is_none_or(|wanted| actual.is_some_and(|actual| actual == wanted))
        };
        let tag_ok = self
            .tag
            .as_deref()
            .is_none_or(|tag| match tag.split_once('=') {
                Some((key, value)) => view.tags.get(key).is_some_and(|actual| actual == value),
                None => view.tags.contains_key(tag),
            });
        exact(&self.owner, Some(&view.owner))
            && exact(&self.tier, view.tier.as_deref())
            && tag_ok
            && self
                .entity
                .as_deref()
                .is_none_or(|entity| view.entities.iter().any(|name| name == entity))
            && self
                .source
                .as_deref()
                .is_none_or(|source| sources_of(registry, view).contains(source))
    }

    fn words(&self) -> Vec<String> {
        self.q
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_lowercase)
            .collect()
    }
}

/// The sources a view reads: its declared source and every source its SQL names.
pub fn sources_of<'a>(registry: &'a Registry, view: &FeatureView) -> BTreeSet<&'a str> {
    view.sources_read(registry.sources.keys().map(String::as_str))
        .into_iter()
        .collect()
}

/// The text a view is found by.
fn view_haystack(registry: &Registry, view: &FeatureView) -> String {
    let mut text = format!(
        "{} {} {} {} {}",
        view.name,
        view.description,
        view.owner,
        view.tier.as_deref().unwrap_or_default(),
        view.entities.join(" ")
    );
    for (key, value) in &view.tags {
        text.push_str(&format!(" {key} {value} {key}={value}"));
    }
    for source in sources_of(registry, view) {
        text.push(' ');
        text.push_str(source);
    }
    text.to_lowercase()
}

/// One view in search results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewSummary {
    /// Name.
    pub name: String,
    /// Current version.
    pub version: u32,
    /// Free text.
    pub description: String,
    /// Who to ask.
    pub owner: String,
    /// Importance tier.
    pub tier: Option<String>,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// Entities, in order.
    pub entities: Vec<String>,
    /// Sources read.
    pub sources: Vec<String>,
    /// Number of features.
    pub feature_count: usize,
    /// Served online.
    pub online: bool,
}

impl ViewSummary {
    fn of(registry: &Registry, view: &FeatureView) -> Self {
        Self {
            name: view.name.clone(),
            version: view.version,
            description: view.description.clone(),
            owner: view.owner.clone(),
            tier: view.tier.clone(),
            tags: view.tags.clone(),
            entities: view.entities.clone(),
            sources: sources_of(registry, view)
                .into_iter()
                .map(str::to_string)
                .collect(),
            feature_count: view.features.len(),
            online: view.online,
        }
    }
}

/// One feature in search results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureSummary {
    /// `view:feature`.
    pub reference: String,
    /// The view.
    pub view: String,
    /// The feature.
    pub feature: String,
    /// Declared type.
    pub dtype: String,
    /// Free text.
    pub description: String,
    /// The view's owner.
    pub owner: String,
    /// The view's tier.
    pub tier: Option<String>,
    /// The view's entities.
    pub entities: Vec<String>,
}

/// Views that pass `filters` and contain every query word, best first (a word in the name
/// ranks above one elsewhere), then by name. `allowed` hides views a token may not see.
pub fn search_views(
    registry: &Registry,
    filters: &SearchFilters,
    allowed: &dyn Fn(&str) -> bool,
) -> Vec<ViewSummary> {
    let words = filters.words();
    let mut hits: Vec<(usize, &FeatureView)> = registry
        .feature_views
        .values()
        .filter(|view| allowed(&view.name) && filters.admits_view(registry, view))
        .filter_map(|view| {
            let haystack = format!(
                "{} {}",
                view_haystack(registry, view),
                view.features
                    .iter()
                    .map(|feature| format!("{} {}", feature.name, feature.description))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            );
            words
                .iter()
                .all(|word| haystack.contains(word.as_str()))
                .then(|| {
                    let name = view.name.to_lowercase();
                    let in_name = words
                        .iter()
                        .filter(|word| name.contains(word.as_str()))
                        .count();
                    (usize::MAX - in_name, view)
                })
        })
        .collect();
    hits.sort_by(|left, right| left.0.cmp(&right.0).then(left.1.name.cmp(&right.1.name)));
    hits.into_iter()
        .map(|(_, view)| ViewSummary::of(registry, view))
        .collect()
}

/// Features whose own name or description, or whose view's metadata, contain every query
/// word, in views that pass `filters`; those matching by their own name first.
pub fn search_features(
    registry: &Registry,
    filters: &SearchFilters,
    allowed: &dyn Fn(&str) -> bool,
) -> Vec<FeatureSummary> {
    let words = filters.words();
    let mut hits = Vec::new();
    for view in registry.feature_views.values() {
        if !allowed(&view.name) || !filters.admits_view(registry, view) {
            continue;
        }
        let view_text = view_haystack(registry, view);
        for feature in &view.features {
            let own = format!("{} {}", feature.name, feature.description).to_lowercase();
            let matches = words
                .iter()
                .all(|word| own.contains(word.as_str()) || view_text.contains(word.as_str()));
            if !matches {
                continue;
            }
            let name = feature.name.to_lowercase();
            let in_name = words
                .iter()
                .filter(|word| name.contains(word.as_str()))
                .count();
            hits.push((
                usize::MAX - in_name,
                FeatureSummary {
                    reference: format!("{}:{}", view.name, feature.name),
                    view: view.name.clone(),
                    feature: feature.name.clone(),
                    dtype: feature.dtype.to_string(),
                    description: feature.description.clone(),
                    owner: view.owner.clone(),
                    tier: view.tier.clone(),
                    entities: view.entities.clone(),
                },
            ));
        }
    }
    hits.sort_by(|left, right| {
        left.0
            .cmp(&right.0)
            .then(left.1.reference.cmp(&right.1.reference))
    });
    hits.into_iter().map(|(_, summary)| summary).collect()
}

/// One version of a view and what changed from the one before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionEntry {
    /// The version.
    pub version: u32,
    /// When it was first applied (RFC 3339).
    pub applied_at: String,
    /// What changed from the previous version (empty for the first).
    pub changes: Vec<String>,
}

/// How fresh a view is against its SLA.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Freshness {
    /// The SLA, in seconds.
    pub sla_seconds: Option<u64>,
    /// The newest event time known to be served (RFC 3339).
    pub newest_event_time: Option<String>,
    /// Its age now, in seconds.
    pub age_seconds: Option<f64>,
    /// `ok`, `late`, `no_sla` or `no_writes`.
    pub status: String,
    /// Where the figures come from: `writes` (this server's writes) or `runs` (the batch
    /// runs' watermarks).
    pub measured_from: String,
}

/// Everything about one view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewDescription {
    /// The summary.
    #[serde(flatten)]
    pub summary: ViewSummary,
    /// The definition as applied (schema, SQL, source, TTL, checks, schedule...).
    pub definition: FeatureView,
    /// The declared source, as applied.
    pub source: Option<serde_json::Value>,
    /// Feature services that use the view.
    pub feature_services: Vec<String>,
    /// Every version, oldest first.
    pub versions: Vec<VersionEntry>,
    /// Freshness now.
    pub freshness: Freshness,
    /// The last batch runs, newest first (counts and check results).
    pub runs: Vec<RunReport>,
}

/// Describes `name`: `None` when there is no such view. `runs` is the run history (any
/// order; the newest 20 of the view are kept); `newest_written` the newest event time this
/// server wrote to the view, when it knows.
pub fn describe_view(
    registry: &Registry,
    name: &str,
    runs: &[RunReport],
    newest_written: Option<Timestamp>,
    now: Timestamp,
) -> Option<ViewDescription> {
    let view = registry.feature_views.get(name)?;
    let history = registry.view_history.get(name);
    let mut versions = Vec::new();
    let mut previous: Option<&FeatureView> = None;
    for applied in history.into_iter().flatten() {
        versions.push(VersionEntry {
            version: applied.view.version,
            applied_at: Timestamp(applied.applied_at).to_rfc3339(),
            changes: previous
                .map(|old| larder_registry::feature_view_details(old, &applied.view))
                .unwrap_or_default(),
        });
        previous = Some(&applied.view);
    }
    if versions.is_empty() {
        versions.push(VersionEntry {
            version: view.version,
            applied_at: registry.applied_timestamp().to_rfc3339(),
            changes: Vec::new(),
        });
    }
    let mut view_runs: Vec<RunReport> = runs
        .iter()
        .filter(|run| run.view == name)
        .cloned()
        .collect();
    view_runs.sort_by(|left, right| right.started_at.cmp(&left.started_at));
    view_runs.truncate(20);
    let from_runs = view_runs
        .iter()
        .filter(|run| run.status == "succeeded")
        .filter_map(|run| run.watermark.as_deref().and_then(Timestamp::parse))
        .max();
    let (newest, measured_from) = match (newest_written, from_runs) {
        (Some(written), Some(run)) => (Some(written.max(run)), "writes"),
        (Some(written), None) => (Some(written), "writes"),
        (None, Some(run)) => (Some(run), "runs"),
        (None, None) => (None, "runs"),
    };
    let sla_seconds = view.freshness_sla.map(|sla| sla.as_seconds());
    let age_seconds =
        newest.map(|newest| (now.as_micros() - newest.as_micros()).max(0) as f64 / 1e6);
    let status = match (sla_seconds, age_seconds) {
        (_, None) => "no_writes",
        (None, Some(_)) => "no_sla",
        (Some(sla), Some(age)) if age <= sla as f64 => "ok",
        (Some(_), Some(_)) => "late",
    };
    Some(ViewDescription {
        summary: ViewSummary::of(registry, view),
        definition: view.clone(),
        source: registry
            .sources
            .get(&view.source)
            .and_then(|source| serde_json::to_value(source).ok()),
        feature_services: registry
            .feature_services
            .values()
            .filter(|service| service.items.iter().any(|item| item.view == view.name))
            .map(|service| service.name.clone())
            .collect(),
        versions,
        freshness: Freshness {
            sla_seconds,
            newest_event_time: newest.map(Timestamp::to_rfc3339),
            age_seconds,
            status: status.to_string(),
            measured_from: measured_from.to_string(),
        },
        runs: view_runs,
    })
}

/// What a lineage node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A data source.
    Source,
    /// A feature view (its SQL).
    FeatureView,
    /// A feature of a view.
    Feature,
    /// A feature service.
    FeatureService,
}

impl NodeKind {
    /// The column of the lineage picture, left to right.
    pub fn column(self) -> usize {
        match self {
            Self::Source => 0,
            Self::FeatureView => 1,
            Self::Feature => 2,
            Self::FeatureService => 3,
        }
    }
}

/// A node of the lineage graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LineageNode {
    /// `kind:name`, unique (`feature:view:feature` for features).
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// Its name (`view:feature` for features).
    pub name: String,
}

/// An edge: data flows from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LineageEdge {
    /// Upstream node id.
    pub from: String,
    /// Downstream node id.
    pub to: String,
}

/// Sources → views (SQL) → features → feature services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineageGraph {
    /// The node asked about, when one was (its id).
    pub focus: Option<String>,
    /// Nodes, by column then name.
    pub nodes: Vec<LineageNode>,
    /// Edges.
    pub edges: Vec<LineageEdge>,
    /// The feature services a change to the focus would touch.
    pub impacted_feature_services: Vec<String>,
}

fn node(kind: NodeKind, name: &str) -> LineageNode {
    let prefix = match kind {
        NodeKind::Source => "source",
        NodeKind::FeatureView => "feature_view",
        NodeKind::Feature => "feature",
        NodeKind::FeatureService => "feature_service",
    };
    LineageNode {
        id: format!("{prefix}:{name}"),
        kind,
        name: name.to_string(),
    }
}

/// The whole project's lineage graph (views a token may not see are left out).
pub fn full_lineage(registry: &Registry, allowed: &dyn Fn(&str) -> bool) -> LineageGraph {
    let mut nodes = BTreeSet::new();
    let mut edges = BTreeSet::new();
    for view in registry
        .feature_views
        .values()
        .filter(|view| allowed(&view.name))
    {
        let view_node = node(NodeKind::FeatureView, &view.name);
        for source in sources_of(registry, view) {
            let source_node = node(NodeKind::Source, source);
            edges.insert(LineageEdge {
                from: source_node.id.clone(),
                to: view_node.id.clone(),
            });
            nodes.insert(source_node);
        }
        for feature in &view.features {
            let feature_node = node(
                NodeKind::Feature,
                &format!("{}:{}", view.name, feature.name),
            );
            edges.insert(LineageEdge {
                from: view_node.id.clone(),
                to: feature_node.id.clone(),
            });
            nodes.insert(feature_node);
        }
        nodes.insert(view_node);
    }
    for service in registry.feature_services.values() {
        let service_node = node(NodeKind::FeatureService, &service.name);
        let mut any = false;
        for item in &service.items {
            let Some(view) = registry.feature_views.get(&item.view) else {
                continue;
            };
            if !allowed(&view.name) {
                continue;
            }
            for feature in &view.features {
                let chosen = item
                    .features
                    .as_ref()
                    .is_none_or(|chosen| chosen.contains(&feature.name));
                if chosen {
                    any = true;
                    edges.insert(LineageEdge {
                        from: node(
                            NodeKind::Feature,
                            &format!("{}:{}", view.name, feature.name),
                        )
                        .id,
                        to: service_node.id.clone(),
                    });
                }
            }
        }
        if any {
            nodes.insert(service_node);
        }
    }
    let mut nodes: Vec<LineageNode> = nodes.into_iter().collect();
    nodes.sort_by(|left, right| left.kind.cmp(&right.kind).then(left.name.cmp(&right.name)));
    LineageGraph {
        focus: None,
        nodes,
        edges: edges.into_iter().collect(),
        impacted_feature_services: Vec::new(),
    }
}

/// The lineage of `name` (a source, a view, `view:feature` or a feature service): every node
/// upstream and downstream of it, and the services a change to it would touch. `None` when
/// nothing has that name.
pub fn lineage_of(
    registry: &Registry,
    name: &str,
    allowed: &dyn Fn(&str) -> bool,
) -> Option<LineageGraph> {
    let full = full_lineage(registry, allowed);
    let focus = [
        NodeKind::FeatureView,
        NodeKind::Feature,
        NodeKind::Source,
        NodeKind::FeatureService,
    ]
    .into_iter()
    .map(|kind| node(kind, name).id)
    .find(|id| full.nodes.iter().any(|candidate| candidate.id == *id))?;
    let reach = |forward: bool| {
        let mut seen = BTreeSet::from([focus.clone()]);
        let mut frontier = vec![focus.clone()];
        while let Some(current) = frontier.pop() {
            for edge in &full.edges {
                let (here, next) = match forward {
                    true => (&edge.from, &edge.to),
                    false => (&edge.to, &edge.from),
                };
                if *here == current && seen.insert(next.clone()) {
                    frontier.push(next.clone());
                }
            }
        }
        seen
    };
    let downstream = reach(true);
    let mut kept = reach(false);
    kept.extend(downstream.iter().cloned());
    let impacted_feature_services = full
        .nodes
        .iter()
        .filter(|node| node.kind == NodeKind::FeatureService && downstream.contains(&node.id))
        .map(|node| node.name.clone())
        .collect();
    Some(LineageGraph {
        focus: Some(focus),
        nodes: full
            .nodes
            .into_iter()
            .filter(|node| kept.contains(&node.id))
            .collect(),
        edges: full
            .edges
            .into_iter()
            .filter(|edge| kept.contains(&edge.from) && kept.contains(&edge.to))
            .collect(),
        impacted_feature_services,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use larder_core::{
        DataSource, DataSourceKind, FeatureService, FeatureServiceItem, TtlDuration, ValueType,
    };

    use super::*;
    use crate::test_views::view;

    fn source(name: &str) -> DataSource {
        DataSource {
            name: name.to_string(),
            kind: DataSourceKind::Push,
            timestamp_field: "event_timestamp".to_string(),
            description: String::new(),
            owner: String::new(),
            tags: BTreeMap::new(),
        }
    }

    /// Two views (one joining a second source in its SQL) and a service over one feature.
    fn registry() -> Registry {
        let mut clicks = view(
            "user_clicks",
            "clicks",
            &[("user_id", ValueType::Int64)],
            &[
                ("clicks_7d", ValueType::Int64),
                ("ctr_7d", ValueType::Float64),
            ],
        );
        clicks.owner = "ranking@example.com".into();
        clicks.tier = Some("tier1".into());
        clicks.tags = BTreeMap::from([("team".to_string(), "ranking".to_string())]);
        clicks.entities = vec!["user".into()];
        clicks.transformation =
            Some("SELECT c.user_id, c.clicks_7d, c.clicks_7d / i.n AS ctr_7d FROM clicks c JOIN impressions i USING (user_id)".into());
        let mut profile = view(
            "user_profile",
            "profiles",
            &[("user_id", ValueType::Int64)],
            &[("age", ValueType::Int64)],
        );
        profile.owner = "growth@example.com".into();
        profile.entities = vec!["user".into()];
        profile.freshness_sla = Some(TtlDuration::from_seconds(3600));
        let mut registry = Registry::default();
        for source in [source("clicks"), source("impressions"), source("profiles")] {
            registry.sources.insert(source.name.clone(), source);
        }
        for view in [clicks, profile] {
            registry.feature_views.insert(view.name.clone(), view);
        }
        registry.feature_services.insert(
            "ranker".into(),
            FeatureService {
                name: "ranker".into(),
                items: vec![FeatureServiceItem {
                    view: "user_clicks".into(),
                    features: Some(vec!["ctr_7d".into()]),
                }],
                description: String::new(),
                owner: String::new(),
                tags: BTreeMap::new(),
            },
        );
        registry
    }

    #[test]
    fn search_matches_every_word_and_filters_exactly() {
        let registry = registry();
        let all = |_: &str| true;
        let names = |filters: &SearchFilters| -> Vec<String> {
            search_views(&registry, filters, &all)
                .into_iter()
                .map(|view| view.name)
                .collect()
        };
        assert_eq!(names(&SearchFilters::query("ranking ctr")), ["user_clicks"]);
        assert_eq!(
            names(&SearchFilters::query("user")),
            ["user_clicks", "user_profile"]
        );
        assert!(names(&SearchFilters::query("ranking age")).is_empty());
        let by_source = SearchFilters {
            source: Some("impressions".into()),
            ..SearchFilters::default()
        };
        assert_eq!(
            names(&by_source),
            ["user_clicks"],
            "a source named in the SQL counts"
        );
        let by_tag = SearchFilters {
            tag: Some("team=ranking".into()),
            ..SearchFilters::default()
        };
        assert_eq!(names(&by_tag), ["user_clicks"]);
        let hidden = search_views(&registry, &SearchFilters::default(), &|view| {
            view != "user_clicks"
        });
        assert_eq!(hidden.len(), 1);
        let features: Vec<String> = search_features(&registry, &SearchFilters::query("age"), &all)
            .into_iter()
            .map(|feature| feature.reference)
            .collect();
        assert_eq!(features, ["user_profile:age"]);
    }

    #[test]
    fn lineage_runs_from_sources_to_services_and_names_the_impact() {
        let registry = registry();
        let graph = lineage_of(&registry, "impressions", &|_| true).unwrap();
        assert_eq!(graph.impacted_feature_services, ["ranker"]);
        let ids: Vec<&str> = graph.nodes.iter().map(|node| node.id.as_str()).collect();
        assert!(ids.contains(&"feature:user_clicks:clicks_7d"), "{ids:?}");
        assert!(!ids.contains(&"feature_view:user_profile"), "{ids:?}");
        // A feature outside the service touches no service; its upstream is kept.
        let graph = lineage_of(&registry, "user_clicks:clicks_7d", &|_| true).unwrap();
        assert!(graph.impacted_feature_services.is_empty());
        assert!(graph.nodes.iter().any(|node| node.id == "source:clicks"));
        assert!(lineage_of(&registry, "nothing", &|_| true).is_none());
    }

    #[test]
    fn descriptions_list_versions_with_changes_and_judge_freshness() {
        let mut registry = registry();
        registry.applied_at = 1_000_000;
        registry.carry_history(None);
        let mut next = registry.clone();
        let profile = next.feature_views.get_mut("user_profile").unwrap();
        profile.version = 2;
        profile.ttl = Some(TtlDuration::from_seconds(86_400));
        next.applied_at = 2_000_000;
        next.carry_history(Some(&registry));
        let now = Timestamp(10_000_000_000);
        let fresh = Timestamp(now.as_micros() - 60_000_000);
        let described = describe_view(&next, "user_profile", &[], Some(fresh), now).unwrap();
        let versions: Vec<u32> = described
            .versions
            .iter()
            .map(|version| version.version)
            .collect();
        assert_eq!(versions, [1, 2]);
        assert!(
            described.versions[1]
                .changes
                .iter()
                .any(|change| change.contains("ttl")),
            "{:?}",
            described.versions[1].changes
        );
        assert_eq!(described.freshness.status, "ok");
        let stale = Timestamp(now.as_micros() - 7_200_000_000);
        let described = describe_view(&next, "user_profile", &[], Some(stale), now).unwrap();
        assert_eq!(described.freshness.status, "late");
        let described = describe_view(&next, "user_clicks", &[], None, now).unwrap();
        assert_eq!(described.freshness.status, "no_writes");
        assert_eq!(described.feature_services, ["ranker"]);
        assert!(describe_view(&next, "nope", &[], None, now).is_none());
    }
}
