//! Fuzz targets for every parser of untrusted input.
//!
//! Each target takes arbitrary bytes and feeds them where a user's input goes in: the YAML
//! repo loader, `larder.yaml`, the HTTP API's request bodies (JSON and Arrow) and the gRPC
//! messages (through the real router and service, over an in-memory store), the row codec, the
//! entity-key decoder, and the stream lane's JSON and Protobuf message decoders. A target
//! panics when it finds a defect: a panic or a 5xx (gRPC `INTERNAL`/`UNKNOWN`) on bad input,
//! or a decoder whose output does not survive an encode and decode round trip.
//!
//! The same targets run two ways:
//! * under libFuzzer, coverage-guided: `fuzz/` is a cargo-fuzz project with one thin
//!   `fuzz_target!` per entry of [`TARGETS`] (see RELIABILITY.md for the commands);
//! * in `cargo test`, as a bounded smoke run ([`smoke`]): the seeds in `fuzz/seeds/<target>`
//!   and deterministic mutations of them, so CI catches a regression without a fuzzer build.

pub mod fixture;
pub mod seeds;
pub mod smoke;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use larder_core::EntityKey;
use larder_registry::{FeatureRepo, RepoConfig};
use tower::ServiceExt;

use fixture::fixture;

/// One fuzz target: a name (its `fuzz/fuzz_targets/<name>.rs` and `fuzz/seeds/<name>`) and
/// the function that takes the fuzzer's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Runs one input; panics on a defect.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "repo_yaml",
        run: repo_yaml,
    },
    Target {
        name: "repo_config",
        run: repo_config,
    },
    Target {
        name: "http_api",
        run: http_api,
    },
    Target {
        name: "grpc_api",
        run: grpc_api,
    },
    Target {
        name: "row_codec",
        run: row_codec,
    },
    Target {
        name: "entity_key",
        run: entity_key,
    },
    Target {
        name: "stream_json",
        run: stream_json,
    },
    Target {
        name: "stream_protobuf",
        run: stream_protobuf,
    },
];

/// Prepares a libFuzzer run (the `init` of every `fuzz_target!`): builds the fixture before
/// the first input, and lets panics raised inside the `arrow` crates unwind instead of
/// aborting. libFuzzer's panic hook aborts on every panic, even one that is caught; arrow's
/// IPC decoder asserts on some corrupt buffers, and `read_arrow_ipc` catches exactly those
/// and answers 400. Any other panic, and an arrow panic nobody catches, still fails the run.
pub fn under_libfuzzer() {
    let _ = fixture();
    let aborting_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_arrow = info.location().is_some_and(|location| {
            let file = location.file();
            file.contains("/arrow-") && !file.contains("/larder")
        });
        if !in_arrow {
            aborting_hook(info);
        }
    }));
}

/// The definition file the repo target writes beside the fixture's `base.yaml`, then loads the
/// whole repo as `larder apply` does (every problem is a diagnostic, rendered).
pub fn repo_yaml(data: &[u8]) {
    let repo = &fixture().scratch_repo;
    let file = repo.join("fuzzed.yaml");
    if let Err(error) = std::fs::write(&file, data) {
        panic!("harness: cannot write {}: {error}", file.display());
    }
    if let Err(diagnostics) = FeatureRepo::load(repo) {
        // Every diagnostic renders, and none points past the end of the file it names.
        let rendered = diagnostics.to_string();
        assert!(!rendered.is_empty(), "an empty diagnostic for {data:?}");
        // YAML's line breaks: `\n`, `\r\n` and a lone `\r`.
        let lines = 1 + data
            .iter()
            .enumerate()
            .filter(|(index, byte)| {
                **byte == b'\n' || (**byte == b'\r' && data.get(index + 1) != Some(&b'\n'))
            })
            .count();
        for diagnostic in diagnostics.iter() {
            if let Some(location) = &diagnostic.location
                && location.file.ends_with("fuzzed.yaml")
            {
                assert!(
                    location.line as usize <= lines + 1,
                    "diagnostic at line {} of a {lines}-line file: {rendered}",
                    location.line
                );
            }
        }
    }
}

/// `larder.yaml`: parsed and validated.
pub fn repo_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = RepoConfig::parse(text) {
        let _ = config.validate();
    }
}

/// The HTTP routes that take a body, and the content types sent to them. The first input byte
/// picks one; the rest is the body.
const HTTP_ROUTES: &[(&str, &str)] = &[
    ("/get-online-features", "application/json"),
    ("/retrieve-online-documents", "application/json"),
    ("/push", "application/json"),
    ("/push?push_source_name=types_push", ARROW),
    ("/write-to-online-store", "application/json"),
    ("/write-to-online-store?feature_view_name=all_types", ARROW),
    ("/get-historical-features", "application/json"),
    (
        "/get-historical-features?features=all_types:f_int64,all_types:f_list_string",
        ARROW,
    ),
    ("/repair-future-event-times", "application/json"),
    ("/materialize", "application/json"),
    ("/materialize-incremental", "application/json"),
    ("/forget", "application/json"),
    ("/api/v1/apply", "application/json"),
];

