//! A local Spark Connect server (Apache Spark 4, `local[2]`), for the Spark offline engine's
//! tests.
//!
//! The server is `spark-submit` from PyPI's `pyspark` (its wheel carries Spark's jars, the
//! Spark Connect server among them) on Debian's OpenJDK 17: `scripts/test.sh` installs both.
//! `$LARDER_SPARK_SUBMIT` names another `spark-submit` (of a Spark 3.5+ distribution, say).
//! It listens on `127.0.0.1` on an ephemeral port, keeps its warehouse and scratch files in a
//! temporary folder, and is killed by process id when dropped (`spark-submit` execs the JVM,
//! so the id is the server's).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ServerProcess, find_server_binary, free_loopback_port, temporary_directory};

/// How long the JVM may take to start and open its port (~20 s on 2 busy cores).
const SPARK_STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// A Spark Connect server on an ephemeral loopback port.
#[derive(Debug)]
pub struct SparkConnectServer {
    port: u16,
    process: ServerProcess,
    directory: tempfile::TempDir,
}

impl SparkConnectServer {
    /// Starts a server with 2 local cores and a small shuffle (4 partitions: test data is
    /// tiny) and waits until it accepts connections; `None` outside CI when `spark-submit` or
    /// `java` is missing.
    pub fn start() -> Option<Self> {
        Self::start_with(&[("spark.sql.shuffle.partitions", "4")], "2g")
    }

    /// Starts a server with extra Spark settings and the driver's heap size (`2g`).
    pub fn start_with(settings: &[(&str, &str)], driver_memory: &str) -> Option<Self> {
        let hint = "python3 -m pip install pyspark==4.3.0 and apt-get install openjdk-17-jre-headless (scripts/test.sh does both)";
        let submit = match std::env::var_os("LARDER_SPARK_SUBMIT") {
            Some(path) => PathBuf::from(path),
            None => find_server_binary("spark-submit", hint)?,
        };
        find_server_binary("java", hint)?;
        let directory = temporary_directory("spark");
        let port = free_loopback_port();
        let log = directory.path().join("server.log");
        let mut command = Command::new(&submit);
        command
            .current_dir(directory.path())
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env("SPARK_LOG_DIR", directory.path())
            .args(["--master", "local[2]", "--driver-memory", driver_memory])
            .args([
                "--class",
                "org.apache.spark.sql.connect.service.SparkConnectServer",
            ]);
        let warehouse = directory.path().join("warehouse");
        let scratch = directory.path().join("scratch");
        let mut confs = vec![
            (
                "spark.connect.grpc.binding.address".to_string(),
                "127.0.0.1".to_string(),
            ),
            (
                "spark.connect.grpc.binding.port".to_string(),
                port.to_string(),
            ),
            ("spark.ui.enabled".to_string(), "false".to_string()),
            (
                "spark.sql.warehouse.dir".to_string(),
                warehouse.to_string_lossy().to_string(),
            ),
            (
                "spark.local.dir".to_string(),
                scratch.to_string_lossy().to_string(),
            ),
            (
                "spark.driver.extraJavaOptions".to_string(),
                format!(
                    "-Dderby.system.home={0} -Djava.io.tmpdir={0}",
                    directory.path().display()
                ),
            ),
        ];
        confs.extend(
            settings
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        );
        for (key, value) in confs {
            command.args(["--conf", &format!("{key}={value}")]);
        }
        command.arg("spark-internal");
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", log.display()));
        let log_copy = log_file
            .try_clone()
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", log.display()));
        command.stdout(log_file).stderr(log_copy);
        let process = ServerProcess::spawn_with_output("spark-connect", &mut command);
        let mut server = Self {
            port,
            process,
            directory,
        };
        server.wait_until_ready(&log);
        Some(server)
    }

    fn wait_until_ready(&mut self, log: &std::path::Path) {
        let deadline = Instant::now() + SPARK_STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if !self.process.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let output = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        let message = format!(
            "the Spark Connect server did not open 127.0.0.1:{} within {SPARK_STARTUP_TIMEOUT:?}; its log ends:\n{}",
            self.port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        panic!("{message}");
    }

    /// Its Spark Connect remote, `sc://127.0.0.1:{port}`.
    pub fn remote(&self) -> String {
        format!("sc://127.0.0.1:{}", self.port)
    }

    /// A folder of the server's, removed with it (for data both sides read).
    pub fn folder(&self) -> &std::path::Path {
        self.directory.path()
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
