//! `larder forget`: erases entities from every store (GDPR), or with `--verify` proves they
//! are gone. Works on the stores directly; when a running `larder serve` holds the embedded
//! store, asks that server (`POST /forget`) instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use larder_core::Value;
use larder_ingest::{ErasureReport, VerifyReport};
use larder_online::OnlineStoreError;
use larder_stream::state::SharedStreamState;

use crate::context::RepoContext;

/// Arguments of `larder forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// Entities, `join_key=value[,value...]` (one entity per value); repeat the flag for each
    /// join key of a composite key.
    #[arg(long = "entity", short = 'e')]
    entities: Vec<String>,
    /// A Parquet file of entities: one column per join key, one entity per row.
    #[arg(long)]
    entities_file: Option<PathBuf>,
    /// Count what is left of the entities in every store instead of erasing (exit code 1
    /// when anything is).
    #[arg(long)]
    verify: bool,
    /// Print the JSON report.
    #[arg(long)]
    json: bool,
}

/// Runs `larder forget`.
pub async fn run(root: &Path, args: &ForgetArgs) -> Result<()> {
    let mut entities = text_entities(&args.entities)?;
    if let Some(path) = &args.entities_file {
        let from_file = file_entities(path)?;
        if !entities.is_empty() {
            bail!("give the entities either with --entity or with --entities-file, not both");
        }
        entities = from_file;
    }
    if entities.is_empty() {
        bail!("name the entities to forget: --entity join_key=value or --entities-file FILE");
    }
    let context = RepoContext::load(root)?;
    let registry = context.applied_registry()?;
    let views: Vec<_> = registry.feature_views.values().cloned().collect();
    let local = match context.open_online_and_digest_stores().await {
        Ok(stores) => {
            // The stream tiles too: when a running `larder serve` holds them, it is asked.
            let stream_state = SharedStreamState::new(context.stream_state_path());
            match stream_state.open_if_exists() {
                Ok(_) => Ok((stores, stream_state)),
                Err(error) => Err(error.to_string()),
            }
        }
        Err(OnlineStoreError::Locked { .. }) => {
            Err("the online store is held by a running `larder serve`".to_string())
        }
        Err(error) => return Err(error.into()),
    };
    let outcome = match local {
        Ok(((store, digests), stream_state)) => {
            let eraser = context
                .eraser(store, context.digest_opener(Some(digests)))
                .with_state_store(Arc::new(stream_state));
            for report in eraser.resume_pending().await? {
                eprintln!("finished a pending erasure: {}", summary(&report));
            }
            if args.verify {
                serde_json::to_value(eraser.verify(&views, &entities).await?)?
            } else {
                let who = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
                serde_json::to_value(
                    eraser
                        .forget(&views, &entities, &format!("cli:{who}"))
                        .await?,
                )?
            }
        }
        Err(why) => {
            let url = format!("{}/forget", context.server_base_url());
            eprintln!("({why}; asking it at {url})");
            let body = serde_json::json!({
                "entities": entities
                    .iter()
                    .map(|(name, values)| (name.clone(), serde_json::to_value(values).unwrap_or_default()))
                    .collect::<serde_json::Map<_, _>>(),
                "verify": args.verify,
            });
            let url_for_task = url.clone();
            tokio::task::spawn_blocking(move || crate::get::post_json(&url_for_task, &body))
                .await
                .context("HTTP request task failed")?
                .with_context(|| format!("{why}, and asking the server at {url} failed"))?
        }
    };
    if args.verify {
        let report: VerifyReport = serde_json::from_value(outcome.clone())?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            let counts: Vec<String> = report
                .stores
                .iter()
                .map(|(store, rows)| format!("{store} {rows}"))
                .collect();
            println!(
                "Rows of the entities left in {} view versions: {}.",
                report.views.len(),
                counts.join(", ")
            );
        }
        if !report.is_clean() {
            bail!("the entities are not erased everywhere");
        }
        return Ok(());
    }
    let report: ErasureReport = serde_json::from_value(outcome.clone())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", summary(&report));
        for skipped in &report.skipped {
            println!(
                "  not erased: feature view '{}' is {}",
                skipped.view, skipped.reason
            );
        }
    }
    Ok(())
}

/// One line per erasure: what was removed from each store.
pub fn summary(report: &ErasureReport) -> String {
    let stores: Vec<String> = report
        .stores
        .iter()
        .map(|(store, counts)| {
            let mut text = format!("{store} {} rows", counts.rows);
            let files = counts.files_scanned + counts.files_pruned;
            if files > 0 {
                text.push_str(&format!(
                    " ({} of {files} files read, {} rewritten, {} bytes written)",
                    counts.files_scanned, counts.files_rewritten, counts.bytes_written
                ));
            }
            text
        })
        .collect();
    format!(
        "Forgot {} entities in {} ({}): {}.",
        report.entities,
        if report.views.is_empty() {
            "no feature view".to_string()
        } else {
            report.views.join(", ")
        },
        report.request_id,
        if stores.is_empty() {
            "nothing held them".to_string()
        } else {
            stores.join("; ")
        }
    )
}

/// `--entity join_key=value[,value...]` arguments as text columns; the eraser reads each
/// value as its join key's type.
fn text_entities(arguments: &[String]) -> Result<Vec<(String, Vec<Value>)>> {
    arguments
        .iter()
        .map(|argument| {
            let Some((name, values)) = argument.split_once('=') else {
                bail!("--entity '{argument}' must look like join_key=value[,value...]");
            };
            let values = values
                .split(',')
                .map(|text| Value::String(text.trim().to_string()))
                .collect();
            Ok((name.trim().to_string(), values))
        })
        .collect()
}

/// The columns of a Parquet file of entities (integer or text columns).
fn file_entities(path: &Path) -> Result<Vec<(String, Vec<Value>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    let mut columns: Vec<(String, Vec<Value>)> = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let schema = batch.schema();
        if columns.is_empty() {
            columns = schema
                .fields()
                .iter()
                .map(|field| (field.name().clone(), Vec::new()))
                .collect();
        }
        for (index, field) in schema.fields().iter().enumerate() {
            let dtype = larder_offline::value_type_of(field.data_type()).ok_or_else(|| {
                anyhow!(
                    "{}: column '{}' is {}, not an integer or text join key",
                    path.display(),
                    field.name(),
                    field.data_type()
                )
            })?;
            let column = larder_offline::CanonicalColumn::from_array(
                batch.column(index),
                &dtype,
                field.name(),
            )
            .map_err(|error| anyhow!("{}: {error}", path.display()))?;
            let values = &mut columns[index].1;
            for row in 0..batch.num_rows() {
                values.push(column.value(row));
            }
        }
    }
    Ok(columns)
}
