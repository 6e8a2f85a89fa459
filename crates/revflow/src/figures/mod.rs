//! The pictures of how flows work, each computed from real models (`revflow figures`):
//!
//! 1. [`Figure::ChangeOfVariables`]: a 1-D density and its image under a linear and a
//!    non-linear map, with the integrals and a histogram of transformed samples.
//! 2. [`Figure::LogDet`]: the same 2-D flow trained with and without the log-determinant;
//!    without it every point collapses onto the mode.
//! 3. [`Figure::Gallery`]: 2-D flows on every generated set: data, latents, the deformed
//!    grid and the learned density.
//! 4. [`Figure::Coupling`]: an animation of a trained 2-D flow, layer by layer, forward and
//!    back.
//! 5. [`Figure::Latents`]: an image model's samples over temperatures, reconstructions from
//!    the top level alone versus every level, interpolations and class manipulation.
//!
//! Each returns the files it wrote and the numbers behind its pictures, which the tests check.

mod change_of_variables;
mod coupling;
pub(crate) mod gallery;
mod image_latents;
pub mod live;
mod logdet;

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};

use crate::data::{Data, Splits, VectorSet};
use crate::error::{FlowError, Result};
use crate::models::{FlatFlow, Model, ModelConfig, VectorFlowConfig};
use crate::training::{Run, RunConfig, RunDir, TrainConfig};

/// One of the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    ChangeOfVariables,
    LogDet,
    Gallery,
    Coupling,
    Latents,
}

impl Figure {
    pub const ALL: [Figure; 5] = [
        Figure::ChangeOfVariables,
        Figure::LogDet,
        Figure::Gallery,
        Figure::Coupling,
        Figure::Latents,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Figure::ChangeOfVariables => "change-of-variables",
            Figure::LogDet => "logdet",
            Figure::Gallery => "gallery",
            Figure::Coupling => "coupling",
            Figure::Latents => "latents",
        }
    }

    /// One line on what the figure shows.
    pub fn describe(self) -> &'static str {
        match self {
            Figure::ChangeOfVariables => {
                "1-D change of variables: p_X and the density of h = x/10 and h = tanh(x/2)"
            }
            Figure::LogDet => {
                "why the log-determinant is needed: training with and without it (collapse)"
            }
            Figure::Gallery => {
                "2-D flows on every generated set: data, latents, deformed grid, density"
            }
            Figure::Coupling => "animated coupling layers of a trained 2-D flow, forward and back",
            Figure::Latents => {
                "image latents: temperatures, top level vs all levels, interpolation, manipulation"
            }
        }
    }

    pub fn from_name(name: &str) -> Result<Figure> {
        Figure::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Figure::ALL.iter().map(|f| f.name()).collect();
                FlowError::Config(format!(
                    "unknown figure {name:?}; the figures are {}",
                    names.join(", ")
                ))
            })
    }
}

/// Settings shared by the figures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder the pictures go to (and `runs/`, the models trained for them).
    pub out: PathBuf,
    /// Training steps of each 2-D flow.
    pub steps: usize,
    /// Training steps of the image model, when no `run` is given.
    pub image_steps: usize,
    /// A trained image model (a run folder) for the latent figures; without one, a Glow is
    /// trained on the embedded digits.
    pub run: Option<PathBuf>,
    pub seed: u64,
    /// Where the models train and run (the CPU by default; see [`crate::device`]).
    pub device: Device,
}

impl Options {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            steps: 2000,
            image_steps: 1500,
            run: None,
            seed: 0,
            device: Device::flex(),
        }
    }
}

/// What a figure wrote, and the numbers its pictures show.
#[derive(Debug, Default, Clone)]
pub struct Made {
    pub files: Vec<PathBuf>,
    pub numbers: Vec<(String, f64)>,
}

impl Made {
    fn number(&mut self, name: impl Into<String>, value: f64) {
        self.numbers.push((name.into(), value));
    }

    /// The number called `name`.
    ///
    /// # Panics
    /// When the figure has no such number (a programming error).
    pub fn get(&self, name: &str) -> f64 {
        self.numbers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no number {name} in {:?}", self.numbers))
            .1
    }
}

/// Computes and draws `figure` into `options.out`; `progress` hears what is going on.
pub fn make(figure: Figure, options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    std::fs::create_dir_all(&options.out).map_err(|source| FlowError::Io {
        path: options.out.clone(),
        source,
    })?;
    match figure {
        Figure::ChangeOfVariables => change_of_variables::make(options),
        Figure::LogDet => logdet::make(options, progress),
        Figure::Gallery => gallery::make(options, progress),
        Figure::Coupling => coupling::make(options, progress),
        Figure::Latents => image_latents::make(options, progress),
    }
}

/// A 2-D flow trained on a generated set, with its data.
struct Toy {
    model: FlatFlow,
    data: Splits,
    test_bits_per_dim: f64,
}

