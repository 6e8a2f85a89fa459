//! Invertible 1×1 convolution (Glow §3.2): every position's channel vector is multiplied by
//! a learned C×C matrix W, so `log|det J| = positions · log|det W|`. On vectors this is an
//! invertible linear layer. Initialised as a random rotation (log|det W| = 0).
//!
//! Two parametrisations:
//! - [`InvConv1x1`]: W itself; log|det W| and W⁻¹ come from an f64 LU on the host.
//! - [`InvConv1x1Lu`]: W = P·L·(U + diag(sign·exp(log_s))) with P fixed, L unit lower and U
//!   strictly upper, so log|det W| = Σ log_s costs O(C).

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::conv::conv_same;
use crate::error::Result;
use crate::flow::{check_channels, positions, rank, to_f64, Cond, Flow};
use crate::linalg::{random_rotation, Lu};
use crate::memo::Memo;
use crate::rng::Rng;

/// Configuration of an invertible 1×1 convolution (plain or LU).
#[derive(Debug, Clone)]
pub struct InvConvConfig {
    /// Number of channels (images) or features (vectors).
    pub channels: usize,
    /// Seed of the random rotation W is initialised to.
    pub seed: u64,
}

impl InvConvConfig {
    pub fn new(channels: usize, seed: u64) -> Self {
        Self { channels, seed }
    }

    fn rotation(&self) -> Vec<f64> {
        random_rotation(self.channels, &mut Rng::new(self.seed))
    }

    pub fn init(&self, device: &Device) -> InvConv1x1 {
        InvConv1x1 {
            weight: Param::from_tensor(matrix(&self.rotation(), self.channels, device)),
        }
    }

    pub fn init_lu(&self, device: &Device) -> InvConv1x1Lu {
        let c = self.channels;
        let lu = Lu::new(&self.rotation(), c);
        let (p, l, u) = lu.factors();
        let diag: Vec<f64> = (0..c).map(|i| u[i * c + i]).collect();
        let strict_upper: Vec<f64> = (0..c * c)
            .map(|k| if k % c > k / c { u[k] } else { 0.0 })
            .collect();
        let strict_lower: Vec<f64> = (0..c * c)
            .map(|k| if k % c < k / c { l[k] } else { 0.0 })
            .collect();
        let fixed = |t: Tensor<2>| Param::from_tensor(t).set_require_grad(false);
        let vector =
            |v: Vec<f64>| Tensor::<1>::from_data(TensorData::new(v, [c]).convert::<f32>(), device);
        InvConv1x1Lu {
            permutation: fixed(matrix(&p, c, device)),
            lower: Param::from_tensor(matrix(&strict_lower, c, device)),
            upper: Param::from_tensor(matrix(&strict_upper, c, device)),
            log_s: Param::from_tensor(vector(diag.iter().map(|d| d.abs().ln()).collect())),
            sign_s: Param::from_tensor(vector(diag.iter().map(|d| d.signum()).collect()))
                .set_require_grad(false),
        }
    }
}

fn matrix(values: &[f64], n: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [n, n]).convert::<f32>(),
        device,
    )
}

/// A parameter's values on the host.
fn host<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val()
        .to_data()
        .try_to_vec_as::<f32>()
        .expect("float parameters")
}

/// W⁻¹ made by `invert`, kept while the parameters W is made from (`key`) stay the same:
/// sampling inverts every 1×1 convolution at every call (an f64 LU of W, 1.5 % of sampling the
/// CIFAR-shape Glow).
fn inverse(key: &[&[f32]], invert: impl FnOnce() -> Vec<f64>) -> Arc<Vec<f64>> {
    static MEMO: Memo<Vec<f64>> = Memo::new(8 << 20);
    MEMO.get(key, invert)
}

