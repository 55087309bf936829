//! The gRPC API (`proto/larder/serving/v1/serving.proto`): the same operations as HTTP, with
//! typed binary values, over the same [`Services`], limits and load shedding.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};

use larder_core::Value;
use larder_core::codec::{ValueRef, vector_components};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use crate::Services;
use crate::auth::Principal;
use crate::error::{ErrorKind, ServingError};
use crate::push::{PushColumn, PushRequest, PushTarget, PushTo};
use crate::serving::{FeatureSelection, FieldStatus, OnlineFeaturesRequest, OnlineFeaturesResult};
use crate::training::{HistoricalFeaturesQuery, entities_from_arrow_ipc, ipc_stream};
use larder_registry::Scope;

/// The code generated from the `.proto` contract.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod generated {
    /// The messages and the client.
    pub mod proto {
        tonic::include_proto!("larder.serving.v1");
    }

    /// The server: the messages of [`proto`], except that `GetOnlineFeatures` answers with
    /// an [`EncodedOnlineFeaturesResponse`](super::EncodedOnlineFeaturesResponse).
    pub mod server {
        include!(concat!(env!("OUT_DIR"), "/server/larder.serving.v1.rs"));
    }
}

pub use generated::{proto, server};

use proto::value::Val;
use server::feature_serving_server::{FeatureServing, FeatureServingServer};

/// A `GetOnlineFeaturesResponse` already in protobuf wire format, written straight from the
/// stored row bytes by [`encode_response`]: no message tree, no allocation per value, and no
/// second pass to compute nested lengths. Clients decode it as the generated message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedOnlineFeaturesResponse {
    encoded: Vec<u8>,
}

impl EncodedOnlineFeaturesResponse {
    /// A message of exactly these wire bytes (tests send undecodable requests with it).
    #[cfg(test)]
    pub(crate) fn from_wire_bytes(encoded: Vec<u8>) -> Self {
        Self { encoded }
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }
}

impl prost::Message for EncodedOnlineFeaturesResponse {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent by the server; decode with `proto::GetOnlineFeaturesResponse`.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded.clear();
    }
}

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    prost::encoding::encoded_len_varint(value)
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

/// Writes `content` as length-delimited field `field`.
fn put_bytes_field(out: &mut Vec<u8>, field: u64, content: &[u8]) {
    put_key(out, field, LENGTH_DELIMITED);
    put_varint(out, content.len() as u64);
    out.extend_from_slice(content);
}

/// Writes one value as an element of `FeatureVector.values` (field 1): a `Value` message
/// whose one field is the `val` case of the value's type.
fn put_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    put_key(out, 1, LENGTH_DELIMITED);
    match value {
        ValueRef::Null => put_varint(out, 0),
        ValueRef::Bool(flag) => {
            out.extend_from_slice(&[2, (1 << 3) | VARINT as u8, u8::from(flag)]);
        }
        ValueRef::Int32(number) => {
            // int32 is sign-extended to 64 bits on the wire.
            let wide = i64::from(number) as u64;
            put_varint(out, 1 + varint_len(wide) as u64);
            put_key(out, 2, VARINT);
            put_varint(out, wide);
        }
        ValueRef::Int64(number) => {
            put_varint(out, 1 + varint_len(number as u64) as u64);
            put_key(out, 3, VARINT);
            put_varint(out, number as u64);
        }
        ValueRef::Float32(number) => {
            out.extend_from_slice(&[5, (4 << 3) | FIXED32 as u8]);
            out.extend_from_slice(&number.to_le_bytes());
        }
        ValueRef::Float64(number) => {
            out.extend_from_slice(&[9, (5 << 3) | FIXED64 as u8]);
            out.extend_from_slice(&number.to_le_bytes());
        }
        ValueRef::String(text) => put_text_value(out, 6, text.as_bytes()),
        ValueRef::Bytes(bytes) => put_text_value(out, 7, bytes),
        ValueRef::Timestamp(timestamp) => {
            let micros = timestamp.as_micros() as u64;
            put_varint(out, 1 + varint_len(micros) as u64);
            put_key(out, 8, VARINT);
            put_varint(out, micros);
        }
        ValueRef::List { .. } | ValueRef::Vector { .. } => {
            // Rare in ranking requests: through the generated message.
            let message = proto_value_ref(value);
            put_varint(out, prost::Message::encoded_len(&message) as u64);
            prost::Message::encode_raw(&message, out);
        }
    }
}

