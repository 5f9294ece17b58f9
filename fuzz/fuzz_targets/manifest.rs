#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mycel_fuzz::manifest(data));
