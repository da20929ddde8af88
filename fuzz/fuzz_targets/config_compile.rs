//! YAML load + compile on arbitrary input: loading and compiling never panic, whatever the
//! bytes; a config either compiles or yields errors that each name a file and line.
#![no_main]

use egressd::config::{self, Bootstrap};
use egressd::routing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut loaded = config::Loaded::default();
    config::load_str("fuzz.yaml".into(), text, "default", &mut loaded);
    match routing::compile(&loaded, &Bootstrap::default()) {
        Ok(snapshot) => {
            // What /config_dump serves must always render.
            serde_json::to_vec(&snapshot).expect("snapshot serializes");
        }
        Err(e) => {
            for d in e.errors() {
                assert!(d.file.is_some(), "an error without a file: {d}");
            }
        }
    }
});
