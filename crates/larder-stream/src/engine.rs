//! The tile-based aggregation engine: partial aggregates per (entity, tile), combined into
//! window values.
//!
//! # Semantics (the spec that the tests check against a naive model)
//!
//! * Each aggregation has a window `W` and a tile size `s` ([`tile_size_seconds`]); tiles
//!   start at multiples of `s` (UTC epoch aligned).
//! * An entity's row is computed **as of its newest event time `t`**: for each aggregation,
//!   the events whose tile starts in `(tile(t) − W, tile(t)]`, i.e. event times in
//!   `[tile(t) + s − W, t]`. The row's event time is `t`. A 7-day window combines at most
//!   84 tiles, whatever the number of events.
//! * The engine keeps the newest event time seen by the view (`max_seen`). An event older
//!   than `max_seen − allowed_lateness` is **late**: counted and dropped. Others update their
//!   tiles; an accepted event older than the entity's newest event changes the values of the
//!   entity's row at its newest event time (same event time, so the row is corrected).
//! * Tiles that can no longer be inside any window of the entity (start ≤ tile(t) − W for
//!   the largest window of their tile size) are dropped.
//! * Results depend only on the order of the events, never on batching, so replaying the same
//!   events from the same state gives the same rows (the basis of idempotent replays and of
//!   the offline backfill agreeing with serving). Float sums add in event order within a
//!   tile and in tile order across tiles.

use std::collections::HashMap;

use larder_core::stream::tile_size_seconds;
use larder_core::{
    AggregationFunction, EntityKey, FeatureView, StreamAggregations, Timestamp, Value, ValueType,
    codec,
};

use crate::StreamError;

/// One decoded event for an aggregating view: its entity, event time and the values of the
/// plan's input columns ([`AggregationPlan::input_columns`]), in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The entity.
    pub entity_key: EntityKey,
    /// When it happened.
    pub event_timestamp: Timestamp,
    /// One value per input column (`Null` when absent).
    pub inputs: Vec<Value>,
}

/// A compiled aggregation.
#[derive(Debug, Clone)]
struct CompiledAggregation {
    function: AggregationFunction,
    /// Index into the event's inputs; `None` for `count(*)`.
    input: Option<usize>,
    /// Whether numeric inputs are summed/compared as floats.
    float_input: bool,
    window_micros: i64,
    /// Index of the resolution (tile size) it reads.
    resolution: usize,
    /// Index of its partial within each tile of that resolution.
    slot: usize,
}

/// All aggregations that share one tile size.
#[derive(Debug, Clone)]
struct Resolution {
    tile_micros: i64,
    /// The largest window read at this resolution: older tiles are dropped.
    max_window_micros: i64,
    /// The aggregations stored in each tile, in slot order.
    aggregations: Vec<usize>,
}

/// The compiled form of a stream view's aggregations.
#[derive(Debug, Clone)]
pub struct AggregationPlan {
    view_name: String,
    aggregations: Vec<CompiledAggregation>,
    resolutions: Vec<Resolution>,
    input_columns: Vec<String>,
    input_types: Vec<ValueType>,
    allowed_lateness_micros: i64,
}

