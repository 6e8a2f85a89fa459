//! Autoregressive layers: MAF (Papamakarios et al. 2017) and IAF (Kingma et al. 2016). A
//! [`Made`] gives each feature's transform parameters from the features before it, so the
//! Jacobian is triangular and the log-det is the sum of the transform's log-slopes.
//!
//! MAF computes the parameters from the data side, `z = τ(x; h(x))`: one network pass to the
//! latent (fast density), while sampling must recover `x` one feature at a time. IAF computes
//! them from the latent side, `x = τ⁻¹(z; h(z))`: one pass to the data (fast sampling), while
//! the density finds `z = τ(x; h(z))` one feature at a time. Both keep τ itself, not τ⁻¹, in
//! the density direction: Glow's affine τ scales by σ ∈ (0, 1), so the likelihood that
//! training maximises never divides by a vanishing σ (with τ⁻¹ there, IAF on two spirals
//! overflowed to a non-finite loss after 444 steps).
//!
//! The sequential direction takes `D` network passes, pass `k` giving the features of degree
//! `k` (each feature's parameters depend only on features of lower degree): `D` passes where
//! the other direction takes one.

use burn::module::Module;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::flow::{rank, sum_per_sample, Cond, Flow};
use crate::nets::Made;
use crate::transforms::{Conditioner, Transform};

/// Which side the network reads.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Masked autoregressive flow: parameters from the data side.
    Maf,
    /// Inverse autoregressive flow: parameters from the latent side.
    Iaf,
}

#[derive(Module, Debug)]
pub struct Autoregressive {
    pub made: Made,
    #[module(skip)]
    pub transform: Transform,
    #[module(skip)]
    pub direction: Direction,
}

impl Autoregressive {
    /// An autoregressive layer over `made`'s features; `made` must output
    /// `transform.params()` parameters per feature.
    pub fn new(made: Made, transform: Transform, direction: Direction) -> Result<Self> {
        if transform == Transform::AffineRealNvp {
            return Err(FlowError::Config(
                "autoregressive layers take additive, affine or spline transforms".into(),
            ));
        }
        Ok(Self {
            made,
            transform,
            direction,
        })
    }

    fn check<const D: usize>(&self, x: &Tensor<D>) -> Result<Tensor<2>> {
        let dims = x.dims();
        if D != 2 || dims[1] != self.made.features() {
            return Err(FlowError::shape(
                "autoregressive layer",
                format!("vectors (N, {})", self.made.features()),
                dims,
            ));
        }
        Ok(rank::<D, 2>(x.clone()))
    }

    /// One pass: `t` moved by τ (or τ⁻¹ when `reverse`) with the parameters the network reads
    /// from `t` itself; and the log-det of that map.
    fn pass(&self, t: Tensor<2>, reverse: bool, cond: Cond) -> Result<(Tensor<2>, Tensor<1>)> {
        let h = self.made.forward(t.clone(), cond)?;
        let (u, log_slope) = self.transform.apply(t.clone(), h, reverse, None);
        Ok((u, logdet(&t, log_slope)))
    }

    /// The sequential direction: the `u` with `u = τ(t; h(u))` (τ⁻¹ when `reverse`), and
    /// `log|du/dt|`. Pass `k` fills in the features of degree `k`, whose parameters depend
    /// only on the ones already exact; the rest stay 0, so the network never reads a
    /// half-solved value. In the last pass every parameter is exact, so its log-slopes are
    /// the log-det.
    fn solve(&self, t: Tensor<2>, reverse: bool, cond: Cond) -> Result<(Tensor<2>, Tensor<1>)> {
        let [n, d] = t.dims();
        let device = t.device();
        let mut u = t.zeros_like();
        let mut last_slope = None;
        for k in 1..=d {
            let h = self.made.forward(u.clone(), cond)?;
            let (next, log_slope) = self.transform.apply(t.clone(), h, reverse, None);
            let now: Vec<bool> = self.made.degrees.iter().map(|&m| m == k).collect();
            let now = Tensor::<2, Bool>::from_data(TensorData::new(now, [1, d]), &device);
            u = u.mask_where(now.expand([n, d]), next);
            last_slope = log_slope;
        }
        Ok((u, logdet(&t, last_slope)))
    }
}

