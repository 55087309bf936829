//! Running the real `larder` binary in a temporary folder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every record batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Vec<arrow::array::RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every row of the given Parquet files (of one view), in one batch sorted by all of its
/// columns (the offline store's file layout may differ; its rows may not).
pub fn sorted_rows(
    files: &[std::path::PathBuf],
    schema: Option<arrow::datatypes::SchemaRef>,
) -> arrow::array::RecordBatch {
    let batches: Vec<arrow::array::RecordBatch> =
        files.iter().flat_map(|file| read_parquet(file)).collect();
    // Files another writer wrote (Spark) are compared in the first writer's types: Larder
    // reads them so (a list's item may be named `element` rather than `item`, say).
    let schema = schema.unwrap_or_else(|| batches[0].schema());
    let batches: Vec<arrow::array::RecordBatch> = batches
        .iter()
        .map(|batch| {
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| arrow::compute::cast(column, field.data_type()).unwrap())
                .collect();
            arrow::array::RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect();
    let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let columns: Vec<arrow::compute::SortColumn> = all
        .columns()
        .iter()
        .filter(|column| !matches!(column.data_type(), arrow::datatypes::DataType::List(_)))
        .map(|column| arrow::compute::SortColumn {
            values: column.clone(),
            options: None,
        })
        .collect();
    let indices = arrow::compute::lexsort_to_indices(&columns, None).unwrap();
    arrow::compute::take_record_batch(&all, &indices).unwrap()
}

/// The Parquet files under `folder` (recursively), sorted by path.
pub fn parquet_files(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|extension| extension == "parquet")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The path of the `larder` binary under test.
pub fn larder_binary() -> &'static str {
    env!("CARGO_BIN_EXE_larder")
}

/// Runs `larder` with arguments in `directory`, returning its output (whatever the status).
pub fn larder(directory: &Path, arguments: &[&str]) -> Output {
    Command::new(larder_binary())
        .args(arguments)
        .current_dir(directory)
        .env_remove("LARDER_REPO")
        .output()
        .expect("the larder binary runs")
}

/// Runs `larder` and asserts success; returns stdout.
pub fn larder_ok(directory: &Path, arguments: &[&str]) -> String {
    let output = larder(directory, arguments);
    assert!(
        output.status.success(),
        "larder {arguments:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The peak resident memory of a process, in MiB (`VmHWM` of `/proc/PID/status`).
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.parse().ok())
        .unwrap();
    kib / 1024
}

/// A demo repo created by `larder init` in a temporary folder.
pub struct DemoRepo {
    _temp: tempfile::TempDir,
    pub path: PathBuf,
}

impl DemoRepo {
    /// `larder init` with `entities` users.
    pub fn init(entities: u64) -> Self {
        Self::init_with(entities, &[])
    }

    /// `larder init` with extra arguments.
    pub fn init_with(entities: u64, extra: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let entities_text = entities.to_string();
        let mut arguments = vec!["init", "demo", "--entities", entities_text.as_str()];
        arguments.extend_from_slice(extra);
        larder_ok(temp.path(), &arguments);
        let path = temp.path().join("demo");
        Self { _temp: temp, path }
    }

