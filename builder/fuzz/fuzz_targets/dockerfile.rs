//! The Dockerfile parser on arbitrary text: it must return a Dockerfile or
//! an error naming file:line:column, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match hybrid_builder::dockerfile::parse(text, "Dockerfile") {
        Ok(parsed) => {
            for instruction in &parsed.instructions {
                assert!(instruction.line >= 1 && instruction.column >= 1);
            }
        }
        Err(e) => assert!(e.to_string().starts_with("Dockerfile")),
    }
});
