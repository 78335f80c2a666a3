//! Any text as a YAML document (an inputs file, a `K=V` value): JSON or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_dsl::yaml_to_json(&String::from_utf8_lossy(data));
});