/// The log-det per sample from elementwise log-slopes (`None`: volume preserving).
fn logdet(t: &Tensor<2>, log_slope: Option<Tensor<2>>) -> Tensor<1> {
    log_slope.map_or_else(|| Tensor::zeros([t.dims()[0]], &t.device()), sum_per_sample)
}

impl<const D: usize> Flow<D> for Autoregressive {
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let x = self.check(&x)?;
        let (z, logdet) = match self.direction {
            Direction::Maf => self.pass(x, false, cond)?,
            Direction::Iaf => self.solve(x, false, cond)?,
        };
        Ok((rank::<2, D>(z), logdet))
    }

    fn inverse(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        let z = self.check(&z)?;
        let x = match self.direction {
            Direction::Maf => self.solve(z, true, cond)?.0,
            Direction::Iaf => self.pass(z, true, cond)?.0,
        };
        Ok(rank::<2, D>(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{MadeConfig, Ordering};
    use crate::testing::*;
    use crate::transforms::SplineConfig;

    const KINDS: [Transform; 3] = [
        Transform::Additive,
        Transform::AffineGlow,
        Transform::Spline(SplineConfig {
            bins: 5,
            tail_bound: 3.0,
        }),
    ];

    fn layer(
        d: usize,
        kind: Transform,
        direction: Direction,
        context: usize,
        seed: u64,
    ) -> Autoregressive {
        let dev = device();
        let made = MadeConfig::new(d, kind.params(), 16, 2)
            .with_context(context)
            .with_ordering(Ordering::Random, seed)
            .init(&dev);
        // Splines' parameters add up over more outputs; smaller weights keep them invertible
        // to f32 precision (as in the coupling tests).
        let std = if matches!(kind, Transform::Spline(_)) {
            0.2
        } else {
            0.4
        };
        perturb(
            Autoregressive::new(made, kind, direction).unwrap(),
            std,
            seed,
        )
    }

    #[test]
    fn maf_and_iaf_invert_and_their_logdet_is_log_det_of_the_jacobian() {
        let dev = device();
        dev.seed(4);
        for (i, kind) in KINDS.into_iter().enumerate() {
            for direction in [Direction::Maf, Direction::Iaf] {
                for context in [0, 2] {
                    let l = layer(4, kind, direction, context, 10 + i as u64);
                    let cond = (context > 0).then(|| randn([3, context], &dev));
                    check_flow(&l, randn([3, 4], &dev), cond.as_ref());
                }
            }
        }
    }

    #[test]
    fn the_density_direction_stays_finite_however_small_the_affine_scale() {
        // Raw scales of −100 make σ(r + 2) ≈ e⁻⁹⁸, below f32's range when inverted (e⁹⁸ > 3.4e38).
        // The density direction multiplies by σ, so it stays finite for both layers; with τ⁻¹
        // in IAF's density direction this gave ∞ (and NaN through the masked products).
        let dev = device();
        for direction in [Direction::Maf, Direction::Iaf] {
            let mut l = layer(3, Transform::AffineGlow, direction, 0, 6);
            let bias = l.made.out.linear.bias.take().unwrap();
            let shifted =
                bias.val() + Tensor::<1>::from_floats([0., 0., 0., -100., -100., -100.], &dev);
            l.made.out.linear.bias = Some(bias.map(|_| shifted));
            let (z, logdet) = l.forward(randn([4, 3], &dev) * 3.0, None).unwrap();
            let values = to_vec(z).into_iter().chain(to_vec(logdet));
            assert!(values.into_iter().all(f32::is_finite), "{direction:?}");
        }
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let ad = ad();
        for direction in [Direction::Maf, Direction::Iaf] {
            let made = MadeConfig::new(3, 2, 8, 2).with_context(2).init(&ad);
            let l = Autoregressive::new(made, Transform::AffineGlow, direction).unwrap();
            let cond = randn([4, 2], &ad);
            check_gradients(perturb(l, 0.1, 3), randn([4, 3], &ad), Some(&cond));
        }
    }

    #[test]
    fn rejects_wrong_shapes() {
        let dev = device();
        let l = layer(3, Transform::Additive, Direction::Maf, 0, 1);
        let err = l.forward(randn([2, 4], &dev), None).unwrap_err();
        assert!(err.to_string().contains("(N, 3)"), "{err}");
        let err = Flow::<4>::forward(&l, randn([2, 3, 2, 2], &dev), None).unwrap_err();
        assert!(err.to_string().contains("autoregressive"), "{err}");
    }
}
