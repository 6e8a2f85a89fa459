//! NICE's diagonal scaling layer (NICE §3.3): `y = x · exp(s)` with one learned `s` per
//! dimension, so `log|det J| = Σ s`. It lets an otherwise volume-preserving NICE model
//! choose which dimensions matter.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::{FlowError, Result};
use crate::flow::{Cond, Flow};

#[derive(Module, Debug)]
pub struct DiagScale {
    /// log of the scale, one per dimension of a sample (flattened).
    pub log_scale: Param<Tensor<1>>,
}

impl DiagScale {
    /// A scaling layer for samples of `dims` dimensions (C·H·W for images); starts at 1.
    pub fn new(dims: usize, device: &Device) -> Self {
        DiagScale {
            log_scale: Param::from_tensor(Tensor::zeros([dims], device)),
        }
    }

    fn scale_for<const D: usize>(&self, x: &Tensor<D>, by: f64) -> Result<Tensor<D>> {
        let dims = x.dims();
        let per_sample: usize = dims[1..].iter().product();
        if per_sample != self.log_scale.dims()[0] {
            return Err(FlowError::shape(
                "DiagScale",
                format!("{} values per sample", self.log_scale.dims()[0]),
                dims,
            ));
        }
        let mut shape = dims;
        shape[0] = 1;
        Ok((self.log_scale.val() * by).exp().reshape(shape))
    }
}

impl<const D: usize> Flow<D> for DiagScale {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let scale = self.scale_for(&x, 1.0)?;
        let n = x.dims()[0];
        Ok((x * scale, self.log_scale.val().sum().expand([n])))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        let scale = self.scale_for(&y, -1.0)?;
        Ok(y * scale)
    }

    /// Starts each dimension at unit variance on the first batch (as ActNorm does per
    /// channel), so that training need not spend thousands of steps growing the scales.
    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        self.scale_for(&x, 1.0)?;
        let n = x.dims()[0];
        if n < 2 {
            return Err(FlowError::shape(
                "DiagScale initialisation",
                "at least 2 samples",
                x.dims(),
            ));
        }
        let std = x
            .clone()
            .detach()
            .reshape([n as i64, -1])
            .var(0)
            .sqrt()
            .reshape([-1]);
        let layer = DiagScale {
            log_scale: self.log_scale.map(|old| {
                let new = (std + 1e-6).log().neg().detach();
                if old.is_require_grad() {
                    new.require_grad()
                } else {
                    new
                }
            }),
        };
        let (y, _) = layer.forward(x, cond)?;
        Ok((layer, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn inverts_and_logdet_matches_jacobian() {
        let dev = device();
        check_flow(
            &perturb(DiagScale::new(8, &dev), 0.5, 1),
            randn([3, 8], &dev),
            None,
        );
        let image = perturb(DiagScale::new(2 * 3 * 3, &dev), 0.5, 2);
        check_flow(&image, randn([2, 2, 3, 3], &dev), None);
        check_gradients(DiagScale::new(8, &ad()), randn([3, 8], &ad()), None);
    }

    #[test]
    fn data_init_gives_unit_variance_per_dimension() {
        let dev = device();
        let x = randn([64, 3], &dev) * Tensor::<2>::from_floats([[0.1, 1.0, 5.0]], &dev);
        let (layer, y) = DiagScale::new(3, &dev).data_init(x, None).unwrap();
        to_vec(y.var(0))
            .iter()
            .for_each(|v| assert!((v - 1.0).abs() < 1e-3, "{v}"));
        check_flow(&layer, randn([2, 3], &dev), None);
    }

    #[test]
    fn rejects_wrong_size() {
        let dev = device();
        let err = DiagScale::new(8, &dev)
            .forward(randn([3, 7], &dev), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("expected 8 values per sample"),
            "{err}"
        );
    }
}
