//! Parameters on disk as safetensors, named by their path in the module tree
//! (`layers.3.ActNorm.log_scale`), so a PyTorch user can open them. Files are written to a
//! temporary name and renamed, so a crash never leaves a half-written file behind.

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{FlowError, Result};

/// Writes every parameter of `module` (including ActNorm's initialised flag, permutations and
/// running statistics) to `path`, atomically.
pub fn save<M: Module>(module: &M, path: &Path) -> Result<()> {
    let weights_error = |problem: String| FlowError::Weights {
        path: path.to_path_buf(),
        problem,
    };
    let mut store = SafetensorsStore::from_bytes(None);
    module
        .save_into(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| weights_error(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Loads `path` into `module`, which must have exactly the same structure and shapes.
pub fn load<M: Module>(mut module: M, path: &Path) -> Result<M> {
    let weights_error = |problem: String| FlowError::Weights {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .validate(true)
        .allow_partial(false);
    let result = module
        .load_from(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        let first = |v: Vec<String>| v.into_iter().take(3).collect::<Vec<_>>().join(", ");
        return Err(weights_error(format!(
            "does not match the model (errors: [{}]; missing: [{}]; unexpected: [{}])",
            first(result.errors.iter().map(|e| e.to_string()).collect()),
            first(result.missing.into_iter().map(|(p, _)| p).collect()),
            first(result.unused),
        )));
    }
    Ok(module)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
