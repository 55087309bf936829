//! Bad input that must neither stall, exhaust nor poison the server: stalled uploads,
//! gRPC messages that do not decode, Arrow IPC that declares gigabytes, training-set times
//! that do not parse, non-finite floats and absurd event times (with the repair of an entity
//! poisoned before the bounds existed).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut};
use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{
    FeatureList, FloatVector, GetHistoricalFeaturesRequest, GetOnlineFeaturesRequest, PushRequest,
    RepeatedValue, Value, get_historical_features_request, get_online_features_request,
    push_request,
};
use serde_json::{Value as Json, json};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use crate::util::{
    DemoRepo, Server, error_detail, error_message, larder_ok, peak_rss_mib, with_grpc_client,
};

const SCORES: &str = "\
sources:
  - name: scores_push
    type: push
feature_views:
  - name: scores
    version: 1
    entities: [user]
    source: scores_push
    ttl: 30d
    features:
      - {name: score, dtype: float32}
      - {name: embedding, dtype: vector<2>}
";

fn scores_repo(serving_settings: &str) -> DemoRepo {
    let repo = DemoRepo::init(20);
    std::fs::write(repo.path.join("features/scores.yaml"), SCORES).unwrap();
    repo.add_serving_settings(serving_settings);
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);
    repo
}

fn push_score(server: &Server, user: i64, time: Json, score: Json, embedding: Json) -> (u16, Json) {
    let body = json!({"push_source_name": "scores_push", "df": {
        "user_id": [user], "event_timestamp": [time], "score": [score], "embedding": [embedding]}});
    server.post("/push", &body.to_string())
}

fn served_score(server: &Server, user: i64) -> Json {
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["scores:score"], "entities": {"user_id": [user]}}).to_string(),
    );
    assert_eq!(status, 200, "{response}");
    response["results"][1]["values"][0].clone()
}

#[test]
fn stalled_uploads_hold_no_slot_and_time_out() {
    let repo = scores_repo(
        "  max_concurrent_requests: 4\n  read_body_timeout: 2s\n  read_header_timeout: 2s\n",
    );
    let server = Server::start(&repo.path);
    let connect = || {
        let stream = TcpStream::connect(server.address()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream
    };
    // 300 uploads that promise 1000 bytes and send 12, and 50 that never end their headers.
    let mut stalled_bodies = Vec::new();
    for _ in 0..300 {
        let mut stream = connect();
        stream
            .write_all(b"POST /get-online-features HTTP/1.1\r\nHost: larder\r\nContent-Length: 1000\r\n\r\n{\"features\":")
            .unwrap();
        stalled_bodies.push(stream);
    }
    let mut stalled_headers = Vec::new();
    for _ in 0..50 {
        let mut stream = connect();
        stream
            .write_all(b"POST /push HTTP/1.1\r\nHost: larder\r\n")
            .unwrap();
        stalled_headers.push(stream);
    }
    // Meanwhile every normal request is served: the stalled uploads hold none of the 4 slots.
    for _ in 0..40 {
        assert_eq!(served_score(&server, 1), Json::Null);
    }
    // Then each stalled upload is answered 408 and its connection closed.
    let mut answer = String::new();
    stalled_bodies[0].read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("read_body_timeout"), "{answer}");
    // A connection that never finished its headers is closed (read returns end of stream,
    // not the 15 s read timeout).
    let mut rest = Vec::new();
    stalled_headers[0].read_to_end(&mut rest).unwrap();
    assert_eq!(served_score(&server, 2), Json::Null);
}

/// Raw bytes as a gRPC message, to send what a real client never would.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawBytes;

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = buffer.chunk().to_vec();
        buffer.advance(bytes.len());
        Ok(Some(bytes))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

async fn raw_call(url: &str, method: &'static str, message: Vec<u8>) -> Status {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match client
        .unary(tonic::Request::new(message), path, RawCodec)
        .await
    {
        Ok(response) => panic!("{method} accepted garbage: {:?}", response.into_inner()),
        Err(status) => status,
    }
}

