//! Preprocessing written as flows, so that their log-determinants enter the likelihood.
//!
//! - [`Dequantize`]: 8-bit pixels → `n_bits` → continuous values in a unit-width box
//!   (Glow: `k/bins − 0.5` plus U(0, 1/bins) noise). Its log-det `−D·ln(bins)` turns a density
//!   on the box into a probability of the discrete pixels; the inverse floors back to
//!   exact pixels.
//! - [`Logit`]: `[0, 1] → ℝ`, `y = logit(α + (1 − 2α)·x)` (RealNVP §4.1).

use burn::tensor::activation::sigmoid;
use burn::tensor::Tensor;

use crate::error::{FlowError, Result};
use crate::flow::{check_finite, sum_per_sample, Cond, Flow};

/// Fails unless every value of `x` is finite and within `[lo, hi]`.
fn check_range<const D: usize>(layer: &'static str, x: &Tensor<D>, lo: f32, hi: f32) -> Result<()> {
    let min = x.clone().min().into_scalar::<f32>();
    let max = x.clone().max().into_scalar::<f32>();
    let finite = x.clone().is_finite().all().into_scalar::<bool>();
    if !finite || min < lo || max > hi {
        let found = if finite {
            format!("values in [{min}, {max}]")
        } else {
            "NaN or infinite values".to_string()
        };
        return Err(FlowError::value(
            layer,
            format!("expected values in [{lo}, {hi}], found {found}"),
        ));
    }
    Ok(())
}

/// n-bit quantisation and uniform dequantisation of 8-bit data.
#[derive(Debug, Clone, Copy)]
pub struct Dequantize {
    /// Bits kept per value (Glow uses 5 on CelebA-HQ, 8 elsewhere).
    pub n_bits: u32,
    /// Output in `[−0.5, 0.5)` (Glow) rather than `[0, 1)` (RealNVP, before [`Logit`]).
    pub centered: bool,
}

impl Dequantize {
    pub fn new(n_bits: u32) -> Self {
        assert!((1..=8).contains(&n_bits), "n_bits must be 1..=8");
        Self {
            n_bits,
            centered: true,
        }
    }

    pub fn bins(&self) -> f64 {
        (1u32 << self.n_bits) as f64
    }

    fn step(&self) -> f64 {
        (1u32 << (8 - self.n_bits)) as f64
    }

    /// 8-bit values (0‥255, as floats) → continuous values, with `u ∈ [0, 1)` (the shape of
    /// `x`) placing each value within its bin; `None` puts every value at its bin's centre.
    /// The noise comes from the caller (see [`crate::noise`]), so that a likelihood depends
    /// on the input and its noise only, never on a batch or a device's generator.
    pub fn dequantize<const D: usize>(
        &self,
        x: Tensor<D>,
        u: Option<Tensor<D>>,
    ) -> Result<(Tensor<D>, Tensor<1>)> {
        check_range("Dequantize", &x, 0.0, 255.0)?;
        let k = if self.n_bits < 8 {
            (x / self.step()).floor()
        } else {
            x
        };
        let v = match u {
            Some(u) if u.dims() == k.dims() => {
                check_range("dequantization noise", &u, 0.0, 1.0)?;
                k + u
            }
            Some(u) => {
                return Err(FlowError::shape(
                    "dequantization noise",
                    format!("the inputs' shape {:?}", k.dims()),
                    u.dims(),
                ))
            }
            None => k + 0.5,
        };
        let y = v / self.bins() - if self.centered { 0.5 } else { 0.0 };
        let dims: usize = y.dims()[1..].iter().product();
        let n = y.dims()[0];
        let logdet = Tensor::full([n], -(dims as f64) * self.bins().ln(), &y.device());
        Ok((y, logdet))
    }
}

impl<const D: usize> Flow<D> for Dequantize {
    /// Input: 8-bit values (0‥255) as floats, each put at its bin's centre.
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        self.dequantize(x, None)
    }

    /// Back to 8-bit values: the bin each value falls in, at its lowest 8-bit level.
    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        // Before quantising: clamping would turn an overflow into plausible-looking pixels.
        check_finite("Dequantize", &y)?;
        let v = (y + if self.centered { 0.5 } else { 0.0 }) * self.bins();
        Ok(v.floor().clamp(0.0, self.bins() - 1.0) * self.step())
    }
}

/// The logit transform with a margin α that keeps values away from 0 and 1.
#[derive(Debug, Clone, Copy)]
pub struct Logit {
    /// RealNVP: 0.05 on CIFAR-10, 1e-6 on MNIST.
    pub alpha: f64,
}

