#![no_main]
//! cargo-fuzz target `safetensors`: see ../harness.rs.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::safetensors(data));