    /// Adds lines to the `serving:` section of `larder.yaml` (each indented by two spaces).
    pub fn add_serving_settings(&self, settings: &str) {
        let config_path = self.path.join("larder.yaml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        assert!(text.contains("serving:\n"), "{text}");
        let text = text.replace("serving:\n", &format!("serving:\n{settings}"));
        std::fs::write(&config_path, text).unwrap();
    }

    /// Replaces the embedded online store in `larder.yaml` with `store_settings`: the
    /// indented lines under `online_store:` (starting with `type: ...`).
    pub fn use_online_store(&self, store_settings: &str) {
        let config_path = self.path.join("larder.yaml");
        let text = std::fs::read_to_string(&config_path).unwrap();
        let embedded = "online_store:\n  type: embedded\n  path: data/online.redb\n";
        assert!(text.contains(embedded), "{text}");
        let text = text.replace(embedded, &format!("online_store:\n{store_settings}"));
        std::fs::write(&config_path, text).unwrap();
    }
}

/// A running `larder serve`, killed on drop.
pub struct Server {
    child: Child,
    pub base_url: String,
    pub grpc_url: String,
}

/// An HTTP client that returns error statuses as responses.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Server {
    /// Starts `larder serve --port 0` in `repo` and waits for its address.
    pub fn start(repo: &Path) -> Self {
        let mut child = Command::new(larder_binary())
            .args(["serve", "--port", "0", "--grpc-port", "0"])
            .current_dir(repo)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut base_url = None;
        let mut grpc_url = None;
        while base_url.is_none() || grpc_url.is_none() {
            assert!(
                Instant::now() < deadline,
                "larder serve did not print its addresses in time"
            );
            let line = lines
                .next()
                .expect("larder serve exited before listening")
                .expect("stdout is readable");
            if let Some(position) = line.find("http://") {
                base_url = Some(line[position..].trim().to_string());
            } else if let Some(address) =
                line.strip_prefix("gRPC (larder.serving.v1.FeatureServing) on ")
            {
                grpc_url = Some(format!("http://{}", address.trim()));
            }
        }
        let (base_url, grpc_url) = (base_url.unwrap_or_default(), grpc_url.unwrap_or_default());
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            base_url,
            grpc_url,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's `host:port`.
    pub fn address(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }

    /// POSTs a raw body to `path`; returns status and parsed JSON body.
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let agent = agent();
        let mut response = agent
            .post(&format!("{}{path}", self.base_url))
            .content_type("application/json")
            .send(body)
            .expect("the request is sent");
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .expect("the body is readable");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("response is not JSON ({error}): {text}"));
        (status, json)
    }

    /// POSTs a JSON `body`; the status, or `None` when the request or its answer did not
    /// get through (the server is gone).
    pub fn try_post(&self, path: &str, body: &str) -> Option<u16> {
        let agent = agent();
        agent
            .post(&format!("{}{path}", self.base_url))
            .content_type("application/json")
            .send(body)
            .ok()
            .map(|response| response.status().as_u16())
    }

    /// POSTs `body` with the given content type and `Accept` header; returns status, the
    /// response's content type and its raw bytes.
    pub fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        accept: &str,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let agent = agent();
        let mut response = agent
            .post(&format!("{}{path}", self.base_url))
            .content_type(content_type)
            .header("Accept", accept)
            .send(body)
            .expect("the request is sent");
        let status = response.status().as_u16();
        let returned_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .expect("the body is readable");
        (status, returned_type, bytes)
    }

    /// GETs `path`; returns status and parsed JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let agent = agent();
        let mut response = agent
            .get(&format!("{}{path}", self.base_url))
            .call()
            .expect("the request is sent");
        let status = response.status().as_u16();
        let json = response.body_mut().read_json().expect("the body is JSON");
        (status, json)
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.base_url))
            .call()
            .expect("the request is sent")
            .body_mut()
            .read_to_string()
            .expect("the body is text")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `body` on a current-thread runtime with a gRPC client connected to `url`.
pub fn with_grpc_client<Body, Done>(url: String, body: Body)
where
    Body: FnOnce(
        larder_server::grpc::proto::feature_serving_client::FeatureServingClient<
            tonic::transport::Channel,
        >,
    ) -> Done,
    Done: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let client =
            larder_server::grpc::proto::feature_serving_client::FeatureServingClient::connect(url)
                .await
                .expect("the gRPC server accepts a connection");
        body(client).await;
    });
}

/// The error of an HTTP error body: Feast's error detail, a JSON string holding
/// `{"module", "class", "message", "code"}`.
pub fn error_detail(body: &serde_json::Value) -> serde_json::Value {
    let text = body
        .as_str()
        .unwrap_or_else(|| panic!("an error body is a JSON string (Feast's error detail): {body}"));
    let detail: serde_json::Value = serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("the error detail is JSON ({error}): {text}"));
    assert_eq!(detail["module"], "feast.errors", "{detail}");
    detail
}

/// The message of an HTTP error body ([`error_detail`]).
pub fn error_message(body: &serde_json::Value) -> String {
    error_detail(body)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Moves the demo's two source files into folders (`data/sources/profiles/part-0.parquet`)
/// and points the sources at the folders, as a lake that receives new files lays them out.
pub fn use_source_folders(repo: &Path) {
    for name in ["profiles", "activity"] {
        let folder = repo.join("data/sources").join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::rename(
            repo.join(format!("data/sources/{name}.parquet")),
            folder.join("part-0.parquet"),
        )
        .unwrap();
    }
    let path = repo.join("features/users.yaml");
    let yaml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("data/sources/profiles.parquet", "data/sources/profiles/")
        .replace("data/sources/activity.parquet", "data/sources/activity/");
    std::fs::write(&path, yaml).unwrap();
}

/// What a repo serves for users `0..users` (the demo's feature service), through a real
/// `larder serve`.
pub fn served_users(repo: &Path, users: u64) -> serde_json::Value {
    let server = Server::start(repo);
    let ids: Vec<u64> = (0..users).collect();
    let body =
        serde_json::json!({"feature_service": "ranking_model", "entities": {"user_id": ids}});
    let (status, answer) = server.post("/get-online-features", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer
}
