//! `larder features`, `larder describe`, `larder lineage`: discovery over the applied
//! registry and the run history, from the same catalog as the registry API and the UI.

use anyhow::{Result, anyhow};
use larder_core::Timestamp;
use larder_server::catalog::{self, NodeKind, SearchFilters};

use crate::context::RepoContext;

/// `larder features` arguments.
#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// Words that must each appear in a feature's or its view's name, description, owner,
    /// tier, tags, entities or sources.
    pub query: Vec<String>,
    /// Only views of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// Only views of this tier.
    #[arg(long)]
    pub tier: Option<String>,
    /// Only views with this tag (`key` or `key=value`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Only views of this entity.
    #[arg(long)]
    pub entity: Option<String>,
    /// Only views reading this source.
    #[arg(long)]
    pub source: Option<String>,
    /// List views instead of features.
    #[arg(long)]
    pub views: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `larder features`.
pub fn features(context: &RepoContext, args: &FeaturesArgs) -> Result<()> {
    let registry = context.applied_registry()?;
    let filters = SearchFilters {
        q: Some(args.query.join(" ")).filter(|query| !query.trim().is_empty()),
        owner: args.owner.clone(),
        tier: args.tier.clone(),
        tag: args.tag.clone(),
        entity: args.entity.clone(),
        source: args.source.clone(),
    };
    let everything = |_: &str| true;
    if args.views {
        let views = catalog::search_views(&registry, &filters, &everything);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&views)?);
            return Ok(());
        }
        println!(
            "{:<28} {:>4} {:<16} {:<8} {:>8}  description",
            "view", "ver", "owner", "tier", "features"
        );
        for view in &views {
            println!(
                "{:<28} {:>4} {:<16} {:<8} {:>8}  {}",
                view.name,
                format!("v{}", view.version),
                view.owner,
                view.tier.as_deref().unwrap_or("-"),
                view.feature_count,
                view.description
            );
        }
        println!("{} views", views.len());
        return Ok(());
    }
    let features = catalog::search_features(&registry, &filters, &everything);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&features)?);
        return Ok(());
    }
    println!(
        "{:<44} {:<12} {:<16}  description",
        "feature", "type", "owner"
    );
    for feature in &features {
        println!(
            "{:<44} {:<12} {:<16}  {}",
            feature.reference, feature.dtype, feature.owner, feature.description
        );
    }
    println!("{} features", features.len());
    Ok(())
}

/// Runs `larder describe VIEW`.
pub fn describe(context: &RepoContext, name: &str, json: bool) -> Result<()> {
    let registry = context.applied_registry()?;
    let runs = context.run_history().runs(Some(name))?;
    let description = catalog::describe_view(&registry, name, &runs, None, Timestamp::now())
        .ok_or_else(|| {
            anyhow!(
                "no feature view '{name}' (known: {})",
                registry
                    .feature_views
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&description)?);
        return Ok(());
    }
    let view = &description.definition;
    println!("{} v{}: {}", view.name, view.version, view.description);
    println!(
        "  owner: {}   tier: {}",
        view.owner,
        view.tier.as_deref().unwrap_or("-")
    );
    if !view.tags.is_empty() {
        let tags: Vec<String> = view
            .tags
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        println!("  tags: {}", tags.join(", "));
    }
    println!(
        "  entities: {}   sources: {}",
        view.entities.join(", "),
        description.summary.sources.join(", ")
    );
    println!(
        "  ttl: {}   freshness SLA: {}   schedule: {}   online: {}   offline: {}",
        view.ttl
            .map_or_else(|| "forever".to_string(), |ttl| ttl.to_string()),
        view.freshness_sla
            .map_or_else(|| "none".to_string(), |sla| sla.to_string()),
        view.schedule.as_deref().unwrap_or("on request"),
        view.online,
        view.offline
    );
    println!(
        "  feature services: {}",
        if description.feature_services.is_empty() {
            "none".to_string()
        } else {
            description.feature_services.join(", ")
        }
    );
    let freshness = &description.freshness;
    println!(
        "  freshness: {} (newest event {}, from {})",
        freshness.status,
        freshness.newest_event_time.as_deref().unwrap_or("none"),
        freshness.measured_from
    );
    println!("features:");
    for feature in &view.features {
        println!(
            "  {:<32} {:<12} {}",
            feature.name,
            feature.dtype.to_string(),
            feature.description
        );
    }
    if let Some(sql) = &view.transformation {
        println!("sql:");
        for line in sql.lines() {
            println!("  {line}");
        }
    }
    if !view.checks.is_empty() {
        println!("checks: {}", serde_json::to_string(&view.checks)?);
    }
    println!("versions:");
    for version in &description.versions {
        println!("  v{} applied {}", version.version, version.applied_at);
        for change in &version.changes {
            println!("    {change}");
        }
    }
    println!("last runs:");
    if description.runs.is_empty() {
        println!("  none");
    }
    for run in description.runs.iter().take(5) {
        println!(
            "  {} {} scanned {} changed {} written {} offline {}{}",
            run.started_at,
            run.status,
            run.rows_scanned,
            run.rows_changed,
            run.rows_written,
            run.offline_rows,
            run.error
                .as_deref()
                .map(|error| format!(" error: {error}"))
                .unwrap_or_default()
        );
        for warning in &run.warnings {
            println!("    warning: {warning}");
        }
    }
    Ok(())
}

/// Runs `larder lineage NAME`.
pub fn lineage(context: &RepoContext, name: &str, json: bool) -> Result<()> {
    let registry = context.applied_registry()?;
    let graph = catalog::lineage_of(&registry, name, &|_| true).ok_or_else(|| {
        anyhow!(
            "nothing named '{name}' (a source, a feature view, view:feature or a feature service)"
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&graph)?);
        return Ok(());
    }
    for (kind, title) in [
        (NodeKind::Source, "sources"),
        (NodeKind::FeatureView, "feature views"),
        (NodeKind::Feature, "features"),
        (NodeKind::FeatureService, "feature services"),
    ] {
        let names: Vec<&str> = graph
            .nodes
            .iter()
            .filter(|node| node.kind == kind)
            .map(|node| node.name.as_str())
            .collect();
        println!(
            "{title}: {}",
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    println!(
        "a change to {name} touches feature services: {}",
        if graph.impacted_feature_services.is_empty() {
            "none".to_string()
        } else {
            graph.impacted_feature_services.join(", ")
        }
    );
    Ok(())
}
