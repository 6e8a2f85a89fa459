//! Fixed channel permutations (RealNVP's reversal, Glow's shuffle baseline). A permutation
//! matrix has |det| = 1, so the log-determinant is 0.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::Result;
use crate::flow::{check_channels, Cond, Flow};
use crate::rng::Rng;

#[derive(Module, Debug)]
pub struct Permute {
    /// `y[:, i] = x[:, perm[i]]`; saved with the weights, so a shuffle survives a reload.
    pub perm: Param<Tensor<1, Int>>,
    pub inverse_perm: Param<Tensor<1, Int>>,
}

impl Permute {
    /// Reverses the channel order.
    pub fn reverse(channels: usize, device: &Device) -> Self {
        Self::from_order((0..channels).rev().collect(), device)
    }

    /// A seeded random shuffle of the channels.
    pub fn shuffle(channels: usize, seed: u64, device: &Device) -> Self {
        Self::from_order(Rng::new(seed).permutation(channels), device)
    }

    fn from_order(perm: Vec<usize>, device: &Device) -> Self {
        let mut inv = vec![0; perm.len()];
        perm.iter().enumerate().for_each(|(i, &p)| inv[p] = i);
        let tensor = |v: Vec<usize>| {
            let v: Vec<i64> = v.into_iter().map(|i| i as i64).collect();
            let n = v.len();
            Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(v, [n]), device),
            )
        };
        Permute {
            perm: tensor(perm),
            inverse_perm: tensor(inv),
        }
    }

    pub fn channels(&self) -> usize {
        self.perm.dims()[0]
    }
}

impl<const D: usize> Flow<D> for Permute {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        check_channels("Permute", &x, self.channels())?;
        let n = x.dims()[0];
        let device = x.device();
        Ok((x.select(1, self.perm.val()), Tensor::zeros([n], &device)))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        check_channels("Permute", &y, self.channels())?;
        Ok(y.select(1, self.inverse_perm.val()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn reverse_and_shuffle_invert_with_zero_logdet() {
        let dev = device();
        for layer in [Permute::reverse(4, &dev), Permute::shuffle(4, 5, &dev)] {
            check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
            check_flow(&layer, randn([3, 4], &dev), None);
        }
        let x = Tensor::<2>::from_floats([[0.0, 1.0, 2.0, 3.0]], &dev);
        let (y, _) = Permute::reverse(4, &dev).forward(x, None).unwrap();
        assert_eq!(to_vec(y), vec![3.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn shuffle_is_seeded() {
        let dev = device();
        let order = |seed| Permute::shuffle(16, seed, &dev).perm.val().to_data();
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
    }
}
