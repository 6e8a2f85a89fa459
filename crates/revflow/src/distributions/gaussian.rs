use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::{gaussian_destandardize, gaussian_log_prob, gaussian_standardize, BaseDistribution};
use crate::error::{FlowError, Result};
use crate::flow::Cond;
use crate::noise::Standard;

/// Configuration of a diagonal [`Gaussian`] base distribution.
#[derive(Debug, Clone)]
pub struct GaussianConfig {
    /// Shape of one latent sample: `[C, H, W]` or `[D]`.
    pub shape: Vec<usize>,
    /// Learn a mean and log-std for every latent entry (Glow's `learntop`).
    pub learn_top: bool,
    /// Width of the conditioning input (0: none): a zero-initialised linear map from the
    /// one-hot label (Glow's `ycond`) or the standardised context vector to a per-channel
    /// mean and log-std.
    pub classes: usize,
}

impl GaussianConfig {
    /// N(0, I) over samples of `shape`.
    pub fn standard(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            learn_top: false,
            classes: 0,
        }
    }

    pub fn with_learn_top(mut self, learn_top: bool) -> Self {
        self.learn_top = learn_top;
        self
    }

    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    pub fn init(&self, device: &Device) -> Gaussian {
        let size: usize = self.shape.iter().product();
        Gaussian {
            top: self
                .learn_top
                .then(|| Param::from_tensor(Tensor::zeros([2, size], device))),
            class_map: (self.classes > 0).then(|| {
                LinearConfig::new(self.classes, 2 * self.shape[0])
                    .with_initializer(Initializer::Zeros)
                    .init(device)
            }),
            shape: self.shape.clone(),
        }
    }
}

/// A diagonal Gaussian; N(0, I) until trained when learned or conditional.
#[derive(Module, Debug)]
pub struct Gaussian {
    /// Learned `[mean; log_std]` per entry (learn-top).
    pub top: Option<Param<Tensor<2>>>,
    /// Class → per-channel `[mean; log_std]`.
    pub class_map: Option<Linear>,
    #[module(skip)]
    pub shape: Vec<usize>,
}

impl Gaussian {
    /// `(mean, log_std)` broadcast to `(n, shape…)`.
    fn parameters<const D: usize>(
        &self,
        n: usize,
        cond: Cond,
        device: &Device,
    ) -> Result<(Tensor<D>, Tensor<D>)> {
        if self.shape.len() + 1 != D {
            return Err(FlowError::shape(
                "Gaussian prior",
                format!("latents of shape (N, {:?})", self.shape),
                format!("a rank-{D} tensor"),
            ));
        }
        let mut full = [n; D];
        full[1..].copy_from_slice(&self.shape);
        let mut one = full;
        one[0] = 1;
        let (mut mean, mut log_std) = match &self.top {
            Some(top) => {
                let top = top.val();
                (
                    top.clone().narrow(0, 0, 1).reshape(one).expand(full),
                    top.narrow(0, 1, 1).reshape(one).expand(full),
                )
            }
            None => (Tensor::zeros(full, device), Tensor::zeros(full, device)),
        };
        match (&self.class_map, cond) {
            (Some(map), Some(y)) if y.dims() == [n, map.weight.dims()[0]] => {
                let c = self.shape[0];
                let h = map.forward(y.clone());
                let mut per_channel = [1; D];
                per_channel[..2].copy_from_slice(&[n, c]);
                mean = mean + h.clone().narrow(1, 0, c).reshape(per_channel);
                log_std = log_std + h.narrow(1, c, c).reshape(per_channel);
            }
            (Some(map), y) => {
                return Err(FlowError::shape(
                    "class-conditional prior",
                    format!("one-hot labels (N={n}, {})", map.weight.dims()[0]),
                    y.map(|y| format!("{:?}", y.dims()))
                        .unwrap_or("no labels".into()),
                ))
            }
            (None, _) => {}
        }
        Ok((mean, log_std))
    }
}

