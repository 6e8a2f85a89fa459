use burn::module::Module;
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Distribution as Noise, Tensor};

use super::BaseDistribution;
use crate::error::{FlowError, Result};
use crate::flow::{sum_per_sample, Cond};

/// The standard logistic distribution over samples of `shape`, NICE's prior:
/// `log p(z) = −softplus(z) − softplus(−z)` per entry. Its heavier tails than a Gaussian's
/// give stronger gradients far from the mode.
#[derive(Module, Debug)]
pub struct Logistic {
    #[module(skip)]
    pub shape: Vec<usize>,
}

impl Logistic {
    pub fn new(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
        }
    }

    fn check(&self, dims: &[usize]) -> Result<()> {
        if dims[1..] != self.shape[..] {
            return Err(FlowError::shape(
                "Logistic prior",
                format!("latents of shape (N, {:?})", self.shape),
                dims,
            ));
        }
        Ok(())
    }
}

impl<const D: usize> BaseDistribution<D> for Logistic {
    fn log_prob(&self, z: Tensor<D>, _: Cond) -> Result<Tensor<1>> {
        self.check(&z.dims())?;
        Ok(sum_per_sample(
            (softplus(z.clone(), 1.0) + softplus(z.neg(), 1.0)).neg(),
        ))
    }

    /// Inverse CDF: `T · (log u − log(1 − u))`, u ~ U(0, 1).
    fn sample(&self, n: usize, temperature: f64, _: Cond, device: &Device) -> Result<Tensor<D>> {
        let mut dims = [n; D];
        if self.shape.len() + 1 != D {
            return Err(FlowError::shape(
                "Logistic prior",
                format!("latents of shape (N, {:?})", self.shape),
                format!("a rank-{D} request"),
            ));
        }
        dims[1..].copy_from_slice(&self.shape);
        let u = Tensor::<D>::random(dims, Noise::Uniform(1e-7, 1.0 - 1e-7), device);
        Ok((u.clone().log() - u.neg().log1p()) * temperature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn log_prob_matches_the_formula_and_samples_have_logistic_spread() {
        let dev = device();
        dev.seed(1);
        let prior = Logistic::new(&[2]);
        let z = Tensor::<2>::from_floats([[0.0, 3.0]], &dev);
        let lp = to_vec(BaseDistribution::<2>::log_prob(&prior, z, None).unwrap())[0];
        // p(z) = e^{-z} / (1 + e^{-z})².
        let p = |z: f32| (-z).exp() / (1.0 + (-z).exp()).powi(2);
        assert!((lp - (p(0.0).ln() + p(3.0).ln())).abs() < 1e-5);
        // Variance of the standard logistic is π²/3.
        let s: Tensor<2> = Logistic::new(&[20000]).sample(1, 1.0, None, &dev).unwrap();
        let var = to_vec(s.var(1))[0];
        assert!(
            (var - std::f32::consts::PI.powi(2) / 3.0).abs() < 0.15,
            "{var}"
        );
    }
}
