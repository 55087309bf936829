//! A bounded mutation run of a target, for CI: no coverage feedback, but the same targets,
//! the same seeds and deterministic mutations (a fixed-seed xorshift), so a failure reproduces
//! from its case number. The coverage-guided runs are libFuzzer's (`fuzz/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Target;

/// The folder of `target`'s text seeds: `fuzz/seeds/<name>` at the workspace root (absent for
/// targets whose seeds are all generated).
pub fn seeds_folder(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target.name)
}

/// The seeds of `target`: its files, sorted by name, then its generated seeds
/// ([`crate::seeds::generated`]).
pub fn seeds(target: &Target) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(seeds_folder(target)) {
        Ok(entries) => entries
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    paths.sort();
    let mut seeds = paths
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<Vec<_>>>()?;
    seeds.extend(crate::seeds::generated(target.name));
    Ok(seeds)
}

/// What a smoke run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Inputs run (the seeds, then mutations).
    pub cases: u64,
    /// The slowest input.
    pub slowest: Duration,
}

/// Runs every seed, then `mutations` mutated seeds, through `target`. A panic propagates
/// (with the case number printed first, so it can be reproduced with [`case`]).
pub fn run(target: &Target, seeds: &[Vec<u8>], mutations: u64) -> Report {
    let mut slowest = Duration::ZERO;
    let mut timed = |input: &[u8], number: u64| {
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| (target.run)(input));
        if let Err(panic) = result {
            eprintln!(
                "{}: case {number} panicked; input ({} bytes): {:?}",
                target.name,
                input.len(),
                String::from_utf8_lossy(input)
            );
            std::panic::resume_unwind(panic);
        }
        slowest = slowest.max(started.elapsed());
    };
    for (number, seed) in seeds.iter().enumerate() {
        timed(seed, number as u64);
    }
    for number in 0..mutations {
        timed(&case(seeds, number), seeds.len() as u64 + number);
    }
    Report {
        cases: seeds.len() as u64 + mutations,
        slowest,
    }
}

/// Mutation number `number` of `seeds`: 1 to 8 stacked edits (bit flips, byte and
/// interesting-value overwrites, inserts, deletes, duplicated ranges, splices with another
/// seed) of one seed.
pub fn case(seeds: &[Vec<u8>], number: u64) -> Vec<u8> {
    let mut random = XorShift(number.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut input = seeds[random.below(seeds.len())].clone();
    for _ in 0..1 + random.below(8) {
        mutate(&mut input, seeds, &mut random);
    }
    input
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"NaN",
    b"\xff\xfe",
    b"\x00",
    b"\x7f\xff\xff\xff",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"~",
    b"&a",
    b"*a",
    b"!!binary",
    b"<<: *a",
    b"\t",
    b": ",
    b"- ",
    b"\n  ",
];

fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], random: &mut XorShift) {
    let at = |random: &mut XorShift, input: &Vec<u8>| random.below(input.len() + 1);
    match random.below(7) {
        0 if !input.is_empty() => {
            let index = random.below(input.len());
            input[index] ^= 1 << random.below(8);
        }
        1 if !input.is_empty() => {
            let index = random.below(input.len());
            input[index] = random.next() as u8;
        }
        2 => {
            let index = at(random, input);
            let value = INTERESTING[random.below(INTERESTING.len())];
            input.splice(index..index, value.iter().copied());
        }
        3 if !input.is_empty() => {
            let start = random.below(input.len());
            let end = (start + 1 + random.below(16)).min(input.len());
            input.drain(start..end);
        }
        4 if !input.is_empty() => {
            let start = random.below(input.len());
            let end = (start + 1 + random.below(32)).min(input.len());
            let copy = input[start..end].to_vec();
            let index = at(random, input);
            input.splice(index..index, copy);
        }
        5 => {
            let other = &seeds[random.below(seeds.len())];
            if !other.is_empty() {
                let start = random.below(other.len());
                let end = (start + 1 + random.below(64)).min(other.len());
                let index = at(random, input);
                input.splice(index..index, other[start..end].iter().copied());
            }
        }
        _ => {
            let index = at(random, input);
            input.insert(index, random.next() as u8);
        }
    }
}

/// A xorshift64* generator: deterministic and dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}