/// `y[:, i, …] = Σ_j w[i, j] · x[:, j, …]`: the shared channel mixing of both layers.
fn mix<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let c = w.dims()[0];
    if D == 4 {
        rank::<4, D>(conv_same(rank::<D, 4>(x), w.reshape([c, c, 1, 1]), None))
    } else {
        rank::<2, D>(rank::<D, 2>(x).matmul(w.transpose()))
    }
}

fn logdet_per_sample<const D: usize>(x: &Tensor<D>, log_abs_det_w: Tensor<1>) -> Tensor<1> {
    (log_abs_det_w * positions(x) as f64).expand([x.dims()[0]])
}

#[derive(Module, Debug)]
pub struct InvConv1x1 {
    pub weight: Param<Tensor<2>>,
}

impl InvConv1x1 {
    fn host_lu(&self) -> (Lu, usize) {
        let c = self.weight.dims()[0];
        (Lu::new(&to_f64(&self.weight.val()), c), c)
    }
}

impl<const D: usize> Flow<D> for InvConv1x1 {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        let w = self.weight.val();
        let (lu, c) = self.host_lu();
        check_channels("InvConv1x1", &x, c)?;
        // log|det W| exactly (f64 on the host); its gradient W⁻ᵀ enters through the linear
        // term <W − stop(W), W⁻ᵀ>, which is zero in value.
        let inv_t = matrix(&crate::linalg::transpose(&lu.inverse(), c), c, &w.device());
        let log_abs_det = Tensor::<1>::from_floats([lu.log_abs_det() as f32], &w.device())
            + ((w.clone() - w.clone().detach()) * inv_t).sum();
        let logdet = logdet_per_sample(&x, log_abs_det);
        Ok((mix(x, w), logdet))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        let c = self.weight.dims()[0];
        check_channels("InvConv1x1", &y, c)?;
        let weight = host(&self.weight);
        let inv = inverse(&[&weight], || {
            let weight: Vec<f64> = weight.iter().map(|&v| f64::from(v)).collect();
            Lu::new(&weight, c).inverse()
        });
        Ok(mix(y, matrix(&inv, c, &self.weight.device())))
    }
}

#[derive(Module, Debug)]
pub struct InvConv1x1Lu {
    /// Fixed permutation matrix P.
    pub permutation: Param<Tensor<2>>,
    /// Strictly lower part of L (its unit diagonal is implicit).
    pub lower: Param<Tensor<2>>,
    /// Strictly upper part of U.
    pub upper: Param<Tensor<2>>,
    /// log|s|, the log-magnitudes of U's diagonal.
    pub log_s: Param<Tensor<1>>,
    /// sign(s), fixed.
    pub sign_s: Param<Tensor<1>>,
}

impl InvConv1x1Lu {
    fn channels(&self) -> usize {
        self.log_s.dims()[0]
    }

    /// W = P·L·(U + diag(sign·exp(log_s))), masks re-applied so that only the free entries learn.
    pub fn weight(&self) -> Tensor<2> {
        let c = self.channels();
        let device = self.log_s.device();
        let eye = Tensor::<2>::eye(c, &device);
        let ones = Tensor::<2>::ones([c, c], &device);
        let l = self.lower.val() * ones.clone().tril(-1) + eye.clone();
        let diag = (self.sign_s.val() * self.log_s.val().exp()).reshape([1, c]);
        let u = self.upper.val() * ones.triu(1) + eye * diag;
        self.permutation.val().matmul(l).matmul(u)
    }
}

impl<const D: usize> Flow<D> for InvConv1x1Lu {
    fn forward(&self, x: Tensor<D>, _: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        check_channels("InvConv1x1Lu", &x, self.channels())?;
        let logdet = logdet_per_sample(&x, self.log_s.val().sum());
        Ok((mix(x, self.weight()), logdet))
    }