/// The media type of an Arrow IPC stream.
const ARROW: &str = "application/vnd.apache.arrow.stream";

/// One request through the real HTTP router (push and training sets enabled, over the
/// fixture's memory store), and the request bodies of the routes the fixture does not enable
/// (materialize, forget, apply) through their parsers. A 5xx other than 503 is a defect.
pub fn http_api(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (path, content_type) = HTTP_ROUTES[usize::from(selector) % HTTP_ROUTES.len()];
    let fixture = fixture();
    match path {
        "/materialize" => {
            let _ = larder_server::materialize::parse_materialize(body, &fixture.registry);
        }
        "/materialize-incremental" => {
            let _ =
                larder_server::materialize::parse_materialize_incremental(body, &fixture.registry);
        }
        "/forget" => {
            let _ = larder_server::json::parse_forget_request(body);
        }
        "/api/v1/apply" => {
            let _ = larder_server::apply::parse_apply(body);
        }
        _ => {}
    }
    let Ok(request) = Request::builder()
        .method("POST")
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let (status, response_body) = fixture.runtime.block_on(async {
        let response = match fixture.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|body| body.to_bytes());
        (status, body)
    });
    let response_body = match response_body {
        Ok(bytes) => bytes,
        Err(error) => panic!("POST {path} ({content_type}): the response body failed: {error}"),
    };
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "POST {path} ({content_type}) answered {status}: {}",
        String::from_utf8_lossy(&response_body)
    );
}

/// The gRPC methods; the first input byte picks one (and whether the rest is framed as one
/// gRPC message or sent raw).
const GRPC_METHODS: &[&str] = &[
    "GetOnlineFeatures",
    "RetrieveOnlineDocuments",
    "Push",
    "GetHistoricalFeatures",
    "Forget",
];

/// One call through the real tonic service. `INTERNAL`, `UNKNOWN` and `DATA_LOSS` are defects.
pub fn grpc_api(data: &[u8]) {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let method = GRPC_METHODS[usize::from(selector) % GRPC_METHODS.len()];
    let body = if selector & 0x80 == 0 {
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    } else {
        message.to_vec()
    };
    let Ok(request) = Request::builder()
        .method("POST")
        .uri(format!("/larder.serving.v1.FeatureServing/{method}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Body::from(body))
    else {
        return;
    };
    let fixture = fixture();
    let (code, message) = fixture.runtime.block_on(async {
        let response = match fixture.grpc.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let headers = response.headers().clone();
        let trailers = response
            .into_body()
            .collect()
            .await
            .ok()
            .and_then(|body| body.trailers().cloned());
        // A trailers-only answer carries the status in its headers.
        let field = |name: &str| {
            headers
                .get(name)
                .or_else(|| trailers.as_ref().and_then(|t| t.get(name)))
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        (
            field("grpc-status").and_then(|code| code.parse::<u8>().ok()),
            field("grpc-message"),
        )
    });
    assert!(
        !matches!(code, Some(2 | 13 | 15)),
        "{method} answered grpc-status {code:?}: {message:?}"
    );
}

/// The online row codec: whatever decodes re-encodes to bytes that decode to the same row.
pub fn row_codec(data: &[u8]) {
    if let Ok(values) = larder_core::codec::decode_row(data) {
        let encoded = larder_core::codec::encode_row_to_vec(&values);
        match larder_core::codec::decode_row(&encoded) {
            Ok(again) => assert_eq!(
                larder_core::codec::encode_row_to_vec(&again),
                encoded,
                "a decoded row does not round-trip"
            ),
            Err(error) => panic!("a re-encoded row does not decode: {error}"),
        }
    }
}

/// Entity keys: whatever decodes encodes back to a key with the same values.
pub fn entity_key(data: &[u8]) {
    if let Ok(values) = EntityKey::from_bytes(data.to_vec()).values() {
        match EntityKey::from_values(&values) {
            Ok(key) => assert_eq!(key.values().ok(), Some(values), "an entity key changed"),
            Err(error) => panic!("decoded key values cannot be encoded: {error}"),
        }
    }
}

/// A stream message of the JSON source.
pub fn stream_json(data: &[u8]) {
    let _ = fixture().json_decoder.decode(data);
}

/// A stream message of the Protobuf source.
pub fn stream_protobuf(data: &[u8]) {
    let _ = fixture().protobuf_decoder.decode(data);
}
