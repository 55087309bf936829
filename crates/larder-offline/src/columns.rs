//! Reading Arrow columns as Larder values.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float32Array, Float64Array,
    Int32Array, Int64Array, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::scalar::ScalarValue;
use larder_core::{EntityKey, FeatureView, Timestamp, Value, ValueType, codec};

use crate::OfflineError;
use crate::arrow_types::arrow_type_of;

/// A column cast to the canonical Arrow type of its Larder type, ready to read row by row.
#[derive(Debug, Clone)]
pub enum CanonicalColumn {
    /// `bool`
    Bool(BooleanArray),
    /// `int32`
    Int32(Int32Array),
    /// `int64`
    Int64(Int64Array),
    /// `float32`
    Float32(Float32Array),
    /// `float64`
    Float64(Float64Array),
    /// `string`
    String(StringArray),
    /// `bytes`
    Bytes(BinaryArray),
    /// `timestamp`
    Timestamp(TimestampMicrosecondArray),
    /// `list<T>`, with its elements as one column of `T`.
    List(ListArray, Box<CanonicalColumn>),
    /// `vector<N>`
    Vector(FixedSizeListArray),
}

fn downcast<T: Clone + 'static>(array: &ArrayRef, column_name: &str) -> Result<T, OfflineError> {
    array.as_any().downcast_ref::<T>().cloned().ok_or_else(|| {
        OfflineError::Schema(format!(
            "column '{column_name}' has an unexpected Arrow layout after casting"
        ))
    })
}

impl CanonicalColumn {
    /// Casts `array` to the canonical type of `value_type`. Values that do not fit (an int64
    /// too large for int32, text that is not a number) are an error, never silently nulled.
    pub fn from_array(
        array: &ArrayRef,
        value_type: &ValueType,
        column_name: &str,
    ) -> Result<Self, OfflineError> {
        let target = arrow_type_of(value_type);
        let array = &crate::arrow_types::floor_nanos_to_micros(array).map_err(|source| {
            OfflineError::Arrow {
                context: format!("column '{column_name}'"),
                source,
            }
        })?;
        let cast_array = if array.data_type() == &target {
            Arc::clone(array)
        } else {
            let options = CastOptions {
                safe: false,
                ..CastOptions::default()
            };
            cast_with_options(array, &target, &options).map_err(|source| OfflineError::Arrow {
                context: format!(
                    "column '{column_name}' ({}) cannot be read as {value_type}",
                    array.data_type()
                ),
                source,
            })?
        };
        let column = match value_type {
            ValueType::Bool => Self::Bool(downcast(&cast_array, column_name)?),
            ValueType::Int32 => Self::Int32(downcast(&cast_array, column_name)?),
            ValueType::Int64 => Self::Int64(downcast(&cast_array, column_name)?),
            ValueType::Float32 => Self::Float32(downcast(&cast_array, column_name)?),
            ValueType::Float64 => Self::Float64(downcast(&cast_array, column_name)?),
            ValueType::String => Self::String(downcast(&cast_array, column_name)?),
            ValueType::Bytes => Self::Bytes(downcast(&cast_array, column_name)?),
            ValueType::Timestamp => Self::Timestamp(downcast(&cast_array, column_name)?),
            ValueType::List(element) => {
                let list: ListArray = downcast(&cast_array, column_name)?;
                let elements = Self::from_array(list.values(), element, column_name)?;
                Self::List(list, Box::new(elements))
            }
            ValueType::Vector(_) => Self::Vector(downcast(&cast_array, column_name)?),
        };
        Ok(column)
    }

    /// The Arrow array, in its canonical type.
    pub fn array(&self) -> ArrayRef {
        match self {
            Self::Bool(array) => Arc::new(array.clone()),
            Self::Int32(array) => Arc::new(array.clone()),
            Self::Int64(array) => Arc::new(array.clone()),
            Self::Float32(array) => Arc::new(array.clone()),
            Self::Float64(array) => Arc::new(array.clone()),
            Self::String(array) => Arc::new(array.clone()),
            Self::Bytes(array) => Arc::new(array.clone()),
            Self::Timestamp(array) => Arc::new(array.clone()),
            Self::List(array, _) => Arc::new(array.clone()),
            Self::Vector(array) => Arc::new(array.clone()),
        }
    }