impl AggregationPlan {
    /// Compiles a view's aggregations. The view's features must be the aggregations'
    /// outputs, in order (as `apply` records them).
    pub fn new(view: &FeatureView, spec: &StreamAggregations) -> Result<Self, StreamError> {
        if spec.aggregations.len() != view.features.len() {
            return Err(StreamError::Definition(format!(
                "feature view '{}' has {} features but {} aggregations",
                view.name,
                view.features.len(),
                spec.aggregations.len()
            )));
        }
        let mut input_columns: Vec<String> = Vec::new();
        let mut input_types: Vec<ValueType> = Vec::new();
        let mut resolutions: Vec<Resolution> = Vec::new();
        let mut aggregations = Vec::with_capacity(spec.aggregations.len());
        for (index, aggregation) in spec.aggregations.iter().enumerate() {
            let input = match (&aggregation.column, &aggregation.input_dtype) {
                (Some(column), Some(dtype)) => {
                    Some(match input_columns.iter().position(|name| name == column) {
                        Some(position) => position,
                        None => {
                            input_columns.push(column.clone());
                            input_types.push(dtype.clone());
                            input_columns.len() - 1
                        }
                    })
                }
                (None, _) => None,
                (Some(column), None) => {
                    return Err(StreamError::Definition(format!(
                        "aggregation '{}' of feature view '{}' reads column '{column}' of unknown type",
                        aggregation.feature, view.name
                    )));
                }
            };
            let float_input = matches!(
                aggregation.input_dtype,
                Some(ValueType::Float32 | ValueType::Float64)
            );
            let tile_micros = tile_micros(aggregation.window);
            let window_micros = aggregation.window.as_micros();
            let resolution = match resolutions
                .iter()
                .position(|resolution| resolution.tile_micros == tile_micros)
            {
                Some(position) => position,
                None => {
                    resolutions.push(Resolution {
                        tile_micros,
                        max_window_micros: 0,
                        aggregations: Vec::new(),
                    });
                    resolutions.len() - 1
                }
            };
            let slot = resolutions[resolution].aggregations.len();
            resolutions[resolution].aggregations.push(index);
            resolutions[resolution].max_window_micros =
                resolutions[resolution].max_window_micros.max(window_micros);
            aggregations.push(CompiledAggregation {
                function: aggregation.function,
                input,
                float_input,
                window_micros,
                resolution,
                slot,
            });
        }
        Ok(Self {
            view_name: view.name.clone(),
            aggregations,
            resolutions,
            input_columns,
            input_types,
            allowed_lateness_micros: spec.allowed_lateness.as_micros(),
        })
    }

    /// The columns each event must carry, in [`StreamEvent::inputs`] order.
    pub fn input_columns(&self) -> &[String] {
        &self.input_columns
    }

    /// The types of the input columns.
    pub fn input_types(&self) -> &[ValueType] {
        &self.input_types
    }

    /// The decoder of the plan's input columns out of the messages of `source`.
    pub fn decoder(
        &self,
        view: &FeatureView,
        source: &larder_core::DataSource,
    ) -> Result<crate::decode::MessageDecoder, StreamError> {
        let columns: Vec<(String, ValueType)> = self
            .input_columns
            .iter()
            .cloned()
            .zip(self.input_types.iter().cloned())
            .collect();
        crate::decode::MessageDecoder::new(view, source, &columns)
    }

    fn empty_tile(&self, resolution: usize) -> Vec<Partial> {
        self.resolutions[resolution]
            .aggregations
            .iter()
            .map(|&index| Partial::empty(&self.aggregations[index]))
            .collect()
    }
}

fn tile_micros(window: larder_core::TtlDuration) -> i64 {
    i64::try_from(tile_size_seconds(window))
        .unwrap_or(1)
        .saturating_mul(1_000_000)
}

fn tile_start(timestamp: i64, tile_micros: i64) -> i64 {
    timestamp.div_euclid(tile_micros) * tile_micros
}

/// A number read by sum/min/max.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i64),
    Float(f64),
}

/// The partial aggregate of one aggregation over one tile (and, when combining, over several).
///
/// 24 bytes: the state holds one per aggregation per tile per entity, so the rare kinds that
/// carry values are boxed and the wide integer sum is kept in two words (8-byte aligned).
#[derive(Debug, Clone, PartialEq)]
enum Partial {
    Count(i64),
    SumInt(WideInt),
    SumFloat(f64),
    Mean {
        sum: f64,
        count: i64,
    },
    Min(Option<Number>),
    Max(Option<Number>),
    /// Event time and value of the newest event.
    Last(Option<Box<(i64, Value)>>),
    /// The newest `n` (event time, value), oldest first.
    LastN(Box<NewestValues>),
}

/// An `i128` in two 8-byte words (an `i128` field would make every [`Partial`] 16-byte aligned
/// and 32 bytes long).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct WideInt {
    low: u64,
    high: i64,
}