    fn inverse(&self, y: Tensor<D>, _: Cond) -> Result<Tensor<D>> {
        let c = self.channels();
        check_channels("InvConv1x1Lu", &y, c)?;
        let params = [
            host(&self.permutation),
            host(&self.lower),
            host(&self.upper),
        ];
        let (log_s, sign_s) = (host(&self.log_s), host(&self.sign_s));
        let key = [&params[0][..], &params[1], &params[2], &log_s, &sign_s];
        let inv = inverse(&key, || Lu::new(&to_f64(&self.weight()), c).inverse());
        Ok(mix(y, matrix(&inv, c, &self.log_s.device())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn plain_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let layer = perturb(InvConvConfig::new(4, 7).init(&dev), 0.3, 2);
        check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        check_flow(&layer, randn([3, 4], &dev), None);
        check_gradients(
            InvConvConfig::new(4, 7).init(&ad()),
            randn([2, 4, 3, 3], &ad()),
            None,
        );
    }

    #[test]
    fn plain_logdet_gradient_is_the_inverse_transpose() {
        // d log|det W| / dW = W⁻ᵀ, checked against central differences of the f64 log-det.
        let ad = ad();
        let layer = perturb(InvConvConfig::new(3, 2).init(&ad), 0.4, 5);
        let (_, logdet) = Flow::<2>::forward(&layer, randn([1, 3], &ad), None).unwrap();
        let grads = logdet.sum().backward();
        let got = to_vec(layer.weight.val().grad(&grads).unwrap());
        let w = to_f64(&layer.weight.val());
        let h = 1e-6;
        for k in 0..9 {
            let (mut up, mut down) = (w.clone(), w.clone());
            up[k] += h;
            down[k] -= h;
            let want =
                (Lu::new(&up, 3).log_abs_det() - Lu::new(&down, 3).log_abs_det()) / (2.0 * h);
            assert!(
                (got[k] as f64 - want).abs() < 1e-4,
                "entry {k}: {} vs {want}",
                got[k]
            );
        }
    }

    #[test]
    fn inverses_follow_changed_parameters() {
        // W⁻¹ is kept between calls: after an update (parameters of the same shape, new
        // values) the inverse must be the new one.
        let dev = device();
        let x = randn([2, 4, 3, 3], &dev);
        let lu = InvConvConfig::new(4, 7).init_lu(&dev);
        let plain = InvConvConfig::new(4, 7).init(&dev);
        for seed in 0..3 {
            let (lu, plain) = (
                perturb(lu.clone(), 0.3, seed),
                perturb(plain.clone(), 0.3, seed),
            );
            let back = lu
                .inverse(lu.forward(x.clone(), None).unwrap().0, None)
                .unwrap();
            assert!(max_abs_diff(&back, &x) < 1e-4, "LU, update {seed}");
            let back = plain
                .inverse(plain.forward(x.clone(), None).unwrap().0, None)
                .unwrap();
            assert!(max_abs_diff(&back, &x) < 1e-4, "plain, update {seed}");
        }
    }

    #[test]
    fn lu_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let layer = perturb(InvConvConfig::new(4, 7).init_lu(&dev), 0.3, 3);
        check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        check_flow(&layer, randn([3, 4], &dev), None);
        check_gradients(
            InvConvConfig::new(4, 7).init_lu(&ad()),
            randn([2, 4, 3, 3], &ad()),
            None,
        );
    }

    #[test]
    fn lu_starts_at_the_same_rotation_as_plain() {
        let dev = device();
        let config = InvConvConfig::new(5, 11);
        let plain = to_vec(config.init(&dev).weight.val());
        let lu = to_vec(config.init_lu(&dev).weight());
        plain
            .iter()
            .zip(&lu)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-5));
    }

    #[test]
    fn rejects_wrong_channel_count() {
        let dev = device();
        let err = Flow::<4>::forward(
            &InvConvConfig::new(4, 0).init(&dev),
            randn([1, 3, 2, 2], &dev),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("InvConv1x1: expected 4 channels"),
            "{err}"
        );
        let err = Flow::<2>::inverse(
            &InvConvConfig::new(4, 0).init_lu(&dev),
            randn([1, 6], &dev),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected 4 features"), "{err}");
    }
}
