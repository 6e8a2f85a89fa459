//! Monotonic rational-quadratic spline (Durkan et al. 2019, "Neural Spline Flows", §3.1 and
//! appendix A), with linear (identity) tails outside `[−B, B]`.
//!
//! K bins with knots `(x_k, y_k)`, `x_0 = y_0 = −B`, `x_K = y_K = B`, and positive derivatives
//! `δ_k` at the knots (`δ_0 = δ_K = 1`, so that the map is C¹ at ±B). In bin k, with
//! `w = x_{k+1} − x_k`, `h = y_{k+1} − y_k`, `s = h / w` and `ξ = (x − x_k) / w`:
//!
//! ```text
//!   y  = y_k + h·(s·ξ² + δ_k·ξ(1−ξ)) / (s + (δ_{k+1} + δ_k − 2s)·ξ(1−ξ))           (eq. 4)
//!   y' = s²·(δ_{k+1}·ξ² + 2s·ξ(1−ξ) + δ_k·(1−ξ)²) / (s + (δ_{k+1} + δ_k − 2s)·ξ(1−ξ))²  (eq. 5)
//! ```
//!
//! The inverse solves the quadratic `aξ² + bξ + c = 0` of eq. 6–8 through its stable root
//! `ξ = 2c / (−b − √(b² − 4ac))`, the discriminant clamped at 0 against rounding.
//!
//! Raw parameters per feature: K widths, K heights (each a softmax, then at least
//! [`MIN_BIN`] of the interval), K − 1 interior derivatives `δ = MIN_DERIVATIVE +
//! softplus(raw + c)`, with c chosen so that raw 0 gives δ = 1. All-zero raw parameters (a
//! zero-initialised conditioner) thus give equal bins and unit derivatives: the identity.

use burn::tensor::activation::{softmax, softplus};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::validate::in_range;

/// Smallest bin width and height, as a fraction of the interval `2B` divided by K.
pub const MIN_BIN: f64 = 1e-3;
/// Smallest derivative at an interior knot.
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// A rational-quadratic spline's shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplineConfig {
    /// Bins K (Durkan et al.: 8 for 2-D data, 4–10 elsewhere).
    pub bins: usize,
    /// The spline acts on `[−B, B]` and is the identity outside.
    pub tail_bound: f64,
}

impl Default for SplineConfig {
    fn default() -> Self {
        SplineConfig {
            bins: 8,
            tail_bound: 3.0,
        }
    }
}

impl SplineConfig {
    /// Raw parameters per transformed feature: widths, heights, interior derivatives.
    pub fn params(&self) -> usize {
        3 * self.bins - 1
    }

    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        in_range("bins", self.bins, 2..=64)?;
        in_range("tail_bound", self.tail_bound, 1e-3..=1e4)
    }
}

/// Knots and derivatives of every element's spline, each `[M, K + 1]`.
struct Knots {
    xs: Tensor<2>,
    ys: Tensor<2>,
    derivatives: Tensor<2>,
}

impl SplineConfig {
    fn knots(&self, raw: Tensor<2>) -> Knots {
        let k = self.bins;
        let bound = self.tail_bound;
        let [m, _] = raw.dims();
        let positions = |raw: Tensor<2>| {
            let fraction = softmax(raw, 1) * (1.0 - MIN_BIN * k as f64) + MIN_BIN;
            let inner = fraction.cumsum(1).narrow(1, 0, k - 1) * (2.0 * bound) - bound;
            // The ends exactly at ±B, whatever the rounding of the sum.
            let device = inner.device();
            let end = |v: f64| Tensor::<2>::full([m, 1], v, &device);
            Tensor::cat(vec![end(-bound), inner, end(bound)], 1)
        };
        let xs = positions(raw.clone().narrow(1, 0, k));
        let ys = positions(raw.clone().narrow(1, k, k));
        let shift = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
        let inner = softplus(raw.narrow(1, 2 * k, k - 1) + shift, 1.0) + MIN_DERIVATIVE;
        let ones = Tensor::<2>::ones([m, 1], &inner.device());
        Knots {
            xs,
            ys,
            derivatives: Tensor::cat(vec![ones.clone(), inner, ones], 1),
        }
    }