impl WideInt {
    fn new(value: i128) -> Self {
        Self {
            low: value as u64,
            high: (value >> 64) as i64,
        }
    }

    fn get(self) -> i128 {
        (i128::from(self.high) << 64) | i128::from(self.low)
    }
}

/// The newest values kept by `last_n`.
#[derive(Debug, Clone, PartialEq)]
struct NewestValues {
    n: u32,
    /// (event time, value), oldest first.
    values: Vec<(i64, Value)>,
}

fn number_of(value: &Value) -> Option<Number> {
    match value {
        Value::Int32(number) => Some(Number::Int(i64::from(*number))),
        Value::Int64(number) => Some(Number::Int(*number)),
        Value::Float32(number) => Some(Number::Float(f64::from(*number))),
        Value::Float64(number) => Some(Number::Float(*number)),
        _ => None,
    }
}

fn as_float(number: Number) -> f64 {
    match number {
        Number::Int(number) => number as f64,
        Number::Float(number) => number,
    }
}

fn less(left: Number, right: Number) -> bool {
    match (left, right) {
        (Number::Int(left), Number::Int(right)) => left < right,
        (left, right) => as_float(left).total_cmp(&as_float(right)).is_lt(),
    }
}

impl Partial {
    fn empty(aggregation: &CompiledAggregation) -> Self {
        match aggregation.function {
            AggregationFunction::Count => Self::Count(0),
            AggregationFunction::Sum if aggregation.float_input => Self::SumFloat(0.0),
            AggregationFunction::Sum => Self::SumInt(WideInt::default()),
            AggregationFunction::Mean => Self::Mean { sum: 0.0, count: 0 },
            AggregationFunction::Min => Self::Min(None),
            AggregationFunction::Max => Self::Max(None),
            AggregationFunction::Last => Self::Last(None),
            AggregationFunction::LastN { n } => Self::LastN(Box::new(NewestValues {
                n,
                values: Vec::new(),
            })),
        }
    }

    /// Adds one event's input (`None`: `count(*)`, which has no input).
    fn update(&mut self, timestamp: i64, input: Option<&Value>) {
        if let Self::Count(count) = self {
            if input.is_none_or(|value| !value.is_null()) {
                *count += 1;
            }
            return;
        }
        let Some(value) = input.filter(|value| !value.is_null()) else {
            return;
        };
        match self {
            Self::Count(_) => {}
            Self::SumInt(sum) => {
                if let Some(number) = number_of(value) {
                    *sum = WideInt::new(
                        sum.get()
                            + i128::from(match number {
                                Number::Int(number) => number,
                                Number::Float(number) => number as i64,
                            }),
                    );
                }
            }
            Self::SumFloat(sum) => {
                if let Some(number) = number_of(value) {
                    *sum += as_float(number);
                }
            }
            Self::Mean { sum, count } => {
                if let Some(number) = number_of(value) {
                    *sum += as_float(number);
                    *count += 1;
                }
            }
            Self::Min(current) => {
                if let Some(number) = number_of(value)
                    && current.is_none_or(|current| less(number, current))
                {
                    *current = Some(number);
                }
            }
            Self::Max(current) => {
                if let Some(number) = number_of(value)
                    && current.is_none_or(|current| less(current, number))
                {
                    *current = Some(number);
                }
            }
            Self::Last(current) => {
                if current
                    .as_deref()
                    .is_none_or(|(newest, _)| timestamp >= *newest)
                {
                    *current = Some(Box::new((timestamp, value.clone())));
                }
            }
            Self::LastN(newest) => {
                let values = &mut newest.values;
                let position = values.partition_point(|(time, _)| *time <= timestamp);
                values.insert(position, (timestamp, value.clone()));
                if values.len() > newest.n as usize {
                    values.remove(0);
                }
            }
        }
    }