impl Gaussian {
    /// `(mean, log_std)` for latents `z`, whose shape is checked.
    fn parameters_for<const D: usize>(
        &self,
        z: &Tensor<D>,
        cond: Cond,
    ) -> Result<(Tensor<D>, Tensor<D>)> {
        let dims = z.dims();
        if dims[1..] != self.shape[..] {
            return Err(FlowError::shape(
                "Gaussian prior",
                format!("latents of shape (N, {:?})", self.shape),
                dims,
            ));
        }
        self.parameters::<D>(dims[0], cond, &z.device())
    }
}

impl<const D: usize> BaseDistribution<D> for Gaussian {
    fn log_prob(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<1>> {
        let (mean, log_std) = self.parameters_for(&z, cond)?;
        Ok(gaussian_log_prob(z, mean, log_std))
    }

    fn standardize(&self, z: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        let (mean, log_std) = self.parameters_for(&z, cond)?;
        Ok(gaussian_standardize(z, mean, log_std))
    }

    fn destandardize(&self, eps: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        let (mean, log_std) = self.parameters_for(&eps, cond)?;
        Ok(gaussian_destandardize(eps, mean, log_std))
    }

    fn standard(&self) -> Standard {
        Standard::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn standard_log_prob_matches_the_formula() {
        let dev = device();
        let prior = GaussianConfig::standard(&[2]).init(&dev);
        let z = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, -2.0]], &dev);
        let lp = to_vec(prior.log_prob(z, None).unwrap());
        let c = -(2.0 * std::f32::consts::PI).ln();
        assert!((lp[0] - c).abs() < 1e-5);
        assert!((lp[1] - (c - 2.5)).abs() < 1e-5);
    }

    #[test]
    fn learned_and_conditional_priors_use_their_parameters() {
        let dev = device();
        let prior = perturb(
            GaussianConfig::standard(&[2, 2, 2])
                .with_learn_top(true)
                .with_classes(3)
                .init(&dev),
            0.5,
            1,
        );
        let y = one_hot(&[0, 2], 3, &dev);
        let z: Tensor<4> = prior
            .destandardize(randn([2, 2, 2, 2], &dev), Some(&y))
            .unwrap();
        let (mean, log_std) = prior.parameters::<4>(2, Some(&y), &dev).unwrap();
        // log N by hand on the host.
        let (z, m, s) = (to_vec(z.clone()), to_vec(mean), to_vec(log_std));
        let by_hand: Vec<f32> = (0..2)
            .map(|i| {
                (0..8)
                    .map(|k| {
                        let j = i * 8 + k;
                        let e = (z[j] - m[j]) / s[j].exp();
                        -0.5 * (e * e + (2.0 * std::f32::consts::PI).ln()) - s[j]
                    })
                    .sum()
            })
            .collect();
        let z = Tensor::<1>::from_floats(z.as_slice(), &dev).reshape([2, 2, 2, 2]);
        let lp = to_vec(prior.log_prob(z, Some(&y)).unwrap());
        lp.iter()
            .zip(&by_hand)
            .for_each(|(a, b)| assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0)));
        // Different classes get different means.
        assert!(m[..8] != m[8..]);
    }

    #[test]
    fn standardize_and_destandardize_are_inverse_affine_maps() {
        let dev = device();
        let prior = perturb(
            GaussianConfig::standard(&[3, 2, 2])
                .with_learn_top(true)
                .with_classes(2)
                .init(&dev),
            0.5,
            2,
        );
        let y = one_hot(&[1, 0], 2, &dev);
        let z = randn([2, 3, 2, 2], &dev);
        let eps = prior.standardize(z.clone(), Some(&y)).unwrap();
        let (mean, log_std) = prior.parameters::<4>(2, Some(&y), &dev).unwrap();
        let by_hand = (z.clone() - mean) / log_std.exp();
        assert!(max_abs_diff(&eps, &by_hand) < 1e-5);
        let back = prior.destandardize(eps, Some(&y)).unwrap();
        assert!(max_abs_diff(&back, &z) < 1e-5);
    }

    #[test]
    fn conditional_prior_needs_labels() {
        let dev = device();
        let prior = GaussianConfig::standard(&[2]).with_classes(3).init(&dev);
        let err = prior.log_prob(randn([2, 2], &dev), None).unwrap_err();
        assert!(err.to_string().contains("one-hot labels (N=2, 3)"), "{err}");
    }
}
