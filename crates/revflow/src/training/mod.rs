//! Maximum-likelihood training: Adam with linear warm-up and gradient-norm clipping,
//! data-dependent initialisation on the first batch, periodic test evaluation, sample grids,
//! JSONL metrics, and checkpoints from which an interrupted run resumes exactly.
//!
//! Every source of randomness (batch order, dequantisation noise, sampling) is keyed by the
//! run's seed and the step number (noise is drawn on the host, see [`crate::noise`]), so a
//! resumed run follows the loss curve it would have had, on any device.

mod batches;
mod checkpoint;
mod evaluate;
mod follow;
#[cfg(test)]
mod tests;
mod validation;

pub use batches::{batch_indices, one_hot, rows};
pub use checkpoint::{RunConfig, RunDir, TrainState};
pub use evaluate::{evaluate, per_pixel_baseline, Evaluation};
pub use follow::{MetricsTail, NewMetrics};
pub use validation::{check_resume, RESUMABLE};

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{Data, Splits};
use crate::error::{FlowError, Result};
use crate::models::{Model, ModelConfig};
use crate::noise::{self, Purpose};
use crate::parallel::{self, Group, Single};
use batches::mix;

/// Optimisation settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps in total.
    pub steps: usize,
    pub batch_size: usize,
    /// Adam's learning rate after warm-up (Glow: 1e-3).
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup: usize,
    /// Largest L2 norm of each parameter's gradient; larger ones are scaled down (burn clips
    /// every parameter tensor on its own, not the global norm).
    pub grad_clip: f64,
    /// L2 penalty added to every gradient (0: none); regularises small data sets.
    pub weight_decay: f64,
    /// Evaluate on the test split and draw samples every this many steps (and at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Samples used for data-dependent initialisation.
    pub init_samples: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 64,
            lr: 1e-3,
            warmup: 100,
            grad_clip: 50.0,
            weight_decay: 0.0,
            eval_every: 500,
            checkpoint_every: 250,
            init_samples: 256,
            seed: 0,
        }
    }
}

/// What training reports as it goes; the command line turns these into a progress bar.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        step: usize,
        steps: usize,
        resumed: bool,
    },
    Step {
        step: usize,
        loss: f64,
        bits_per_dim: f64,
        lr: f64,
    },
    Evaluated {
        step: usize,
        test: Evaluation,
    },
    Checkpoint {
        step: usize,
    },
}

/// The settings `revflow train` uses for a data set where the general defaults do badly.
///
/// Glow on the 8×8 digits (1497 training images) overfits within a few hundred steps, and
/// their 17 grey levels fill only every other bin of a 5-bit grid. Unless `n_bits` says
/// otherwise, it keeps 4 bits (levels 8 and 9 share a bin; the baseline is scored on the same
/// grid) and uses weight decay 1e-2 for 3000 steps. Measured in the README. Other data and
/// models keep `model` and `base`.
pub fn recipe(
    data: &str,
    model: ModelConfig,
    base: TrainConfig,
    n_bits: Option<u32>,
) -> (ModelConfig, TrainConfig) {
    match model {
        ModelConfig::Glow(glow) if data == "digits" => (
            ModelConfig::Glow(crate::models::GlowConfig {
                n_bits: n_bits.unwrap_or(4),
                ..glow
            }),
            TrainConfig {
                steps: 3000,
                weight_decay: 1e-2,
                ..base
            },
        ),
        other => (other, base),
    }
}

/// Where training ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: usize,
    pub test: Evaluation,
    pub seconds: f64,
}

/// Draws a sample grid of the inference model at a step (images only); supplied by the
/// caller so the library does not decide how pictures look or where they go.
pub type SampleHook<'a> = &'a dyn Fn(&Model, usize) -> Result<()>;

/// Inputs to one training run.
pub struct Run<'a> {
    pub config: RunConfig,
    pub data: &'a Splits,
    pub dir: RunDir,
    pub draw_samples: Option<SampleHook<'a>>,
    /// Set (by a signal handler, a server's cancel button) to stop after the current step:
    /// training then saves a checkpoint and returns [`FlowError::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// The ranks sharing this run (data parallelism, see [`crate::parallel`]); `None`: one
    /// process. Rank 0 alone writes the run's files and draws samples.
    pub group: Option<&'a dyn Group>,
    /// Where the model trains and is evaluated (see [`crate::device`]); training uses its
    /// autodiff form. Checkpoints do not depend on it.
    pub device: Device,
}

