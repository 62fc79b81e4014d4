//! Replays the checked-in inputs through the fuzz entry points as plain
//! tests, on any toolchain: the seed corpus (`seeds/<target>/`), saved
//! findings (`regressions/<target>/`) and, when present, the corpus a
//! fuzzing run has grown (`corpus/<target>/`).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut ran, mut failed) = (0, Vec::new());
    for dir in ["seeds", "regressions", "corpus"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("readable dir").path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let data = fs::read(&path).expect("readable input");
            ran += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(ran > 0, "no inputs for {target}");
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
    eprintln!("{target}: {ran} inputs replayed");
}

#[test]
fn ws_frames_inputs() {
    replay("ws_frames", blindrelay::fuzzing::ws_frames);
}

#[test]
fn token_check_inputs() {
    replay("token_check", blindrelay::fuzzing::token_check);
}
