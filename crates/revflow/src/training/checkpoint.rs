//! A run directory: everything needed to evaluate, sample from, or resume a model.
//!
//! ```text
//! DIR/config.json            model, training and data settings (written once, at the start)
//! DIR/LATEST                 the name of the current checkpoint, replaced atomically
//! DIR/ckpt-000250/           a checkpoint, never changed once in place:
//!     model.safetensors      weights
//!     optimizer.bin          Adam's moments
//!     state.json             step and last test bits/dim
//!     config.json            the run's settings, so the folder stands on its own
//! DIR/metrics.jsonl          one JSON object per logged step / evaluation
//! DIR/samples/step-N.png     sample grids
//! DIR/.lock                  held by the one process training the run (its PID inside)
//! ```
//!
//! Saving writes a new checkpoint into a private temporary folder, flushes it to disk, renames
//! it to `ckpt-N`, then points `LATEST` at it; only then are older checkpoints removed (all but
//! the one before, which a reader may still be loading). So at every moment a complete
//! checkpoint exists: a `ckpt-N` folder is complete by construction, `LATEST` names one, and if
//! `LATEST` is missing or names a removed folder, readers take the newest complete `ckpt-N`.
//! The crash test in `revflow-cli/tests` kills a training after every file operation of this
//! protocol, twice in a row, and checks that resuming continues the same loss curve.

use std::fs;
use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{self, Splits};
use crate::error::{FlowError, Result};
use crate::files::{self, io, write_atomic};
use crate::models::{Model, ModelConfig};
use crate::weights;

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
        let splits = data::load_resized(
            &self.data,
            self.data_dir.as_deref(),
            self.train.seed,
            self.data_samples.max(1),
            self.data_resize,
        )?;
        match self.model.context() {
            Some(context) => splits.with_context(&context.columns),
            None => Ok(splits),
        }
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| FlowError::Training(format!("{}: {e}", path.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &json(value)?)
}

/// A run directory and the paths inside it.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

/// Names of leftovers of interrupted writes inside a run directory, removed under the lock.
const DEBRIS: &[&str] = &[
    ".ckpt-",
    ".trash-",
    ".LATEST.",
    ".config.json.",
    ".metrics.jsonl.",
];

/// The old layout (`checkpoint/`, swapped through `.checkpoint-new` and `.checkpoint-old`),
/// still read so that runs written before the current protocol open.
const LEGACY: [&str; 3] = ["checkpoint", ".checkpoint-old", ".checkpoint-new"];

/// Checkpoint folders are named by their step (zero-padded for people's listings; the code
/// compares the steps).
fn checkpoint_name(step: usize) -> String {
    format!("ckpt-{step:06}")
}

/// The step of a checkpoint folder's name (`None` for any other name).
pub(super) fn checkpoint_step(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("ckpt-")?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())?
}

/// A folder holds a complete checkpoint once `state.json` is in it (written last).
fn complete(dir: &Path) -> bool {
    dir.join("state.json").is_file()
}