    /// Adds the partial of a later tile into this one.
    fn merge(&mut self, later: &Partial) {
        match (self, later) {
            (Self::Count(count), Self::Count(other)) => *count += other,
            (Self::SumInt(sum), Self::SumInt(other)) => {
                *sum = WideInt::new(sum.get() + other.get());
            }
            (Self::SumFloat(sum), Self::SumFloat(other)) => *sum += other,
            (
                Self::Mean { sum, count },
                Self::Mean {
                    sum: other_sum,
                    count: other_count,
                },
            ) => {
                *sum += other_sum;
                *count += other_count;
            }
            (Self::Min(current), Self::Min(Some(other)))
                if current.is_none_or(|current| less(*other, current)) =>
            {
                *current = Some(*other);
            }
            (Self::Max(current), Self::Max(Some(other)))
                if current.is_none_or(|current| less(current, *other)) =>
            {
                *current = Some(*other);
            }
            (Self::Last(current), Self::Last(Some(other))) => {
                *current = Some(other.clone());
            }
            (Self::LastN(newest), Self::LastN(other)) => {
                newest.values.extend(other.values.iter().cloned());
                let excess = newest.values.len().saturating_sub(newest.n as usize);
                newest.values.drain(..excess);
            }
            _ => {}
        }
    }

    fn finish(self) -> Value {
        match self {
            Self::Count(count) => Value::Int64(count),
            Self::SumInt(sum) => {
                let sum = sum.get();
                Value::Int64(i64::try_from(sum).unwrap_or(if sum < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }))
            }
            Self::SumFloat(sum) => Value::Float64(sum),
            Self::Mean { count: 0, .. } => Value::Null,
            Self::Mean { sum, count } => Value::Float64(sum / count as f64),
            Self::Min(number) | Self::Max(number) => match number {
                None => Value::Null,
                Some(Number::Int(number)) => Value::Int64(number),
                Some(Number::Float(number)) => Value::Float64(number),
            },
            Self::Last(newest) => newest.map_or(Value::Null, |newest| newest.1),
            Self::LastN(newest) => Value::List(
                newest
                    .values
                    .into_iter()
                    .rev()
                    .map(|(_, value)| value)
                    .collect(),
            ),
        }
    }
}

/// The tiles of one entity.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityTiles {
    /// The entity's newest event time (µs).
    newest: i64,
    /// Per resolution, the tiles.
    tiles: Box<[TileRow]>,
    /// Whether it is in the aggregator's list of entities changed since the last take.
    changed: bool,
}

/// The tiles of one entity at one resolution: their starts (µs) in increasing order and,
/// flat, their partials (`width` per tile: one per aggregation of the resolution). A tile
/// costs its start and its partials, with no allocation or tree node of its own: the state
/// holds every active entity's tiles in memory.
#[derive(Debug, Clone, PartialEq, Default)]
struct TileRow {
    starts: Vec<i64>,
    partials: Vec<Partial>,
}

impl TileRow {
    fn len(&self) -> usize {
        self.starts.len()
    }

    /// The partials of the tile that starts at `start`, made from `empty` when it is new.
    fn tile_mut(
        &mut self,
        start: i64,
        width: usize,
        empty: impl FnOnce() -> Vec<Partial>,
    ) -> &mut [Partial] {
        let position = match self.starts.binary_search(&start) {
            Ok(position) => position,
            Err(position) => {
                if self.starts.len() == self.starts.capacity() {
                    // Grow by a quarter, not double: most entities hold a few dozen tiles.
                    let extra = (self.starts.len() / 4).max(2);
                    self.starts.reserve_exact(extra);
                    self.partials.reserve_exact(extra * width);
                }
                self.starts.insert(position, start);
                let at = position * width;
                self.partials.splice(at..at, empty());
                position
            }
        };
        &mut self.partials[position * width..(position + 1) * width]
    }

    /// Drops the tiles that start at or before `oldest_kept`.
    fn drop_through(&mut self, oldest_kept: i64, width: usize) {
        let count = self.starts.partition_point(|start| *start <= oldest_kept);
        if count > 0 {
            self.starts.drain(..count);
            self.partials.drain(..count * width);
        }
    }

