//! Any text as a blueprint: planning it must give a plan or an error, never a panic, a hang or
//! exhausted memory.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use drover_dsl::{Options, plan_str};
use libfuzzer_sys::fuzz_target;

/// An empty directory for relative imports to resolve against (and fail in), made once.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("drover-fuzz-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = plan_str(&text, base_dir(), &Options::default());
});
