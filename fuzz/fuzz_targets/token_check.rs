//! Join tokens: see `blindrelay::fuzzing::token_check` for the input
//! layout and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blindrelay::fuzzing::token_check(data);
});