/// The `grpc-status` a server answers to a raw HTTP/2 body (a gRPC frame cut short, say).
async fn raw_frame_status(url: &str, method: &'static str, body: Vec<u8>) -> String {
    use tower::ServiceExt;
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("{url}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap();
    let response = channel.oneshot(request).await.unwrap();
    let status = response.headers().get("grpc-status").cloned();
    match status {
        Some(status) => status.to_str().unwrap().to_string(),
        None => {
            use http_body_util::BodyExt;
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            trailers["grpc-status"].to_str().unwrap().to_string()
        }
    }
}

#[test]
fn undecodable_grpc_messages_are_invalid_arguments_and_allocate_nothing() {
    let repo = scores_repo("");
    let server = Server::start(&repo.path);
    let online = "/larder.serving.v1.FeatureServing/GetOnlineFeatures";
    let historical = "/larder.serving.v1.FeatureServing/GetHistoricalFeatures";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Garbage, and a string field that is not UTF-8.
        let status = raw_call(&server.grpc_url, online, vec![0xff; 7]).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let mut invalid_utf8 = prost::Message::encode_to_vec(&GetOnlineFeaturesRequest {
            kind: Some(get_online_features_request::Kind::FeatureService(
                "ab".into(),
            )),
            ..Default::default()
        });
        let position = invalid_utf8
            .windows(2)
            .position(|pair| pair == b"ab")
            .unwrap();
        invalid_utf8[position] = 0xff;
        invalid_utf8[position + 1] = 0xfe;
        let status = raw_call(&server.grpc_url, online, invalid_utf8).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        // A gRPC frame whose length prefix promises 100 bytes and delivers 3.
        let cut = vec![0, 0, 0, 0, 100, 1, 2, 3];
        assert_eq!(raw_frame_status(&server.grpc_url, online, cut).await, "3");
        // Arrow IPC entity tables that declare gigabytes in a few bytes.
        for entities in [
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            vec![0x00, 0x00, 0x00, 0x70, 1, 2, 3],
            vec![
                0xff, 0xff, 0xff, 0xff, 0x10, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                12, 13, 14, 15, 16,
            ],
        ] {
            let message = prost::Message::encode_to_vec(&GetHistoricalFeaturesRequest {
                kind: Some(get_historical_features_request::Kind::Features(
                    FeatureList {
                        val: vec!["user_profile:age".into()],
                    },
                )),
                entities_arrow_ipc: entities,
                ..Default::default()
            });
            let status = raw_call(&server.grpc_url, historical, message).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("Arrow IPC"), "{status:?}");
        }
    });
    // None of that made the server allocate: its peak memory stays far below the gigabytes
    // the garbage declared.
    let peak = peak_rss_mib(server.pid());
    assert!(peak < 700, "peak RSS {peak} MiB");
    assert_eq!(served_score(&server, 1), Json::Null);
}

fn value(val: Val) -> Value {
    Value { val: Some(val) }
}

fn typed_score_push(time_micros: i64, score: Val, embedding: Vec<f32>) -> PushRequest {
    let column = |val: Val| RepeatedValue {
        val: vec![value(val)],
    };
    PushRequest {
        target: Some(push_request::Target::PushSourceName("scores_push".into())),
        columns: [
            ("user_id".to_string(), column(Val::Int64Val(3))),
            (
                "event_timestamp".to_string(),
                column(Val::TimestampMicrosVal(time_micros)),
            ),
            ("score".to_string(), column(score)),
            (
                "embedding".to_string(),
                column(Val::VectorVal(FloatVector { val: embedding })),
            ),
        ]
        .into_iter()
        .collect(),
        to: 0,
        partial: false,
    }
}

