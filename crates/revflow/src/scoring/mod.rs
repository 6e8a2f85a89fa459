//! Scoring inputs by their exact likelihood: per-input bits/dim (and nats) of any data against
//! a trained model, to rank inputs by how typical they are, find anomalies or compare sets.
//!
//! - [`source`]: where inputs come from ([`Spec`]: image files and folders, IDX, CIFAR-10,
//!   CSV, the run's own splits), read a batch at a time.
//! - [`Scorer`]: batches of rows → log p(x). The dequantisation noise of each input is drawn
//!   from a generator keyed by the input's content (`noise::content_key`), so a score does
//!   not depend on the batch size, the order or how the inputs are split into chunks; with
//!   `K` dequantisations it is the importance-weighted estimate
//!   log p̂(x) = log (1/K) Σₖ p(x, uₖ). Class-conditional models give the marginal
//!   p(x) = Σ_y p(x | y) p(y) (p(y) uniform), or p(x | y) for one class.
//! - [`score`]: a whole stream of inputs, each result handed to the caller as it comes
//!   (written to a CSV, say), keeping only the scores and the most and least likely inputs.
//! - [`report`]: summary, AUROC, the typicality test; [`picture`]: the histogram of two sets
//!   and strips of their most and least likely images.
//!
//! Training's test evaluation and `revflow eval` are this same code path.

mod output;
pub mod picture;
pub mod report;
pub mod source;

pub use output::ScoreCsv;
pub use report::{Comparison, Summary, Typicality};
pub use source::{Context, Inputs, Kind, Part, Rows, Source, Spec};

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{FlowError, Result};
use crate::flow::Cond;
use crate::models::{bits_per_dim, Model};
use crate::noise::{self, Purpose};
use crate::parallel::{self, Group, Single};
use crate::training::one_hot;
use crate::validate::in_range;

/// Which likelihood a class-conditional model gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassMode {
    /// p(x) = Σ_y p(x | y) p(y), with p(y) uniform over the run's classes.
    Marginal,
    /// p(x | y) for this class.
    Given(usize),
    /// p(x | y) for each input's own label (evaluation on the run's labelled data).
    OwnLabel,
}

/// Scores rows of inputs with a model; see the module docs.
pub struct Scorer<'a> {
    model: &'a Model,
    kind: Kind,
    classes: usize,
    seed: u64,
    dequant_samples: usize,
    class: ClassMode,
    batch_size: usize,
    device: Device,
    group: Option<&'a dyn Group>,
}

impl<'a> Scorer<'a> {
    /// A scorer of `model` (an inference copy) for inputs of `kind`, conditioned on `classes`
    /// classes (0: unconditional), with the noise of `seed` (a run's seed); one
    /// dequantisation, the marginal likelihood, batches of
    /// [`EVAL_BATCH`](crate::training::EVAL_BATCH), on the CPU.
    pub fn new(model: &'a Model, kind: Kind, classes: usize, seed: u64) -> Self {
        Scorer {
            model,
            kind,
            classes,
            seed,
            dequant_samples: 1,
            class: ClassMode::Marginal,
            batch_size: crate::training::EVAL_BATCH,
            device: Device::flex(),
            group: None,
        }
    }

    /// Shares every batch among the ranks of `group` (MPI): each scores its shard of the
    /// batch and every rank gets all the scores, the same as one process's.
    pub fn group(mut self, group: Option<&'a dyn Group>) -> Self {
        self.group = group;
        self
    }

    /// Averages `k` dequantisations (importance-weighted); vector models have none.
    pub fn dequant_samples(mut self, k: usize) -> Result<Self> {
        in_range("--dequant-samples", k, 1..)?;
        self.dequant_samples = k;
        Ok(self)
    }

    /// How a class-conditional model is scored (ignored by an unconditional one, except that
    /// a class is refused there).
    pub fn class(mut self, class: ClassMode) -> Result<Self> {
        if let ClassMode::Given(y) = class {
            if self.classes == 0 {
                return Err(FlowError::Config(
                    "--class needs a class-conditional run (trained with --ycond)".into(),
                ));
            }
            in_range("--class", y, ..self.classes)?;
        }
        self.class = class;
        Ok(self)
    }

    /// Inputs per forward pass (it changes the speed and the memory, not the scores).
    pub fn batch_size(mut self, batch_size: usize) -> Result<Self> {
        in_range("--batch-size", batch_size, 1..)?;
        self.batch_size = batch_size;
        Ok(self)
    }

    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    /// Values per input.
    pub fn dims(&self) -> usize {
        self.kind.dims()
    }

    /// Forward passes per input: dequantisations × classes tried.
    fn passes(&self) -> usize {
        let draws = match self.kind {
            Kind::Images(_) => self.dequant_samples,
            Kind::Vectors(_) => 1,
        };
        let classes = match (self.classes, self.class) {
            (0, _) | (_, ClassMode::Given(_) | ClassMode::OwnLabel) => 1,
            (c, ClassMode::Marginal) => c,
        };
        draws * classes
    }