    /// Whether the column is null at `row`.
    fn is_null(&self, row: usize) -> bool {
        match self {
            Self::Bool(array) => array.is_null(row),
            Self::Int32(array) => array.is_null(row),
            Self::Int64(array) => array.is_null(row),
            Self::Float32(array) => array.is_null(row),
            Self::Float64(array) => array.is_null(row),
            Self::String(array) => array.is_null(row),
            Self::Bytes(array) => array.is_null(row),
            Self::Timestamp(array) => array.is_null(row),
            Self::List(array, _) => array.is_null(row),
            Self::Vector(array) => array.is_null(row),
        }
    }

    /// The element range of a list row in the elements column.
    fn list_range(array: &ListArray, row: usize) -> std::ops::Range<usize> {
        let offsets = array.value_offsets();
        offsets[row] as usize..offsets[row + 1] as usize
    }

    /// The components of a vector row, or `None` if they are not `float32`.
    fn vector_components(array: &FixedSizeListArray, row: usize) -> Option<&[f32]> {
        let floats = array.values().as_any().downcast_ref::<Float32Array>()?;
        let start = array.value_offset(row) as usize;
        let length = array.value_length() as usize;
        floats.values().get(start..start + length)
    }

    /// The value at `row` (`Null` where the column is null). `row` must be in bounds.
    pub fn value(&self, row: usize) -> Value {
        if self.is_null(row) {
            return Value::Null;
        }
        match self {
            Self::Bool(array) => Value::Bool(array.value(row)),
            Self::Int32(array) => Value::Int32(array.value(row)),
            Self::Int64(array) => Value::Int64(array.value(row)),
            Self::Float32(array) => Value::Float32(array.value(row)),
            Self::Float64(array) => Value::Float64(array.value(row)),
            Self::String(array) => Value::String(array.value(row).to_string()),
            Self::Bytes(array) => Value::Bytes(array.value(row).to_vec()),
            Self::Timestamp(array) => Value::Timestamp(Timestamp(array.value(row))),
            Self::List(array, elements) => Value::List(
                Self::list_range(array, row)
                    .map(|index| elements.value(index))
                    .collect(),
            ),
            Self::Vector(array) => match Self::vector_components(array, row) {
                Some(components) => Value::Vector(components.to_vec()),
                None => Value::Null,
            },
        }
    }

    /// Appends the row codec's encoding of the value at `row` to `out`: the same bytes as
    /// `codec::encode_value(&self.value(row), out)`, without building the value.
    pub fn encode(&self, row: usize, out: &mut Vec<u8>) {
        if self.is_null(row) {
            codec::encode_null(out);
            return;
        }
        match self {
            Self::Bool(array) => codec::encode_bool(array.value(row), out),
            Self::Int32(array) => codec::encode_int32(array.value(row), out),
            Self::Int64(array) => codec::encode_int64(array.value(row), out),
            Self::Float32(array) => codec::encode_float32(array.value(row), out),
            Self::Float64(array) => codec::encode_float64(array.value(row), out),
            Self::String(array) => codec::encode_str(array.value(row), out),
            Self::Bytes(array) => codec::encode_bytes(array.value(row), out),
            Self::Timestamp(array) => codec::encode_timestamp(Timestamp(array.value(row)), out),
            Self::List(array, elements) => {
                let range = Self::list_range(array, row);
                codec::encode_list_header(range.len(), out);
                for index in range {
                    elements.encode(index, out);
                }
            }
            Self::Vector(array) => match Self::vector_components(array, row) {
                Some(components) => codec::encode_vector(components, out),
                None => codec::encode_null(out),
            },
        }
    }
}

/// One batch of a feature view's rows, cast to the view's canonical schema:
/// join keys, then the event timestamp, then the features in declared order.
#[derive(Debug, Clone)]
pub struct ViewBatch {
    join_keys: Vec<CanonicalColumn>,
    timestamps: TimestampMicrosecondArray,
    features: Vec<CanonicalColumn>,
    batch: RecordBatch,
}

impl ViewBatch {
    /// The canonical Arrow schema of a view's rows.
    pub fn schema_of(view: &FeatureView) -> SchemaRef {
        let mut fields = Vec::with_capacity(view.join_keys.len() + 1 + view.features.len());
        for join_key in &view.join_keys {
            fields.push(Field::new(
                &join_key.name,
                arrow_type_of(&join_key.dtype),
                false,
            ));
        }
        fields.push(Field::new(
            &view.timestamp_field,
            arrow_type_of(&ValueType::Timestamp),
            false,
        ));
        for feature in &view.features {
            fields.push(Field::new(
                &feature.name,
                arrow_type_of(&feature.dtype),
                true,
            ));
        }
        Arc::new(Schema::new(fields))
    }