/// The `Value` message body of a string or bytes case, with its length prefix.
fn put_text_value(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    let length = bytes.len() as u64;
    put_varint(out, 1 + varint_len(length) as u64 + length);
    put_bytes_field(out, field, bytes);
}

/// Writes a packed repeated varint field.
fn put_packed(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    field: u64,
    values: impl Iterator<Item = u64>,
) {
    scratch.clear();
    for value in values {
        put_varint(scratch, value);
    }
    if !scratch.is_empty() {
        put_bytes_field(out, field, scratch);
    }
}

/// Encodes a result as a `GetOnlineFeaturesResponse` in wire format, like
/// [`response_to_proto`] would, without building it.
pub fn encode_response(result: &OnlineFeaturesResult) -> EncodedOnlineFeaturesResponse {
    let count = result.entity_count;
    let columns = result.entity_columns.len() + result.feature_column_count();
    let mut out = Vec::with_capacity(64 + columns * count * 16);
    for name in &result.feature_names {
        put_bytes_field(&mut out, 1, name.as_bytes());
    }
    let mut vector = Vec::with_capacity(count * 16);
    let mut scratch = Vec::with_capacity(count * 10);
    for values in &result.entity_columns {
        let message = proto::FeatureVector {
            values: values.iter().map(proto_value).collect(),
            statuses: vec![proto::FieldStatus::Present as i32; count],
            event_timestamps_micros: vec![0; count],
        };
        vector.clear();
        prost::Message::encode_raw(&message, &mut vector);
        put_bytes_field(&mut out, 2, &vector);
    }
    for column in 0..result.feature_column_count() {
        vector.clear();
        for row in 0..count {
            put_value(&mut vector, result.cell(column, row).value);
        }
        put_packed(
            &mut vector,
            &mut scratch,
            2,
            (0..count).map(|row| proto_status(result.cell(column, row).status) as u64),
        );
        put_packed(
            &mut vector,
            &mut scratch,
            3,
            (0..count).map(|row| result.cell(column, row).event_timestamp.as_micros() as u64),
        );
        put_bytes_field(&mut out, 2, &vector);
    }
    EncodedOnlineFeaturesResponse { encoded: out }
}

/// The metadata key that marks a status as Larder's own answer (its value is Larder's error
/// code); a status without it was produced by the transport while decoding the request.
pub const LARDER_CODE_METADATA: &str = "larder-code";

/// The gRPC status for a serving error: the one place that maps error kinds to gRPC.
pub fn status_of(error: ServingError) -> Status {
    let code = match error.kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::PayloadTooLarge => Code::OutOfRange,
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::RequestTimeout => Code::DeadlineExceeded,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::RunFailed => Code::Aborted,
        ErrorKind::Internal => Code::Internal,
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        LARDER_CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(error.kind.code()),
    );
    Status::with_metadata(code, error.public_message(), metadata)
}

/// Turns tonic's `INTERNAL` answers to requests it could not decode (garbage bytes, a cut
/// length prefix, invalid UTF-8) into `INVALID_ARGUMENT`: they are the client's fault. Every
/// status that Larder's handlers answer carries [`LARDER_CODE_METADATA`] and is kept.
fn decoding_errors_are_invalid_arguments(
    mut response: axum::http::Response<tonic::body::Body>,
) -> axum::http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"13");
    if internal && !headers.contains_key(LARDER_CODE_METADATA) {
        headers.insert("grpc-status", axum::http::HeaderValue::from_static("3"));
        metrics::counter!("larder_grpc_requests_rejected_total", "reason" => "undecodable")
            .increment(1);
    }
    response
}

/// A response mapper of the gRPC service.
pub type ResponseMapper =
    fn(axum::http::Response<tonic::body::Body>) -> axum::http::Response<tonic::body::Body>;

/// The layer [`serve`] puts around [`GrpcFeatureServing::service`]: requests tonic could not
/// decode are answered `INVALID_ARGUMENT` (see `decoding_errors_are_invalid_arguments`).
pub fn undecodable_requests_layer() -> tower::util::MapResponseLayer<ResponseMapper> {
    tower::util::MapResponseLayer::new(decoding_errors_are_invalid_arguments as ResponseMapper)
}

/// The gRPC service over the feature services.
#[derive(Debug, Clone)]
pub struct GrpcFeatureServing {
    services: Services,
    admission: Arc<Semaphore>,
}

