//! `larder-loadgen`: a closed-loop gRPC load generator for `larder serve`.
//!
//! Opens `--connections` HTTP/2 connections, each sending one request at a time for
//! `--seconds`, each request asking for `--entities` random user ids (0..max-entity) and the
//! harness's 26 features; prints one JSON line with throughput and latency percentiles in the
//! same keys as the wrk script (`rps`, `p50_ms`, `p99_ms`, …). Bounded in time; loopback only.
//!
//! Like wrk, which reads HTTP responses without parsing their JSON, it receives each
//! response whole but does not decode its values (`--decode` does, to measure a client that
//! does), so that on a shared 2-core machine the client's work does not pass for the server's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use larder_bench::{IdGenerator, harness_feature_refs};
use larder_server::grpc::proto::get_online_features_request::Kind;
use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{FeatureList, GetOnlineFeaturesRequest, RepeatedValue, Value};

#[derive(Debug, Parser)]
struct Arguments {
    /// gRPC endpoint, e.g. http://127.0.0.1:6567 (must be a loopback address).
    #[arg(long)]
    url: String,
    /// Entities per request.
    #[arg(long, default_value_t = 1)]
    entities: usize,
    /// Concurrent connections, one request in flight each.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Duration of the measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Ids are drawn from [0, max_entity).
    #[arg(long, default_value_t = 100_000)]
    max_entity: u64,
    /// A JSON object whose fields are copied into the output line.
    #[arg(long, default_value = "{}")]
    label: String,
    /// Decode every value of each response (default: receive it whole, skip the values).
    #[arg(long)]
    decode: bool,
}

/// A response read without its values: the `results` field (tag 2) is skipped as unknown,
/// which costs one length check, not one allocation per value.
#[derive(Clone, PartialEq, prost::Message)]
struct SkimmedResponse {
    #[prost(string, repeated, tag = "1")]
    feature_names: Vec<String>,
}

const GET_ONLINE_FEATURES: &str = "/larder.serving.v1.FeatureServing/GetOnlineFeatures";

/// Sends one request and waits for its whole response, decoded or skimmed.
async fn call(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    body: GetOnlineFeaturesRequest,
    decode: bool,
) -> Result<(), tonic::Status> {
    client
        .ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(GET_ONLINE_FEATURES);
    let request = tonic::Request::new(body);
    if decode {
        let codec = tonic_prost::ProstCodec::<
            GetOnlineFeaturesRequest,
            larder_server::grpc::proto::GetOnlineFeaturesResponse,
        >::default();
        client.unary(request, path, codec).await.map(|_| ())
    } else {
        let codec = tonic_prost::ProstCodec::<GetOnlineFeaturesRequest, SkimmedResponse>::default();
        client.unary(request, path, codec).await.map(|_| ())
    }
}

fn request(
    generator: &mut IdGenerator,
    entities: usize,
    max_entity: u64,
    features: &[String],
) -> GetOnlineFeaturesRequest {
    let ids = RepeatedValue {
        val: (0..entities)
            .map(|_| Value {
                val: Some(Val::Int64Val(generator.next_below(max_entity) as i64)),
            })
            .collect(),
    };
    GetOnlineFeaturesRequest {
        kind: Some(Kind::Features(FeatureList {
            val: features.to_vec(),
        })),
        entities: [("user_id".to_string(), ids)].into_iter().collect(),
        full_feature_names: false,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments = Arguments::parse();
    if !(arguments.url.contains("127.0.0.1")
        || arguments.url.contains("localhost")
        || arguments.url.contains("[::1]"))
    {
        bail!(
            "refusing to load {}: only loopback targets are allowed",
            arguments.url
        );
    }
    let features = harness_feature_refs();
    let deadline = Instant::now() + Duration::from_secs(arguments.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..arguments.connections {
        let channel = tonic::transport::Endpoint::from_shared(arguments.url.clone())
            .context("parsing --url")?
            .connect()
            .await
            .context("connecting")?;
        let mut client = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
        let features = features.clone();
        let (entities, max_entity, decode) =
            (arguments.entities, arguments.max_entity, arguments.decode);
        tasks.push(tokio::spawn(async move {
            let mut generator = IdGenerator::new(12_345 + connection as u64);
            let mut latencies_micros: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let body = request(&mut generator, entities, max_entity, &features);
                let sent = Instant::now();
                match call(&mut client, body, decode).await {
                    Ok(_) => latencies_micros.push(sent.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies_micros, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (task_latencies, task_errors) = task.await?;
        latencies.extend(task_latencies);
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |fraction: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index =
            ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1_000.0
    };
    let result = serde_json::json!({
        "requests": latencies.len(),
        "duration_s": elapsed,
        "rps": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
        "errors": errors,
    });
    let mut line: serde_json::Value =
        serde_json::from_str(&arguments.label).context("--label is not a JSON object")?;
    if let Some(fields) = line.as_object_mut() {
        fields.insert("wrk".to_string(), result);
    }
    println!("{line}");
    Ok(())
}
