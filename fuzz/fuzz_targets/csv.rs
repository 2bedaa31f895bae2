#![no_main]
//! cargo-fuzz target `csv`: see ../harness.rs.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::csv(data));
