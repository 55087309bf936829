//! Lineage out: `larder materialize` sends an OpenLineage START and COMPLETE (or FAIL) per
//! view run, to a catalog over HTTP (a stand-in for Marquez here) or to a file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::util::{DemoRepo, larder, larder_ok};

/// One request the stand-in catalog received.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    content_type: String,
    body: String,
}

/// A tiny HTTP server on 127.0.0.1 that records every request and answers 201.
struct Catalog {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Catalog {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || serve_connection(stream, &recorded));
            }
        });
        Self { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Answers the requests of one (possibly kept-alive) connection until it closes.
fn serve_connection(stream: TcpStream, recorded: &Mutex<Vec<Received>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                } else if name.eq_ignore_ascii_case("content-type") {
                    content_type = value.trim().to_string();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        recorded.lock().unwrap().push(Received {
            request_line: request_line.trim().to_string(),
            content_type,
            body: String::from_utf8(body).unwrap(),
        });
        writer
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

/// Appends a `lineage:` section to the repo's larder.yaml.
fn configure_lineage(repo: &DemoRepo, section: &str) {
    let config_path = repo.path.join("larder.yaml");
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(section);
    std::fs::write(&config_path, text).unwrap();
}

/// The events by job name, in the order they were sent.
fn events_by_job(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut jobs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in events {
        assert_eq!(
            event["schemaURL"],
            "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
        );
        assert!(event["producer"].as_str().unwrap().starts_with("https://"));
        assert!(
            event["eventTime"].as_str().unwrap().ends_with('Z'),
            "{event}"
        );
        let name = event["job"]["name"].as_str().unwrap().to_string();
        jobs.entry(name).or_default().push(event.clone());
    }
    jobs
}

/// The absolute path of a demo source file, as the events name it.
fn source_file(repo: &Path, file: &str) -> String {
    repo.join("data/sources")
        .join(file)
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Asserts a successful view run: START then COMPLETE with one run id, the source file as
/// input, the offline table (with its row count) and the online table as outputs.
fn assert_view_run(events: &[Value], namespace: &str, view: &str, input: &str) {
    let types: Vec<&str> = events
        .iter()
        .map(|event| event["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["START", "COMPLETE"], "{view}: {events:#?}");
    let run_id = events[0]["run"]["runId"].as_str().unwrap();
    assert_eq!(run_id.len(), 36, "a UUID: {run_id}");
    assert_eq!(events[1]["run"]["runId"], run_id, "one run id per run");
    for event in events {
        assert_eq!(event["job"]["namespace"], namespace);
        let inputs = event["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 1, "{event}");
        assert_eq!(inputs[0]["namespace"], "file");
        assert_eq!(inputs[0]["name"], input);
        let outputs = event["outputs"].as_array().unwrap();
        assert_eq!(outputs[0]["namespace"], "larder://demo/offline");
        assert_eq!(outputs[0]["name"], format!("{view}@v1"));
        assert_eq!(outputs[1]["namespace"], "larder://demo/online");
        assert_eq!(outputs[1]["name"], format!("{view}@v1"));
        let fields = outputs[0]["facets"]["schema"]["fields"].as_array().unwrap();
        assert_eq!(fields[0]["name"], "user_id");
    }
    let complete = &events[1];
    let offline_rows = complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"]
        .as_u64()
        .unwrap();
    assert!(offline_rows >= 200, "{complete}");
    assert_eq!(
        complete["run"]["facets"]["larder_run"]["offlineRows"],
        offline_rows
    );
}

#[test]
fn materialize_sends_start_and_complete_per_view_to_an_http_catalog() {
    let catalog = Catalog::start();
    let repo = DemoRepo::init_with(200, &["--anchor", "2026-01-10"]);
    configure_lineage(
        &repo,
        &format!(
            "lineage:\n  type: http\n  url: {}\n  namespace: larder_it\n",
            catalog.url
        ),
    );
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize"]);

    // `larder materialize` waits for its events before it exits.
    let received = catalog.received();
    assert_eq!(received.len(), 4, "{received:#?}");
    for request in &received {
        assert_eq!(request.request_line, "POST /api/v1/lineage HTTP/1.1");
        assert!(
            request.content_type.starts_with("application/json"),
            "{request:?}"
        );
    }
    let events: Vec<Value> = received
        .iter()
        .map(|request| serde_json::from_str(&request.body).unwrap())
        .collect();
    let jobs = events_by_job(&events);
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        ["user_activity.materialize", "user_profile.materialize"]
    );
    assert_view_run(
        &jobs["user_profile.materialize"],
        "larder_it",
        "user_profile",
        &source_file(&repo.path, "profiles.parquet"),
    );
    assert_view_run(
        &jobs["user_activity.materialize"],
        "larder_it",
        "user_activity",
        &source_file(&repo.path, "activity.parquet"),
    );
    let activity_sql = jobs["user_activity.materialize"][0]["job"]["facets"]["sql"]["query"]
        .as_str()
        .unwrap();
    assert!(
        activity_sql.contains("FROM activity_events"),
        "{activity_sql}"
    );
}

#[test]
fn materialize_appends_events_to_a_lineage_file_and_failed_runs_send_fail() {
    let repo = DemoRepo::init_with(200, &["--anchor", "2026-01-10"]);
    configure_lineage(
        &repo,
        "lineage: {type: file, path: data/lineage/events.jsonl}\n",
    );
    // A check no row passes, so that user_activity's runs fail.
    let features_path = repo.path.join("features/users.yaml");
    let features = std::fs::read_to_string(&features_path).unwrap();
    let transformation = "    transformation: user_activity.sql\n";
    assert!(features.contains(transformation), "{features}");
    let features = features.replace(
        transformation,
        &format!(
            "{transformation}    checks:\n      - {{type: range, column: clicks_1d, max: -1}}\n"
        ),
    );
    std::fs::write(&features_path, features).unwrap();
    larder_ok(&repo.path, &["apply"]);
    larder_ok(&repo.path, &["materialize", "--views", "user_profile"]);

    let read_events = || -> Vec<Value> {
        std::fs::read_to_string(repo.path.join("data/lineage/events.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let events = read_events();
    let jobs = events_by_job(&events);
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        ["user_profile.materialize"]
    );
    assert_view_run(
        &jobs["user_profile.materialize"],
        "demo",
        "user_profile",
        &source_file(&repo.path, "profiles.parquet"),
    );

    // A run whose check fails fails: its FAIL event carries the error.
    let output = larder(&repo.path, &["materialize", "--views", "user_activity"]);
    assert!(!output.status.success(), "the run fails its check");
    let events = read_events();
    assert_eq!(events.len(), 4, "{events:#?}");
    let (start, fail) = (&events[2], &events[3]);
    assert_eq!(start["eventType"], "START");
    assert_eq!(fail["eventType"], "FAIL");
    assert_eq!(fail["job"]["name"], "user_activity.materialize");
    assert_eq!(start["run"]["runId"], fail["run"]["runId"]);
    assert_ne!(
        fail["run"]["runId"], events[0]["run"]["runId"],
        "each run has its own id"
    );
    let message = fail["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("range(clicks_1d)"), "{fail}");
}