/// The lock of a run directory: held while a process trains the run, released when dropped
/// (or when the process ends, however it ends).
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
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

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn samples(&self) -> PathBuf {
        self.root.join("samples")
    }

    fn latest(&self) -> PathBuf {
        self.root.join("LATEST")
    }

    fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Takes the run's lock (creating the folder if needed), so that one process at a time
    /// writes the run, and removes what interrupted writes left behind. A second process gets
    /// one line naming the holder.
    pub fn lock(&self) -> Result<RunLock> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let path = self.lock_file();
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            // Never through a symlink someone planted: it could point at any file.
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW).mode(0o644);
        }
        let mut file = options.open(&path).map_err(io(&path))?;
        #[cfg(unix)]
        {
            // A hard link someone planted would make the PID below overwrite another file.
            use std::os::unix::fs::MetadataExt;
            if file.metadata().map_err(io(&path))?.nlink() != 1 {
                return Err(FlowError::Training(format!(
                    "{} has other hard links; remove it (it is only a lock)",
                    path.display()
                )));
            }
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(FlowError::Training(format!(
                    "{} is being trained by another revflow process{holder}; wait for it to finish or stop it, or choose another --out",
                    self.root.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        use std::io::Write;
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(io(&path))?;
        files::remove_debris(&self.root, DEBRIS);
        files::remove_debris(&self.samples(), &[".step-"]);
        self.prune()?;
        Ok(RunLock { _file: file })
    }

    /// A new run may be written here: the folder is new or empty, or a run that has no
    /// checkpoint yet (a training that stopped before its first one). Never an ordinary folder,
    /// whose files would be overwritten.
    pub fn check_fresh(&self) -> Result<()> {
        if self.has_checkpoint() {
            return Err(FlowError::Config(format!(
                "{} already holds a run; continue it with --resume --out {0}, or choose another --out",
                self.root.display()
            )));
        }
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock" && !DEBRIS.iter().any(|d| n.starts_with(d)))
            .collect();
        // Only a config.json that reads as a run's marks a run: the name is common.
        if names.is_empty() || self.read_config().is_ok() {
            return Ok(());
        }
        Err(FlowError::Config(format!(
            "{} is a folder that is not a revflow run (it holds {}); choose a new or empty folder for --out",
            self.root.display(),
            names.first().map(String::as_str).unwrap_or_default()
        )))
    }

    pub fn has_checkpoint(&self) -> bool {
        self.current_checkpoint().is_ok()
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

    /// The folder of the current checkpoint: the one `LATEST` names, or the newest complete
    /// one if `LATEST` is missing or names a folder that was removed.
    pub fn current_checkpoint(&self) -> Result<PathBuf> {
        let named = fs::read_to_string(self.latest())
            .ok()
            .filter(|name| checkpoint_step(name.trim()).is_some())
            .map(|name| self.root.join(name.trim()))
            .filter(|dir| complete(dir));
        let newest = || {
            let entries = fs::read_dir(&self.root).ok()?;
            let step = entries
                .flatten()
                .filter_map(|e| checkpoint_step(&e.file_name().to_string_lossy()))
                .filter(|&step| complete(&self.root.join(checkpoint_name(step))))
                .max()?;
            Some(self.root.join(checkpoint_name(step)))
        };
        let legacy = || {
            LEGACY
                .iter()
                .map(|name| self.root.join(name))
                .find(|dir| complete(dir))
        };
        named.or_else(newest).or_else(legacy).ok_or_else(|| {
            FlowError::Training(format!(
                "{} has no checkpoint yet (no complete ckpt-N folder)",
                self.root.display()
            ))
        })
    }

    /// Reads from the current checkpoint. A reader may lose a race with a training that
    /// removes an old checkpoint while it is being read: then the read is tried again on the
    /// one that replaced it.
    fn read<T>(&self, read: impl Fn(&Path) -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            let dir = self.current_checkpoint()?;
            match read(&dir) {
                Err(FlowError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && tries < 5 =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Writes a complete checkpoint and makes it the current one (see the module docs). The
    /// caller holds the run's lock.
    pub fn save(
        &self,
        model: &Model,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        config: &RunConfig,
    ) -> Result<()> {
        let name = checkpoint_name(state.step);
        let staging = files::temp_dir_in(&self.root, ".ckpt-")?;
        let path = staging.path().join("model.safetensors");
        files::write_new(&path, &weights::to_bytes(model, &path)?)?;
        let bytes = optimizer
            .into_bytes()
            .map_err(|e| FlowError::Training(format!("could not serialise the optimizer: {e}")))?;
        files::write_new(&staging.path().join("optimizer.bin"), &bytes)?;
        files::write_new(&staging.path().join("config.json"), &json(config)?)?;
        files::write_new(&staging.path().join("state.json"), &json(state)?)?;
        files::sync_dir(staging.path())?;

        let current = self.current_checkpoint().ok();
        let target = self.root.join(&name);
        if target.exists() {
            // Left by a crash between its rename and the pointer's update; the run went back
            // to an earlier checkpoint since, so it is not the current one.
            if current.as_deref() == Some(target.as_path()) {
                return Err(FlowError::Training(format!(
                    "{} is the current checkpoint and cannot be replaced",
                    target.display()
                )));
            }
            self.remove(&name)?;
        }
        files::rename_durable(&staging.keep(), &target)?;
        write_atomic(&self.latest(), name.as_bytes())?;
        self.prune()
    }

    /// Removes every checkpoint folder but the current one and the newest before it (which a
    /// reader that resolved `LATEST` just before it changed may still be loading), and the old
    /// layout's. Only the lock's holder calls it.
    fn prune(&self) -> Result<()> {
        let Ok(current) = self.current_checkpoint() else {
            return Ok(());
        };
        let Some(step) = current
            .file_name()
            .and_then(|n| checkpoint_step(&n.to_string_lossy()))
        else {
            return Ok(()); // a run in the old layout: kept until it has a new checkpoint
        };
        let names: Vec<String> = fs::read_dir(&self.root)
            .map_err(io(&self.root))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let previous = names
            .iter()
            .filter_map(|n| checkpoint_step(n))
            .filter(|&s| s < step && complete(&self.root.join(checkpoint_name(s))))
            .max();
        let keep = [Some(step), previous].map(|s| s.map(checkpoint_name));
        for name in names {
            let old = checkpoint_step(&name).is_some() || LEGACY.contains(&name.as_str());
            if old && !keep.contains(&Some(name.clone())) {
                self.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Removes a checkpoint folder that is not the current one: renamed out of the way first,
    /// so that no half-removed folder ever carries a checkpoint's name.
    fn remove(&self, name: &str) -> Result<()> {
        let trash = self
            .root
            .join(format!(".trash-{name}-{}", std::process::id()));
        files::rename_durable(&self.root.join(name), &trash)?;
        fs::remove_dir_all(&trash).map_err(io(&trash))?;
        files::fault_point().map_err(io(&trash))
    }

    /// Loads the model of the current checkpoint onto `device`.
    pub fn load_model(&self, config: &RunConfig, device: &Device) -> Result<Model> {
        self.read(|dir| weights::load(config.model.init(device)?, &dir.join("model.safetensors")))
    }

    pub fn load_state(&self) -> Result<TrainState> {
        self.read(|dir| read_json(&dir.join("state.json")))
    }

    /// Adam's state for `model` (as prepared for training), checked against it first.
    pub fn load_optimizer(
        &self,
        optimizer: ModuleOptimizer,
        model: &Model,
    ) -> Result<ModuleOptimizer> {
        let bytes = self.read(|dir| {
            let path = dir.join("optimizer.bin");
            let bytes = fs::read(&path).map_err(io(&path))?;
            super::validation::check_optimizer(&bytes, model).map_err(|problem| {
                FlowError::Training(format!(
                    "{}: not the optimizer state of this run's model: {problem}; is it corrupt, or copied from another run?",
                    path.display()
                ))
            })?;
            Ok(bytes)
        })?;
        optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| {
                FlowError::Training(format!(
                    "{}: not a revflow optimizer state ({e})",
                    self.root.display()
                ))
            })
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| FlowError::Training(format!("could not serialise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str) -> RunDir {
        let root = std::env::temp_dir().join(format!("revflow-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        RunDir::new(&root)
    }

    fn checkpoint(dir: &RunDir, name: &str) {
        fs::create_dir_all(dir.root.join(name)).unwrap();
        fs::write(dir.root.join(name).join("state.json"), "{}").unwrap();
    }

    #[test]
    fn the_current_checkpoint_is_the_named_one_else_the_newest_complete_one() {
        let dir = run("resolve");
        assert!(dir.current_checkpoint().is_err());
        // The old layout still opens.
        checkpoint(&dir, ".checkpoint-old");
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join(".checkpoint-old")
        );
        checkpoint(&dir, "checkpoint");
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join("checkpoint")
        );
        // Without LATEST: the newest complete ckpt-N (an incomplete one, or any other name, is
        // no checkpoint).
        checkpoint(&dir, "ckpt-000002");
        checkpoint(&dir, "ckpt-000010");
        checkpoint(&dir, "ckpt-x0011");
        fs::create_dir_all(dir.root.join("ckpt-000012")).unwrap();
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join("ckpt-000010")
        );
        // Steps are compared as numbers, not names.
        checkpoint(&dir, "ckpt-1000000");
        checkpoint(&dir, "ckpt-999999");
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join("ckpt-1000000")
        );
        for name in ["ckpt-1000000", "ckpt-999999"] {
            fs::remove_dir_all(dir.root.join(name)).unwrap();
        }
        // LATEST wins over a newer folder, and is ignored when it names a removed one or a
        // path outside the run.
        fs::write(dir.latest(), "ckpt-000002").unwrap();
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join("ckpt-000002")
        );
        for bad in ["ckpt-000004", "../ckpt-000002", "/etc"] {
            fs::write(dir.latest(), bad).unwrap();
            assert_eq!(
                dir.current_checkpoint().unwrap(),
                dir.root.join("ckpt-000010")
            );
        }
        // Pruning under the lock keeps the current one and the one before, drops the rest (the
        // old layout, newer and incomplete folders).
        fs::write(dir.latest(), "ckpt-000010").unwrap();
        checkpoint(&dir, "ckpt-000020");
        let lock = dir.lock().unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".lock",
                "LATEST",
                "ckpt-000002",
                "ckpt-000010",
                "ckpt-x0011"
            ]
        );
        // A second holder is refused, naming the first.
        let err = dir.lock().unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "another revflow process (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(lock);
        dir.lock().unwrap();
        // A lock file hard-linked to another file is refused, the other file untouched.
        #[cfg(unix)]
        {
            let victim = dir.root.join("victim");
            fs::write(&victim, "precious").unwrap();
            fs::remove_file(dir.lock_file()).unwrap();
            fs::hard_link(&victim, dir.lock_file()).unwrap();
            let err = dir.lock().unwrap_err().to_string();
            assert!(err.contains("other hard links"), "{err}");
            assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        }
        fs::remove_dir_all(&dir.root).unwrap();
    }
}
