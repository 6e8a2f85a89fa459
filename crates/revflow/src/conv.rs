//! "Same" convolutions (1×1 and k×k, stride 1) computed as one matrix product per batch.
//!
//! The coupling networks spend nearly all of a training step in convolutions. burn-flex runs
//! a convolution's forward pass as im2col + gemm, but derives the weight gradient as another
//! convolution whose kernel is the whole output map: for a 1×1 convolution that is a
//! matrix-vector product per input channel. Written as `W · columns(x)`, the same
//! convolution differentiates into two large matrix products instead (`Wᵀ · G` and
//! `G · columns(x)ᵀ`), which gemm runs near its peak. Measured in bench/README.md.

use burn::tensor::Tensor;

/// `y = conv(x, weight) + bias` with zero padding k/2, for `weight` of shape
/// `[c_out, c_in, k, k]`, k odd.
pub fn conv_same(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [n, c_in, h, w] = x.dims();
    let [c_out, _, k, _] = weight.dims();
    let columns = if k == 1 {
        x.reshape([n, c_in, h * w])
    } else {
        // The k² shifted copies of the padded input, stacked along channels in (dy, dx, c)
        // order: im2col without leaving the tensor API, so autodiff sees slices and a cat.
        let p = k / 2;
        let padded = x.pad([(p, p), (p, p)], 0.0);
        let shifted: Vec<Tensor<4>> = (0..k * k)
            .map(|i| {
                let (dy, dx) = (i / k, i % k);
                padded
                    .clone()
                    .slice([0..n, 0..c_in, dy..dy + h, dx..dx + w])
            })
            .collect();
        Tensor::cat(shifted, 1).reshape([n, k * k * c_in, h * w])
    };
    let weight = weight
        .permute([0, 2, 3, 1])
        .reshape([1, c_out, k * k * c_in]);
    let y = weight.matmul(columns).reshape([n, c_out, h, w]);
    match bias {
        Some(b) => y + b.reshape([1, c_out, 1, 1]),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    fn reference(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
        let p = weight.dims()[2] / 2;
        conv2d(x, weight, bias, ConvOptions::new([1, 1], [p, p], [1, 1], 1))
    }

    #[test]
    fn matches_burns_convolution_and_its_gradients() {
        let dev = ad();
        for (k, bias) in [(1, false), (3, true), (3, false)] {
            let x = randn([2, 3, 5, 4], &dev).require_grad();
            let w = randn([4, 3, k, k], &dev).require_grad();
            let b = bias.then(|| randn([4], &dev).require_grad());
            let g = randn([2, 4, 5, 4], &dev);
            let ours = conv_same(x.clone(), w.clone(), b.clone());
            let theirs = reference(x.clone(), w.clone(), b.clone());
            assert!(max_abs_diff(&ours, &theirs) < 1e-4, "k={k}: values differ");
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
