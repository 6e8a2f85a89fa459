//! Base distributions p_Z for the latents: standard, learned ("learn-top") and
//! class-conditional Gaussians, and the standard logistic (NICE). All are factorised, so a
//! log-density is a sum over dimensions; sampling takes a temperature T that scales the
//! spread (Glow §5: N(μ, (T·σ)²)).

mod gaussian;
mod logistic;

pub use gaussian::{Gaussian, GaussianConfig};
pub use logistic::Logistic;

use burn::module::Module;
use burn::tensor::{Device, Distribution as Noise, Tensor};

use crate::error::Result;
use crate::flow::{sum_per_sample, Cond};

/// A base distribution over rank-`D` latents.
pub trait BaseDistribution<const D: usize> {
    /// `log p(z)` per sample, shape `(N)`.
    fn log_prob(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<1>>;

    /// `n` samples at temperature `temperature` (1: the distribution itself).
    fn sample(&self, n: usize, temperature: f64, cond: Cond, device: &Device) -> Result<Tensor<D>>;
}

const LOG_2PI: f64 = 1.837_877_066_409_345_5;

/// `Σ log N(z; μ, exp(log_σ)²)` per sample.
pub fn gaussian_log_prob<const D: usize>(
    z: Tensor<D>,
    mean: Tensor<D>,
    log_std: Tensor<D>,
) -> Tensor<1> {
    let e = (z - mean) * log_std.clone().neg().exp();
    sum_per_sample((e.square() + LOG_2PI) * -0.5 - log_std)
}

/// `μ + T·σ·ε`, ε ~ N(0, I).
pub fn gaussian_sample<const D: usize>(
    mean: Tensor<D>,
    log_std: Tensor<D>,
    temperature: f64,
) -> Tensor<D> {
    let eps = mean.random_like(Noise::Normal(0.0, 1.0));
    mean + log_std.exp() * eps * temperature
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

    fn sample(&self, n: usize, temperature: f64, cond: Cond, device: &Device) -> Result<Tensor<D>> {
        match self {
            Prior::Gaussian(p) => p.sample(n, temperature, cond, device),
            Prior::Logistic(p) => p.sample(n, temperature, cond, device),
        }
    }
}