impl GrpcFeatureServing {
    /// A tonic service for `services`, with their limits on message size and concurrency.
    pub fn service(services: Services) -> FeatureServingServer<Self> {
        let limits = services.features.limits();
        let max_body_bytes = limits.max_body_bytes;
        let admission = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        FeatureServingServer::new(Self {
            services,
            admission,
        })
        .max_decoding_message_size(max_body_bytes)
    }

    /// The principal behind the call's `authorization` metadata, if it may use `scope`.
    fn authenticate<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<Principal, ServingError> {
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::auth::bearer);
        self.services.auth.authenticate(credential, scope)
    }

    /// A permit to serve one request, or `RESOURCE_EXHAUSTED` at the concurrency limit.
    fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.admission.try_acquire().map_err(|_| {
            metrics::counter!("larder_grpc_requests_rejected_total", "reason" => "overloaded")
                .increment(1);
            status_of(ServingError::new(
                ErrorKind::Overloaded,
                "the server is at its concurrency limit; retry shortly",
            ))
        })
    }
}

/// Counts a finished gRPC call and records its duration, by method and code.
fn record_call<T>(
    method: &'static str,
    started: std::time::Instant,
    outcome: &Result<T, ServingError>,
) {
    let code = match outcome {
        Ok(_) => "OK",
        Err(error) => error.kind.code(),
    };
    metrics::counter!("larder_grpc_requests_total", "method" => method, "code" => code)
        .increment(1);
    metrics::histogram!("larder_grpc_request_duration_seconds", "method" => method, "code" => code)
        .record(started.elapsed().as_secs_f64());
}

fn selection_from_proto(
    features: Option<proto::FeatureList>,
    feature_service: Option<String>,
) -> Result<FeatureSelection, ServingError> {
    match (features, feature_service) {
        (Some(list), _) => Ok(FeatureSelection::Features(list.val)),
        (None, Some(name)) => Ok(FeatureSelection::Service(name)),
        (None, None) => Err(ServingError::invalid(
            "the request names no features: set 'features' or 'feature_service'",
        )),
    }
}

/// Converts a gRPC push to the protocol-agnostic request.
pub fn push_from_proto(request: proto::PushRequest) -> Result<PushRequest, ServingError> {
    let target = match request.target {
        Some(proto::push_request::Target::PushSourceName(name)) => PushTarget::PushSource(name),
        Some(proto::push_request::Target::FeatureViewName(name)) => PushTarget::FeatureView(name),
        None => {
            return Err(ServingError::invalid(
                "the push names no target: set 'push_source_name' or 'feature_view_name'",
            ));
        }
    };
    let to = match proto::PushTo::try_from(request.to) {
        Ok(proto::PushTo::Online) => PushTo::Online,
        Ok(proto::PushTo::Offline) => PushTo::Offline,
        Ok(proto::PushTo::OnlineAndOffline) => PushTo::OnlineAndOffline,
        Err(_) => {
            return Err(ServingError::invalid(format!(
                "unknown 'to' value {}",
                request.to
            )));
        }
    };
    let columns: HashMap<String, PushColumn> = request
        .columns
        .into_iter()
        .map(|(name, values)| {
            let values = values.val.into_iter().map(value_from_proto).collect();
            (name, PushColumn::Typed(values))
        })
        .collect();
    Ok(PushRequest {
        target,
        columns,
        to,
        partial: request.partial,
    })
}

fn push_response(pushed: Vec<crate::push::PushedView>) -> proto::PushResponse {
    proto::PushResponse {
        feature_views: pushed
            .into_iter()
            .map(|view| proto::PushedView {
                feature_view: view.feature_view,
                rows: view.rows,
                written: view.written,
                skipped_stale: view.skipped_stale,
                written_offline: view.written_offline,
            })
            .collect(),
    }
}

fn value_from_proto(value: proto::Value) -> Value {
    match value.val {
        None => Value::Null,
        Some(Val::BoolVal(flag)) => Value::Bool(flag),
        Some(Val::Int32Val(number)) => Value::Int32(number),
        Some(Val::Int64Val(number)) => Value::Int64(number),
        Some(Val::FloatVal(number)) => Value::Float32(number),
        Some(Val::DoubleVal(number)) => Value::Float64(number),
        Some(Val::StringVal(text)) => Value::String(text),
        Some(Val::BytesVal(bytes)) => Value::Bytes(bytes),
        Some(Val::TimestampMicrosVal(micros)) => Value::Timestamp(larder_core::Timestamp(micros)),
        Some(Val::ListVal(list)) => {
            Value::List(list.val.into_iter().map(value_from_proto).collect())
        }
        Some(Val::VectorVal(vector)) => Value::Vector(vector.val),
    }
}