    /// Projects and casts a transformation's output batch to the view's canonical schema.
    /// Rows with a null join key or a null event timestamp are an error: they can never be
    /// served or joined, and dropping them silently would lose data.
    pub fn from_batch(view: &FeatureView, batch: &RecordBatch) -> Result<Self, OfflineError> {
        let column = |name: &str| -> Result<&ArrayRef, OfflineError> {
            batch.column_by_name(name).ok_or_else(|| {
                OfflineError::Schema(format!(
                    "feature view '{}': the transformation output has no column '{name}'",
                    view.name
                ))
            })
        };
        let mut join_keys = Vec::with_capacity(view.join_keys.len());
        for join_key in &view.join_keys {
            let key_column = CanonicalColumn::from_array(
                column(&join_key.name)?,
                &join_key.dtype,
                &join_key.name,
            )?;
            if key_column.array().null_count() > 0 {
                return Err(OfflineError::Schema(format!(
                    "feature view '{}': join key column '{}' has {} null values",
                    view.name,
                    join_key.name,
                    key_column.array().null_count()
                )));
            }
            join_keys.push(key_column);
        }
        let timestamps = match CanonicalColumn::from_array(
            column(&view.timestamp_field)?,
            &ValueType::Timestamp,
            &view.timestamp_field,
        )? {
            CanonicalColumn::Timestamp(array) => array,
            _ => {
                return Err(OfflineError::Schema(
                    "timestamp column did not cast to a timestamp".to_string(),
                ));
            }
        };
        if timestamps.null_count() > 0 {
            return Err(OfflineError::Schema(format!(
                "feature view '{}': timestamp column '{}' has {} null values",
                view.name,
                view.timestamp_field,
                timestamps.null_count()
            )));
        }
        let mut features = Vec::with_capacity(view.features.len());
        for feature in &view.features {
            features.push(CanonicalColumn::from_array(
                column(&feature.name)?,
                &feature.dtype,
                &feature.name,
            )?);
        }
        let mut arrays: Vec<ArrayRef> = join_keys.iter().map(CanonicalColumn::array).collect();
        arrays.push(Arc::new(timestamps.clone()));
        arrays.extend(features.iter().map(CanonicalColumn::array));
        let canonical = RecordBatch::try_new(Self::schema_of(view), arrays).map_err(|source| {
            OfflineError::Arrow {
                context: format!("feature view '{}': building the canonical batch", view.name),
                source,
            }
        })?;
        Ok(Self {
            join_keys,
            timestamps,
            features,
            batch: canonical,
        })
    }

    /// Builds a batch from rows of values: each row's join key values (in the view's key
    /// order), event timestamp and feature values (in declared order). A value whose type is
    /// not the column's is an error naming the row and the column.
    pub fn from_rows<'a>(
        view: &FeatureView,
        rows: impl IntoIterator<Item = (&'a [Value], Timestamp, &'a [Value])>,
    ) -> Result<Self, OfflineError> {
        let mut key_columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); view.join_keys.len()];
        let mut timestamps: Vec<i64> = Vec::new();
        let mut feature_columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); view.features.len()];
        for (row, (keys, event_timestamp, values)) in rows.into_iter().enumerate() {
            if keys.len() != view.join_keys.len() || values.len() != view.features.len() {
                return Err(OfflineError::Schema(format!(
                    "feature view '{}', row {row}: expected {} join keys and {} features, got {} and {}",
                    view.name,
                    view.join_keys.len(),
                    view.features.len(),
                    keys.len(),
                    values.len()
                )));
            }
            for ((column, join_key), value) in key_columns.iter_mut().zip(&view.join_keys).zip(keys)
            {
                column.push(
                    scalar_of(value, &join_key.dtype).map_err(|kind| {
                        mistyped(view, row, &join_key.name, &join_key.dtype, kind)
                    })?,
                );
            }
            timestamps.push(event_timestamp.as_micros());
            for ((column, feature), value) in
                feature_columns.iter_mut().zip(&view.features).zip(values)
            {
                column
                    .push(scalar_of(value, &feature.dtype).map_err(|kind| {
                        mistyped(view, row, &feature.name, &feature.dtype, kind)
                    })?);
            }
        }
        let schema = Self::schema_of(view);
        let array_error = |source| OfflineError::Query {
            context: format!("feature view '{}': building rows", view.name),
            source,
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (column, join_key) in key_columns.into_iter().zip(&view.join_keys) {
            arrays.push(scalars_to_array(column, &join_key.dtype).map_err(array_error)?);
        }
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(timestamps).with_timezone("UTC"),
        ));
        for (column, feature) in feature_columns.into_iter().zip(&view.features) {
            arrays.push(scalars_to_array(column, &feature.dtype).map_err(array_error)?);
        }
        let batch = RecordBatch::try_new(schema, arrays).map_err(|source| OfflineError::Arrow {
            context: format!("feature view '{}': building rows", view.name),
            source,
        })?;
        Self::from_batch(view, &batch)
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The batch in the view's canonical schema.
    pub fn record_batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// Appends the canonical bytes of a row's entity key (what [`EntityKey::as_bytes`] of
    /// its join key values holds) to `out`, without allocating a key.
    pub fn write_entity_key(
        &self,
        row: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), larder_core::CoreError> {
        if let [single] = self.join_keys.as_slice() {
            match single {
                CanonicalColumn::Int64(array) => {
                    EntityKey::encode_int_into(array.value(row), out);
                    return Ok(());
                }
                CanonicalColumn::String(array) => {
                    EntityKey::encode_str_into(array.value(row), out);
                    return Ok(());
                }
                _ => {}
            }
        }
        let values: Vec<Value> = self
            .join_keys
            .iter()
            .map(|column| column.value(row))
            .collect();
        EntityKey::encode_values_into(&values, out)
    }

    /// The event timestamp of a row.
    pub fn event_timestamp(&self, row: usize) -> Timestamp {
        Timestamp(self.timestamps.value(row))
    }

    /// The feature values of a row, in declared order.
    pub fn feature_values(&self, row: usize) -> Vec<Value> {
        self.features
            .iter()
            .map(|column| column.value(row))
            .collect()
    }

    /// Appends a row's feature values in the row codec's encoding to `out`: the same bytes
    /// as `codec::encode_row_to_vec(&self.feature_values(row))`, without building values.
    pub fn write_encoded_feature_values(&self, row: usize, out: &mut Vec<u8>) {
        codec::encode_row_header(self.features.len(), out);
        for column in &self.features {
            column.encode(row, out);
        }
    }
}

