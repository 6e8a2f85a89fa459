//! Squeeze (RealNVP §3.6): 2×2 space-to-depth, `(N, C, H, W) → (N, 4C, H/2, W/2)`. A
//! permutation of entries, so log|det J| = 0. Channel `4c + 2i + j` of the output holds
//! pixel `(2h + i, 2w + j)` of input channel `c`.

use burn::tensor::Tensor;

use crate::error::{FlowError, Result};
use crate::flow::{Cond, Flow};

#[derive(Debug, Clone, Copy, Default)]
pub struct Squeeze;

impl Flow<4> for Squeeze {
    fn forward(&self, x: Tensor<4>, _: Cond) -> Result<(Tensor<4>, Tensor<1>)> {
        let [n, c, h, w] = x.dims();
        if h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
            return Err(FlowError::shape(
                "Squeeze",
                "even, non-zero height and width",
                [n, c, h, w],
            ));
        }
        let device = x.device();
        let y = x
            .reshape([n, c, h / 2, 2, w / 2, 2])
            .permute([0, 1, 3, 5, 2, 4])
            .reshape([n, 4 * c, h / 2, w / 2]);
        Ok((y, Tensor::zeros([n], &device)))
    }

    fn inverse(&self, y: Tensor<4>, _: Cond) -> Result<Tensor<4>> {
        let [n, c4, h, w] = y.dims();
        if c4 % 4 != 0 {
            return Err(FlowError::shape(
                "Squeeze inverse",
                "a channel count divisible by 4",
                [n, c4, h, w],
            ));
        }
        let c = c4 / 4;
        Ok(y.reshape([n, c, 2, 2, h, w])
            .permute([0, 1, 4, 2, 5, 3])
            .reshape([n, c, 2 * h, 2 * w]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::Int;

    #[test]
    fn moves_each_2x2_block_into_channels() {
        let dev = device();
        let x = Tensor::<1, Int>::arange(0..16, &dev)
            .float()
            .reshape([1, 1, 4, 4]);
        let (y, _) = Squeeze.forward(x, None).unwrap();
        assert_eq!(y.dims(), [1, 4, 2, 2]);
        // Top-left block of the input is [0, 1; 4, 5].
        let v = to_vec(y);
        assert_eq!([v[0], v[4], v[8], v[12]], [0.0, 1.0, 4.0, 5.0]);
    }

    #[test]
    fn inverts_with_zero_logdet() {
        let dev = device();
        check_flow(&Squeeze, randn([2, 2, 4, 4], &dev), None);
    }

    #[test]
    fn rejects_odd_sizes() {
        let dev = device();
        let err = Squeeze
            .forward(randn([1, 1, 5, 4], &dev), None)
            .unwrap_err();
        assert!(err.to_string().contains("Squeeze: expected even"), "{err}");
        let err = Squeeze
            .inverse(randn([1, 3, 2, 2], &dev), None)
            .unwrap_err();
        assert!(err.to_string().contains("divisible by 4"), "{err}");
    }
}