fn proto_value_ref(value: ValueRef<'_>) -> proto::Value {
    let val = match value {
        ValueRef::Null => None,
        ValueRef::Bool(flag) => Some(Val::BoolVal(flag)),
        ValueRef::Int32(number) => Some(Val::Int32Val(number)),
        ValueRef::Int64(number) => Some(Val::Int64Val(number)),
        ValueRef::Float32(number) => Some(Val::FloatVal(number)),
        ValueRef::Float64(number) => Some(Val::DoubleVal(number)),
        ValueRef::String(text) => Some(Val::StringVal(text.to_string())),
        ValueRef::Bytes(bytes) => Some(Val::BytesVal(bytes.to_vec())),
        ValueRef::Timestamp(timestamp) => Some(Val::TimestampMicrosVal(timestamp.as_micros())),
        ValueRef::List { .. } => Some(Val::ListVal(proto::ListValue {
            val: value.list_elements().map(proto_value_ref).collect(),
        })),
        ValueRef::Vector { bytes, .. } => Some(Val::VectorVal(proto::FloatVector {
            val: vector_components(bytes).collect(),
        })),
    };
    proto::Value { val }
}

fn proto_value(value: &Value) -> proto::Value {
    let val = match value {
        Value::Int64(number) => Some(Val::Int64Val(*number)),
        Value::Int32(number) => Some(Val::Int32Val(*number)),
        Value::String(text) => Some(Val::StringVal(text.clone())),
        _ => None,
    };
    proto::Value { val }
}

fn proto_status(status: FieldStatus) -> i32 {
    match status {
        FieldStatus::Present => proto::FieldStatus::Present as i32,
        FieldStatus::NotFound => proto::FieldStatus::NotFound as i32,
        FieldStatus::OutsideMaxAge => proto::FieldStatus::OutsideMaxAge as i32,
    }
}

/// Converts a gRPC request to the protocol-agnostic request.
pub fn request_from_proto(
    request: proto::GetOnlineFeaturesRequest,
) -> Result<OnlineFeaturesRequest, ServingError> {
    use proto::get_online_features_request::Kind;
    let selection = match request.kind {
        Some(Kind::Features(list)) => selection_from_proto(Some(list), None)?,
        Some(Kind::FeatureService(name)) => selection_from_proto(None, Some(name))?,
        None => selection_from_proto(None, None)?,
    };
    let mut entities: Vec<(String, Vec<Value>)> = request
        .entities
        .into_iter()
        .map(|(name, values)| (name, values.val.into_iter().map(value_from_proto).collect()))
        .collect();
    entities.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(OnlineFeaturesRequest {
        selection,
        entities,
        full_feature_names: request.full_feature_names,
        include_feature_view_version_metadata: false,
    })
}

/// Converts a gRPC search request.
pub fn documents_request_from_proto(
    request: proto::RetrieveOnlineDocumentsRequest,
) -> Result<crate::documents::DocumentsRequest, ServingError> {
    use crate::documents::{DocumentFilter, FilterCondition, FilterOp};
    use proto::retrieve_online_documents_request::Kind;
    let selection = match request.kind {
        Some(Kind::Features(list)) => selection_from_proto(Some(list), None)?,
        Some(Kind::FeatureService(name)) => selection_from_proto(None, Some(name))?,
        None => selection_from_proto(None, None)?,
    };
    let mut filters = Vec::with_capacity(request.filters.len());
    for filter in request.filters {
        let op = proto::FilterOp::try_from(filter.op).map_err(|_| {
            ServingError::invalid(format!(
                "filter on '{}': unknown operator {}",
                filter.feature, filter.op
            ))
        })?;
        let mut values: Vec<Value> = filter.values.into_iter().map(value_from_proto).collect();
        let condition = match op {
            proto::FilterOp::In => FilterCondition::In(values),
            compare => {
                if values.len() != 1 {
                    return Err(ServingError::invalid(format!(
                        "filter on '{}' needs exactly one value, got {}",
                        filter.feature,
                        values.len()
                    )));
                }
                let op = match compare {
                    proto::FilterOp::Ne => FilterOp::Ne,
                    proto::FilterOp::Gt => FilterOp::Gt,
                    proto::FilterOp::Gte => FilterOp::Gte,
                    proto::FilterOp::Lt => FilterOp::Lt,
                    proto::FilterOp::Lte => FilterOp::Lte,
                    proto::FilterOp::Eq | proto::FilterOp::In => FilterOp::Eq,
                };
                FilterCondition::Compare(op, values.remove(0))
            }
        };
        filters.push(DocumentFilter {
            feature: filter.feature,
            condition,
        });
    }
    Ok(crate::documents::DocumentsRequest {
        selection,
        query: request.query,
        top_k: (request.top_k > 0).then_some(request.top_k as usize),
        filters,
        distance_metric: (!request.distance_metric.is_empty()).then_some(request.distance_metric),
        ef_search: (request.ef_search > 0).then_some(request.ef_search as usize),
        exact: request.exact,
        full_feature_names: request.full_feature_names,
    })
}

