//! RFC 6455 client frames: see `blindrelay::fuzzing::ws_frames` for the
//! input layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blindrelay::fuzzing::ws_frames(data);
});
