//! Base distributions p_Z for the latents: standard, learned ("learn-top") and
//! class-conditional Gaussians, and the standard logistic (NICE). All are factorised, so a
//! log-density is a sum over dimensions. Each maps its latents `z` to standardised ones `ε`
//! (N(0, I), or the standard logistic) and back: sampling draws `ε` on the host (see
//! [`crate::noise`]) and a temperature T scales it (Glow §5: N(μ, (T·σ)²)).

mod gaussian;
mod logistic;

pub use gaussian::{Gaussian, GaussianConfig};
pub use logistic::Logistic;

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::flow::{sum_per_sample, Cond};
use crate::noise::Standard;

/// A base distribution over rank-`D` latents.
pub trait BaseDistribution<const D: usize> {
    /// `log p(z)` per sample, shape `(N)`.
    fn log_prob(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<1>>;

    /// `z → ε`, a bijection onto the [`standard`](Self::standard) distribution.
    fn standardize(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<D>>;

    /// `ε → z`, the inverse of [`standardize`](Self::standardize).
    fn destandardize(&self, eps: Tensor<D>, cond: Cond) -> Result<Tensor<D>>;

    /// The distribution of `ε`.
    fn standard(&self) -> Standard;
}

const LOG_2PI: f64 = 1.837_877_066_409_345_5;

/// `Σ log N(z; μ, exp(log_σ)²)` per sample.
pub fn gaussian_log_prob<const D: usize>(
    z: Tensor<D>,
    mean: Tensor<D>,
    log_std: Tensor<D>,
) -> Tensor<1> {
    let e = gaussian_standardize(z, mean, log_std.clone());
    sum_per_sample((e.square() + LOG_2PI) * -0.5 - log_std)
}

/// `ε = (z − μ) / σ`.
pub fn gaussian_standardize<const D: usize>(
    z: Tensor<D>,
    mean: Tensor<D>,
    log_std: Tensor<D>,
) -> Tensor<D> {
    (z - mean) * log_std.neg().exp()
}

/// `z = μ + σ·ε`.
pub fn gaussian_destandardize<const D: usize>(
    eps: Tensor<D>,
    mean: Tensor<D>,
    log_std: Tensor<D>,
) -> Tensor<D> {
    mean + log_std.exp() * eps
}

/// The prior of a model: one of the base distributions above.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model: size does not matter
pub enum Prior {
    Gaussian(Gaussian),
    Logistic(Logistic),
}

impl<const D: usize> BaseDistribution<D> for Prior {
    fn log_prob(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<1>> {
        match self {
            Prior::Gaussian(p) => p.log_prob(z, cond),
            Prior::Logistic(p) => p.log_prob(z, cond),
        }
    }

    fn standardize(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        match self {
            Prior::Gaussian(p) => p.standardize(z, cond),
            Prior::Logistic(p) => p.standardize(z, cond),
        }
    }

    fn destandardize(&self, eps: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        match self {
            Prior::Gaussian(p) => p.destandardize(eps, cond),
            Prior::Logistic(p) => p.destandardize(eps, cond),
        }
    }

    fn standard(&self) -> Standard {
        match self {
            Prior::Gaussian(_) => Standard::Normal,
            Prior::Logistic(_) => Standard::Logistic,
        }
    }
}
