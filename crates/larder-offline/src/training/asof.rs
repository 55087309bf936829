//! The sort-merge as-of join: for each entity row, the ordinal of the latest feature row of
//! the same key with `event_ts <= entity_ts` and `event_ts > entity_ts - ttl`.
//!
//! Both inputs are *narrow* (join keys, a timestamp as `Int64` microseconds, and a `UInt64`
//! id), so sorting them is cheap; the wide feature values are fetched afterwards by ordinal
//! (see `super::gather`). Both sides are sorted by DataFusion's external sort, which spills
//! to disk when the session's memory pool is exhausted, then merged in one forward pass.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt64Array, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionContext, ident};
use futures::StreamExt;

use crate::OfflineError;

/// The timestamp column of both narrow inputs: event time in microseconds since the epoch (UTC).
pub const TIMESTAMP_COLUMN: &str = "_larder_ts";
/// The id column of the narrow entity input: the entity row's position in the request.
pub const ROW_COLUMN: &str = "_larder_row";
/// The id column of the narrow feature input: the feature row's position in its source's
/// read order.
pub const ORDINAL_COLUMN: &str = "_larder_ordinal";
/// The optional tie-break column of the narrow feature input: the content hash of the row's
/// encoded feature values. At equal key and event time, the larger hash wins (the batch
/// lane's rule), then the larger ordinal (identical values).
pub const TIE_COLUMN: &str = "_larder_tie";

/// Maps a DataFusion error to an offline error, saying what the join was doing.
pub(super) fn datafusion_error(
    context: &str,
) -> impl FnOnce(datafusion::error::DataFusionError) -> OfflineError {
    let context = context.to_string();
    move |source| OfflineError::Query { context, source }
}

/// Hands one stream to DataFusion as a table partition (it can be executed once).
struct OneShotPartition {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OneShotPartition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OneShotPartition")
            .finish_non_exhaustive()
    }
}

impl PartitionStream for OneShotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut slot| slot.take());
        match taken {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async {
                    Err(datafusion::error::DataFusionError::Internal(
                        "a one-shot stream was executed twice".to_string(),
                    ))
                }),
            )),
        }
    }
}

/// Sorts a stream ascending by `columns` (nulls first) with DataFusion's external sort, which
/// spills to the session's disk manager when its memory pool is short.
pub async fn sort_stream(
    session: &SessionContext,
    stream: SendableRecordBatchStream,
    columns: &[&str],
) -> Result<SendableRecordBatchStream, OfflineError> {
    let schema = stream.schema();
    let partition = OneShotPartition {
        schema: Arc::clone(&schema),
        stream: Mutex::new(Some(stream)),
    };
    let table = StreamingTable::try_new(schema, vec![Arc::new(partition)])
        .map_err(datafusion_error("sorting rows"))?;
    let frame = session
        .read_table(Arc::new(table))
        .map_err(datafusion_error("sorting rows"))?;
    let sort_expressions = columns
        .iter()
        .map(|column| ident(*column).sort(true, true))
        .collect();
    frame
        .sort(sort_expressions)
        .map_err(datafusion_error("sorting rows"))?
        .execute_stream()
        .await
        .map_err(datafusion_error("sorting rows"))
}

/// The schema of the as-of join's output: each entity row id and its matched feature ordinal
/// (null when no feature row qualifies).
pub fn match_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(ROW_COLUMN, DataType::UInt64, false),
        Field::new(ORDINAL_COLUMN, DataType::UInt64, true),
    ]))
}

/// One sorted batch of one side, with its keys in comparable row format.
struct SortedChunk {
    keys: Rows,
    timestamps: Int64Array,
    ids: UInt64Array,
}

