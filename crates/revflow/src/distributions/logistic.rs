use burn::module::Module;
use burn::tensor::activation::softplus;
use burn::tensor::Tensor;

use super::BaseDistribution;
use crate::error::{FlowError, Result};
use crate::flow::{sum_per_sample, Cond};
use crate::noise::Standard;

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

    /// Standard already: `ε = z`.
    fn standardize(&self, z: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        self.check(&z.dims())?;
        Ok(z)
    }

    fn destandardize(&self, eps: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        self.check(&eps.dims())?;
        Ok(eps)
    }

    fn standard(&self) -> Standard {
        Standard::Logistic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn log_prob_matches_the_formula() {
        let dev = device();
        let prior = Logistic::new(&[2]);
        let z = Tensor::<2>::from_floats([[0.0, 3.0]], &dev);
        let lp = to_vec(BaseDistribution::<2>::log_prob(&prior, z, None).unwrap())[0];
        // p(z) = e^{-z} / (1 + e^{-z})².
        let p = |z: f32| (-z).exp() / (1.0 + (-z).exp()).powi(2);
        assert!((lp - (p(0.0).ln() + p(3.0).ln())).abs() < 1e-5);
        let err =
            BaseDistribution::<2>::standardize(&prior, randn([1, 3], &dev), None).unwrap_err();
        assert!(err.to_string().contains("latents of shape"), "{err}");
    }
}
