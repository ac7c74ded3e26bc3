//! Fuzzes the store's header and table parser (`budge::store::format`):
//! `decode` on arbitrary bytes must never panic, what it accepts must
//! re-encode to the same bytes, and `decode_journal` with a decoded intent
//! must never panic. The properties live in `fuzz/src/store_header.rs`,
//! shared with the deterministic mutation run in the test suite
//! (`crates/budge/tests/store_bad_input.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/store_header.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::run(data);
});