impl SortedChunk {
    fn new(
        batch: &RecordBatch,
        converter: &RowConverter,
        key_count: usize,
        id_column: &str,
    ) -> Result<Self, OfflineError> {
        let key_columns: Vec<ArrayRef> = batch.columns()[..key_count].to_vec();
        let keys =
            converter
                .convert_columns(&key_columns)
                .map_err(|source| OfflineError::Arrow {
                    context: "encoding join keys".to_string(),
                    source,
                })?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| OfflineError::Schema(format!("internal: no column '{name}'")))
        };
        let timestamps = column(TIMESTAMP_COLUMN)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| OfflineError::Schema("internal: timestamps are not int64".into()))?;
        let ids = column(id_column)?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| OfflineError::Schema("internal: ids are not uint64".into()))?;
        Ok(Self {
            keys,
            timestamps,
            ids,
        })
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The forward-only cursor over the sorted feature side.
struct FeatureCursor {
    stream: SendableRecordBatchStream,
    converter: Arc<RowConverter>,
    key_count: usize,
    current: Option<Arc<SortedChunk>>,
    position: usize,
    /// The last feature row passed: the best candidate for the current entity row.
    candidate: Option<(Arc<SortedChunk>, usize)>,
    /// Whether the candidate has the same key and event time as the row passed before it.
    candidate_tied: bool,
}

impl FeatureCursor {
    /// Loads the next non-empty chunk; `current` becomes `None` at the end.
    async fn load_next(&mut self) -> Result<(), OfflineError> {
        self.position = 0;
        while let Some(batch) = self.stream.next().await {
            let batch = batch.map_err(datafusion_error("reading sorted feature rows"))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let chunk = SortedChunk::new(&batch, &self.converter, self.key_count, ORDINAL_COLUMN)?;
            self.current = Some(Arc::new(chunk));
            return Ok(());
        }
        self.current = None;
        Ok(())
    }

    /// Moves past every feature row ordered at or before `(entity_key, entity_timestamp)`.
    async fn advance_to(
        &mut self,
        entity_chunk: &SortedChunk,
        entity_row: usize,
    ) -> Result<(), OfflineError> {
        let entity_key = entity_chunk.keys.row(entity_row);
        let entity_timestamp = entity_chunk.timestamps.value(entity_row);
        loop {
            let Some(chunk) = self.current.as_ref() else {
                return Ok(());
            };
            if self.position >= chunk.len() {
                self.load_next().await?;
                continue;
            }
            let passes = match chunk.keys.row(self.position).cmp(&entity_key) {
                Ordering::Less => true,
                Ordering::Equal => chunk.timestamps.value(self.position) <= entity_timestamp,
                Ordering::Greater => false,
            };
            if !passes {
                return Ok(());
            }
            let chunk = Arc::clone(chunk);
            self.candidate_tied = self.candidate.as_ref().is_some_and(|(previous, row)| {
                previous.keys.row(*row) == chunk.keys.row(self.position)
                    && previous.timestamps.value(*row) == chunk.timestamps.value(self.position)
            });
            self.candidate = Some((chunk, self.position));
            self.position += 1;
        }
    }
}

/// What an as-of join streams, and what it learned once the stream has ended.
pub struct AsofMatches {
    /// `(row, ordinal)` pairs, one per entity row, in entity `(key, timestamp)` order.
    pub stream: SendableRecordBatchStream,
    /// Set when an entity row matched one of several feature rows with the same key and
    /// event time while the features had no [`TIE_COLUMN`]: the match then went to the
    /// larger ordinal, and the join must be run again with tie-break hashes.
    pub ties_matched: Arc<AtomicBool>,
}

