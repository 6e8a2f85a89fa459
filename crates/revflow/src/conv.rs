//! "Same" convolutions (1×1 and k×k, stride 1) computed as one matrix product per batch.
//!
//! The coupling networks spend nearly all of a training step in convolutions. burn-flex runs
//! a convolution's forward pass as im2col + gemm, but derives the weight gradient as another
//! convolution whose kernel is the whole output map: for a 1×1 convolution that is a
//! matrix-vector product per input channel. Written as `W · columns(x)`, the same
//! convolution differentiates into two large matrix products instead (`Wᵀ · G` and
//! `G · columns(x)ᵀ`), which gemm runs well. Measured in bench/README.md.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// `y = conv(x, weight) + bias` with zero padding k/2, for `weight` of shape
/// `[c_out, c_in, k, k]`, k odd. Three forms of the same sum, chosen by shape:
///
/// - 1×1: `W · x` over channels;
/// - few input channels: im2col, the k² shifted copies of the input side by side, then `W · cols`;
/// - otherwise: `W · x` to k² maps per output channel, then those maps shifted and summed
///   (cheap when there are fewer output than input channels, as in the last convolution of
///   a coupling network).
pub fn conv_same(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [_, c_in, h, w] = x.dims();
    let [c_out, _, k, _] = weight.dims();
    let p = k / 2;
    let y = if k == 1 {
        channel_mix(weight.reshape([c_out, c_in]), x)
    } else if c_in * k * k <= 144 || c_out > c_in {
        // The k² shifted copies of the padded input, stacked along channels in (dy, dx, c)
        // order, against the weight in the same order.
        let padded = x.pad([(p, p), (p, p)], 0.0);
        let shifted: Vec<Tensor<4>> = (0..k * k)
            .map(|i| window(padded.clone(), i, k, h, w))
            .collect();
        let weight = weight.permute([0, 2, 3, 1]).reshape([c_out, k * k * c_in]);
        channel_mix(weight, Tensor::cat(shifted, 1))
    } else {
        // z[(dy, dx), o] = Σ_c W[o, c, dy, dx] · x[c]; then y = Σ_(dy, dx) z[(dy, dx), o]
        // read at the offset (dy − p, dx − p).
        let weight = weight.permute([2, 3, 0, 1]).reshape([k * k * c_out, c_in]);
        let z = channel_mix(weight, x).pad([(p, p), (p, p)], 0.0);
        (0..k * k)
            .map(|i| window(z.clone().narrow(1, i * c_out, c_out), i, k, h, w))
            .reduce(|a, b| a + b)
            .expect("k ≥ 1")
    };
    match bias {
        Some(b) => y + b.reshape([1, c_out, 1, 1]),
        None => y,
    }
}

/// `y[n] = W · x[n]` over channels, for every position: `W` is `[c_out, c_in]`.
///
/// Differentiated (training: either input is part of an autodiff graph, computed weights such
/// as an LU-parametrised 1×1 convolution's included), a batched matrix product, whose
/// gradients are matrix products too; otherwise (evaluation, sampling) burn-flex's 1×1
/// convolution, whose forward pass is faster (measured 1.7 vs 5.3 ms on 32×128×14×14, but
/// 20 vs 7 ms with its backward).
fn channel_mix(weight: Tensor<2>, x: Tensor<4>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let c_out = weight.dims()[0];
    if weight.is_tracked() || x.is_tracked() {
        weight
            .reshape([1, c_out, c_in])
            .matmul(x.reshape([n, c_in, h * w]))
            .reshape([n, c_out, h, w])
    } else {
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        conv2d(x, weight.reshape([c_out, c_in, 1, 1]), None, options)
    }
}

/// The `h`×`w` window of a padded map at kernel offset `i` (row-major in a k×k kernel).
fn window(padded: Tensor<4>, i: usize, k: usize, h: usize, w: usize) -> Tensor<4> {
    let (dy, dx) = (i / k, i % k);
    let [n, c, _, _] = padded.dims();
    padded.slice([0..n, 0..c, dy..dy + h, dx..dx + w])
}

/// `conv` applied through [`conv_same`]: same parameters, faster gradients.
pub(crate) fn apply(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_same(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()))
}

/// Zero-initialised 3×3 convolution with a learned output scale `exp(3·log_s)`
/// (Glow's `conv2d_zeros`): the coupling starts as the identity yet can grow quickly.
#[derive(Module, Debug)]
pub struct ZeroConv2d {
    pub conv: Conv2d,
    pub log_scale: Param<Tensor<1>>,
}

impl ZeroConv2d {
    pub fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_initializer(Initializer::Zeros)
            .init(device);
        ZeroConv2d {
            conv,
            log_scale: Param::from_tensor(Tensor::zeros([c_out], device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.log_scale.dims()[0];
        apply(&self.conv, x) * (self.log_scale.val() * 3.0).exp().reshape([1, c, 1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn reference(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
        let p = weight.dims()[2] / 2;
        conv2d(x, weight, bias, ConvOptions::new([1, 1], [p, p], [1, 1], 1))
    }

    #[test]
    fn matches_burns_convolution_and_its_gradients() {
        let dev = ad();
        for (k, c_in, c_out, bias) in [
            (1, 3, 4, false),
            (3, 3, 4, true),
            (3, 20, 4, false),
            (3, 20, 24, true),
        ] {
            let x = randn([2, c_in, 5, 4], &dev).require_grad();
            let w = randn([c_out, c_in, k, k], &dev).require_grad();
            let b = bias.then(|| randn([c_out], &dev).require_grad());
            let g = randn([2, c_out, 5, 4], &dev);
            let ours = conv_same(x.clone(), w.clone(), b.clone());
            let theirs = reference(x.clone(), w.clone(), b.clone());
            assert!(max_abs_diff(&ours, &theirs) < 1e-4, "k={k}: values differ");
            // Outside any graph (evaluation) the 1×1 products take flex's convolution instead.
            let plain = |t: &Tensor<4>| t.clone().inner();
            let untracked = conv_same(plain(&x), plain(&w), b.clone().map(|b| b.inner()));
            let expected = reference(plain(&x), plain(&w), b.clone().map(|b| b.inner()));
            assert!(
                max_abs_diff(&untracked, &expected) < 1e-4,
                "k={k}: values differ outside the graph"
            );
            let grads_ours = (ours * g.clone()).sum().backward();
            let grads_theirs = (theirs * g).sum().backward();
            for (name, a, b) in [
                ("x", x.grad(&grads_ours), x.grad(&grads_theirs)),
                ("w", w.grad(&grads_ours), w.grad(&grads_theirs)),
            ] {
                let (a, b) = (a.unwrap(), b.unwrap());
                assert!(
                    max_abs_diff(&a, &b) < 1e-3,
                    "k={k}: gradient of {name} differs"
                );
            }
            if let Some(b) = &b {
                let (a, c) = (b.grad(&grads_ours).unwrap(), b.grad(&grads_theirs).unwrap());
                assert!(
                    max_abs_diff(&a, &c) < 1e-3,
                    "k={k}: gradient of the bias differs"
                );
            }
        }
    }
}
