//! Elementwise invertible maps and the networks that parameterise them.
//!
//! A coupling layer (and, later, an autoregressive one) splits its input into a part that
//! conditions and a part that moves. A [`Conditioner`] reads the conditioning part and returns
//! raw parameters; a [`Transform`] moves each feature of the other part with its own
//! parameters, forward or inverse, with the log of its slope; the layer decides which features
//! condition which and sums the log-dets.
//!
//! The raw parameters of a feature are laid out as `P` groups of channels (images) or features
//! (vectors): parameter `p` of channel `c` is channel `p·C + c` of the network's output.

pub mod spline;

use burn::module::Module;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::flow::{in_chunks, Cond, INIT_CHUNK};
pub use spline::SplineConfig;

/// A network inside a coupling layer, on rank-`D` tensors: conditioning part → raw parameters.
pub trait Conditioner<const D: usize>: Module + burn::module::ModuleDisplay {
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<Tensor<D>>;

    /// `transform` of `x_b` with the parameters this network computes from `x_a`, forward or
    /// `reverse`: the moved part and the elementwise log-slopes (`None`: volume preserving).
    /// A network may compute both in one fused operation where its backend allows; the
    /// default composes them.
    fn transform(
        &self,
        transform: &Transform,
        x_a: Tensor<D>,
        x_b: Tensor<D>,
        reverse: bool,
        cond: Cond,
        rho: Option<Tensor<1>>,
    ) -> Result<(Tensor<D>, Option<Tensor<D>>)> {
        let h = self.forward(x_a, cond)?;
        Ok(transform.apply(x_b, h, reverse, rho))
    }

    /// Data-dependent initialisation of any ActNorm inside, from the network's inputs `x`;
    /// returns the initialised network and its output on `x`. Default: no initialisation,
    /// the output computed a chunk at a time.
    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        let parts = in_chunks(&x, cond, INIT_CHUNK, |x, cond| self.forward(x, cond))?;
        Ok((self, Tensor::cat(parts, 0)))
    }
}

/// How the moved part moves, given raw parameters `h` per feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Transform {
    /// NICE: `y = x + t`; volume preserving.
    Additive,
    /// Glow: `y = (x + t)·σ(r + 2)`, log-slope `log σ(r + 2)`.
    AffineGlow,
    /// RealNVP: `y = x·exp(s) + t` with `s = ρ·tanh(r)`, ρ learned per channel.
    AffineRealNvp,
    /// Rational-quadratic spline (Durkan et al. 2019) on `[−B, B]`, identity outside.
    Spline(SplineConfig),
}

impl Transform {
    /// Raw parameters per moved feature.
    pub fn params(&self) -> usize {
        match self {
            Transform::Additive => 1,
            Transform::AffineGlow | Transform::AffineRealNvp => 2,
            Transform::Spline(s) => s.params(),
        }
    }

    /// Short name, as `--coupling` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Additive => "additive",
            Transform::AffineGlow => "affine",
            Transform::AffineRealNvp => "affine (RealNVP)",
            Transform::Spline(_) => "spline",
        }
    }

    /// `x → (y, log|dy/dx|)` elementwise (`reverse`: `y → (x, log|dx/dy|)`), with `h` the raw
    /// parameters (`P·C` channels for `C` moved channels) and `rho` RealNVP's ρ.
    pub fn apply<const D: usize>(
        &self,
        x: Tensor<D>,
        h: Tensor<D>,
        reverse: bool,
        rho: Option<Tensor<1>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let c = x.dims()[1];
        let part = |p: usize| h.clone().narrow(1, p * c, c);
        match (self, reverse) {
            (Transform::Additive, false) => (x + part(0), None),
            (Transform::Additive, true) => (x - part(0), None),
            (Transform::AffineGlow, _) => {
                let log_s = log_sigmoid(part(1) + 2.0);
                match reverse {
                    false => ((x + part(0)) * log_s.clone().exp(), Some(log_s)),
                    true => (x * log_s.clone().neg().exp() - part(0), Some(log_s.neg())),
                }
            }
            (Transform::AffineRealNvp, _) => {
                let mut shape = [1; D];
                shape[1] = c;
                let rho = rho.expect("a RealNVP coupling passes its ρ").reshape(shape);
                let s = part(1).tanh() * rho;
                match reverse {
                    false => (x * s.clone().exp() + part(0), Some(s)),
                    true => ((x - part(0)) * s.clone().neg().exp(), Some(s.neg())),
                }
            }
            (Transform::Spline(spline), _) => {
                let dims = x.dims();
                let n = dims[0];
                let m = x.shape().num_elements();
                // (N, P·C, …) → (N, P, C·…) → (M, P), rows in the order of x's elements.
                let raw = h
                    .reshape([n, spline.params(), m / n])
                    .swap_dims(1, 2)
                    .reshape([m, spline.params()]);
                let flat = x.reshape([m]);
                let (y, log_slope) = match reverse {
                    false => spline.forward(flat, raw),
                    true => spline.inverse(flat, raw),
                };
                (y.reshape(dims), Some(log_slope.reshape(dims)))
            }
        }
    }
}