    /// The tiles, oldest first, that start after `after` and at or before `through`.
    fn between(&self, after: i64, through: i64, width: usize) -> impl Iterator<Item = &[Partial]> {
        let first = self.starts.partition_point(|start| *start <= after);
        let end = self.starts.partition_point(|start| *start <= through);
        let end = end.max(first);
        self.partials[first * width..end * width].chunks_exact(width.max(1))
    }

    /// Every tile, oldest first, with its start.
    fn iter(&self, width: usize) -> impl Iterator<Item = (i64, &[Partial])> {
        self.starts
            .iter()
            .copied()
            .zip(self.partials.chunks_exact(width.max(1)))
    }
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// It updated its tiles.
    Applied,
    /// It was older than the view's newest event time minus the allowed lateness: dropped.
    Late,
}

/// The aggregation state of one stream view: every entity's tiles, the newest event time
/// seen, and the entities changed since the last [`ViewAggregator::take_changes`].
#[derive(Debug, Clone)]
pub struct ViewAggregator {
    plan: AggregationPlan,
    entities: HashMap<EntityKey, EntityTiles, FastHash>,
    /// The number of tiles of all entities (the state's size in memory, with the entities).
    tile_count: usize,
    max_seen: Option<i64>,
    /// The keys of the entities changed since the last take, each once (its
    /// `EntityTiles::changed` says whether it is here: one hash lookup per event).
    changed: Vec<EntityKey>,
}

/// The hasher of the entity map, looked up once per event: foldhash, seeded per process
/// (SipHash was 4 % of the stream lane's CPU).
type FastHash = foldhash::fast::RandomState;

/// The rows and states of the entities changed since the last take.
#[derive(Debug, Default)]
pub struct AggregatorChanges {
    /// One row per changed entity: its values as of its newest event time.
    pub rows: Vec<larder_ingest::FeatureRow>,
    /// The encoded state of each changed entity, to persist.
    pub states: Vec<(EntityKey, Vec<u8>)>,
}

