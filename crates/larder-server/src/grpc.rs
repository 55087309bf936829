//! The gRPC API (`proto/larder/serving/v1/serving.proto`): the same operations as HTTP, with
//! typed binary values, over the same [`FeatureServer`] core, limits and load shedding.

use std::sync::Arc;

use larder_core::Value;
use larder_core::codec::{ValueRef, vector_components};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use crate::error::{ErrorKind, ServingError};
use crate::serving::{
    FeatureSelection, FeatureServer, FieldStatus, OnlineFeaturesRequest, OnlineFeaturesResult,
};

/// The code generated from the `.proto` contract (client and server).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod proto {
    tonic::include_proto!("larder.serving.v1");
}

use proto::feature_serving_server::{FeatureServing, FeatureServingServer};
use proto::value::Val;

/// The gRPC status for a serving error: the one place that maps error kinds to gRPC.
pub fn status_of(error: ServingError) -> Status {
    let code = match error.kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PayloadTooLarge => Code::OutOfRange,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Overloaded => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, error.message)
}

/// The gRPC service over a feature server.
#[derive(Debug, Clone)]
pub struct GrpcFeatureServing {
    server: Arc<FeatureServer>,
    admission: Arc<Semaphore>,
}

impl GrpcFeatureServing {
    /// A tonic service for `server`, with its limits on message size and concurrency.
    pub fn service(server: Arc<FeatureServer>) -> FeatureServingServer<Self> {
        let limits = server.limits();
        let admission = Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1)));
        FeatureServingServer::new(Self { server, admission })
            .max_decoding_message_size(limits.max_body_bytes)
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
    let selection = match request.kind {
        Some(proto::get_online_features_request::Kind::Features(list)) => {
            FeatureSelection::Features(list.val)
        }
        Some(proto::get_online_features_request::Kind::FeatureService(name)) => {
            FeatureSelection::Service(name)
        }
        None => {
            return Err(ServingError::invalid(
                "the request names no features: set 'features' or 'feature_service'",
            ));
        }
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
    ) -> Result<Response<proto::GetOnlineFeaturesResponse>, Status> {
        let Ok(_permit) = self.admission.try_acquire() else {
            metrics::counter!("larder_grpc_requests_rejected_total", "reason" => "overloaded")
                .increment(1);
            return Err(status_of(ServingError::new(
                ErrorKind::Overloaded,
                "the server is at its concurrency limit; retry shortly",
            )));
        };
        let started = std::time::Instant::now();
        let outcome = async {
            let parsed = request_from_proto(request.into_inner())?;
            let result = self.server.get_online_features(parsed).await?;
            for (view, rows) in result.rows_read_per_view() {
                metrics::counter!("larder_online_rows_read_total", "feature_view" => view.to_string()).increment(rows as u64);
            }
            Ok::<_, ServingError>(response_to_proto(&result))
        }
        .await;
        let code = match &outcome {
            Ok(_) => "OK",
            Err(error) => error.kind.code(),
        };
        metrics::counter!("larder_grpc_requests_total", "method" => "GetOnlineFeatures", "code" => code).increment(1);
        metrics::histogram!("larder_grpc_request_duration_seconds", "method" => "GetOnlineFeatures", "code" => code)
            .record(started.elapsed().as_secs_f64());
        outcome.map(Response::new).map_err(status_of)
    }
}

/// Serves gRPC on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<FeatureServer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(GrpcFeatureServing::service(server))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY a small response waits for the client's delayed ACK
            // (a ~40 ms floor per request, measured).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
