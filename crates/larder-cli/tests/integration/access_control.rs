//! Access control: every endpoint × every scope, on HTTP and on gRPC, against a real
//! `larder serve` whose tokens were made by `larder token create`; view limits; the token id
//! (never the secret) in metrics and audit records; tokens revoked while serving.

use larder_server::grpc::proto::value::Val;
use larder_server::grpc::proto::{
    FeatureList, ForgetRequest, GetHistoricalFeaturesRequest, GetOnlineFeaturesRequest,
    PushRequest, RepeatedValue, Value, get_historical_features_request,
    get_online_features_request, push_request,
};
use serde_json::json;

use crate::util::{DemoRepo, Server, larder, larder_ok, with_grpc_client};

/// The credentials tried on every endpoint: no token, a made-up one, and one per scope.
const CREDENTIALS: [&str; 6] = ["none", "bogus", "read", "write", "forget", "admin"];

/// A demo repo with one token per scope and a view-limited reader, access control on.
struct SecuredRepo {
    repo: DemoRepo,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl SecuredRepo {
    fn new() -> Self {
        let repo = DemoRepo::init(20);
        std::fs::write(
            repo.path.join("relevance.yaml"),
            crate::push_grpc::RELEVANCE,
        )
        .unwrap();
        larder_ok(&repo.path, &["apply"]);
        larder_ok(&repo.path, &["materialize"]);
        let mut tokens = std::collections::HashMap::new();
        for (id, arguments) in [
            ("read", vec!["--scope", "read"]),
            ("write", vec!["--scope", "write"]),
            ("forget", vec!["--scope", "forget"]),
            ("admin", vec!["--scope", "admin"]),
            (
                "profile-reader",
                vec!["--scope", "read,write", "--views", "user_prof*"],
            ),
        ] {
            let mut command = vec!["token", "create", id];
            command.extend(arguments);
            let output = larder_ok(&repo.path, &command);
            let token = output.trim().to_string();
            assert!(token.starts_with(&format!("larder.{id}.")), "{output}");
            tokens.insert(id, token);
        }
        tokens.insert("bogus", "larder.read.0000".to_string());
        let config_path = repo.path.join("larder.yaml");
        let mut config = std::fs::read_to_string(&config_path).unwrap();
        config.push_str("auth: {tokens_file: data/tokens.yaml}\n");
        std::fs::write(&config_path, config).unwrap();
        Self { repo, tokens }
    }

    fn token(&self, credential: &str) -> Option<&str> {
        self.tokens.get(credential).map(String::as_str)
    }
}

/// Sends a request with `token` as a bearer token; returns the status and the body.
fn send(
    server: &Server,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{path}", server.base_url);
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut response = match method {
        "GET" => {
            let mut request = agent.get(&url);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.call()
        }
        _ => {
            let mut request = agent.post(&url).content_type("application/json");
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            request.send(body)
        }
    }
    .expect("the request is sent");
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec().unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn every_http_endpoint_checks_every_scope() {
    let secured = SecuredRepo::new();
    let server = Server::start(&secured.repo.path);
    let now = chrono::Utc::now().to_rfc3339();
    let write_body = json!({"feature_view_name": "relevance",
        "df": {"user_id": [1], "event_timestamp": [now], "score": [0.5], "model": ["m"]}})
    .to_string();
    let push_body = json!({"push_source_name": "relevance_push",
        "df": {"user_id": [2], "event_timestamp": [now], "score": [0.25], "model": ["m"]}})
    .to_string();
    let historical_body = json!({"features": ["user_profile:age"],
        "entities": {"user_id": [1], "event_timestamp": [now]}})
    .to_string();
    // (method, path, body, scope needed (None: open), status when allowed)
    let endpoints: Vec<(&str, &str, String, Option<&str>, u16)> = vec![
        ("GET", "/health", String::new(), None, 200),
        (
            "POST",
            "/get-online-features",
            r#"{"features":["user_profile:age"],"entities":{"user_id":[1]}}"#.into(),
            Some("read"),
            200,
        ),
        (
            "POST",
            "/get-historical-features",
            historical_body,
            Some("read"),
            200,
        ),
        ("GET", "/status", String::new(), Some("read"), 200),
        ("GET", "/metrics", String::new(), Some("read"), 200),
        (
            "GET",
            "/api/v1/feature-views?q=user",
            String::new(),
            Some("read"),
            200,
        ),
        (
            "GET",
            "/api/v1/feature-views/user_profile",
            String::new(),
            Some("read"),
            200,
        ),
        (
            "GET",
            "/api/v1/features?q=age",
            String::new(),
            Some("read"),
            200,
        ),
        (
            "GET",
            "/api/v1/lineage/user_profile",
            String::new(),
            Some("read"),
            200,
        ),
        (
            "GET",
            "/api/v1/feature-services",
            String::new(),
            Some("read"),
            200,
        ),
        ("GET", "/ui", String::new(), Some("read"), 200),
        (
            "GET",
            "/ui/views/user_profile",
            String::new(),
            Some("read"),
            200,
        ),
        ("GET", "/ui/lineage", String::new(), Some("read"), 200),
        (
            "POST",
            "/write-to-online-store",
            write_body,
            Some("write"),
            200,
        ),
        ("POST", "/push", push_body, Some("write"), 200),
        (
            "POST",
            "/forget",
            r#"{"entities":{"user_id":[999999]},"verify":true}"#.into(),
            Some("forget"),
            200,
        ),
        (
            "POST",
            "/materialize-incremental",
            format!(r#"{{"end_ts":"{now}","feature_views":["user_profile"]}}"#),
            Some("admin"),
            200,
        ),
        (
            "POST",
            "/repair-future-event-times",
            r#"{"feature_view_name":"relevance","entities":{"user_id":[1]}}"#.into(),
            Some("admin"),
            200,
        ),
    ];
    let mut checked = 0;
    for (method, path, body, needed, allowed_status) in &endpoints {
        for credential in CREDENTIALS {
            let (status, text) = send(&server, method, path, body, secured.token(credential));
            let expected = match (needed, credential) {
                (None, _) => *allowed_status,
                (Some(_), "none" | "bogus") => 401,
                (Some(scope), held) if held == *scope || held == "admin" => *allowed_status,
                (Some(_), _) => 403,
            };
            assert_eq!(status, expected, "{method} {path} as {credential}: {text}");
            if status == 403 {
                let scope = needed.unwrap_or_default();
                let text = text.replace("&#39;", "'");
                assert!(
                    text.contains(&format!("'{scope}' scope")),
                    "{path} as {credential}: {text}"
                );
            }
            if let Some(token) = secured.token(credential) {
                let secret = token.rsplit('.').next().unwrap_or_default();
                assert!(
                    secret.len() < 8 || !text.contains(secret),
                    "{path} echoed the token"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, endpoints.len() * CREDENTIALS.len());

    // A view-limited token reads and writes its views only, and sees only them.
    let limited = secured.token("profile-reader");
    let (status, text) = send(
        &server,
        "POST",
        "/get-online-features",
        r#"{"features":["user_activity:clicks_7d"],"entities":{"user_id":[1]}}"#,
        limited,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("user_activity"), "{text}");
    let (status, text) = send(
        &server,
        "POST",
        "/get-online-features",
        r#"{"feature_service":"ranking_model","entities":{"user_id":[1]}}"#,
        limited,
    );
    assert_eq!(status, 403, "{text}");
    let (status, text) = send(&server, "GET", "/api/v1/feature-views", "", limited);
    assert_eq!(status, 200, "{text}");
    let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = listed["feature_views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|view| view["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user_profile"]);
    let (status, _) = send(
        &server,
        "GET",
        "/api/v1/feature-views/user_activity",
        "",
        limited,
    );
    assert_eq!(status, 403);
    let (status, text) = send(&server, "POST", "/write-to-online-store",
        &json!({"feature_view_name": "relevance", "df": {"user_id": [1], "event_timestamp": [now], "score": [0.5], "model": ["m"]}}).to_string(), limited);
    assert_eq!(status, 403, "{text}");

    // Writes and erasures name the token id, never the secret.
    let (status, text) = send(
        &server,
        "POST",
        "/forget",
        r#"{"entities":{"user_id":[19]}}"#,
        secured.token("forget"),
    );
    assert_eq!(status, 200, "{text}");
    let (_, metrics) = send(&server, "GET", "/metrics", "", secured.token("read"));
    assert!(
        metrics
            .contains(r#"larder_direct_write_rows_total{feature_view="relevance",token="write"}"#)
            || metrics.contains(
                r#"larder_direct_write_rows_total{token="write",feature_view="relevance"}"#
            ),
        "{metrics}"
    );
    let writes =
        std::fs::read_to_string(secured.repo.path.join("data/audit/writes.jsonl")).unwrap();
    let tokens_seen: Vec<String> = writes
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        tokens_seen.contains(&"write".to_string()) && tokens_seen.contains(&"admin".to_string()),
        "{writes}"
    );
    let erasures =
        std::fs::read_to_string(secured.repo.path.join("data/erasure/audit.jsonl")).unwrap();
    assert!(erasures.contains("http:token:forget"), "{erasures}");
    for token in secured.tokens.values() {
        let secret = token.rsplit('.').next().unwrap();
        if secret.len() > 8 {
            for text in [&writes, &erasures, &metrics] {
                assert!(!text.contains(secret), "a secret leaked");
            }
        }
    }

    // Apply over the API: a changed description is recorded and served; a refused change
    // records nothing; a token limited to some views may not apply.
    let definitions = secured.repo.path.join("features/users.yaml");
    let text = std::fs::read_to_string(&definitions).unwrap();
    std::fs::write(
        &definitions,
        text.replacen("Who the user is", "Who the user is, per signup", 1),
    )
    .unwrap();
    let (status, text) = send(&server, "POST", "/api/v1/apply", "", secured.token("admin"));
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["recorded"], true, "{answer}");
    assert!(
        answer["plan"].as_str().unwrap().contains("user_profile"),
        "{answer}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, text) = send(
            &server,
            "GET",
            "/api/v1/feature-views/user_profile",
            "",
            secured.token("read"),
        );
        if text.contains("per signup") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the applied registry is not served: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&definitions).unwrap();
    std::fs::write(
        &definitions,
        text.replacen("{name: age, dtype: int64}", "{name: age, dtype: string}", 1),
    )
    .unwrap();
    let (status, text) = send(&server, "POST", "/api/v1/apply", "", secured.token("admin"));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("users.yaml:"), "{text}");
    let (status, text) = send(
        &server,
        "POST",
        "/api/v1/apply",
        r#"{"dry_run":true}"#,
        limited,
    );
    assert_eq!(status, 403, "{text}");

    // Revoking takes effect on the running server.
    larder_ok(&secured.repo.path, &["token", "revoke", "read"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = send(&server, "GET", "/status", "", secured.token("read"));
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked token still works"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Creating a token with a taken id is refused.
    let output = larder(
        &secured.repo.path,
        &["token", "create", "write", "--scope", "read"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists already"));
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[test]
fn every_grpc_method_checks_every_scope() {
    let secured = SecuredRepo::new();
    let server = Server::start(&secured.repo.path);
    let now_micros = chrono::Utc::now().timestamp_micros();
    let tokens: Vec<(&str, Option<String>)> = CREDENTIALS
        .iter()
        .map(|credential| (*credential, secured.token(credential).map(str::to_string)))
        .collect();
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let online = || GetOnlineFeaturesRequest {
            kind: Some(get_online_features_request::Kind::Features(FeatureList {
                val: vec!["user_profile:age".into()],
            })),
            entities: [("user_id".to_string(), crate::grpc::int_values(&[1]))]
                .into_iter()
                .collect(),
            full_feature_names: false,
        };
        let push = || PushRequest {
            target: Some(push_request::Target::FeatureViewName("relevance".into())),
            columns: [
                ("user_id".to_string(), crate::grpc::int_values(&[3])),
                (
                    "event_timestamp".to_string(),
                    RepeatedValue {
                        val: vec![Value {
                            val: Some(Val::TimestampMicrosVal(now_micros)),
                        }],
                    },
                ),
                (
                    "score".to_string(),
                    RepeatedValue {
                        val: vec![Value {
                            val: Some(Val::DoubleVal(0.75)),
                        }],
                    },
                ),
            ]
            .into_iter()
            .collect(),
            to: 0,
            partial: false,
        };
        let forget = || ForgetRequest {
            entities: [("user_id".to_string(), crate::grpc::int_values(&[999_999]))]
                .into_iter()
                .collect(),
            verify: true,
        };
        let historical = || GetHistoricalFeaturesRequest {
            kind: Some(get_historical_features_request::Kind::Features(
                FeatureList {
                    val: vec!["user_profile:age".into()],
                },
            )),
            entities_arrow_ipc: Vec::new(),
            entity_timestamp_column: String::new(),
            full_feature_names: false,
        };
        for (credential, token) in &tokens {
            let token = token.as_deref();
            let expect = |method: &str, scope: &str, outcome: Result<(), tonic::Status>| {
                let allowed = *credential == scope || *credential == "admin";
                match (credential, outcome) {
                    (&"none" | &"bogus", Err(status)) => {
                        assert_eq!(
                            status.code(),
                            tonic::Code::Unauthenticated,
                            "{method} as {credential}: {status:?}"
                        )
                    }
                    (_, Err(status)) if !allowed => {
                        assert_eq!(
                            status.code(),
                            tonic::Code::PermissionDenied,
                            "{method} as {credential}"
                        );
                        assert!(
                            status.message().contains(&format!("'{scope}' scope")),
                            "{}",
                            status.message()
                        );
                    }
                    // Allowed: anything but an authentication answer (the empty entity
                    // table of the training set is a 400 of its own).
                    (_, Err(status)) => assert!(
                        !matches!(
                            status.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ),
                        "{method} as {credential}: {status:?}"
                    ),
                    (_, Ok(())) => assert!(
                        allowed && !matches!(*credential, "none" | "bogus"),
                        "{method} as {credential} passed"
                    ),
                }
            };
            expect(
                "GetOnlineFeatures",
                "read",
                client
                    .get_online_features(with_token(online(), token))
                    .await
                    .map(|_| ()),
            );
            expect(
                "Push",
                "write",
                client.push(with_token(push(), token)).await.map(|_| ()),
            );
            expect(
                "Forget",
                "forget",
                client.forget(with_token(forget(), token)).await.map(|_| ()),
            );
            expect(
                "GetHistoricalFeatures",
                "read",
                client
                    .get_historical_features(with_token(historical(), token))
                    .await
                    .map(|_| ()),
            );
        }
    });
    // A limited token over gRPC: a view outside its limit is denied.
    let limited = secured.token("profile-reader").map(str::to_string);
    with_grpc_client(server.grpc_url.clone(), |mut client| async move {
        let request = GetOnlineFeaturesRequest {
            kind: Some(get_online_features_request::Kind::Features(FeatureList {
                val: vec!["user_activity:clicks_7d".into()],
            })),
            entities: [("user_id".to_string(), crate::grpc::int_values(&[1]))]
                .into_iter()
                .collect(),
            full_feature_names: false,
        };
        let status = client
            .get_online_features(with_token(request, limited.as_deref()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("user_activity"),
            "{}",
            status.message()
        );
    });
}
