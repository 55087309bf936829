//! Batch transformations: a feature view's SQL over its sources, run by DataFusion.

use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, ParquetReadOptions, SessionConfig, SessionContext, col, lit,
};
use datafusion::scalar::ScalarValue;
use larder_core::{DataSource, DataSourceKind, FeatureView, FileFormat, Timestamp};

use crate::OfflineError;

/// A half-open event-time window `[start, end)`; an open side is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// Inclusive lower bound.
    pub start: Option<Timestamp>,
    /// Exclusive upper bound.
    pub end: Option<Timestamp>,
}

/// Runs feature views' transformations. Every batch (file) source of the registry is a table
/// named after the source, so a view's SQL may read and join any of them.
pub struct TransformEngine {
    context: SessionContext,
    repo_root: PathBuf,
}

impl std::fmt::Debug for TransformEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TransformEngine")
            .field("repo_root", &self.repo_root)
            .finish_non_exhaustive()
    }
}

impl TransformEngine {
    /// Creates an engine and registers the given sources; paths are relative to `repo_root`.
    /// Sources that are not batch sources (streams, push) are skipped.
    pub async fn new<'a>(
        repo_root: &Path,
        sources: impl IntoIterator<Item = &'a DataSource>,
    ) -> Result<Self, OfflineError> {
        let config = SessionConfig::new().with_information_schema(false);
        let engine = Self {
            context: SessionContext::new_with_config(config),
            repo_root: repo_root.to_path_buf(),
        };
        for source in sources {
            engine.register_source(source).await?;
        }
        Ok(engine)
    }

    /// The DataFusion session, for callers that run their own queries over the sources.
    pub fn session(&self) -> &SessionContext {
        &self.context
    }

    async fn register_source(&self, source: &DataSource) -> Result<(), OfflineError> {
        let DataSourceKind::File { path, format } = &source.kind else {
            return Ok(());
        };
        let resolved = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.repo_root.join(path)
        };
        let is_glob = path.contains(['*', '?', '[']);
        if !is_glob && !resolved.exists() {
            return Err(OfflineError::Io {
                context: format!("source '{}': reading {}", source.name, resolved.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        let location = resolved.to_string_lossy().to_string();
        let extension = if resolved.is_file() || is_glob {
            resolved
                .extension()
                .map(|extension| format!(".{}", extension.to_string_lossy()))
                .unwrap_or_default()
        } else {
            match format {
                FileFormat::Parquet => ".parquet".to_string(),
                FileFormat::Csv => ".csv".to_string(),
            }
        };
        let mut names = vec![source.name.clone()];
        if source.name.to_lowercase() != source.name {
            // Unquoted identifiers in SQL are lower-cased by DataFusion.
            names.push(source.name.to_lowercase());
        }
        for name in names {
            let result = match format {
                FileFormat::Parquet => {
                    let options = ParquetReadOptions {
                        file_extension: &extension,
                        ..ParquetReadOptions::default()
                    };
                    self.context
                        .register_parquet(name.as_str(), &location, options)
                        .await
                }
                FileFormat::Csv => {
                    let options = CsvReadOptions::new()
                        .has_header(true)
                        .file_extension(&extension);
                    self.context
                        .register_csv(name.as_str(), &location, options)
                        .await
                }
            };
            result.map_err(|source_error| OfflineError::Query {
                context: format!("source '{}' ({})", source.name, path),
                source: source_error,
            })?;
        }
        Ok(())
    }

    /// The SQL that produces a view's rows: its transformation, or the whole source.
    pub fn view_sql(view: &FeatureView) -> String {
        match &view.transformation {
            Some(sql) => sql.trim().trim_end_matches(';').to_string(),
            None => format!("SELECT * FROM \"{}\"", view.source),
        }
    }

    fn view_context(view: &FeatureView) -> String {
        match &view.transformation_path {
            Some(path) => format!("feature view '{}' ({path})", view.name),
            None => format!("feature view '{}'", view.name),
        }
    }

    async fn view_frame(&self, view: &FeatureView) -> Result<DataFrame, OfflineError> {
        self.context
            .sql(&Self::view_sql(view))
            .await
            .map_err(|source| OfflineError::Query {
                context: Self::view_context(view),
                source,
            })
    }

    /// The output columns of a view's transformation, planned without reading any rows.
    pub async fn output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError> {
        let frame = self.view_frame(view).await?;
        Ok(frame
            .schema()
            .fields()
            .iter()
            .map(|field| (field.name().clone(), field.data_type().clone()))
            .collect())
    }

    /// Runs a view's transformation and streams its rows, restricted to an event-time window.
    pub async fn execute_view(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        let frame = self.view_frame_in_window(view, window).await?;
        frame
            .execute_stream()
            .await
            .map_err(|source| OfflineError::Query {
                context: Self::view_context(view),
                source,
            })
    }

    /// A view's transformation restricted to an event-time window, as a DataFrame (planned,
    /// not run), for callers that run their own queries over it (data-quality checks).
    pub async fn view_frame_in_window(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<DataFrame, OfflineError> {
        let mut frame = self.view_frame(view).await?;
        let bound = |timestamp: Timestamp| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(timestamp.as_micros()),
                Some("UTC".into()),
            ))
        };
        if let Some(start) = window.start {
            frame = frame
                .filter(col(format!("\"{}\"", view.timestamp_field)).gt_eq(bound(start)))
                .map_err(|source| OfflineError::Query {
                    context: Self::view_context(view),
                    source,
                })?;
        }
        if let Some(end) = window.end {
            frame = frame
                .filter(col(format!("\"{}\"", view.timestamp_field)).lt(bound(end)))
                .map_err(|source| OfflineError::Query {
                    context: Self::view_context(view),
                    source,
                })?;
        }
        Ok(frame)
    }
}
