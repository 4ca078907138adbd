//! The fuzz targets' checks (`fuzz/src/lib.rs`) as a regular test, so CI
//! runs them without a fuzzer: every input of the committed corpus
//! (`fuzz/seeds/<target>/`, hand-written seeds plus the minimized corpus of
//! the long cargo-fuzz runs), then pseudo-random mutations of it. The
//! coverage-guided runs themselves are `scripts/reliability fuzz` (see
//! docs/reliability.md).

#[path = "../../../fuzz/src/lib.rs"]
mod props;

use std::path::PathBuf;

use crate::support::{Rng, knob};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

/// A mutation of one corpus input, or a splice of two: byte flips,
/// insertions of interesting bytes, deletions, duplications.
fn mutate(rng: &mut Rng, inputs: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] = &[
        b"\0",
        b",",
        b"-",
        b"0",
        b"65535",
        b"65536",
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b" ",
        b"\n",
        b"null",
        b"-1",
        b"1e9",
        b"\"token\"",
        b"\"count\"",
        b"\"start\"",
        b"\xff",
        b"18446744073709551616",
        b"\\u0000",
    ];
    let mut v = inputs[rng.below(inputs.len() as u64) as usize].clone();
    for _ in 0..1 + rng.below(4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.below(v.len() as u64 + 1) as usize
        };
        match rng.below(5) {
            0 if at < v.len() => v[at] ^= 1 << rng.below(8),
            1 => {
                let ins = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                v.splice(at..at, ins.iter().copied());
            }
            2 if at < v.len() => {
                let end = (at + 1 + rng.below(8) as usize).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let other = &inputs[rng.below(inputs.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                v.splice(at..at, other[from..].iter().copied());
            }
            _ => {
                let end = (at + rng.below(16) as usize).min(v.len());
                let dup = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
        }
    }
    v.truncate(4096);
    v
}

fn smoke(target: &str, check: fn(&[u8])) {
    let inputs = corpus(target);
    for input in &inputs {
        check(input);
    }
    let seed = Rng::seed_from_env();
    let mut rng = Rng::new(seed);
    let n = knob("PORTRES_FUZZ_SMOKE_INPUTS", 5_000);
    for _ in 0..n {
        let input = mutate(&mut rng, &inputs);
        let outcome = std::panic::catch_unwind(|| check(&input));
        if let Err(e) = outcome {
            std::panic::resume_unwind(Box::new(format!(
                "{target} failed on {:?} (seed {seed}): {:?}",
                String::from_utf8_lossy(&input),
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
            )));
        }
    }
    eprintln!(
        "{target}: {} corpus inputs and {n} mutations checked",
        inputs.len()
    );
}

#[test]
fn wire_decoder_corpus_and_mutations() {
    smoke("wire_decode", props::check_wire);
}

#[test]
fn sysctl_parser_corpus_and_mutations() {
    smoke("sysctl_parse", props::check_sysctl);
}

#[test]
fn the_sysctl_parser_reads_what_the_kernel_writes() {
    // Known kernel renderings and the writer's own chunks.
    for text in ["", "\n", "1\n", "1-65535\n", "80,443,8080-8090\n"] {
        props::check_sysctl_text(text);
    }
}
