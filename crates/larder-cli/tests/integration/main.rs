//! Integration tests of the `larder` binary: one test binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod apply;
mod bad_requests;
mod end_to_end;
mod redis_store;
mod util;