/// Training points of each generated set.
const TOY_SAMPLES: usize = 8000;

/// The 2-D flow of `set`: loaded from `OUT/runs/SET` when a finished run with the same
/// settings is there, trained into it otherwise (so the figures can be redrawn quickly, and
/// the runs used with `revflow sample` and friends).
fn trained_toy(set: &str, options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Toy> {
    trained_flow(set, set, VectorFlowConfig::default(), options, progress)
}

/// [`trained_toy`] with the neural spline flow beside it, kept in `OUT/runs/SET-spline`.
fn trained_spline(set: &str, options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Toy> {
    let name = format!("{set}-spline");
    let flow = VectorFlowConfig::neural_spline();
    trained_flow(set, &name, flow, options, progress)
}

/// [`trained_toy`] with another flow, kept in `OUT/runs/NAME`.
fn trained_flow(
    set: &str,
    name: &str,
    flow: VectorFlowConfig,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Toy> {
    let config = RunConfig {
        model: ModelConfig::Vector(VectorFlowConfig {
            seed: options.seed,
            ..flow
        }),
        train: TrainConfig {
            steps: options.steps,
            batch_size: 256,
            lr: 2e-3,
            eval_every: options.steps,
            checkpoint_every: options.steps,
            seed: options.seed,
            ..TrainConfig::default()
        },
        data: set.to_string(),
        data_dir: None,
        data_samples: TOY_SAMPLES,
        data_resize: None,
        class_names: Vec::new(),
    };
    let data = config.load_data()?;
    let dir = RunDir::new(&options.out.join("runs").join(name));
    let (model, test_bits_per_dim) = trained(&config, &data, &dir, set, &options.device, progress)?;
    let Model::Flat(model) = model else {
        unreachable!("a vector config builds a flat flow")
    };
    Ok(Toy {
        model,
        data,
        test_bits_per_dim,
    })
}

/// The model of `config` and its test bits/dim: from `dir` when a finished run with the same
/// settings is there, otherwise trained into it. `label` names it in the progress lines.
fn trained(
    config: &RunConfig,
    data: &Splits,
    dir: &RunDir,
    label: &str,
    device: &Device,
    progress: &mut dyn FnMut(&str),
) -> Result<(Model, f64)> {
    let steps = config.train.steps;
    let finished = dir.read_config().ok().as_ref() == Some(config)
        && dir.load_state().is_ok_and(|s| s.step == steps);
    let test_bits_per_dim = if finished {
        progress(&format!(
            "{label}: using the {} model trained in {}",
            config.model.name(),
            dir.root.display()
        ));
        dir.load_state()?.test_bits_per_dim.unwrap_or(f64::NAN)
    } else {
        progress(&format!(
            "{label}: training a {} model for {steps} steps into {}",
            config.model.name(),
            dir.root.display()
        ));
        let _ = std::fs::remove_dir_all(&dir.root);
        let run = Run {
            config: config.clone(),
            data,
            dir: RunDir::new(&dir.root),
            draw_samples: None,
            stop: None,
            group: None,
            device: device.clone(),
        };
        run.train(false, &mut |_| {})?.test.bits_per_dim
    };
    Ok((dir.load_model(config, device)?, test_bits_per_dim))
}

/// The values of a 2-D set as points (none for images).
pub fn points(data: &Data) -> Vec<[f64; 2]> {
    match data {
        Data::Vectors(VectorSet { values, .. }) => values
            .chunks_exact(2)
            .map(|p| [p[0] as f64, p[1] as f64])
            .collect(),
        Data::Images(_) => Vec::new(),
    }
}

/// Points as an `(N, 2)` tensor.
fn tensor(points: &[[f64; 2]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = points
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    Tensor::<1>::from_floats(flat.as_slice(), device).reshape([points.len(), 2])
}

/// An `(N, 2)` tensor as points.
fn to_points(t: Tensor<2>) -> Vec<[f64; 2]> {
    let values = t.into_data().try_to_vec_as::<f32>().expect("f32 values");
    values
        .chunks_exact(2)
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect()
}

fn file(options: &Options, name: &str) -> PathBuf {
    options.out.join(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A temporary output folder (removed when the guard drops) and quick options.
    pub(crate) fn options(test: &str) -> (TempDir, Options) {
        let path =
            std::env::temp_dir().join(format!("revflow-figures-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let mut options = Options::new(&path);
        options.steps = 300;
        options.image_steps = 60;
        (TempDir(path), options)
    }

    pub(crate) struct TempDir(pub PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn figure_names_round_trip_and_unknown_names_are_listed() {
        for f in Figure::ALL {
            assert_eq!(Figure::from_name(f.name()).unwrap(), f);
        }
        let err = Figure::from_name("spirals").unwrap_err().to_string();
        assert!(
            err.contains("gallery") && err.contains("\"spirals\""),
            "{err}"
        );
    }
}
