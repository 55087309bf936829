//! The CI smoke run of every fuzz target: its seeds and deterministic mutations of them, with
//! no panic, no 5xx and no slow case. `LARDER_FUZZ_SMOKE_CASES` sets the mutations per target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use larder_fuzz::{TARGETS, smoke};

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutations() {
    let mutations = std::env::var("LARDER_FUZZ_SMOKE_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3_000);
    for target in TARGETS {
        let seeds = smoke::seeds(target)
            .unwrap_or_else(|error| panic!("{}: {error}", smoke::seeds_folder(target).display()));
        assert!(seeds.len() >= 2, "{}: too few seeds", target.name);
        let report = smoke::run(target, &seeds, mutations);
        eprintln!(
            "{}: {} cases, slowest {:?}",
            target.name, report.cases, report.slowest
        );
        // A debug build on a loaded 2-core machine: a case taking seconds is a hang.
        assert!(
            report.slowest < Duration::from_secs(5),
            "{}: a case took {:?}",
            target.name,
            report.slowest
        );
    }
}

/// Inputs the fuzz targets found defects with, kept as seeds (`regression-*`): each now gets
/// a clean refusal.
#[test]
fn inputs_that_found_defects_are_refused_cleanly() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    // arrow's IPC decoder panicked on a null count without a validity buffer; the body is
    // now a 400 (the `http_api` target checks the status).
    let arrow =
        std::fs::read(seeds.join("http_api/regression-arrow-null-count-without-validity-buffer"))
            .unwrap();
    let refused = larder_server::training::read_arrow_ipc(&arrow[1..]);
    assert!(refused.is_err(), "{refused:?}");
    larder_fuzz::http_api(&arrow);
    // tonic answers INTERNAL to a message it cannot decode; `larder serve` answers
    // INVALID_ARGUMENT (the harness first missed that layer; the target checks the code).
    let grpc =
        std::fs::read(seeds.join("grpc_api/regression-undecodable-get-online-features")).unwrap();
    larder_fuzz::grpc_api(&grpc);
}
