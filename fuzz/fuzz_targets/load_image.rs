//! Fuzzes loading a damaged cache image: `cargo fuzz run load_image`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pcache::fuzzing::load_image(data);
});