fn mistyped(
    view: &FeatureView,
    row: usize,
    column: &str,
    dtype: &ValueType,
    kind: &'static str,
) -> OfflineError {
    OfflineError::Schema(format!(
        "feature view '{}', row {row}, column '{column}': expected {dtype}, got {kind}",
        view.name
    ))
}

/// One value as a DataFusion scalar of the column's canonical type; `Err` names the value's
/// kind when it does not fit the type.
fn scalar_of(value: &Value, dtype: &ValueType) -> Result<ScalarValue, &'static str> {
    let scalar = match (value, dtype) {
        (Value::Null, _) => {
            ScalarValue::try_from(&arrow_type_of(dtype)).map_err(|_| "an unsupported null")?
        }
        (Value::Bool(flag), ValueType::Bool) => ScalarValue::Boolean(Some(*flag)),
        (Value::Int32(number), ValueType::Int32) => ScalarValue::Int32(Some(*number)),
        (Value::Int64(number), ValueType::Int64) => ScalarValue::Int64(Some(*number)),
        (Value::Float32(number), ValueType::Float32) => ScalarValue::Float32(Some(*number)),
        (Value::Float64(number), ValueType::Float64) => ScalarValue::Float64(Some(*number)),
        (Value::String(text), ValueType::String) => ScalarValue::Utf8(Some(text.clone())),
        (Value::Bytes(bytes), ValueType::Bytes) => ScalarValue::Binary(Some(bytes.clone())),
        (Value::Timestamp(timestamp), ValueType::Timestamp) => {
            ScalarValue::TimestampMicrosecond(Some(timestamp.as_micros()), Some(Arc::from("UTC")))
        }
        (Value::List(items), ValueType::List(element)) => {
            let scalars = items
                .iter()
                .map(|item| scalar_of(item, element))
                .collect::<Result<Vec<_>, _>>()?;
            ScalarValue::List(ScalarValue::new_list_nullable(
                &scalars,
                &arrow_type_of(element),
            ))
        }
        (Value::Vector(components), ValueType::Vector(dimension))
            if components.len() == *dimension as usize =>
        {
            let values: ArrayRef = Arc::new(Float32Array::from(components.clone()));
            let field = Arc::new(Field::new(
                "item",
                arrow::datatypes::DataType::Float32,
                true,
            ));
            let array = FixedSizeListArray::try_new(field, *dimension as i32, values, None)
                .map_err(|_| "a vector of another dimension")?;
            ScalarValue::FixedSizeList(Arc::new(array))
        }
        (Value::Vector(_), ValueType::Vector(_)) => return Err("a vector of another dimension"),
        (other, _) => return Err(other.kind_name()),
    };
    Ok(scalar)
}