impl ViewAggregator {
    /// An empty state.
    pub fn new(plan: AggregationPlan) -> Self {
        Self {
            plan,
            entities: HashMap::default(),
            tile_count: 0,
            max_seen: None,
            changed: Vec::new(),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &AggregationPlan {
        &self.plan
    }

    /// The newest event time seen (µs), part of the persisted state.
    pub fn max_seen(&self) -> Option<i64> {
        self.max_seen
    }

    /// Restores the newest event time seen.
    pub fn set_max_seen(&mut self, max_seen: Option<i64>) {
        self.max_seen = max_seen;
    }

    /// Number of entities with state.
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Number of tiles of all entities with state.
    pub fn tile_count(&self) -> usize {
        self.tile_count
    }

    /// Drops the state of erased entities (and their pending changes).
    pub fn forget(&mut self, keys: &std::collections::HashSet<EntityKey>) {
        let mut dropped = 0;
        self.entities.retain(|key, entity| {
            let keep = !keys.contains(key);
            if !keep {
                dropped += entity.tiles.iter().map(TileRow::len).sum::<usize>();
            }
            keep
        });
        self.tile_count -= dropped;
        self.changed.retain(|key| !keys.contains(key));
    }

    /// Restores one entity's state from [`AggregatorChanges::states`] bytes.
    pub fn restore_entity(&mut self, key: EntityKey, encoded: &[u8]) -> Result<(), StreamError> {
        let tiles = decode_entity(&self.plan, encoded).ok_or_else(|| {
            StreamError::State(format!(
                "corrupt aggregation state of an entity of feature view '{}'",
                self.plan.view_name
            ))
        })?;
        self.tile_count += tiles.tiles.iter().map(TileRow::len).sum::<usize>();
        if let Some(replaced) = self.entities.insert(key, tiles) {
            self.tile_count -= replaced.tiles.iter().map(TileRow::len).sum::<usize>();
        }
        Ok(())
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &StreamEvent) -> EventOutcome {
        let timestamp = event.event_timestamp.as_micros();
        if let Some(max_seen) = self.max_seen
            && timestamp < max_seen.saturating_sub(self.plan.allowed_lateness_micros)
        {
            return EventOutcome::Late;
        }
        self.max_seen = Some(self.max_seen.map_or(timestamp, |seen| seen.max(timestamp)));
        let plan = &self.plan;
        // Looked up first: the key is copied only for a new entity.
        let entity = match self.entities.get_mut(&event.entity_key) {
            Some(entity) => entity,
            None => self
                .entities
                .entry(event.entity_key.clone())
                .or_insert_with(|| EntityTiles {
                    newest: timestamp,
                    tiles: vec![TileRow::default(); plan.resolutions.len()].into_boxed_slice(),
                    changed: false,
                }),
        };
        entity.newest = entity.newest.max(timestamp);
        for (index, resolution) in plan.resolutions.iter().enumerate() {
            let start = tile_start(timestamp, resolution.tile_micros);
            let oldest_kept = tile_start(entity.newest, resolution.tile_micros)
                .saturating_sub(resolution.max_window_micros);
            let width = resolution.aggregations.len();
            let tiles = &mut entity.tiles[index];
            let before = tiles.len();
            if start > oldest_kept {
                let tile = tiles.tile_mut(start, width, || plan.empty_tile(index));
                for (slot, &aggregation_index) in resolution.aggregations.iter().enumerate() {
                    let aggregation = &plan.aggregations[aggregation_index];
                    let input = aggregation.input.map(|input| &event.inputs[input]);
                    tile[slot].update(timestamp, input);
                }
            }
            // Drop the tiles no window of this entity can read any more.
            tiles.drop_through(oldest_kept, width);
            // `before` is part of the count: this never goes below zero.
            self.tile_count = self.tile_count - before + tiles.len();
        }
        if !entity.changed {
            entity.changed = true;
            self.changed.push(event.entity_key.clone());
        }
        EventOutcome::Applied
    }

    /// The entity's values as of its newest event time, with that time; `None` for an entity
    /// without state.
    pub fn values_of(&self, key: &EntityKey) -> Option<(Timestamp, Vec<Value>)> {
        let entity = self.entities.get(key)?;
        Some((Timestamp(entity.newest), compute(&self.plan, entity)))
    }

    /// The rows and encoded states of the entities changed since the last call.
    pub fn take_changes(&mut self) -> AggregatorChanges {
        let mut changes = AggregatorChanges {
            rows: Vec::with_capacity(self.changed.len()),
            states: Vec::with_capacity(self.changed.len()),
        };
        let plan = &self.plan;
        for key in std::mem::take(&mut self.changed) {
            let Some(entity) = self.entities.get_mut(&key) else {
                continue;
            };
            entity.changed = false;
            changes.rows.push(larder_ingest::FeatureRow {
                entity_key: key.clone(),
                event_timestamp: Timestamp(entity.newest),
                values: compute(plan, entity),
            });
            changes.states.push((key, encode_entity(plan, entity)));
        }
        changes
    }
}

/// An entity's values as of its newest event time.
fn compute(plan: &AggregationPlan, entity: &EntityTiles) -> Vec<Value> {
    plan.aggregations
        .iter()
        .map(|aggregation| {
            let resolution = &plan.resolutions[aggregation.resolution];
            let current = tile_start(entity.newest, resolution.tile_micros);
            let first = current.saturating_sub(aggregation.window_micros);
            let mut total = Partial::empty(aggregation);
            for tile in entity.tiles[aggregation.resolution].between(
                first,
                current,
                resolution.aggregations.len(),
            ) {
                total.merge(&tile[aggregation.slot]);
            }
            total.finish()
        })
        .collect()
}

// ---- state encoding: newest, then per resolution the tiles with their partials ----------

const PARTIAL_COUNT: u8 = 1;
const PARTIAL_SUM_INT: u8 = 2;
const PARTIAL_SUM_FLOAT: u8 = 3;
const PARTIAL_MEAN: u8 = 4;
const PARTIAL_MIN: u8 = 5;
const PARTIAL_MAX: u8 = 6;
const PARTIAL_LAST: u8 = 7;
const PARTIAL_LAST_N: u8 = 8;

fn put_i64(number: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&number.to_le_bytes());
}

fn put_number(number: Option<Number>, out: &mut Vec<u8>) {
    match number {
        None => out.push(0),
        Some(Number::Int(number)) => {
            out.push(1);
            put_i64(number, out);
        }
        Some(Number::Float(number)) => {
            out.push(2);
            out.extend_from_slice(&number.to_bits().to_le_bytes());
        }
    }
}

fn put_timed_values(values: &[(i64, Value)], out: &mut Vec<u8>) {
    codec::write_varint(values.len() as u64, out);
    for (time, value) in values {
        put_i64(*time, out);
        let encoded = codec::encode_row_to_vec(std::slice::from_ref(value));
        codec::write_varint(encoded.len() as u64, out);
        out.extend_from_slice(&encoded);
    }
}

/// Encodes an entity's tiles.
fn encode_entity(plan: &AggregationPlan, entity: &EntityTiles) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_i64(entity.newest, &mut out);
    for (tiles, resolution) in entity.tiles.iter().zip(&plan.resolutions) {
        codec::write_varint(tiles.len() as u64, &mut out);
        for (start, partials) in tiles.iter(resolution.aggregations.len()) {
            put_i64(start, &mut out);
            for partial in partials {
                match partial {
                    Partial::Count(count) => {
                        out.push(PARTIAL_COUNT);
                        put_i64(*count, &mut out);
                    }
                    Partial::SumInt(sum) => {
                        out.push(PARTIAL_SUM_INT);
                        out.extend_from_slice(&sum.get().to_le_bytes());
                    }
                    Partial::SumFloat(sum) => {
                        out.push(PARTIAL_SUM_FLOAT);
                        out.extend_from_slice(&sum.to_bits().to_le_bytes());
                    }
                    Partial::Mean { sum, count } => {
                        out.push(PARTIAL_MEAN);
                        out.extend_from_slice(&sum.to_bits().to_le_bytes());
                        put_i64(*count, &mut out);
                    }
                    Partial::Min(number) => {
                        out.push(PARTIAL_MIN);
                        put_number(*number, &mut out);
                    }
                    Partial::Max(number) => {
                        out.push(PARTIAL_MAX);
                        put_number(*number, &mut out);
                    }
                    Partial::Last(newest) => {
                        out.push(PARTIAL_LAST);
                        put_timed_values(
                            newest
                                .as_deref()
                                .map(std::slice::from_ref)
                                .unwrap_or_default(),
                            &mut out,
                        );
                    }
                    Partial::LastN(newest) => {
                        out.push(PARTIAL_LAST_N);
                        put_timed_values(&newest.values, &mut out);
                    }
                }
            }
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, length: usize) -> Option<&[u8]> {
        let slice = self
            .bytes
            .get(self.position..self.position.checked_add(length)?)?;
        self.position += length;
        Some(slice)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|slice| slice[0])
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|slice| slice.try_into().ok())
            .map(i64::from_le_bytes)
    }

    fn f64(&mut self) -> Option<f64> {
        self.i64().map(|bits| f64::from_bits(bits as u64))
    }

    fn i128(&mut self) -> Option<i128> {
        self.take(16)
            .and_then(|slice| slice.try_into().ok())
            .map(i128::from_le_bytes)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut result: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(result);
            }
        }
        None
    }

    fn number(&mut self) -> Option<Option<Number>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(Number::Int(self.i64()?))),
            2 => Some(Some(Number::Float(self.f64()?))),
            _ => None,
        }
    }

    fn timed_values(&mut self) -> Option<Vec<(i64, Value)>> {
        let count = usize::try_from(self.varint()?).ok()?;
        let mut values = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let time = self.i64()?;
            let length = usize::try_from(self.varint()?).ok()?;
            let mut decoded = codec::decode_row(self.take(length)?).ok()?;
            let value = decoded.pop()?;
            values.push((time, value));
        }
        Some(values)
    }
}