/// Encodes a result as a gRPC response.
pub fn response_to_proto(result: &OnlineFeaturesResult) -> proto::GetOnlineFeaturesResponse {
    let count = result.entity_count;
    let mut results = Vec::with_capacity(result.feature_names.len());
    for values in &result.entity_columns {
        results.push(proto::FeatureVector {
            values: values.iter().map(proto_value).collect(),
            statuses: vec![proto::FieldStatus::Present as i32; count],
            event_timestamps_micros: vec![0; count],
        });
    }
    for column in 0..result.feature_column_count() {
        let mut vector = proto::FeatureVector {
            values: Vec::with_capacity(count),
            statuses: Vec::with_capacity(count),
            event_timestamps_micros: Vec::with_capacity(count),
        };
        for row in 0..count {
            let cell = result.cell(column, row);
            vector.values.push(proto_value_ref(cell.value));
            vector.statuses.push(proto_status(cell.status));
            vector
                .event_timestamps_micros
                .push(cell.event_timestamp.as_micros());
        }
        results.push(vector);
    }
    proto::GetOnlineFeaturesResponse {
        feature_names: result.feature_names.clone(),
        results,
    }
}

#[tonic::async_trait]
impl FeatureServing for GrpcFeatureServing {
    async fn get_online_features(
        &self,
        request: Request<proto::GetOnlineFeaturesRequest>,
    ) -> Result<Response<EncodedOnlineFeaturesResponse>, Status> {
        let _permit = self.admit()?;
        let started = std::time::Instant::now();
        let outcome = async {
            let principal = self.authenticate(&request, Scope::Read)?;
            let parsed = request_from_proto(request.into_inner())?;
            principal.check_selection(
                &self.services.features.registry().snapshot(),
                &parsed.selection,
            )?;
            let result = self.services.features.get_online_features(parsed).await?;
            for (view, rows) in result.rows_read_per_view() {
                metrics::counter!("larder_online_rows_read_total", "feature_view" => view.to_string()).increment(rows as u64);
            }
            Ok::<_, ServingError>(encode_response(&result))
        }
        .await;
        record_call("GetOnlineFeatures", started, &outcome);
        outcome.map(Response::new).map_err(status_of)
    }

    async fn retrieve_online_documents(
        &self,
        request: Request<proto::RetrieveOnlineDocumentsRequest>,
    ) -> Result<Response<EncodedOnlineFeaturesResponse>, Status> {
        let _permit = self.admit()?;
        let started = std::time::Instant::now();
        let outcome = async {
            let principal = self.authenticate(&request, Scope::Read)?;
            let parsed = documents_request_from_proto(request.into_inner())?;
            let result = self
                .services
                .retrieve_documents_as(&principal, parsed)
                .await?;
            Ok::<_, ServingError>(encode_response(&result))
        }
        .await;
        record_call("RetrieveOnlineDocuments", started, &outcome);
        outcome.map(Response::new).map_err(status_of)
    }

    async fn push(
        &self,
        request: Request<proto::PushRequest>,
    ) -> Result<Response<proto::PushResponse>, Status> {
        let _permit = self.admit()?;
        let started = std::time::Instant::now();
        let outcome = async {
            let principal = self.authenticate(&request, Scope::Write)?;
            let parsed = push_from_proto(request.into_inner())?;
            let pushed = self.services.push_as(&principal, "grpc", parsed).await?;
            Ok::<_, ServingError>(push_response(pushed))
        }
        .await;
        record_call("Push", started, &outcome);
        outcome.map(Response::new).map_err(status_of)
    }

