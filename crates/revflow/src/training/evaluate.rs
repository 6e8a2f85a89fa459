//! Likelihood on a data set, and the per-pixel baseline a flow must beat.

use burn::tensor::Device;

use crate::data::{Data, ImageSet};
use crate::error::{FlowError, Result};
use crate::models::Model;
use crate::parallel::Group;
use crate::scoring::{score, ClassMode, Inputs, Kind, Part, Scorer, Source};

/// Test-set likelihood: mean log-likelihood in nats per sample, bits/dim, and each sample's
/// bits/dim (for ranking inputs, e.g. to find out-of-distribution ones).
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub nats: f64,
    pub bits_per_dim: f64,
    pub per_sample: Vec<f64>,
}

/// Evaluates `model` (an inference copy) on all of `data` (of `dims` values per input), in
/// batches: the scoring core ([`crate::scoring`]) with each input's own label for a
/// class-conditional model. Each input's dequantisation noise is keyed by its content and
/// `seed` (see [`crate::noise`]), so the same checkpoint always gives the same numbers,
/// whatever the batch size, device or number of ranks (`group`: MPI ranks sharing the work).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    data: &Data,
    dims: usize,
    classes: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
    group: Option<&dyn Group>,
) -> Result<Evaluation> {
    let kind = match data {
        Data::Images(s) => Kind::Images([s.channels, s.height, s.width]),
        Data::Vectors(s) => Kind::Vectors(s.dim),
    };
    if kind.dims() != dims {
        return Err(FlowError::shape(
            "evaluate",
            format!("{dims} values per input"),
            kind.dims(),
        ));
    }
    let scorer = Scorer::new(model, kind, classes, seed)
        .class(ClassMode::OwnLabel)?
        .batch_size(batch_size)?
        .device(device)
        .group(group);
    let mut inputs = Inputs::one(Source::of_data(data, Part::Test, kind)?);
    let scores = score(&scorer, &mut inputs, 0, &mut |_| Ok(()), &mut |_| {})?;
    Ok(Evaluation {
        nats: scores.nats,
        bits_per_dim: scores.mean(),
        per_sample: scores.bits_per_dim,
    })
}

/// Bits/dim on `test` of a model that treats every pixel position as an independent
/// categorical variable over the `2^n_bits` levels, fitted to `train` with add-α smoothing
/// (α chosen by leave-one-out likelihood on `train`). A flow that does not beat this has not
/// learnt how pixels depend on each other.
pub fn per_pixel_baseline(train: &ImageSet, test: &ImageSet, n_bits: u32) -> f64 {
    let (d, bins) = (train.sample_dims(), 1usize << n_bits);
    let shift = 8 - n_bits;
    let mut counts = vec![0u32; d * bins];
    for i in 0..train.len() {
        for (p, &v) in train.image(i).iter().enumerate() {
            counts[p * bins + (v >> shift) as usize] += 1;
        }
    }
    let n = train.len() as f64;
    // Leave-one-out log-likelihood of the training set for a smoothing α.
    let loo = |alpha: f64| -> f64 {
        let mut ll = 0.0;
        for p in 0..d {
            for k in 0..bins {
                let c = counts[p * bins + k] as f64;
                if c > 0.0 {
                    ll += c * ((c - 1.0 + alpha) / (n - 1.0 + alpha * bins as f64)).ln();
                }
            }
        }
        ll
    };
    let alpha = [1.0, 0.5, 0.1, 0.03, 0.01, 0.003, 0.001]
        .into_iter()
        .max_by(|a, b| loo(*a).total_cmp(&loo(*b)))
        .expect("candidates");
    let mut nll = 0.0;
    for i in 0..test.len() {
        for (p, &v) in test.image(i).iter().enumerate() {
            let c = counts[p * bins + (v >> shift) as usize] as f64;
            // Scored on the same n-bit grid as the flows.
            nll -= ((c + alpha) / (n + alpha * bins as f64)).ln();
        }
    }
    nll / (test.len().max(1) * d) as f64 / std::f64::consts::LN_2
}