fn decode_entity(plan: &AggregationPlan, bytes: &[u8]) -> Option<EntityTiles> {
    let mut reader = Reader { bytes, position: 0 };
    let newest = reader.i64()?;
    let mut all_tiles = Vec::with_capacity(plan.resolutions.len());
    for resolution in &plan.resolutions {
        let count = usize::try_from(reader.varint()?).ok()?;
        let width = resolution.aggregations.len();
        // Each tile takes at least 9 bytes: a corrupt count must not allocate for it.
        let capacity = count.min(bytes.len() / 9);
        let mut tiles = TileRow {
            starts: Vec::with_capacity(capacity),
            partials: Vec::with_capacity(capacity * width),
        };
        for _ in 0..count {
            let start = reader.i64()?;
            if tiles.starts.last().is_some_and(|last| *last >= start) {
                return None;
            }
            tiles.starts.push(start);
            for &aggregation_index in &resolution.aggregations {
                let aggregation = &plan.aggregations[aggregation_index];
                let partial = match (reader.byte()?, aggregation.function) {
                    (PARTIAL_COUNT, _) => Partial::Count(reader.i64()?),
                    (PARTIAL_SUM_INT, _) => Partial::SumInt(WideInt::new(reader.i128()?)),
                    (PARTIAL_SUM_FLOAT, _) => Partial::SumFloat(reader.f64()?),
                    (PARTIAL_MEAN, _) => Partial::Mean {
                        sum: reader.f64()?,
                        count: reader.i64()?,
                    },
                    (PARTIAL_MIN, _) => Partial::Min(reader.number()?),
                    (PARTIAL_MAX, _) => Partial::Max(reader.number()?),
                    (PARTIAL_LAST, _) => Partial::Last(reader.timed_values()?.pop().map(Box::new)),
                    (PARTIAL_LAST_N, AggregationFunction::LastN { n }) => {
                        Partial::LastN(Box::new(NewestValues {
                            n,
                            values: reader.timed_values()?,
                        }))
                    }
                    _ => return None,
                };
                if std::mem::discriminant(&partial)
                    != std::mem::discriminant(&Partial::empty(aggregation))
                {
                    return None;
                }
                tiles.partials.push(partial);
            }
        }
        all_tiles.push(tiles);
    }
    (reader.position == bytes.len()).then_some(EntityTiles {
        newest,
        tiles: all_tiles.into_boxed_slice(),
        changed: false,
    })
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn a_partial_takes_24_bytes() {
        // One per aggregation per tile per entity, all in memory: growing it grows the state.
        assert_eq!(std::mem::size_of::<Partial>(), 24);
    }

    #[test]
    fn wide_sums_keep_every_i128() {
        for value in [
            0,
            1,
            -1,
            i128::from(i64::MAX) + 7,
            i128::from(i64::MIN) * 3,
            i128::MAX,
            i128::MIN,
        ] {
            assert_eq!(WideInt::new(value).get(), value);
        }
    }

    #[test]
    fn tile_rows_keep_starts_ordered_and_partials_aligned() {
        let mut row = TileRow::default();
        for start in [30, 10, 20, 40, 10] {
            let tile = row.tile_mut(start, 2, || vec![Partial::Count(0), Partial::SumFloat(0.0)]);
            if let Partial::Count(count) = &mut tile[0] {
                *count += start;
            }
        }
        let tiles: Vec<(i64, Vec<Partial>)> = row
            .iter(2)
            .map(|(start, tile)| (start, tile.to_vec()))
            .collect();
        assert_eq!(
            tiles,
            [10, 20, 30, 40]
                .map(|start| (
                    start,
                    vec![
                        Partial::Count(if start == 10 { 20 } else { start }),
                        Partial::SumFloat(0.0)
                    ]
                ))
                .to_vec()
        );
        let between: Vec<i64> = row
            .between(10, 30, 2)
            .map(|tile| match tile[0] {
                Partial::Count(count) => count,
                _ => -1,
            })
            .collect();
        assert_eq!(between, vec![20, 30]);
        row.drop_through(20, 2);
        assert_eq!(row.starts, vec![30, 40]);
        assert_eq!(row.partials.len(), 4);
    }
}
