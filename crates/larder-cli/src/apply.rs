//! `larder apply`: validate the repo (including each view's SQL output schema), print the
//! plan, record the registry.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use larder_offline::value_type_of;
use larder_registry::{Diagnostics, FeatureRepo, RegistryStore, SchemaColumn, plan_apply};

use crate::context::RepoContext;

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The plan, as printed.
    pub plan: String,
    /// Whether the plan changes anything.
    pub changes: bool,
    /// Whether the registry was recorded (false for an empty plan or a dry run).
    pub recorded: bool,
    /// Feature views in the registry afterwards (the recorded one for a dry run).
    pub feature_views: usize,
    /// Online tables prepared.
    pub prepared_tables: usize,
}

/// Why an apply recorded nothing.
#[derive(Debug)]
pub enum ApplyError {
    /// The repo is invalid or the change is refused: the user's to fix.
    Refused(anyhow::Error),
    /// The registry or the online store failed.
    Failed(anyhow::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(error) | Self::Failed(error) => write!(formatter, "{error:#}"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Validates the repo at `root` (SQL output schemas included), plans, and unless `dry_run`
/// records the registry and prepares the online tables.
pub async fn apply_repo(root: &Path, dry_run: bool) -> Result<ApplyOutcome, ApplyError> {
    let context = RepoContext::load(root).map_err(ApplyError::Refused)?;
    let repo = FeatureRepo::load(root).map_err(|diagnostics| {
        ApplyError::Refused(anyhow!("the feature repo is invalid:\n{diagnostics}"))
    })?;
    check_view_schemas(&repo)
        .await
        .map_err(ApplyError::Refused)?;
    let store = context.registry_store();
    let recorded = store
        .load()
        .map_err(|error| ApplyError::Failed(error.into()))?;
    let plan = plan_apply(recorded.as_ref(), &repo)
        .map_err(|diagnostics| ApplyError::Refused(anyhow!("apply refused:\n{diagnostics}")))?;
    let mut outcome = ApplyOutcome {
        plan: plan.to_string(),
        changes: !plan.is_empty(),
        recorded: false,
        feature_views: recorded
            .as_ref()
            .map_or(0, |registry| registry.feature_views.len()),
        prepared_tables: 0,
    };
    if plan.is_empty() || dry_run {
        return Ok(outcome);
    }
    let mut registry = repo.into_registry();
    registry.applied_at = larder_core::Timestamp::now().as_micros();
    registry.carry_history(recorded.as_ref());
    store
        .save(&registry)
        .map_err(|error| ApplyError::Failed(error.into()))?;
    outcome.recorded = true;
    outcome.feature_views = registry.feature_views.len();
    outcome.prepared_tables = context
        .prepare_online_tables(&registry)
        .await
        .map_err(ApplyError::Failed)?;
    Ok(outcome)
}

/// Runs `larder apply` and prints what it did; returns whether anything was recorded.
pub async fn run(root: &Path, dry_run: bool) -> Result<bool> {
    let outcome = apply_repo(root, dry_run).await?;
    println!("{}", outcome.plan);
    if !outcome.changes {
        return Ok(false);
    }
    if dry_run {
        println!("Dry run: nothing recorded.");
        return Ok(false);
    }
    println!(
        "Applied: the registry now holds {} feature views.",
        outcome.feature_views
    );
    if outcome.prepared_tables > 0 {
        let context = RepoContext::load(root)?;
        println!(
            "Prepared {} online tables in the {} store.",
            outcome.prepared_tables,
            context.config.online_store.type_name()
        );
    }
    Ok(outcome.recorded)
}

/// `POST /api/v1/apply` of a running server: applies the repo as it is on disk now (after a
/// `git pull`, say), one apply at a time.
#[derive(Debug)]
pub struct ServeApplier {
    root: std::path::PathBuf,
    running: tokio::sync::Mutex<()>,
}

impl ServeApplier {
    /// An applier of the repo at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            running: tokio::sync::Mutex::new(()),
        }
    }
}

#[async_trait::async_trait]
impl larder_server::apply::Applier for ServeApplier {
    async fn apply(
        &self,
        dry_run: bool,
    ) -> Result<larder_server::apply::ApplyAnswer, larder_server::ServingError> {
        let _one_at_a_time = self.running.lock().await;
        match apply_repo(&self.root, dry_run).await {
            Ok(outcome) => Ok(larder_server::apply::ApplyAnswer {
                plan: outcome.plan,
                recorded: outcome.recorded,
                feature_views: outcome.feature_views,
            }),
            Err(ApplyError::Refused(error)) => {
                Err(larder_server::ServingError::invalid(format!("{error:#}")))
            }
            Err(ApplyError::Failed(error)) => Err(larder_server::ServingError::internal(
                "recording the registry failed",
                format!("{error:#}"),
            )),
        }
    }
}

/// Plans every batch view's transformation on the configured offline engine (DataFusion, or
/// Spark, which answers with the plan's schema without running it) and checks the output columns
/// against the declared features.
async fn check_view_schemas(repo: &FeatureRepo) -> Result<()> {
    let registry = repo.registry();
    let engine = crate::context::open_offline_engine(
        repo.root(),
        repo.config(),
        registry.sources.values().cloned().collect(),
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