/// Runs the as-of join over narrow inputs.
///
/// * `entities`: join keys (first `key_count` columns), [`TIMESTAMP_COLUMN`], [`ROW_COLUMN`].
/// * `features`: the same join key columns (same types, no null keys), [`TIMESTAMP_COLUMN`],
///   optionally [`TIE_COLUMN`], then [`ORDINAL_COLUMN`].
/// * `ttl_micros`: a feature row qualifies only if `event_ts > entity_ts - ttl`; `None`: any age.
pub async fn asof_match(
    session: &SessionContext,
    entities: SendableRecordBatchStream,
    features: SendableRecordBatchStream,
    key_count: usize,
    ttl_micros: Option<i64>,
) -> Result<AsofMatches, OfflineError> {
    let has_tie_column = features.schema().column_with_name(TIE_COLUMN).is_some();
    let entity_schema = entities.schema();
    let sort_fields = entity_schema.fields()[..key_count]
        .iter()
        .map(|field| SortField::new(field.data_type().clone()))
        .collect();
    let converter =
        Arc::new(
            RowConverter::new(sort_fields).map_err(|source| OfflineError::Arrow {
                context: "encoding join keys".to_string(),
                source,
            })?,
        );
    let key_names: Vec<String> = entity_schema.fields()[..key_count]
        .iter()
        .map(|field| field.name().clone())
        .collect();
    let mut entity_order: Vec<&str> = key_names.iter().map(String::as_str).collect();
    entity_order.extend([TIMESTAMP_COLUMN, ROW_COLUMN]);
    let mut feature_order: Vec<&str> = key_names.iter().map(String::as_str).collect();
    feature_order.push(TIMESTAMP_COLUMN);
    if has_tie_column {
        feature_order.push(TIE_COLUMN);
    }
    feature_order.push(ORDINAL_COLUMN);
    let sorted_entities = sort_stream(session, entities, &entity_order).await?;
    let sorted_features = sort_stream(session, features, &feature_order).await?;
    let mut cursor = FeatureCursor {
        stream: sorted_features,
        converter: Arc::clone(&converter),
        key_count,
        current: None,
        position: 0,
        candidate: None,
        candidate_tied: false,
    };
    cursor.load_next().await?;
    let ties_matched = Arc::new(AtomicBool::new(false));
    let ties_flag = Arc::clone(&ties_matched);
    let state = (sorted_entities, cursor, converter);
    let output =
        futures::stream::try_unfold(state, move |(mut entities, mut cursor, converter)| {
            let ties_flag = Arc::clone(&ties_flag);
            async move {
                loop {
                    let Some(batch) = entities.next().await else {
                        return Ok(None);
                    };
                    let batch = batch.map_err(|error| {
                        datafusion::error::DataFusionError::External(Box::new(error))
                    })?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let entity_chunk = SortedChunk::new(&batch, &converter, key_count, ROW_COLUMN)
                        .map_err(|error| {
                            datafusion::error::DataFusionError::External(Box::new(error))
                        })?;
                    let mut ordinals = UInt64Builder::with_capacity(entity_chunk.len());
                    for entity_row in 0..entity_chunk.len() {
                        // A null entity time asks for no point in time: its features are null,
                        // and the cursor must not move for it (its slot holds no real time).
                        if entity_chunk.timestamps.is_null(entity_row) {
                            ordinals.append_null();
                            continue;
                        }
                        cursor
                            .advance_to(&entity_chunk, entity_row)
                            .await
                            .map_err(|error| {
                                datafusion::error::DataFusionError::External(Box::new(error))
                            })?;
                        let entity_timestamp = entity_chunk.timestamps.value(entity_row);
                        let matched = cursor.candidate.as_ref().and_then(|(chunk, row)| {
                            let same_key =
                                chunk.keys.row(*row) == entity_chunk.keys.row(entity_row);
                            let fresh = match ttl_micros {
                                Some(ttl) => {
                                    chunk.timestamps.value(*row)
                                        > entity_timestamp.saturating_sub(ttl)
                                }
                                None => true,
                            };
                            (same_key && fresh).then(|| chunk.ids.value(*row))
                        });
                        if matched.is_some() && cursor.candidate_tied && !has_tie_column {
                            ties_flag.store(true, AtomicOrdering::Relaxed);
                        }
                        ordinals.append_option(matched);
                    }
                    let output = RecordBatch::try_new(
                        match_schema(),
                        vec![
                            Arc::new(entity_chunk.ids.clone()),
                            Arc::new(ordinals.finish()),
                        ],
                    )?;
                    return Ok(Some((output, (entities, cursor, converter))));
                }
            }
        });
    Ok(AsofMatches {
        stream: Box::pin(RecordBatchStreamAdapter::new(match_schema(), output)),
        ties_matched,
    })
}