    /// `y = spline(x)` and `log y'(x)` elementwise; `x` is `[M]`, `raw` `[M, 3K − 1]`.
    pub fn forward(&self, x: Tensor<1>, raw: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
        let (b, xc) = self.locate(raw, &x, false);
        let (y, log_slope) = b.apply((xc - b.x0.clone()) / b.w.clone());
        self.with_tails(x, y, log_slope)
    }

    /// `x = spline⁻¹(y)` and `log x'(y) = −log y'(x)` elementwise.
    pub fn inverse(&self, y: Tensor<1>, raw: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
        let (b, yc) = self.locate(raw, &y, true);
        // Eq. 6–8 with Δ = δ_{k+1} + δ_k − 2s and dy = y − y_k.
        let dy = yc - b.y0.clone();
        let delta = b.d1.clone() + b.d0.clone() - b.s.clone() * 2.0;
        let qa = b.h.clone() * (b.s.clone() - b.d0.clone()) + dy.clone() * delta.clone();
        let qb = b.h.clone() * b.d0.clone() - dy.clone() * delta;
        let qc = b.s.clone().neg() * dy;
        let disc = (qb.clone().powf_scalar(2.0) - qa * qc.clone() * 4.0).clamp_min(0.0);
        // Rounding may leave ξ a hair outside the bin.
        let xi = (qc * 2.0 / (qb.neg() - disc.sqrt())).clamp(0.0, 1.0);
        let x = b.x0.clone() + xi.clone() * b.w.clone();
        let (_, log_slope) = b.apply(xi);
        self.with_tails(y, x, log_slope.neg())
    }

    /// The bin of each value of `v` clamped to `[−B, B]`, among the knots' x (`inverse`: their
    /// y): how many interior knots are at or below it. Returns the bin and the clamped values;
    /// the tails are computed on those (never overflowing) and then replaced.
    fn locate(&self, raw: Tensor<2>, v: &Tensor<1>, inverse: bool) -> (Bin, Tensor<1>) {
        let knots = self.knots(raw);
        let vc = v.clone().clamp(-self.tail_bound, self.tail_bound);
        let edges = if inverse { &knots.ys } else { &knots.xs };
        let [m, _] = edges.dims();
        let interior = edges.clone().narrow(1, 1, self.bins - 1);
        let wide = vc.clone().reshape([m, 1]).expand([m, self.bins - 1]);
        let bin: Tensor<2, Int> = wide.greater_equal(interior).int().sum_dim(1);
        (Bin::at(&knots, bin), vc)
    }

    /// The spline's `(value, log_slope)` within `[−B, B]`; outside, `v` itself and 0.
    fn with_tails(
        &self,
        v: Tensor<1>,
        value: Tensor<1>,
        log_slope: Tensor<1>,
    ) -> (Tensor<1>, Tensor<1>) {
        let inside = v.clone().abs().lower_equal_elem(self.tail_bound);
        let zeros = v.zeros_like();
        (
            v.mask_where(inside.clone(), value),
            zeros.mask_where(inside, log_slope),
        )
    }
}

/// One bin of each element's spline, every field `[M]`.
struct Bin {
    x0: Tensor<1>,
    y0: Tensor<1>,
    w: Tensor<1>,
    h: Tensor<1>,
    s: Tensor<1>,
    d0: Tensor<1>,
    d1: Tensor<1>,
}

impl Bin {
    fn at(knots: &Knots, bin: Tensor<2, Int>) -> Bin {
        let m = bin.dims()[0];
        let pick = |t: &Tensor<2>, i: Tensor<2, Int>| t.clone().gather(1, i).reshape([m]);
        let next = bin.clone() + 1;
        let (x0, x1) = (pick(&knots.xs, bin.clone()), pick(&knots.xs, next.clone()));
        let (y0, y1) = (pick(&knots.ys, bin.clone()), pick(&knots.ys, next.clone()));
        let (w, h) = (x1 - x0.clone(), y1 - y0.clone());
        Bin {
            s: h.clone() / w.clone(),
            d0: pick(&knots.derivatives, bin),
            d1: pick(&knots.derivatives, next),
            x0,
            y0,
            w,
            h,
        }
    }

