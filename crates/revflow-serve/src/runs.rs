//! The runs of the served folder: names checked before they touch the file system, each run
//! loaded once (weights, data) and shared by every request, with what requests reuse
//! (the test set's scores, class mean latents) computed once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use revflow::burn::tensor::{Device, Tensor};
use revflow::trained::{DensityMap, TrainedRun};
use revflow::training::RunDir;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};

/// Training inputs per class averaged into a class's mean latent.
pub const PER_CLASS: usize = 200;

/// One loaded run and what its requests share.
pub struct Explored {
    pub run: TrainedRun,
    /// Every test input's bits/dim, for the histogram.
    pub test_scores: OnceLock<Vec<f64>>,
    /// Mean latents by class.
    class_means: Mutex<HashMap<usize, Arc<Vec<Tensor<2>>>>>,
    /// The density picture of a 2-D run (`None` inside for other runs).
    pub density: OnceLock<Option<DensityMap>>,
}

impl Explored {
    /// The mean latent of `class`, computed on first use.
    pub fn class_mean(&self, class: usize) -> ApiResult<Arc<Vec<Tensor<2>>>> {
        if let Some(mean) = self.class_means.lock().expect("not poisoned").get(&class) {
            return Ok(mean.clone());
        }
        let mean = Arc::new(self.run.class_mean(class, PER_CLASS)?);
        let mut means = self.class_means.lock().expect("not poisoned");
        Ok(means.entry(class).or_insert(mean).clone())
    }
}

/// What the page lists of a run, from its config alone.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub name: String,
    pub model: String,
    /// "image" or "vector".
    pub kind: &'static str,
    pub shape: Option<[usize; 3]>,
    pub dims: usize,
    pub classes: Vec<String>,
    pub context: Option<Vec<String>>,
    pub data: String,
}

/// The folder of runs.
pub struct Runs {
    root: PathBuf,
    device: Device,
    loaded: Mutex<HashMap<String, Arc<Explored>>>,
}

impl Runs {
    pub fn new(root: &Path, device: Device) -> Runs {
        Runs {
            root: root.to_path_buf(),
            device,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of the run `name`: a plain name of a folder directly in the root that
    /// holds a run (no `..`, no separators, no hidden names, no link out of the folder).
    pub fn dir(&self, name: &str) -> ApiResult<PathBuf> {
        let plain = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
        if !plain {
            return Err(ApiError::bad_request(format!(
                "{name:?} is not a run name: letters, digits and . _ - + only, not starting with ."
            )));
        }
        let dir = self.root.join(name);
        let unknown = || ApiError::not_found(format!("no run {name:?} in {}", self.root.display()));
        let (real, root) = match (dir.canonicalize(), self.root.canonicalize()) {
            (Ok(real), Ok(root)) => (real, root),
            _ => return Err(unknown()),
        };
        if real.parent() != Some(root.as_path()) || !real.join("config.json").is_file() {
            return Err(unknown());
        }
        Ok(dir)
    }

    /// Every run in the folder, by name.
    pub fn list(&self) -> ApiResult<Vec<RunInfo>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", self.root.display()),
            )
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| self.dir(name).is_ok())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let config = RunDir::new(&self.root.join(&name)).read_config().ok()?;
                let m = &config.model;
                Some(RunInfo {
                    model: m.name().to_string(),
                    kind: if m.image_shape().is_some() {
                        "image"
                    } else {
                        "vector"
                    },
                    shape: m.image_shape(),
                    dims: m.dims(),
                    classes: config.class_names.clone(),
                    context: m.context().map(|c| c.columns.clone()),
                    data: config.data.clone(),
                    name,
                })
            })
            .collect())
    }

    /// The run `name`, loaded on first use. Loading happens outside the lock (it takes a
    /// while), so two first requests may both load; the first one kept wins.
    pub fn get(&self, name: &str) -> ApiResult<Arc<Explored>> {
        let dir = self.dir(name)?;
        if let Some(run) = self.loaded.lock().expect("not poisoned").get(name) {
            return Ok(run.clone());
        }
        let run = Arc::new(Explored {
            run: TrainedRun::open(&dir, self.device.clone())?,
            test_scores: OnceLock::new(),
            class_means: Mutex::new(HashMap::new()),
            density: OnceLock::new(),
        });
        let mut loaded = self.loaded.lock().expect("not poisoned");
        Ok(loaded.entry(name.to_string()).or_insert(run).clone())
    }
}
