//! `larder apply`: validate the repo (including each view's SQL output schema), print the
//! plan, record the registry.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use larder_offline::{DataFusionEngine, OfflineEngine, value_type_of};
use larder_registry::{Diagnostics, FeatureRepo, RegistryStore, SchemaColumn, plan_apply};

use crate::context::RepoContext;

/// Runs apply; returns whether anything changed.
pub async fn run(root: &Path, dry_run: bool) -> Result<bool> {
    let context = RepoContext::load(root)?;
    let repo = FeatureRepo::load(root)
        .map_err(|diagnostics| anyhow!("the feature repo is invalid:\n{diagnostics}"))?;
    check_view_schemas(&repo).await?;
    let store = context.registry_store();
    let recorded = store.load()?;
    let plan = plan_apply(recorded.as_ref(), &repo)
        .map_err(|diagnostics| anyhow!("apply refused:\n{diagnostics}"))?;
    println!("{plan}");
    if plan.is_empty() {
        return Ok(false);
    }
    if dry_run {
        println!("Dry run: nothing recorded.");
        return Ok(false);
    }
    let mut registry = repo.into_registry();
    registry.applied_at = larder_core::Timestamp::now().as_micros();
    registry.carry_history(recorded.as_ref());
    store.save(&registry)?;
    println!(
        "Applied: the registry now holds {} feature views.",
        registry.feature_views.len()
    );
    let prepared_tables = context.prepare_online_tables(&registry).await?;
    if prepared_tables > 0 {
        println!(
            "Prepared {prepared_tables} online tables in the {} store.",
            context.config.online_store.type_name()
        );
    }
    Ok(true)
}

/// Plans every batch view's transformation with DataFusion and checks the output columns
/// against the declared features.
async fn check_view_schemas(repo: &FeatureRepo) -> Result<()> {
    let registry = repo.registry();
    let engine = DataFusionEngine::new(
        repo.root(),
        &repo.config().s3,
        repo.config().materialize.batch_rows,
        registry.sources.values(),
    )
    .await?;
    let mut all = Vec::new();
    for view in registry.feature_views.values() {
        let is_batch = registry
            .sources
            .get(&view.source)
            .is_some_and(|source| source.kind.is_batch());
        if !is_batch {
            continue;
        }
        let columns = engine.output_columns(view).await?;
        let schema: Vec<SchemaColumn> = columns
            .into_iter()
            .map(|(name, data_type)| SchemaColumn {
                name,
                dtype: value_type_of(&data_type),
                arrow_type: data_type.to_string(),
            })
            .collect();
        if let Err(Diagnostics(diagnostics)) = repo.check_view_schema(&view.name, &schema) {
            all.extend(diagnostics);
        }
    }
    if !all.is_empty() {
        bail!("the feature repo is invalid:\n{}", Diagnostics(all));
    }
    Ok(())
}