impl Logit {
    pub fn new(alpha: f64) -> Self {
        assert!((0.0..0.5).contains(&alpha), "alpha must be in [0, 0.5)");
        Self { alpha }
    }
}

impl<const D: usize> Flow<D> for Logit {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        check_range("Logit", &x, 0.0, 1.0)?;
        let p = x * (1.0 - 2.0 * self.alpha) + self.alpha;
        let (log_p, log_q) = (p.clone().log(), p.neg().log1p());
        let y = log_p.clone() - log_q.clone();
        // dy/dx = (1 − 2α) / (p (1 − p)).
        let logdet = sum_per_sample((log_p + log_q).neg() + (1.0 - 2.0 * self.alpha).ln());
        Ok((y, logdet))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        Ok((sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn pixels(dims: [usize; 4], step: f32, dev: &burn::tensor::Device) -> Tensor<4> {
        let u = randn(dims, dev).abs() * 60.0;
        (u / step).floor().clamp(0.0, (255.0 / step).floor()) * step
    }

    #[test]
    fn dequantize_round_trips_pixels_exactly_at_every_bit_depth() {
        let dev = device();
        for n_bits in [8, 5, 3] {
            let step = (1 << (8 - n_bits)) as f32;
            let x = pixels([2, 3, 4, 4], step, &dev);
            let u = randn([2, 3, 4, 4], &dev).abs().clamp(0.0, 0.999);
            for noise in [Some(u), None] {
                let layer = Dequantize {
                    n_bits,
                    centered: true,
                };
                let (y, logdet) = layer.dequantize(x.clone(), noise).unwrap();
                let (lo, hi) = (to_vec(y.clone().min())[0], to_vec(y.clone().max())[0]);
                assert!((-0.5..0.5).contains(&lo) && hi < 0.5);
                assert_eq!(to_vec(layer.inverse(y, None).unwrap()), to_vec(x.clone()));
                let want = -48.0 * ((1u32 << n_bits) as f32).ln();
                to_vec(logdet)
                    .iter()
                    .for_each(|l| assert!((l - want).abs() < 1e-3));
            }
        }
    }

    #[test]
    fn dequantize_places_values_in_their_bin_by_the_given_noise() {
        let dev = device();
        let layer = Dequantize {
            n_bits: 8,
            centered: false,
        };
        let x = Tensor::<2>::from_floats([[0.0, 10.0, 255.0]], &dev);
        let u = Tensor::<2>::from_floats([[0.25, 0.0, 0.75]], &dev);
        let (y, _) = layer.dequantize(x.clone(), Some(u)).unwrap();
        let want = [0.25 / 256.0, 10.0 / 256.0, 255.75 / 256.0];
        to_vec(y)
            .iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-7, "{a} vs {b}"));
        let (y, _) = layer.dequantize(x.clone(), None).unwrap();
        assert!((to_vec(y)[1] - 10.5 / 256.0).abs() < 1e-7);
        // Noise of another shape or outside [0, 1] is refused.
        let err = layer
            .dequantize(x.clone(), Some(Tensor::zeros([1, 2], &dev)))
            .unwrap_err();
        assert!(err.to_string().contains("dequantization noise"), "{err}");
        let err = layer
            .dequantize(x, Some(Tensor::full([1, 3], 1.5, &dev)))
            .unwrap_err();
        assert!(
            err.to_string().contains("expected values in [0, 1]"),
            "{err}"
        );
    }

    #[test]
    fn dequantize_logdet_matches_jacobian_at_8_bits() {
        let dev = device();
        let layer = Dequantize {
            n_bits: 8,
            centered: false,
        };
        check_flow(&layer, pixels([2, 4, 2, 2], 1.0, &dev), None);
    }

    #[test]
    fn logit_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let x = randn([2, 4, 2, 2], &dev).abs().clamp(0.0, 3.0) / 3.0;
        check_flow(&Logit::new(0.05), x, None);
        // Inside [0, 1) by a margin: at x = 1 with α = 1e-6, f32 cannot invert the logit to
        // 1e-4 (a draw of |v| ≥ 3, 4 % of runs, made this test flaky).
        let x = randn([3, 5], &dev).abs().clamp(0.0, 2.9) / 3.0;
        check_flow(&Logit::new(1e-6), x, None);
    }

    #[test]
    fn rejects_values_out_of_range_and_nan() {
        let dev = device();
        let bad = Tensor::<2>::from_floats([[0.0, 256.0]], &dev);
        let err = Dequantize::new(8).forward(bad, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected values in [0, 255], found values in [0, 256]"),
            "{err}"
        );
        let nan = Tensor::<2>::from_floats([[0.5, f32::NAN]], &dev);
        let err = Logit::new(0.05).forward(nan, None).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
    }
}
