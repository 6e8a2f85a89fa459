//! Variational dequantization (Flow++, Ho et al. 2019 §3.1): the dequantization noise of a
//! pixel comes from a learned conditional flow `q(u | x)` instead of U[0, 1).
//!
//! The flow maps the host's uniform noise `u₀ ∈ (0, 1)` (keyed per input, as for uniform
//! dequantization) to `u ∈ (0, 1)`:
//!
//! ```text
//! ε = logit(u₀),   y = f(ε; x),   u = σ(y)
//! ```
//!
//! with `f` a few rational-quadratic spline couplings whose networks also see the pixels `x`. Since `u₀` is
//! uniform, `log q(u | x) = −log|det ∂u/∂u₀|`, which is this layer's log-det with the sign
//! turned; zero-initialised couplings make `f` the identity, so training starts from uniform
//! dequantization exactly (`u = u₀`, `log q = 0`). The variational bound on the discrete
//! log-likelihood is then `E_q[log p(x + u) − log q(u | x)]`.

use burn::module::Module;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Tensor};

use crate::error::{FlowError, Result};
use crate::flow::{sum_per_sample, Cond, Flow, Sequential};
use crate::layers::{CouplingConfig, Layer, Mask};
use crate::nets::{ConvNet, ConvNetConfig};
use crate::transforms::{Conditioner, SplineConfig, Transform};

/// The couplings' transform: a rational-quadratic spline is the identity at zero parameters
/// (Glow's affine would start at scale σ(2)), on [−4, 4] in logit space (u between 0.018
/// and 0.982), the identity outside.
const SPLINE: SplineConfig = SplineConfig {
    bins: 8,
    tail_bound: 4.0,
};

/// Keeps `u₀` inside (0, 1), where its logit is finite (host noise can be exactly 0).
const EDGE: f64 = 1e-6;

/// A coupling network that also reads the pixels: the context image, passed as `cond` of
/// shape `(N, C·H·W)`, is appended to its input as `C` more channels.
#[derive(Module, Debug)]
pub struct PixelConditioned {
    pub net: ConvNet,
}

impl Conditioner<4> for PixelConditioned {
    fn forward(&self, x: Tensor<4>, cond: Cond) -> Result<Tensor<4>> {
        let [n, _, h, w] = x.dims();
        let context = cond.ok_or_else(|| {
            FlowError::shape(
                "variational dequantization",
                "the pixels as context",
                "none",
            )
        })?;
        let [m, k] = context.dims();
        if m != n || k % (h * w) != 0 {
            return Err(FlowError::shape(
                "variational dequantization",
                format!("pixels (N={n}, C·{h}·{w})"),
                context.dims(),
            ));
        }
        let image = context.clone().reshape([n, k / (h * w), h, w]);
        self.net.forward(Tensor::cat(vec![x, image], 1), None)
    }
}

/// Configuration of a [`VariationalDequantizer`].
#[derive(Debug, Clone)]
pub struct VariationalConfig {
    /// `[C, H, W]` of the images.
    pub shape: [usize; 3],
    /// Spline couplings in `f` (alternating checkerboards).
    pub couplings: usize,
    /// Hidden width of their networks.
    pub hidden: usize,
}