impl Run<'_> {
    fn dims(&self) -> usize {
        self.config.model.dims()
    }

    fn classes(&self) -> usize {
        self.config.model.classes()
    }

    fn group(&self) -> &dyn Group {
        self.group.unwrap_or(&Single)
    }

    /// Rank 0 (or the only process): the one that writes files.
    fn leads(&self) -> bool {
        self.group().rank() == 0
    }

    /// Starts a new run (`resume = false`) or continues the one in `dir`.
    pub fn train(&self, resume: bool, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        let started = Instant::now();
        let device = self.device.clone().autodiff();
        let tc = &self.config.train;
        let (group, lead) = (self.group(), self.leads());
        self.config.validate()?;
        check_parallel(&self.config, group.size())?;
        check_data(&self.config.model, &self.data.train, "training")?;
        check_data(&self.config.model, &self.data.test, "test")?;
        crate::limits::check_training(&self.config.model, tc.batch_size)?;
        let mut optimizer = AdamConfig::new()
            .with_grad_clipping(Some(GradientClippingConfig::Norm(tc.grad_clip as f32)))
            .with_weight_decay(
                (tc.weight_decay > 0.0).then(|| WeightDecayConfig::new(tc.weight_decay as f32)),
            )
            .init();
        // Checked before the lock too, so that a folder that is no run is left untouched.
        match resume {
            true => self.dir.read_config().map(drop)?,
            false if lead => self.dir.check_fresh()?,
            false => {}
        }
        let _lock = match lead {
            true => Some(self.dir.lock()?),
            false => None,
        };
        let (model, start) = if resume {
            let state = check_resume(&self.dir, &self.config)?;
            let model = for_training(self.dir.load_model(&self.config, &device)?);
            optimizer = self.dir.load_optimizer(optimizer, &model)?;
            (model, state.step)
        } else {
            if lead {
                self.dir.check_fresh()?;
                self.dir.write_config(&self.config)?;
                let _ = std::fs::remove_file(self.dir.metrics());
            }
            // Every rank initialises on the whole first batch; rank 0's result is then
            // broadcast, so that all start from the same parameters whatever their CPUs.
            device.seed(tc.seed);
            let model = self.config.model.init(&device)?;
            let n = self.data.train.len().min(tc.init_samples.max(2));
            let idx = batch_indices(self.data.train.len(), n, 0, mix(tc.seed, 1));
            let (x, y) = rows(&self.data.train, &idx, self.classes(), &device);
            let u = self.noise(Purpose::Init, 0..idx.len(), 0, &device);
            (for_training(model.data_init(x, y.as_ref(), u.as_ref())?), 0)
        };
        let mut model = parallel::broadcast_parameters(model, group)?;
        let mut metrics = match lead {
            true => Some(Metrics::open(&self.dir, start)?),
            false => None,
        };
        if let Some(metrics) = &mut metrics {
            // Where this stretch of training ran (a run may be resumed elsewhere).
            metrics.write(&serde_json::json!({
                "step": start, "started": if resume { "resumed" } else { "new" },
                "device": crate::device::describe(&self.device), "ranks": group.size(),
            }))?;
        }
        on_event(Event::Started {
            step: start,
            steps: tc.steps,
            resumed: resume,
        });

        let mut last_test = None;
        for step in start..tc.steps {
            // This rank's shard of the global batch; noise keyed by global position.
            let all = batch_indices(self.data.train.len(), tc.batch_size, step, tc.seed);
            let part = parallel::shard(all.len(), group);
            let idx = &all[part.clone()];
            let (x, y) = rows(&self.data.train, idx, self.classes(), &device);
            let u = self.noise(Purpose::Train, part.clone(), step as u64, &device);
            let (log_p, logits) = model.log_prob(x, y.as_ref(), u.as_ref())?;
            // Sums over the shard divided by the global batch size: the ranks' losses add up
            // to the batch's mean, and so do their gradients.
            let share = |t: Tensor<1>| t.sum() / tc.batch_size as f64;
            let bpd = share(log_p.neg()) / (self.dims() as f64 * std::f64::consts::LN_2);
            let loss = match (logits, &y, &self.config.model) {
                (Some(logits), Some(y), ModelConfig::Glow(g)) => {
                    let ce = (log_softmax(logits, 1) * y.clone()).sum_dim(1).neg();
                    let ce = share(ce.reshape([idx.len()]));
                    bpd.clone() + ce * g.class_weight
                }
                _ => bpd.clone(),
            };
            let stopping = self.stop.is_some_and(|s| s.load(Ordering::SeqCst));
            // One small all-reduce: the global loss, and whether any rank was asked to stop.
            let mut reduced = [scalar(&loss), scalar(&bpd), f64::from(u8::from(stopping))];
            let communicating = Instant::now();
            group.sum_f64(&mut reduced);
            let mut communication = communicating.elapsed();
            let [loss_value, bpd_value, stops] = reduced;
            injected_failure(group.rank(), step + 1)?;
            if !loss_value.is_finite() {
                // Numbered like metrics.jsonl, whose line `step + 1` would have held this loss.
                let kept = match (self.dir.current_checkpoint(), self.dir.load_state()) {
                    (Ok(checkpoint), Ok(state)) => format!(
                        "the last good checkpoint, of step {}, is kept in {}",
                        state.step,
                        checkpoint.display()
                    ),
                    _ => format!(
                        "no checkpoint was written to {} yet",
                        self.dir.root.display()
                    ),
                };
                return Err(FlowError::Training(format!(
                    "the loss became non-finite at step {}; {kept}. Try a lower --lr (now {}), a longer --warmup, additive couplings or fewer --n-bits",
                    step + 1,
                    tc.lr
                )));
            }
            // Checkpoint the weights after `step` steps only now that they gave a finite loss,
            // so that the checkpoint kept after a failure is one training can resume from (a
            // new run's first is its data-initialised model, at step 0).
            if (step > start || !resume) && step % tc.checkpoint_every.max(1) == 0 {
                self.save(&model, &optimizer, step, &last_test, on_event)?;
            }
            let lr = tc.lr * ((step + 1) as f64 / tc.warmup.max(1) as f64).min(1.0);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            // Clipping (in the optimiser) then sees the whole batch's gradient.
            let communicating = Instant::now();
            let grads = parallel::sum_gradients(&model, grads, group)?;
            communication += communicating.elapsed();
            model = optimizer.step(lr, model, grads);
            let done = step + 1;
            if done % CHECK_EVERY == 0 {
                parallel::check_same_parameters(&model, group, done)?;
            }
            if let Some(metrics) = &mut metrics {
                let mut line = serde_json::json!({
                    "step": done, "loss": loss_value, "bits_per_dim": bpd_value, "lr": lr,
                    "seconds": started.elapsed().as_secs_f64(),
                });
                if group.size() > 1 {
                    // Rank 0's time in the step's all-reduces (waiting for the others included).
                    line["allreduce_seconds"] = communication.as_secs_f64().into();
                }
                metrics.write(&line)?;
            }
            on_event(Event::Step {
                step: done,
                loss: loss_value,
                bits_per_dim: bpd_value,
                lr,
            });

            let last = done == tc.steps;
            if done % tc.eval_every.max(1) == 0 || last {
                let test = self.evaluate(&model.valid())?;
                if let Some(metrics) = &mut metrics {
                    metrics.write(&serde_json::json!({
                        "step": done, "test_bits_per_dim": test.bits_per_dim, "test_nats": test.nats,
                    }))?;
                }
                if let (Some(draw), true) = (self.draw_samples, lead) {
                    draw(&model.valid(), done)?;
                }
                on_event(Event::Evaluated {
                    step: done,
                    test: test.clone(),
                });
                last_test = Some(test);
            }
            let stop = stops > 0.0;
            if last || stop {
                self.save(&model, &optimizer, done, &last_test, on_event)?;
            }
            if stop && !last {
                return Err(FlowError::Interrupted {
                    step: done,
                    steps: tc.steps,
                    dir: self.dir.root.clone(),
                });
            }
        }
        let test = match last_test {
            Some(t) => t,
            None => self.evaluate(&model.valid())?,
        };
        Ok(Summary {
            steps: tc.steps,
            test,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Dequantisation noise for image models, the row at each position of the global batch
    /// keyed by that position and `draw` (the step): the same on resume, on any device, with
    /// any number of ranks.
    fn noise(
        &self,
        purpose: Purpose,
        positions: std::ops::Range<usize>,
        draw: u64,
        device: &Device,
    ) -> Option<Tensor<2>> {
        self.config.model.image_shape()?;
        let keys = noise::indices(positions.start as u64, positions.len());
        Some(noise::uniform(
            self.config.train.seed,
            purpose,
            &keys,
            draw,
            self.dims(),
            device,
        ))
    }

    fn save(
        &self,
        model: &Model,
        optimizer: &burn::optim::ModuleOptimizer,
        step: usize,
        last_test: &Option<Evaluation>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        if !self.leads() {
            return Ok(());
        }
        let state = TrainState {
            step,
            test_bits_per_dim: last_test.as_ref().map(|t| t.bits_per_dim),
        };
        self.dir.save(model, optimizer, &state, &self.config)?;
        on_event(Event::Checkpoint { step });
        Ok(())
    }

    fn evaluate(&self, model: &Model) -> Result<Evaluation> {
        // Every rank takes a share of the test set and gets every score.
        evaluate(
            model,
            &self.data.test,
            self.dims(),
            self.classes(),
            EVAL_BATCH,
            self.config.train.seed,
            &self.device,
            self.group,
        )
    }
}

/// The same model, ready for the optimizer and identical whether fresh or loaded:
///
/// - every parameter that is meant to be trained requires gradients again (`train()`):
///   data-dependent initialisation replaces ActNorm's scale and bias by values computed from
///   detached statistics, which left them frozen in a fresh run but not in a resumed one;
/// - every float parameter gets an id that depends only on its place in the model: Adam's saved
///   moments are keyed by parameter id, and a freshly built model draws new random ids, so a
///   resumed run would otherwise restart Adam from zero moments and leave its loss curve.
pub(crate) fn for_training(model: Model) -> Model {
    struct Ids(u64);
    impl ModuleMapper for Ids {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, value, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(mix(0x9A7A_1D5E_ED00_0001, self.0).into(), value, mapper)
        }
    }
    model.train().map(&mut Ids(0))
}

/// Batch size of test evaluations.
pub const EVAL_BATCH: usize = 256;

/// Steps between checks that every rank holds the same parameters.
const CHECK_EVERY: usize = 100;

/// Test hook, inert without the variable: `REVFLOW_FAIL_STEP=R:S` makes rank R fail at
/// step S, to check that one rank's error ends the whole job and leaves a resumable run.
fn injected_failure(rank: usize, step: usize) -> Result<()> {
    let Ok(spec) = std::env::var("REVFLOW_FAIL_STEP") else {
        return Ok(());
    };
    let target = spec
        .split_once(':')
        .and_then(|(r, s)| Some((r.parse::<usize>().ok()?, s.parse::<usize>().ok()?)));
    match target {
        Some(t) if t == (rank, step) => Err(FlowError::Training(format!(
            "failure injected at step {step} (REVFLOW_FAIL_STEP={spec})"
        ))),
        _ => Ok(()),
    }
}

/// What data-parallel training cannot do, refused with one line before anything is written.
fn check_parallel(config: &RunConfig, ranks: usize) -> Result<()> {
    if ranks <= 1 {
        return Ok(());
    }
    if let ModelConfig::Realnvp(_) = config.model {
        return Err(FlowError::Config(format!(
            "RealNVP's batch-normalisation layers use each batch's statistics, which differ between the {ranks} ranks' shards; train RealNVP in one process"
        )));
    }
    if config.train.batch_size < ranks {
        return Err(FlowError::Config(format!(
            "--batch-size {} is smaller than the {ranks} ranks; each rank needs at least one sample",
            config.train.batch_size
        )));
    }
    Ok(())
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// The data must have the shape the model was built for.
pub fn check_data(model: &ModelConfig, data: &Data, part: &str) -> Result<()> {
    let found = match data {
        Data::Images(s) => (Some([s.channels, s.height, s.width]), s.sample_dims()),
        Data::Vectors(s) => (None, s.dim),
    };
    let ok = match (model.image_shape(), found) {
        (Some(shape), (Some(found), _)) => shape == found,
        (None, (None, d)) => d == model.dims(),
        _ => false,
    };
    if !ok {
        let describe = |shape: Option<[usize; 3]>, d: usize| match shape {
            Some([c, h, w]) => format!("{h}×{w} images with {c} channel(s)"),
            None => format!("vectors of {d} values"),
        };
        return Err(FlowError::Data {
            source_name: format!("{part} data"),
            problem: format!(
                "the {} model expects {}, the data has {}",
                model.name(),
                describe(model.image_shape(), model.dims()),
                describe(found.0, found.1)
            ),
        });
    }
    if data.is_empty() {
        return Err(FlowError::data(format!("{part} data"), "is empty"));
    }
    let wanted = model
        .context()
        .map(|c| c.columns.as_slice())
        .unwrap_or_default();
    let has: &[String] = match data {
        Data::Vectors(s) => &s.context_columns,
        Data::Images(_) => &[],
    };
    if wanted != has {
        let list = |c: &[String]| match c {
            [] => "no context".to_string(),
            c => format!("context columns {}", c.join(", ")),
        };
        return Err(FlowError::data(
            format!("{part} data"),
            format!(
                "the model is conditioned on {}, the data has {}",
                list(wanted),
                list(has)
            ),
        ));
    }
    Ok(())
}

/// `metrics.jsonl`, truncated to the resumed step so the file tells one consistent story.
struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    fn open(dir: &RunDir, step: usize) -> Result<Self> {
        let path = dir.metrics();
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= step)
            })
            .map(str::to_string)
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::files::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(crate::files::io(&path))?;
        Ok(Self { file })
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|source| FlowError::Io {
            path: "metrics.jsonl".into(),
            source,
        })
    }
}