/// An Arrow array of `dtype`'s canonical type holding `values` (nulls where `Null`); a value
/// of another type is an error naming its position.
pub fn array_of_values(
    values: impl IntoIterator<Item = Value>,
    dtype: &ValueType,
) -> Result<ArrayRef, OfflineError> {
    let scalars = values
        .into_iter()
        .enumerate()
        .map(|(row, value)| {
            scalar_of(&value, dtype).map_err(|kind| {
                OfflineError::Schema(format!("row {row}: expected {dtype}, got {kind}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    scalars_to_array(scalars, dtype).map_err(|source| OfflineError::Query {
        context: format!("building a column of {dtype}"),
        source,
    })
}

fn scalars_to_array(
    scalars: Vec<ScalarValue>,
    dtype: &ValueType,
) -> Result<ArrayRef, datafusion::error::DataFusionError> {
    if scalars.is_empty() {
        return Ok(arrow::array::new_empty_array(&arrow_type_of(dtype)));
    }
    ScalarValue::iter_to_array(scalars)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use larder_core::{Feature, JoinKey};
    use proptest::prelude::*;

    use super::*;

    fn every_type_view() -> (FeatureView, Vec<ValueType>) {
        let dtypes = vec![
            ValueType::Bool,
            ValueType::Int32,
            ValueType::Int64,
            ValueType::Float32,
            ValueType::Float64,
            ValueType::String,
            ValueType::Bytes,
            ValueType::Timestamp,
            ValueType::List(Box::new(ValueType::Int64)),
            ValueType::List(Box::new(ValueType::String)),
            ValueType::Vector(3),
        ];
        let view = FeatureView {
            name: "every_type".into(),
            version: 1,
            join_keys: vec![JoinKey {
                name: "id".into(),
                dtype: ValueType::Int64,
            }],
            timestamp_field: "ts".into(),
            features: dtypes
                .iter()
                .enumerate()
                .map(|(index, dtype)| Feature {
                    name: format!("f{index}"),
                    dtype: dtype.clone(),
                    description: String::new(),
                    vector_index: None,
                })
                .collect(),
            ..FeatureView::default()
        };
        (view, dtypes)
    }

    fn value_of(dtype: &ValueType) -> BoxedStrategy<Value> {
        let present = match dtype {
            ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            ValueType::Int32 => any::<i32>().prop_map(Value::Int32).boxed(),
            ValueType::Int64 => any::<i64>().prop_map(Value::Int64).boxed(),
            ValueType::Float32 => (-1e6f32..1e6).prop_map(Value::Float32).boxed(),
            ValueType::Float64 => (-1e12f64..1e12).prop_map(Value::Float64).boxed(),
            ValueType::String => "[a-zé ]{0,12}".prop_map(Value::String).boxed(),
            ValueType::Bytes => proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(Value::Bytes)
                .boxed(),
            ValueType::Timestamp => any::<i32>()
                .prop_map(|micros| Value::Timestamp(Timestamp(i64::from(micros))))
                .boxed(),
            ValueType::List(element) => proptest::collection::vec(value_of(element), 0..4)
                .prop_map(Value::List)
                .boxed(),
            ValueType::Vector(dimension) => {
                proptest::collection::vec(-1e3f32..1e3, *dimension as usize)
                    .prop_map(Value::Vector)
                    .boxed()
            }
        };
        prop_oneof![1 => Just(Value::Null), 4 => present].boxed()
    }

    fn rows() -> impl Strategy<Value = Vec<Vec<Value>>> {
        let (_, dtypes) = every_type_view();
        let row: Vec<BoxedStrategy<Value>> = dtypes.iter().map(value_of).collect();
        proptest::collection::vec(row, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Encoding straight from the columns gives the bytes of encoding the values, and
        /// decodes back to them.
        #[test]
        fn column_encoding_matches_the_value_codec(rows in rows()) {
            let (view, _) = every_type_view();
            let keys: Vec<Vec<Value>> = (0..rows.len()).map(|id| vec![Value::Int64(id as i64)]).collect();
            let batch = ViewBatch::from_rows(
                &view,
                keys.iter()
                    .zip(&rows)
                    .map(|(key, values)| (key.as_slice(), Timestamp(7), values.as_slice())),
            )
            .unwrap();
            for (row, values) in rows.iter().enumerate() {
                let mut encoded = Vec::new();
                batch.write_encoded_feature_values(row, &mut encoded);
                prop_assert_eq!(&encoded, &codec::encode_row_to_vec(&batch.feature_values(row)));
                prop_assert_eq!(&codec::decode_row(&encoded).unwrap(), values);
            }
        }
    }
}