impl VariationalConfig {
    pub fn init(&self, device: &Device) -> Result<VariationalDequantizer> {
        let c = self.shape[0];
        let layers = (0..self.couplings)
            .map(|i| {
                let config = CouplingConfig::new(
                    c,
                    Mask::Checkerboard { flip: i % 2 == 1 },
                    Transform::Spline(SPLINE),
                );
                let net =
                    ConvNetConfig::new(config.net_inputs() + c, config.net_outputs(), self.hidden)
                        .init(device);
                Ok(Layer::from(config.init(PixelConditioned { net }, device)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VariationalDequantizer {
            flow: Sequential::new(layers),
        })
    }
}

/// `u₀ ↦ u`, conditioned on the pixels (the `cond` of [`Flow`], flattened `(N, C·H·W)`).
#[derive(Module, Debug)]
pub struct VariationalDequantizer {
    pub flow: Sequential<Layer<PixelConditioned>>,
}

/// `log σ'(y) = log σ(y) + log σ(−y)`.
fn log_sigmoid_slope(y: Tensor<4>) -> Tensor<4> {
    log_sigmoid(y.clone()) + log_sigmoid(y.neg())
}

impl VariationalDequantizer {
    /// Noise `u` for pixels `x` (`context`: the pixels scaled to about [−0.5, 0.5], flattened)
    /// from uniform `u₀`, and `log q(u | x)` per sample.
    pub fn sample(&self, u0: Tensor<4>, context: &Tensor<2>) -> Result<(Tensor<4>, Tensor<1>)> {
        let (u, logdet) = self.forward(u0, Some(context))?;
        Ok((u, logdet.neg()))
    }
}

impl Flow<4> for VariationalDequantizer {
    fn forward(&self, u0: Tensor<4>, cond: Cond) -> Result<(Tensor<4>, Tensor<1>)> {
        let u0 = u0.clamp(EDGE, 1.0 - EDGE);
        let eps = u0.clone().log() - u0.neg().add_scalar(1.0).log();
        let (y, logdet) = self.flow.forward(eps.clone(), cond)?;
        // log|du/du₀| = Σ log σ'(y) + log|det ∂f/∂ε| − Σ log σ'(ε).
        let logdet = logdet + sum_per_sample(log_sigmoid_slope(y.clone()))
            - sum_per_sample(log_sigmoid_slope(eps));
        Ok((sigmoid(y), logdet))
    }

    fn inverse(&self, u: Tensor<4>, cond: Cond) -> Result<Tensor<4>> {
        let u = u.clamp(EDGE, 1.0 - EDGE);
        let y = u.clone().log() - u.neg().add_scalar(1.0).log();
        Ok(sigmoid(self.flow.inverse(y, cond)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::Distribution;

    fn uniform(dims: [usize; 4], dev: &Device) -> Tensor<4> {
        Tensor::random(dims, Distribution::Uniform(0.05, 0.95), dev)
    }

    fn pixels(n: usize, d: usize, dev: &Device) -> Tensor<2> {
        Tensor::random([n, d], Distribution::Uniform(-0.5, 0.5), dev)
    }

    #[test]
    fn starts_as_uniform_dequantization() {
        let dev = device();
        let q = VariationalConfig {
            shape: [1, 4, 4],
            couplings: 2,
            hidden: 8,
        }
        .init(&dev)
        .unwrap();
        let u0 = uniform([2, 1, 4, 4], &dev);
        let (u, log_q) = q.sample(u0.clone(), &pixels(2, 16, &dev)).unwrap();
        assert!(max_abs_diff(&u, &u0) < 1e-5);
        assert!(to_vec(log_q).iter().all(|v| v.abs() < 1e-4));
    }

    #[test]
    fn log_q_is_minus_log_det_of_the_brute_force_jacobian_and_depends_on_the_pixels() {
        let dev = device();
        dev.seed(3);
        for (shape, couplings) in [([1, 4, 4], 2), ([3, 2, 4], 3)] {
            let q = VariationalConfig {
                shape,
                couplings,
                hidden: 8,
            }
            .init(&dev)
            .unwrap();
            let q = perturb(q, 0.2, 5);
            let [c, h, w] = shape;
            let x = pixels(2, c * h * w, &dev);
            let u0 = uniform([2, c, h, w], &dev);
            // Inverse and log-det against the autodiff Jacobian of u₀ ↦ u.
            check_flow(&q, u0.clone(), Some(&x));
            let (u, log_q) = q.sample(u0.clone(), &x).unwrap();
            let want = jacobian_logdet(&q, &u0, Some(&x));
            for (got, want) in to_vec(log_q).iter().zip(&want) {
                assert!(
                    (*got as f64 + want).abs() < 1e-3 * want.abs().max(1.0),
                    "{got} vs −{want}"
                );
            }
            assert!(to_vec(u.clone()).iter().all(|v| *v > 0.0 && *v < 1.0));
            // The noise depends on the pixels it dequantizes.
            let (other, _) = q.sample(u0, &(x + 0.3)).unwrap();
            assert!(max_abs_diff(&u, &other) > 1e-3);
        }
    }
}
