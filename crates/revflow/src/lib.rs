//! # revflow
//!
//! Reversible (flow-based) generative models — NICE, RealNVP, Glow, neural spline flows, MAF
//! and IAF, unconditional or conditioned on a class or a context vector — on
//! [burn](https://burn.dev). A flow maps data `x` to latents `z = f(x)` through invertible
//! layers with tractable Jacobians, so that
//!
//! ```text
//! log p(x) = log p_Z(f(x)) + log |det ∂f/∂x|
//! ```
//!
//! is exact, sampling is `x = f⁻¹(z)`, and encoding is lossless.
//!
//! - [`flow`]: the [`Flow`] trait every layer implements, and [`Sequential`] composition.
//! - [`layers`]: ActNorm, invertible 1×1 convolutions, permutations, couplings, autoregressive
//!   layers (MAF, IAF), squeeze, split, NICE scaling, batch normalisation, dequantisation
//!   (uniform or variational, Flow++) and logit preprocessing.
//! - [`transforms`]: the elementwise maps a coupling applies (additive, affine, rational-quadratic
//!   spline) and the [`Conditioner`](transforms::Conditioner) trait of the networks that
//!   parameterise them; [`nets`]: those networks (and MADE); [`fused`]: Glow's network and affine transform
//!   as one CPU operation with its own backward pass.
//! - [`distributions`]: Gaussian (standard, learned, class-conditional) and logistic priors.
//! - [`weights`]: saving and loading parameters as safetensors.

pub mod bench;
pub mod conv;
mod convnet_init;
pub mod data;
pub mod device;
pub mod distributions;
pub mod error;
pub mod figures;
pub mod files;
pub mod flow;
pub mod fused;
pub mod latents;
pub mod layers;
pub mod limits;
mod linalg;
pub mod memo;
pub mod models;
pub mod nets;
pub mod noise;
pub mod parallel;
pub mod pictures;
mod rng;
pub mod scoring;
pub mod trained;
pub mod training;
pub mod transforms;
pub mod validate;
pub mod weights;

#[cfg(test)]
mod testing;

pub use burn;
pub use error::{FlowError, Result};
pub use flow::{Cond, Flow, Sequential};
