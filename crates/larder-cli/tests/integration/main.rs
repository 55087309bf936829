//! Integration tests of the `larder` binary: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod access_control;
mod apply;
mod bad_requests;
mod change_detection;
mod delta_sources;
mod direct_writes;
mod dynamodb_store;
mod embeddings;
mod end_to_end;
mod faults;
mod feast_client;
mod forget;
mod grpc;
mod hostile_input;
mod lineage;
mod push_grpc;
mod redis_store;
mod s3_sources;
mod scheduled_runs;
mod spark_engine;
mod stream_kafka;
mod stream_nats;
mod stream_util;
mod training_set;
mod ui;
mod util;
