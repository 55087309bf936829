//! The world the targets parse into: a feature repo on disk (entities, a push source, JSON and
//! Protobuf stream sources, a view with one feature of every type), its registry, and the HTTP
//! and gRPC services over an in-memory online store holding a few rows, with direct writes and
//! training sets enabled. Built once per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use larder_core::{EntityKey, FeatureView, Timestamp, Value, WriteLane};
use larder_ingest::{FeatureRow, WritePath};
use larder_offline::ParquetOfflineStore;
use larder_online::{MemoryOnlineStore, SharedOnlineStore};
use larder_registry::{FeatureRepo, Registry};
use larder_server::grpc::server::feature_serving_server::FeatureServingServer;
use larder_server::grpc::{GrpcFeatureServing, ResponseMapper, undecodable_requests_layer};
use larder_server::push::PushService;
use larder_server::training::TrainingService;
use larder_server::{FeatureServer, RegistryHandle, Services, ServingLimits};
use larder_stream::decode::MessageDecoder;
use tower::Layer;
use tower::util::MapResponse;

/// `larder.yaml` of the fixture repo.
pub const CONFIG_YAML: &str = "project: fuzz\nregistry: data/registry.json\nonline_store: {type: embedded, path: data/online.redb}\noffline_store: {type: parquet, path: data/offline}\n";

/// The Protobuf schema of the `clicks_proto` source.
pub const CLICK_PROTO: &str = "syntax = \"proto3\";\npackage acme.events;\nimport \"google/protobuf/timestamp.proto\";\nmessage Click {\n  int64 user_id = 1;\n  double amount = 2;\n  google.protobuf.Timestamp ts = 3;\n  repeated string tags = 4;\n  Device device = 5;\n}\nmessage Device {\n  string os = 1;\n  int32 version = 2;\n}\n";

/// The definitions every target sees (`base.yaml`; the repo target adds a file beside it).
pub const BASE_YAML: &str = r#"entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
  - name: merchant
    join_keys: [{name: merchant_id, dtype: string}]
sources:
  - name: types_push
    type: push
  - name: clicks_json
    type: nats
    url: nats://127.0.0.1:4222
    stream: CLICKS
    subject: clicks.json
    timestamp_field: ts
    fields:
      - {name: amount, dtype: float64}
      - {name: os, path: device.os, dtype: string}
  - name: clicks_proto
    type: nats
    url: nats://127.0.0.1:4222
    stream: CLICKS
    subject: clicks.proto
    message_format: protobuf
    proto_file: protos/click.proto
    proto_message: acme.events.Click
    timestamp_field: ts
    fields: [{name: amount, dtype: float64}]
feature_views:
  - name: all_types
    version: 1
    entities: [user]
    source: types_push
    ttl: 30d
    features:
      - {name: f_int32, dtype: int32}
      - {name: f_int64, dtype: int64}
      - {name: f_float32, dtype: float32}
      - {name: f_float64, dtype: float64}
      - {name: f_bool, dtype: bool}
      - {name: f_string, dtype: string}
      - {name: f_bytes, dtype: bytes}
      - {name: f_timestamp, dtype: timestamp}
      - {name: f_list_int64, dtype: list<int64>}
      - {name: f_list_string, dtype: list<string>}
      - {name: f_vector, dtype: vector<4>}
  - name: user_spend
    version: 1
    entities: [user]
    source: clicks_json
    aggregations:
      - {function: count, window: 1h}
      - {function: sum, column: amount, window: 24h}
feature_services:
  - name: ranking
    features: [all_types]
"#;

/// Writes the fixture repo (config, Protobuf schema, base definitions) into `root`.
pub fn write_repo(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("protos"))?;
    std::fs::write(root.join("larder.yaml"), CONFIG_YAML)?;
    std::fs::write(root.join("protos/click.proto"), CLICK_PROTO)?;
    std::fs::write(root.join("base.yaml"), BASE_YAML)
}

/// What the targets share, built once.
pub struct Fixture {
    /// A scratch copy of the repo whose extra definition file the repo target rewrites.
    pub scratch_repo: PathBuf,
    /// The fixture repo's registry.
    pub registry: Registry,
    /// The HTTP router over the services.
    pub router: Router,
    /// The gRPC service over the same services, in the layer `larder serve` puts around it.
    pub grpc: MapResponse<FeatureServingServer<GrpcFeatureServing>, ResponseMapper>,
    /// Decoder of `clicks_json` messages.
    pub json_decoder: MessageDecoder,
    /// Decoder of `clicks_proto` messages.
    pub protobuf_decoder: MessageDecoder,
    /// The runtime the services run on.
    pub runtime: tokio::runtime::Runtime,
    /// Keeps the folders alive for the process.
    _folder: tempfile::TempDir,
}