    /// log p(x) in nats of every row of `rows`, in batches; a row whose likelihood is not
    /// finite is an error naming it.
    pub fn log_probs(&self, rows: &Rows) -> Result<Vec<f64>> {
        let d = self.dims();
        if rows.dims != d {
            return Err(FlowError::shape(
                "scoring",
                format!("{d} values per input"),
                rows.dims,
            ));
        }
        let mut out = Vec::with_capacity(rows.len());
        let group = self.group.unwrap_or(&Single);
        for start in (0..rows.len()).step_by(self.batch_size) {
            let len = self.batch_size.min(rows.len() - start);
            // This rank's shard of the batch; the others' scores arrive by the sum.
            let mine = parallel::shard(len, group);
            let (a, b) = (start + mine.start, start + mine.end);
            let mut scores = vec![0.0; len];
            if a < b {
                let k = rows.context.len() / rows.len().max(1);
                let part = self.batch(
                    &rows.values[a * d..b * d],
                    &rows.classes[a..b],
                    &rows.context[a * k..b * k],
                    &rows.ids[a..],
                )?;
                scores[mine].copy_from_slice(&part);
            }
            group.sum_f64(&mut scores);
            out.extend(scores);
        }
        for (v, id) in out.iter().zip(&rows.ids) {
            // One non-finite likelihood would turn every mean into NaN: name the input.
            if !v.is_finite() {
                return Err(FlowError::value(
                    "scoring",
                    format!(
                        "the model gives {id} the log-likelihood {v}; it cannot score this input"
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// log p(x) of one batch of `values` (rows of `self.dims()`).
    fn batch(
        &self,
        values: &[f32],
        labels: &[Option<usize>],
        context: &[f32],
        ids: &[String],
    ) -> Result<Vec<f64>> {
        let d = self.dims();
        let n = values.len() / d;
        let x = Tensor::<2>::from_data(TensorData::new(values.to_vec(), [n, d]), &self.device);
        let conds: Vec<Option<Tensor<2>>> = match (self.classes, self.class) {
            // A context-conditional model: each row's own context, p(x | c).
            (0, _) if !context.is_empty() => {
                let k = context.len() / n;
                let c = TensorData::new(context.to_vec(), [n, k]);
                vec![Some(Tensor::from_data(c, &self.device))]
            }
            (0, _) => vec![None],
            (c, ClassMode::Marginal) => (0..c)
                .map(|y| Some(one_hot(std::iter::repeat_n(y, n), c, &self.device)))
                .collect(),
            (c, ClassMode::Given(y)) => {
                vec![Some(one_hot(std::iter::repeat_n(y, n), c, &self.device))]
            }
            (c, ClassMode::OwnLabel) => {
                let own = labels
                    .iter()
                    .zip(ids)
                    .map(|(l, id)| {
                        l.ok_or_else(|| {
                            FlowError::data(
                                id,
                                "has no label among the run's classes, which this class-conditional evaluation needs",
                            )
                        })
                    })
                    .collect::<Result<Vec<usize>>>()?;
                vec![Some(one_hot(own.into_iter(), c, &self.device))]
            }
        };
        let draws = match self.kind {
            Kind::Images(_) => self.dequant_samples,
            Kind::Vectors(_) => 1,
        };
        let keys: Vec<u64> = values.chunks_exact(d).map(noise::content_key).collect();
        // Every (draw, class) term of each row, then log of their mean (a uniform p(y)).
        let mut terms = vec![Vec::with_capacity(self.passes()); n];
        for k in 0..draws {
            let u = match self.kind {
                Kind::Images(_) => Some(noise::uniform(
                    self.seed,
                    Purpose::Score,
                    &keys,
                    k as u64,
                    d,
                    &self.device,
                )),
                Kind::Vectors(_) => None,
            };
            for cond in &conds {
                let log_p = log_prob(self.model, x.clone(), cond.as_ref(), u.as_ref())?;
                let log_p = log_p
                    .into_data()
                    .try_to_vec_as::<f64>()
                    .map_err(|e| FlowError::value("scoring", format!("{e:?}")))?;
                for (t, v) in terms.iter_mut().zip(log_p) {
                    t.push(v);
                }
            }
        }
        Ok(terms.iter().map(|t| log_mean_exp(t)).collect())
    }
}

/// The one call to the model: log p(x) with the dequantisation noise given explicitly.
fn log_prob(
    model: &Model,
    x: Tensor<2>,
    cond: Cond,
    noise: Option<&Tensor<2>>,
) -> Result<Tensor<1>> {
    Ok(model.log_prob(x, cond, noise)?.0)
}

/// log((1/n) Σ exp(vᵢ)), computed stably.
pub(crate) fn log_mean_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = values.iter().map(|v| (v - max).exp()).sum();
    max + (sum / values.len() as f64).ln()
}

/// One scored input, as [`score`] hands it over.
pub struct Scored<'r> {
    pub id: &'r str,
    /// Its class name, where the source has labels.
    pub label: Option<&'r str>,
    /// log p(x) in nats.
    pub log_p: f64,
    pub bits_per_dim: f64,
    /// Its values (pixels or vector) as the model saw them.
    pub values: &'r [f32],
}

/// An input kept for a picture.
#[derive(Debug, Clone)]
pub struct Kept {
    pub id: String,
    pub bits_per_dim: f64,
    pub values: Vec<f32>,
}

/// What scoring a stream of inputs gave.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Every input's bits/dim, in input order.
    pub bits_per_dim: Vec<f64>,
    /// Mean negative log-likelihood in nats per input.
    pub nats: f64,
    /// The kept inputs with the lowest bits/dim, the most likely first.
    pub most_likely: Vec<Kept>,
    /// The kept inputs with the highest bits/dim, the least likely first.
    pub least_likely: Vec<Kept>,
    /// Wall-clock seconds, reading included.
    pub seconds: f64,
}

impl Scores {
    /// Mean bits/dim.
    pub fn mean(&self) -> f64 {
        report::mean(&self.bits_per_dim)
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.bits_per_dim)
    }

    /// Inputs scored per second.
    pub fn per_second(&self) -> f64 {
        self.bits_per_dim.len() as f64 / self.seconds.max(1e-9)
    }
}

/// Scores every input of `inputs`, a batch at a time: `on_row` gets each result as it comes,
/// `progress` the count done after each batch. Keeps the `keep` most and least likely
/// inputs (for pictures). No inputs at all is an error.
pub fn score(
    scorer: &Scorer,
    inputs: &mut Inputs,
    keep: usize,
    on_row: &mut dyn FnMut(&Scored) -> Result<()>,
    progress: &mut dyn FnMut(usize),
) -> Result<Scores> {
    let started = Instant::now();
    crate::limits::check(
        format!("scoring batches of {} inputs", scorer.batch_size),
        // The batch as f32 and as a tensor, and the model's activations.
        crate::limits::f32s((scorer.batch_size * scorer.dims()) as f64) * 3.0,
    )?;
    let dims = scorer.dims();
    let mut bits = Vec::with_capacity(inputs.len().unwrap_or(0));
    let (mut total, mut most, mut least) = (0.0, Vec::new(), Vec::new());
    while let Some(rows) = inputs.read(scorer.batch_size)? {
        let log_p = scorer.log_probs(&rows)?;
        for (i, &lp) in log_p.iter().enumerate() {
            let b = bits_per_dim(lp, dims);
            let scored = Scored {
                id: &rows.ids[i],
                label: rows.labels[i].as_deref(),
                log_p: lp,
                bits_per_dim: b,
                values: rows.row(i),
            };
            on_row(&scored)?;
            if keep > 0 {
                offer(&mut most, keep, &scored, |a, b| a < b);
                offer(&mut least, keep, &scored, |a, b| a > b);
            }
            total += lp;
            bits.push(b);
        }
        progress(bits.len());
    }
    if bits.is_empty() {
        return Err(FlowError::data(inputs.names(), "holds no inputs to score"));
    }
    Ok(Scores {
        nats: -total / bits.len() as f64,
        bits_per_dim: bits,
        most_likely: most,
        least_likely: least,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// [`score`], with every input's line written to a CSV at `csv` (see [`ScoreCsv`]), which
/// appears there once every input is scored.
pub fn score_into(
    scorer: &Scorer,
    inputs: &mut Inputs,
    csv: Option<&std::path::Path>,
    keep: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Scores> {
    let mut out = csv.map(ScoreCsv::create).transpose()?;
    let scores = score(
        scorer,
        inputs,
        keep,
        &mut |s| match &mut out {
            Some(out) => out.write(s),
            None => Ok(()),
        },
        progress,
    )?;
    if let Some(out) = out {
        out.commit()?;
    }
    Ok(scores)
}

/// Keeps `scored` among the `keep` best by `better` (a strict order on bits/dim), in order.
fn offer(kept: &mut Vec<Kept>, keep: usize, scored: &Scored, better: fn(f64, f64) -> bool) {
    let b = scored.bits_per_dim;
    if kept.len() == keep && !kept.last().is_some_and(|k| better(b, k.bits_per_dim)) {
        return;
    }
    let at = kept.partition_point(|k| !better(b, k.bits_per_dim));
    kept.insert(
        at,
        Kept {
            id: scored.id.to_string(),
            bits_per_dim: b,
            values: scored.values.to_vec(),
        },
    );
    kept.truncate(keep);
}

/// Mean bits/dim of the training set `train` (every input, or `max` of them evenly spaced:
/// a deterministic subsample), the reference H of the typicality test.
pub fn train_mean(scorer: &Scorer, train: &crate::data::Data, max: usize) -> Result<f64> {
    let n = train.len();
    let m = n.min(max.max(1));
    let idx: Vec<usize> = (0..m).map(|i| i * n / m).collect();
    let subset = train.subset(&idx);
    let mut inputs = Inputs::one(Source::of_data(&subset, Part::Train, scorer.kind)?);
    Ok(score(scorer, &mut inputs, 0, &mut |_| Ok(()), &mut |_| {})?.mean())
}

#[cfg(test)]
mod tests;
