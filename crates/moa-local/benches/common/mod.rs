//! What the local benches share: finding (or fetching) the SmolLM2 model.

use std::path::PathBuf;

use moa_local::catalog::{self, Status};

/// SmolLM2's path in MOA_MODELS_DIR or the user cache. A full run (`--bench`) fetches it when
/// missing; a smoke run (`cargo test --benches`) without it says so and gets `None`.
pub fn smollm2(full: bool) -> Result<Option<PathBuf>, Box<dyn std::error::Error>> {
    let dir =
        std::env::var_os("MOA_MODELS_DIR").map_or_else(catalog::default_models_dir, Into::into);
    let known = catalog::known("smollm2").ok_or("smollm2 is not in the catalogue")?;
    if catalog::status(&dir, known) != Status::Ready {
        if !full {
            eprintln!("smollm2 is not downloaded; skipping the smoke run");
            return Ok(None);
        }
        moa_local::fetch::pull(&dir, known, true)?;
    }
    Ok(Some(catalog::path_in(&dir, known)))
}