/// The fixture, built on first use. A fixture that cannot be built is a broken harness, not a
/// finding, so this panics with the reason.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| match build() {
        Ok(fixture) => fixture,
        Err(reason) => panic!("the fuzz fixture cannot be built: {reason}"),
    })
}

fn build() -> Result<Fixture, String> {
    let folder = tempfile::Builder::new()
        .prefix("larder-fuzz-")
        .tempdir()
        .map_err(|error| error.to_string())?;
    let repo = folder.path().join("repo");
    let scratch_repo = folder.path().join("scratch");
    for root in [&repo, &scratch_repo] {
        write_repo(root).map_err(|error| format!("{}: {error}", root.display()))?;
    }
    let registry = FeatureRepo::load(&repo)
        .map_err(|diagnostics| diagnostics.to_string())?
        .into_registry();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let services = runtime.block_on(services(&registry, &folder.path().join("offline")))?;
    let router = larder_server::http::router(services.clone());
    let grpc = undecodable_requests_layer().layer(GrpcFeatureServing::service(services));
    let json_decoder = decoder(&registry, "clicks_json")?;
    let protobuf_decoder = decoder(&registry, "clicks_proto")?;
    Ok(Fixture {
        scratch_repo,
        registry,
        router,
        grpc,
        json_decoder,
        protobuf_decoder,
        runtime,
        _folder: folder,
    })
}

/// Services over a memory store holding users 1 to 3 of `all_types`.
async fn services(registry: &Registry, offline_folder: &Path) -> Result<Services, String> {
    let view = view(registry, "all_types")?;
    let handle = Arc::new(RegistryHandle::new(registry.clone()));
    let store: SharedOnlineStore = Arc::new(MemoryOnlineStore::new());
    let write_path = Arc::new(WritePath::new(Arc::clone(&store)));
    let rows = (1..=3)
        .map(|user| FeatureRow {
            entity_key: EntityKey::from_int(user),
            event_timestamp: Timestamp::now(),
            values: vec![
                Value::Int32(user as i32),
                Value::Int64(user),
                Value::Float32(0.5),
                Value::Float64(1.5),
                Value::Bool(true),
                Value::String(format!("user {user}")),
                Value::Bytes(vec![0, 1, 2]),
                Value::Timestamp(Timestamp::from_seconds(1_700_000_000)),
                Value::List(vec![Value::Int64(1), Value::Int64(2)]),
                Value::List(vec![Value::String("a".to_string())]),
                Value::Vector(vec![0.0, 1.0, 2.0, 3.0]),
            ],
        })
        .collect();
    write_path
        .write(view, WriteLane::Direct, rows)
        .await
        .map_err(|error| error.to_string())?;
    let limits = ServingLimits {
        max_body_bytes: 1024 * 1024,
        ..ServingLimits::default()
    };
    let offline = Arc::new(ParquetOfflineStore::new(offline_folder));
    Ok(Services {
        push: Some(Arc::new(PushService::new(
            Arc::clone(&handle),
            write_path,
            1_000,
        ))),
        training: Some(Arc::new(TrainingService::new(
            Arc::clone(&handle),
            offline,
            2,
        ))),
        ..Services::reads_only(Arc::new(FeatureServer::new(handle, store, limits)))
    })
}

fn view<'a>(registry: &'a Registry, name: &str) -> Result<&'a FeatureView, String> {
    registry
        .feature_views
        .get(name)
        .ok_or_else(|| format!("the fixture has no feature view '{name}'"))
}

/// A decoder of the join key, the event time and a few columns (a nested path among them) of
/// `source`'s messages.
fn decoder(registry: &Registry, source: &str) -> Result<MessageDecoder, String> {
    let source = registry
        .sources
        .get(source)
        .ok_or_else(|| format!("the fixture has no source '{source}'"))?;
    let mut view = view(registry, "user_spend")?.clone();
    view.timestamp_field = "ts".to_string();
    let columns = [
        ("amount".to_string(), larder_core::ValueType::Float64),
        ("os".to_string(), larder_core::ValueType::String),
        (
            "tags".to_string(),
            larder_core::ValueType::List(Box::new(larder_core::ValueType::String)),
        ),
    ];
    MessageDecoder::new(&view, source, &columns).map_err(|error| error.to_string())
}