    async fn forget(
        &self,
        request: Request<proto::ForgetRequest>,
    ) -> Result<Response<proto::ForgetResponse>, Status> {
        let _permit = self.admit()?;
        let started = std::time::Instant::now();
        let outcome = async {
            let principal = self.authenticate(&request, Scope::Forget)?;
            let service = self.services.forget_service()?;
            let request = request.into_inner();
            let entities = request
                .entities
                .into_iter()
                .map(|(name, values)| {
                    (name, values.val.into_iter().map(value_from_proto).collect())
                })
                .collect();
            let outcome = service
                .forget(
                    crate::json::ForgetRequest {
                        entities,
                        verify: request.verify,
                    },
                    &principal,
                    "grpc",
                )
                .await?;
            Ok::<_, ServingError>(forget_response(outcome))
        }
        .await;
        record_call("Forget", started, &outcome);
        outcome.map(Response::new).map_err(status_of)
    }

    type GetHistoricalFeaturesStream =
        Pin<Box<dyn Stream<Item = Result<proto::ArrowIpcChunk, Status>> + Send + 'static>>;

    async fn get_historical_features(
        &self,
        request: Request<proto::GetHistoricalFeaturesRequest>,
    ) -> Result<Response<Self::GetHistoricalFeaturesStream>, Status> {
        use proto::get_historical_features_request::Kind;
        let started = std::time::Instant::now();
        let outcome = async {
            let principal = self.authenticate(&request, Scope::Read)?;
            let training = self.services.training_service()?;
            let request = request.into_inner();
            let selection = match request.kind {
                Some(Kind::Features(list)) => selection_from_proto(Some(list), None)?,
                Some(Kind::FeatureService(name)) => selection_from_proto(None, Some(name))?,
                None => selection_from_proto(None, None)?,
            };
            let entity_timestamp_column =
                Some(request.entity_timestamp_column).filter(|column| !column.is_empty());
            let entities = entities_from_arrow_ipc(
                &request.entities_arrow_ipc,
                entity_timestamp_column
                    .as_deref()
                    .unwrap_or(larder_offline::training::DEFAULT_ENTITY_TIMESTAMP_COLUMN),
            )?;
            principal.check_selection(&self.services.features.registry().snapshot(), &selection)?;
            let query = HistoricalFeaturesQuery {
                selection,
                entities,
                entity_timestamp_column,
                full_feature_names: request.full_feature_names,
            };
            let batches = training.historical_features(query).await?;
            ipc_stream(batches)
        }
        .await;
        record_call("GetHistoricalFeatures", started, &outcome);
        let chunks = outcome.map_err(status_of)?.map(|chunk| {
            chunk
                .map(|data| proto::ArrowIpcChunk { data })
                .map_err(|error| Status::internal(format!("building the training set: {error}")))
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

/// The answer of `Forget`: an erasure's report or a verification's counts.
fn forget_response(outcome: crate::forget::ForgetOutcome) -> proto::ForgetResponse {
    use crate::forget::ForgetOutcome;
    match outcome {
        ForgetOutcome::Erased(report) => proto::ForgetResponse {
            request_id: report.request_id,
            stores: report
                .stores
                .into_iter()
                .map(|(store, counts)| {
                    let counts = proto::StoreCounts {
                        rows: counts.rows,
                        files_rewritten: counts.files_rewritten,
                        files_scanned: counts.files_scanned,
                        files_pruned: counts.files_pruned,
                        bytes_written: counts.bytes_written,
                    };
                    (store, counts)
                })
                .collect(),
            entity_key_hashes: report.entity_key_hashes,
            feature_views: report.views,
            skipped: report
                .skipped
                .into_iter()
                .map(|skipped| format!("{}: {}", skipped.view, skipped.reason))
                .collect(),
        },
        ForgetOutcome::Verified(report) => proto::ForgetResponse {
            stores: report
                .stores
                .into_iter()
                .map(|(store, rows)| {
                    let counts = proto::StoreCounts {
                        rows,
                        ..proto::StoreCounts::default()
                    };
                    (store, counts)
                })
                .collect(),
            feature_views: report.views,
            ..proto::ForgetResponse::default()
        },
    }
}

/// Serves gRPC on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(undecodable_requests_layer())
        .add_service(GrpcFeatureServing::service(services))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY a small response waits for the client's delayed ACK
            // (a ~40 ms floor per request, measured).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