#[test]
fn non_finite_floats_and_absurd_event_times_are_refused_and_poison_is_repairable() {
    let repo = scores_repo("  max_event_time_ahead: 100000d\n");
    let now = chrono::Utc::now();
    let now_text = now.to_rfc3339();

    // Before bounds were tight, an entity was written 174 years ahead ("poisoned").
    {
        let server = Server::start(&repo.path);
        let (status, response) = push_score(
            &server,
            1,
            json!("2200-01-01T00:00:00Z"),
            json!(0.5),
            json!([1.0, 2.0]),
        );
        assert_eq!(status, 200, "{response}");
    }
    let config_path = repo.path.join("larder.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("  max_event_time_ahead: 100000d\n", ""),
    )
    .unwrap();
    let server = Server::start(&repo.path);

    // Floats that JSON or float32 cannot carry faithfully are refused, naming row and column.
    for (score, embedding, column) in [
        (json!(1e39), json!([1.0, 2.0]), "score"),
        (json!(0.5), json!([1e39, 2.0]), "embedding"),
    ] {
        let (status, response) = push_score(&server, 2, json!(now_text), score, embedding);
        assert_eq!(status, 400, "{response}");
        let message = error_message(&response);
        assert!(
            message.contains(&format!("row 0, column '{column}'")),
            "{message}"
        );
        assert!(message.contains("out of float32's range"), "{message}");
    }
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let micros = now.timestamp_micros();
        for (score, embedding) in [
            (Val::FloatVal(f32::INFINITY), vec![1.0, 2.0]),
            (Val::FloatVal(f32::NAN), vec![1.0, 2.0]),
            (Val::FloatVal(0.5), vec![f32::NAN, 2.0]),
        ] {
            let status = client
                .push(typed_score_push(micros, score, embedding))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("finite"), "{status:?}");
        }
        // Nanoseconds sent as microseconds: refused, with the unit it probably was.
        let status = client
            .push(typed_score_push(
                micros * 1000,
                Val::FloatVal(0.5),
                vec![1.0, 2.0],
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("looks like nanoseconds"),
            "{status:?}"
        );
    });
    assert_eq!(served_score(&server, 2), Json::Null, "nothing was written");

    // Event times a unit mistake produces are refused, with the unit that was meant.
    let millis = now.timestamp_millis();
    for (time, expected) in [
        (json!(millis), "looks like milliseconds"),
        (
            json!("9999-12-31T00:00:00Z"),
            "ahead of this server's clock",
        ),
        (json!(i64::MAX), "not a calendar date"),
        (json!("1999-12-31T00:00:00Z"), "before 2000-01-01"),
    ] {
        let (status, response) =
            push_score(&server, 2, time.clone(), json!(0.5), json!([1.0, 2.0]));
        assert_eq!(status, 400, "{time}: {response}");
        let message = error_message(&response);
        assert!(message.contains("column 'event_timestamp'"), "{message}");
        assert!(message.contains(expected), "{time}: {message}");
    }
    let (status, report) = server.get("/status");
    assert_eq!(status, 200, "{report}");

    // The entity poisoned earlier cannot be updated: every write is older than its row...
    let (status, response) =
        push_score(&server, 1, json!(now_text), json!(0.75), json!([1.0, 2.0]));
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["feature_views"][0]["skipped_stale"], 1,
        "{response}"
    );
    assert_eq!(served_score(&server, 1), json!(0.5));
    // ... until an operator repairs it (through the running server, which holds the store);
    // entities within the bounds are left alone.
    let (status, response) =
        push_score(&server, 4, json!(now_text), json!(0.25), json!([1.0, 2.0]));
    assert_eq!(status, 200, "{response}");
    let output = larder_ok(
        &repo.path,
        &[
            "repair-future-event-times",
            "--view",
            "scores",
            "--entity",
            "user_id=1,4,5",
        ],
    );
    assert!(output.contains("1 of 3 entities"), "{output}");
    assert!(output.contains("2200-01-01"), "{output}");
    assert_eq!(served_score(&server, 1), Json::Null);
    assert_eq!(served_score(&server, 4), json!(0.25));
    let (status, response) =
        push_score(&server, 1, json!(now_text), json!(0.75), json!([1.0, 2.0]));
    assert_eq!(status, 200, "{response}");
    assert_eq!(served_score(&server, 1), json!(0.75));
}

