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
    /// The step of the checkpoint loaded.
    pub step: Option<usize>,
    /// Every test input's bits/dim, for the histogram.
    pub test_scores: OnceLock<Vec<f64>>,
    /// Mean latents by class ("class 3") and attribute directions ("attribute Smiling").
    latents: Mutex<HashMap<String, Arc<Vec<Tensor<2>>>>>,
    /// The density picture of a 2-D run (`None` inside for other runs).
    pub density: OnceLock<Option<DensityMap>>,
}

impl Explored {
    /// The latents named `key`, computed by `compute` on first use.
    fn cached(
        &self,
        key: String,
        compute: impl FnOnce() -> revflow::Result<Vec<Tensor<2>>>,
    ) -> ApiResult<Arc<Vec<Tensor<2>>>> {
        if let Some(found) = self.latents.lock().expect("not poisoned").get(&key) {
            return Ok(found.clone());
        }
        let computed = Arc::new(compute()?);
        let mut latents = self.latents.lock().expect("not poisoned");
        Ok(latents.entry(key).or_insert(computed).clone())
    }

    /// The mean latent of `class` over up to [`PER_CLASS`] training inputs.
    pub fn class_mean(&self, class: usize) -> ApiResult<Arc<Vec<Tensor<2>>>> {
        self.cached(format!("class {class}"), || {
            self.run.class_mean(class, PER_CLASS)
        })
    }

    /// The direction towards `attribute` of the run's `attributes.csv`.
    pub fn attribute_direction(&self, attribute: &str) -> ApiResult<Arc<Vec<Tensor<2>>>> {
        let csv = self.run.dir.root.join(ATTRIBUTES);
        if !csv.is_file() {
            return Err(ApiError::bad_request(format!(
                "attribute {attribute:?}: this run has no {ATTRIBUTES} (a `file` column and one \
                 column per attribute, > 0 meaning present)"
            )));
        }
        self.cached(format!("attribute {attribute}"), || {
            self.run.attribute_direction(&csv, attribute, PER_CLASS)
        })
    }
}

/// A run name is a plain folder name: no separators, no `..`, nothing hidden.
fn check_name(name: &str) -> ApiResult<()> {
    let plain = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && (name.chars()).all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    match plain {
        true => Ok(()),
        false => Err(ApiError::bad_request(format!(
            "{name:?} is not a run name: letters, digits and . _ - + only, not starting with ."
        ))),
    }
}

/// The file of a run's attributes, beside its config: a `file` column (paths relative to
/// it) and one column per attribute (CelebA's `list_attr_celeba` converted to CSV works).
pub const ATTRIBUTES: &str = "attributes.csv";

/// The attribute columns of a run's `attributes.csv` (none without one).
fn attributes(dir: &Path) -> Vec<String> {
    // The header alone: CelebA's file is 25 MB.
    let Ok(file) = std::fs::File::open(dir.join(ATTRIBUTES)) else {
        return Vec::new();
    };
    let mut header = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(file), &mut header);
    (header.split(','))
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.eq_ignore_ascii_case("file"))
        .collect()
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
    /// The data's class names (directions between classes need them).
    pub classes: Vec<String>,
    /// Whether the model is conditioned on the class (samples can be of one class).
    pub conditional: bool,
    /// The columns of the run's `attributes.csv`: directions to manipulate along.
    pub attributes: Vec<String>,
    pub context: Option<Vec<String>>,
    pub data: String,
}

/// The folder of runs.
pub struct Runs {
    root: PathBuf,
    device: Device,
    loaded: Mutex<HashMap<String, Arc<Explored>>>,
    /// Held while a run loads.
    loading: Mutex<()>,
}

impl Runs {
    pub fn new(root: &Path, device: Device) -> Runs {
        Runs {
            root: root.to_path_buf(),
            device,
            loaded: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
        }
    }

    /// The directory of the run `name`: a plain name of a folder directly in the root that
    /// holds a run (no `..`, no separators, no hidden names, no link out of the folder).
    pub fn dir(&self, name: &str) -> ApiResult<PathBuf> {
        check_name(name)?;
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

    /// A new run folder `name` in the root, created now (refused if the name is taken).
    pub fn new_dir(&self, name: &str) -> ApiResult<PathBuf> {
        check_name(name)?;
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("a run {name:?} exists already; choose another name"),
            ),
            _ => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot create {}: {e}", dir.display()),
            ),
        })?;
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
                    conditional: m.classes() > 0,
                    attributes: attributes(&self.root.join(&name)),
                    context: m.context().map(|c| c.columns.clone()),
                    data: config.data.clone(),
                    name,
                })
            })
            .collect())
    }

    /// The run `name`, loaded on first use and again when a newer checkpoint has replaced
    /// the one loaded (a run still training; the library reads checkpoints consistently
    /// while they are swapped). Loading happens outside the lock, since it takes a while.
    pub fn get(&self, name: &str) -> ApiResult<Arc<Explored>> {
        let dir = self.dir(name)?;
        let current = || {
            let step = RunDir::new(&dir).current_step();
            let loaded = self.loaded.lock().expect("not poisoned");
            (
                step,
                loaded.get(name).filter(|run| run.step == step).cloned(),
            )
        };
        if let (_, Some(run)) = current() {
            return Ok(run);
        }
        if !RunDir::new(&dir).has_checkpoint() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("{name} has no checkpoint yet: it is still starting to train"),
            ));
        }
        // One load at a time: the page's first requests of a run arrive together, and each
        // would otherwise load its own copy of the weights and data.
        let _loading = self.loading.lock().expect("not poisoned");
        let step = match current() {
            (_, Some(run)) => return Ok(run),
            // The step read before loading: a checkpoint written meanwhile is loaded again
            // by the next request, never missed.
            (step, None) => step,
        };
        let run = Arc::new(Explored {
            run: TrainedRun::open(&dir, self.device.clone())?,
            step,
            test_scores: OnceLock::new(),
            latents: Mutex::new(HashMap::new()),
            density: OnceLock::new(),
        });
        let mut loaded = self.loaded.lock().expect("not poisoned");
        loaded.insert(name.to_string(), run.clone());
        Ok(run)
    }
}