    /// Eq. 4 and the log of eq. 5 at `ξ` in `[0, 1]`.
    fn apply(&self, xi: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let (s, d0, d1) = (&self.s, &self.d0, &self.d1);
        let one_minus = xi.clone().neg() + 1.0;
        let mix = xi.clone() * one_minus.clone();
        let xi2 = xi.clone().powf_scalar(2.0);
        let den = s.clone() + (d1.clone() + d0.clone() - s.clone() * 2.0) * mix.clone();
        let num = self.h.clone() * (s.clone() * xi2.clone() + d0.clone() * mix.clone());
        let y = self.y0.clone() + num / den.clone();
        let slope_num = s.clone().powf_scalar(2.0)
            * (d1.clone() * xi2 + s.clone() * mix * 2.0 + d0.clone() * one_minus.powf_scalar(2.0));
        let log_slope = slope_num.log() - den.log() * 2.0;
        (y, log_slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Device, TensorData};

    const SPLINE: SplineConfig = SplineConfig {
        bins: 6,
        tail_bound: 2.0,
    };

    fn vector(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    /// Raw parameters far from zero (std `scale`) for `m` elements.
    fn raw(m: usize, scale: f32, device: &Device) -> Tensor<2> {
        randn([m, SPLINE.params()], device) * scale
    }

    /// Points across `[−1.5B, 1.5B]`, every knot of the first row's spline, and ±B exactly.
    fn probes(raw_first: Tensor<2>, device: &Device) -> Vec<f32> {
        let mut v: Vec<f32> = (0..=300).map(|i| -3.0 + 6.0 * i as f32 / 300.0).collect();
        let knots = SPLINE.knots(raw_first);
        v.extend(to_vec(knots.xs));
        v.extend([-2.0, 2.0, 2.0 + 1e-6, -2.0 - 1e-6, 0.0]);
        let _ = device;
        v
    }

    #[test]
    fn zero_parameters_are_the_identity() {
        let dev = device();
        let x: Vec<f32> = (0..=80).map(|i| -4.0 + 0.1 * i as f32).collect();
        let zeros = Tensor::<2>::zeros([x.len(), SPLINE.params()], &dev);
        let (y, log_slope) = SPLINE.forward(vector(&x, &dev), zeros);
        for ((a, b), l) in x.iter().zip(to_vec(y)).zip(to_vec(log_slope)) {
            assert!((a - b).abs() < 1e-6, "{a} -> {b}");
            assert!(l.abs() < 1e-6, "log slope {l} at {a}");
        }
    }

    #[test]
    fn monotone_inverse_round_trip_and_identity_tails() {
        let dev = device();
        for (seed, scale) in [(1, 1.0f32), (2, 3.0), (3, 10.0)] {
            dev.seed(seed);
            let one = raw(1, scale, &dev);
            let x = probes(one.clone(), &dev);
            let m = x.len();
            // Every element shares the first row's spline, so the outputs must be monotone
            // (strictly in exact arithmetic; f32 may round neighbours on a flat stretch alike).
            let shared = one.clone().expand([m, SPLINE.params()]);
            let (y, ls) = SPLINE.forward(vector(&x, &dev), shared.clone());
            let (back, ils) = SPLINE.inverse(y.clone(), shared.clone());
            // The inverse's log-slope is minus the forward's at the point it returns.
            let (_, ls_back) = SPLINE.forward(back.clone(), shared);
            let (y, back) = (to_vec(y), to_vec(back));
            let (ls, ils, ls_back) = (to_vec(ls), to_vec(ils), to_vec(ls_back));
            let mut order: Vec<usize> = (0..m).collect();
            order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
            for w in order.windows(2) {
                let (i, j) = (w[0], w[1]);
                if x[i] < x[j] {
                    let (a, b) = (y[i], y[j]);
                    assert!(a <= b, "decreasing: f({}) = {a} > f({}) = {b}", x[i], x[j]);
                }
            }
            // f32 resolves y to ε·|y|, so x comes back to within that over the slope: where
            // the spline is nearly flat (slope e⁻¹¹ occurs at std 3) no inverse can do better.
            // Elsewhere the bound is 1e-5 (and at std 1 everywhere).
            for i in 0..m {
                assert!(y[i].is_finite() && ls[i].is_finite() && ils[i].is_finite());
                let (x, y, back) = (x[i], y[i], back[i]);
                let slope = ls[i].exp();
                let resolution = 4.0 * f32::EPSILON * y.abs().max(1.0) / slope;
                let bound = if scale <= 1.0 {
                    1e-5
                } else {
                    1e-5 + resolution
                };
                assert!(
                    (back - x).abs() <= bound,
                    "scale {scale}: {x} -> {y} -> {back}"
                );
                let (l, il) = (ls_back[i], ils[i]);
                assert!(
                    (l + il).abs() < 1e-4 * l.abs().max(1.0),
                    "log slopes {l} and {il}"
                );
                if x.abs() > 2.0 {
                    assert_eq!((y, back, ls[i]), (x, x, 0.0), "tail at {x}");
                }
            }
        }
    }

    #[test]
    fn extreme_inputs_and_parameters_stay_finite() {
        let dev = device();
        let x = [
            -1e30f32,
            1e30,
            -2.0,
            2.0,
            0.0,
            1e-30,
            -1.999_999,
            f32::MAX,
            f32::MIN,
        ];
        for scale in [0.0f32, 50.0, 1e4] {
            dev.seed(7);
            let r = raw(x.len(), scale, &dev);
            let (y, ls) = SPLINE.forward(vector(&x, &dev), r.clone());
            let (back, ils) = SPLINE.inverse(y.clone(), r);
            for v in [to_vec(y), to_vec(ls), to_vec(back.clone()), to_vec(ils)] {
                assert!(v.iter().all(|v| v.is_finite()), "scale {scale}: {v:?}");
            }
            // Tails stay exact; inside, such parameters make bins 2B·MIN_BIN wide holding
            // nearly all of [−B, B]'s image, which f32 cannot invert closely: finite is the bar.
            for (a, b) in x.iter().zip(to_vec(back)) {
                if a.abs() > 2.0 || scale == 0.0 {
                    assert_eq!(*a, b, "scale {scale}");
                }
            }
        }
    }

    /// The log-slope equals log dy/dx from autodiff (each y depends on its own x only).
    #[test]
    fn log_slope_is_the_derivative() {
        let ad = ad();
        ad.seed(4);
        let x: Vec<f32> = (0..200).map(|i| -2.6 + 5.2 * i as f32 / 199.0).collect();
        let r = raw(x.len(), 2.0, &ad);
        let xt = vector(&x, &ad).require_grad();
        let (y, ls) = SPLINE.forward(xt.clone(), r.clone());
        let grads = y.sum().backward();
        let dy = to_vec(xt.grad(&grads).expect("dy/dx"));
        for ((xv, d), l) in x.iter().zip(dy).zip(to_vec(ls)) {
            assert!(d > 0.0, "slope {d} at {xv}");
            assert!(
                (d.ln() - l).abs() < 1e-4,
                "at {xv}: log dy/dx {} vs {l}",
                d.ln()
            );
        }
        // And the inverse's log-slope is log dx/dy.
        let yt = vector(&x, &ad).require_grad();
        let (xb, ils) = SPLINE.inverse(yt.clone(), r);
        let grads = xb.sum().backward();
        let dx = to_vec(yt.grad(&grads).expect("dx/dy"));
        for ((yv, d), l) in x.iter().zip(dx).zip(to_vec(ils)) {
            // Autodiff through the quadratic's root is less precise in f32 than eq. 5.
            assert!(
                (d.ln() - l).abs() < 1e-3,
                "at {yv}: log dx/dy {} vs {l}",
                d.ln()
            );
        }
    }

    #[test]
    fn bins_and_derivatives_keep_their_lower_bounds() {
        let dev = device();
        dev.seed(9);
        let knots = SPLINE.knots(raw(64, 30.0, &dev));
        let widths = |t: Tensor<2>| {
            let k = SPLINE.bins;
            to_vec(t.clone().narrow(1, 1, k) - t.narrow(1, 0, k))
        };
        let least = MIN_BIN * 2.0 * SPLINE.tail_bound * (1.0 - 1e-3);
        for w in widths(knots.xs).into_iter().chain(widths(knots.ys)) {
            assert!(w as f64 >= least, "bin {w} < {least}");
        }
        assert!(to_vec(knots.derivatives)
            .iter()
            .all(|&d| d as f64 >= MIN_DERIVATIVE));
    }
}
