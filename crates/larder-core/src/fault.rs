//! Crash points for the fault tests: `LARDER_CRASH_AT=<point>` makes the process kill itself
//! with `SIGKILL` when it reaches `<point>` (no destructor, no flush: what `kill -9` or a power
//! cut at that instant leaves behind). Unset, a crash point costs one load of a cached value.
//!
//! The points are named `<lane>.<stage>`; RELIABILITY.md lists them with what each test
//! checks after the restart.

use std::sync::OnceLock;

/// The environment variable naming the crash point to die at.
pub const CRASH_AT_VARIABLE: &str = "LARDER_CRASH_AT";

/// Dies here with `SIGKILL` when [`CRASH_AT_VARIABLE`] names `point`.
pub fn crash_point(point: &str) {
    static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
    let armed = CRASH_AT.get_or_init(|| std::env::var(CRASH_AT_VARIABLE).ok());
    if armed.as_deref() == Some(point) {
        eprintln!("{CRASH_AT_VARIABLE}={point}: killing this process (SIGKILL)");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        // `kill` is missing or failed: die without unwinding all the same.
        std::process::abort();
    }
}
