//! A run directory: everything needed to evaluate, sample from, or resume a model.
//!
//! ```text
//! DIR/config.json            model, training and data settings (written once)
//! DIR/checkpoint/            the last good checkpoint, replaced as a whole:
//!     model.safetensors      weights
//!     optimizer.bin          Adam's moments
//!     state.json             step and the metrics so far
//! DIR/metrics.jsonl          one JSON object per logged step / evaluation
//! DIR/samples/step-N.png     sample grids
//! ```
//!
//! A new checkpoint is written into `DIR/.checkpoint-new`, then swapped in by two renames, so
//! a crash at any moment leaves a complete checkpoint (the new or the previous one).

use std::fs;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{self, Splits};
use crate::error::{FlowError, Result};
use crate::models::{Model, ModelConfig};
use crate::weights::{self, write_atomic};

use super::TrainConfig;

/// `config.json`: how the model was built and trained, and on what.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Data-set name as given to [`crate::data::load`].
    pub data: String,
    /// Folder of file-based data sets.
    pub data_dir: Option<PathBuf>,
    /// Training points of a generated 2-D set.
    #[serde(default)]
    pub data_samples: usize,
    /// `(width, height)` images of a folder were resized to.
    #[serde(default)]
    pub data_resize: Option<(u32, u32)>,
    /// Class names of the training data (for labels on the command line).
    pub class_names: Vec<String>,
}

impl RunConfig {
    /// The data the run was trained on, loaded and split as it was then.
    pub fn load_data(&self) -> Result<Splits> {
        data::load_resized(
            &self.data,
            self.data_dir.as_deref(),
            self.train.seed,
            self.data_samples.max(1),
            self.data_resize,
        )
    }
}

/// `state.json`: where training stopped.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// Last test bits/dim, if evaluated.
    pub test_bits_per_dim: Option<f64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlowError + '_ {
    move |source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| FlowError::Training(format!("{}: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    write_atomic(path, text.as_bytes())
}

/// Paths inside a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }

    fn staging(&self) -> PathBuf {
        self.root.join(".checkpoint-new")
    }

    fn previous(&self) -> PathBuf {
        self.root.join(".checkpoint-old")
    }

    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint().join("state.json").exists() || self.previous().join("state.json").exists()
    }

    pub fn write_config(&self, config: &RunConfig) -> Result<()> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        write_json(&self.config(), config)
    }

    pub fn read_config(&self) -> Result<RunConfig> {
        let path = self.config();
        if !path.exists() {
            return Err(FlowError::Training(format!(
                "{} is not a revflow run: no config.json (train one with `revflow train --out {}`)",
                self.root.display(),
                self.root.display()
            )));
        }
        let config: RunConfig = read_json(&path)?;
        config
            .validate()
            .map_err(|e| FlowError::Training(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Writes a complete checkpoint, then swaps it in.
    pub fn save(
        &self,
        model: &Model,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
    ) -> Result<()> {
        let staging = self.staging();
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        fs::create_dir_all(&staging).map_err(io(&staging))?;
        weights::save(model, &staging.join("model.safetensors"))?;
        let bytes = optimizer
            .into_bytes()
            .map_err(|e| FlowError::Training(format!("could not serialise the optimizer: {e}")))?;
        write_atomic(&staging.join("optimizer.bin"), &bytes)?;
        write_json(&staging.join("state.json"), state)?;
        let (current, previous) = (self.checkpoint(), self.previous());
        if previous.exists() {
            fs::remove_dir_all(&previous).map_err(io(&previous))?;
        }
        if current.exists() {
            fs::rename(&current, &previous).map_err(io(&current))?;
        }
        fs::rename(&staging, &current).map_err(io(&current))?;
        if previous.exists() {
            fs::remove_dir_all(&previous).map_err(io(&previous))?;
        }
        Ok(())
    }

    /// The checkpoint to read: the current one, or the previous one if a crash interrupted
    /// the swap.
    fn readable(&self) -> Result<PathBuf> {
        [self.checkpoint(), self.previous()]
            .into_iter()
            .find(|p| p.join("state.json").exists())
            .ok_or_else(|| {
                FlowError::Training(format!(
                    "{} has no checkpoint yet (checkpoint/state.json is missing)",
                    self.root.display()
                ))
            })
    }

    /// Loads the model of the last checkpoint onto `device`.
    pub fn load_model(&self, config: &RunConfig, device: &Device) -> Result<Model> {
        let path = self.readable()?.join("model.safetensors");
        weights::load(config.model.init(device)?, &path)
    }

    pub fn load_state(&self) -> Result<TrainState> {
        read_json(&self.readable()?.join("state.json"))
    }

    /// Adam's state for `model` (as prepared for training), checked against it first.
    pub fn load_optimizer(
        &self,
        optimizer: ModuleOptimizer,
        model: &Model,
    ) -> Result<ModuleOptimizer> {
        let path = self.readable()?.join("optimizer.bin");
        let bytes = fs::read(&path).map_err(io(&path))?;
        super::validation::check_optimizer(&bytes, model).map_err(|problem| {
            FlowError::Training(format!(
                "{}: not the optimizer state of this run's model: {problem}; is it corrupt, or copied from another run?",
                path.display()
            ))
        })?;
        optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| {
                FlowError::Training(format!(
                    "{}: not a revflow optimizer state ({e})",
                    path.display()
                ))
            })
    }
}