#[test]
fn training_set_times_that_do_not_parse_are_refused_before_the_answer_starts() {
    let repo = scores_repo("");
    let server = Server::start(&repo.path);
    for (times, row, text) in [
        (json!(["2026-01-01", "yesterday"]), 1, "yesterday"),
        (json!(["", "2026-01-01"]), 0, ""),
        (
            json!(["2026-01-01", "2026-01-02", "2026-13-45"]),
            2,
            "2026-13-45",
        ),
    ] {
        let users: Vec<i64> = (1..=times.as_array().unwrap().len() as i64).collect();
        let body = json!({"features": ["user_profile:age"],
                          "entities": {"user_id": users, "event_timestamp": times}});
        let (status, response) = server.post("/get-historical-features", &body.to_string());
        assert_eq!(status, 400, "{response}");
        let detail = error_detail(&response);
        assert_eq!(detail["code"], "INVALID_ARGUMENT");
        let message = detail["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "entity column 'event_timestamp', row {row}: '{text}'"
            )),
            "{message}"
        );
    }
    let metrics = server.metrics();
    assert!(
        !metrics.contains("endpoint=\"/get-historical-features\",status=\"200\""),
        "{metrics}"
    );
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("user_id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("event_timestamp", arrow::datatypes::DataType::Utf8, true),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                std::sync::Arc::new(arrow::array::StringArray::from(vec!["2026-01-01", "soon"])),
            ],
        )
        .unwrap();
        let mut ipc = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        let status = client
            .get_historical_features(GetHistoricalFeaturesRequest {
                kind: Some(get_historical_features_request::Kind::Features(
                    FeatureList {
                        val: vec!["user_profile:age".into()],
                    },
                )),
                entities_arrow_ipc: ipc,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("row 1: 'soon'"), "{status:?}");
    });
}

#[test]
fn training_sets_beyond_their_own_limit_are_shed_until_one_ends() {
    let repo = scores_repo("  max_concurrent_historical_requests: 1\n  max_body_bytes: 33554432\n");
    let server = Server::start(&repo.path);
    // An answer (~15 MB) larger than what the socket buffers hold, so it stays in flight.
    let rows = 600_000_i64;
    let body = |rows: i64| {
        json!({"features": ["user_profile:age"], "entities": {
            "user_id": (0..rows).map(|row| row % 20 + 1).collect::<Vec<_>>(),
            "event_timestamp": vec!["2030-01-01"; rows as usize]}})
        .to_string()
    };
    // One training set whose answer the client does not read: it holds the only slot.
    let mut holder = TcpStream::connect(server.address()).unwrap();
    let request = body(rows);
    write!(
        holder,
        "POST /get-historical-features HTTP/1.1\r\nHost: larder\r\nContent-Length: {}\r\n\r\n{request}",
        request.len()
    )
    .unwrap();
    let mut first_bytes = [0u8; 12];
    holder.read_exact(&mut first_bytes).unwrap();
    assert_eq!(&first_bytes, b"HTTP/1.1 200");
    // A second one is shed at once, online reads still served.
    let (status, response) = server.post("/get-historical-features", &body(2));
    assert_eq!(status, 503, "{response}");
    assert!(error_message(&response).contains("max_concurrent_historical_requests"));
    assert_eq!(served_score(&server, 1), Json::Null);
    // Once the first one's connection is gone, its slot is free again.
    drop(holder);
    let mut status = 0;
    for _ in 0..100 {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        status = agent
            .post(&format!("{}/get-historical-features", server.base_url))
            .send(body(2).as_str())
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 200);
}
