//! Split, or factor-out (RealNVP §3.6, Glow §3.4): half of the channels leave the flow as
//! latents `z` at this scale; the other half goes on. Glow models `z` with a Gaussian whose
//! mean and log-std a zero-initialised convolution computes from the kept half
//! (`log p(z | h)`); RealNVP uses N(0, I). The split itself is a bijection
//! `x ↔ (h, z)` with unit Jacobian; its contribution to `log p(x)` is `log p(z | h)`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::conv::ZeroConv2d;
use crate::distributions::{gaussian_destandardize, gaussian_log_prob, gaussian_standardize};
use crate::error::{FlowError, Result};
use crate::flow::check_channels;

/// Configuration of a [`Split`].
#[derive(Debug, Clone)]
pub struct SplitConfig {
    /// Channels entering the split (even).
    pub channels: usize,
    /// Glow's learned conditional prior (true) or RealNVP's N(0, I) (false).
    pub learned_prior: bool,
}

impl SplitConfig {
    pub fn new(channels: usize, learned_prior: bool) -> Self {
        Self {
            channels,
            learned_prior,
        }
    }

    pub fn init(&self, device: &Device) -> Result<Split> {
        if !self.channels.is_multiple_of(2) {
            return Err(FlowError::Config(format!(
                "a split needs an even number of channels, got {}",
                self.channels
            )));
        }
        let half = self.channels / 2;
        Ok(Split {
            prior: self
                .learned_prior
                .then(|| ZeroConv2d::new(half, 2 * half, device)),
            channels: self.channels,
        })
    }
}

#[derive(Module, Debug)]
pub struct Split {
    /// Kept half → `[mean; log_std]` of the factored-out half.
    pub prior: Option<ZeroConv2d>,
    #[module(skip)]
    pub channels: usize,
}

impl Split {
    fn prior_of(&self, kept: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let half = self.channels / 2;
        match &self.prior {
            Some(conv) => {
                let h = conv.forward(kept.clone());
                (h.clone().narrow(1, 0, half), h.narrow(1, half, half))
            }
            None => (kept.zeros_like(), kept.zeros_like()),
        }
    }

    /// `x → (h, z, log p(z | h))`.
    pub fn forward(&self, x: Tensor<4>) -> Result<(Tensor<4>, Tensor<4>, Tensor<1>)> {
        check_channels("Split", &x, self.channels)?;
        let half = self.channels / 2;
        let (kept, z) = (x.clone().narrow(1, 0, half), x.narrow(1, half, half));
        let (mean, log_std) = self.prior_of(&kept);
        let log_p = gaussian_log_prob(z.clone(), mean, log_std);
        Ok((kept, z, log_p))
    }

    /// `z → ε = (z − μ(h)) / σ(h)`, standard normal under the prior.
    pub fn standardize(&self, kept: &Tensor<4>, z: Tensor<4>) -> Tensor<4> {
        let (mean, log_std) = self.prior_of(kept);
        gaussian_standardize(z, mean, log_std)
    }

    /// `(h, z) → x`, with `z` given as itself or as standardised `ε` (`z = μ(h) + σ(h)·ε`).
    pub fn inverse(&self, kept: Tensor<4>, z: Latent) -> Result<Tensor<4>> {
        check_channels("Split inverse", &kept, self.channels / 2)?;
        let (Latent::Value(t) | Latent::Standard(t)) = &z;
        if t.dims() != kept.dims() {
            return Err(FlowError::shape(
                "Split inverse",
                format!("a latent of shape {:?}", kept.dims()),
                t.dims(),
            ));
        }
        let z = match z {
            Latent::Value(z) => z,
            Latent::Standard(eps) => {
                let (mean, log_std) = self.prior_of(&kept);
                gaussian_destandardize(eps, mean, log_std)
            }
        };
        Ok(Tensor::cat(vec![kept, z], 1))
    }
}

/// A factored-out latent for an inverse: `z` itself, or standardised `ε` under its prior
/// (what sampling draws).
#[derive(Debug, Clone)]
pub enum Latent {
    Value(Tensor<4>),
    Standard(Tensor<4>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn inverts_and_scores_z_under_its_prior() {
        let dev = device();
        for learned in [false, true] {
            let split = perturb(SplitConfig::new(4, learned).init(&dev).unwrap(), 0.3, 2);
            let x = randn([2, 4, 3, 3], &dev);
            let (kept, z, log_p) = split.forward(x.clone()).unwrap();
            assert_eq!(kept.dims(), [2, 2, 3, 3]);
            let back = split
                .inverse(kept.clone(), Latent::Value(z.clone()))
                .unwrap();
            assert!(max_abs_diff(&back, &x) == 0.0);
            // Through ε: the same x.
            let eps = split.standardize(&kept, z.clone());
            let back = split
                .inverse(kept.clone(), Latent::Standard(eps.clone()))
                .unwrap();
            assert!(max_abs_diff(&back, &x) < 1e-5);
            // log p(z | h) by hand, with the prior's mean and log-std.
            let (mean, log_std) = split.prior_of(&kept);
            let (z, m, s) = (to_vec(z), to_vec(mean), to_vec(log_std));
            if !learned {
                assert!(m.iter().chain(&s).all(|v| *v == 0.0));
            } else {
                assert!(
                    s.iter().any(|v| v.abs() > 1e-3),
                    "prior moved away from N(0, I)"
                );
            }
            let lp = to_vec(log_p);
            for (i, lp_i) in lp.iter().enumerate() {
                let by_hand: f32 = (i * 18..(i + 1) * 18)
                    .map(|j| {
                        let e = (z[j] - m[j]) / s[j].exp();
                        -0.5 * (e * e + (2.0 * std::f32::consts::PI).ln()) - s[j]
                    })
                    .sum();
                assert!(
                    (lp_i - by_hand).abs() <= 1e-5 * by_hand.abs().max(1.0),
                    "{lp_i} vs {by_hand}"
                );
            }
            // ε is (z − μ) / σ.
            let e = to_vec(eps);
            for j in 0..e.len() {
                let want = (z[j] - m[j]) / s[j].exp();
                assert!((e[j] - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
            let err = split
                .inverse(kept, Latent::Standard(randn([2, 2, 3, 4], &dev)))
                .unwrap_err();
            assert!(err.to_string().contains("a latent of shape"), "{err}");
        }
    }

    #[test]
    fn gradients_reach_the_prior() {
        let ad = ad();
        let split = perturb(SplitConfig::new(4, true).init(&ad).unwrap(), 0.1, 1);
        let (_, _, log_p) = split.forward(randn([2, 4, 3, 3], &ad)).unwrap();
        assert_params_get_gradients(&split, log_p.sum().backward());
    }

    #[test]
    fn rejects_odd_channels() {
        let dev = device();
        let err = SplitConfig::new(3, true).init(&dev).unwrap_err();
        assert!(
            err.to_string().contains("even number of channels, got 3"),
            "{err}"
        );
        let split = SplitConfig::new(4, false).init(&dev).unwrap();
        let err = split.forward(randn([1, 6, 2, 2], &dev)).unwrap_err();
        assert!(
            err.to_string().contains("Split: expected 4 channels"),
            "{err}"
        );
    }
}
