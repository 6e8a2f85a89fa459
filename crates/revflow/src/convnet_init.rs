//! Data-dependent initialisation of Glow's coupling network: each ActNorm from the statistics
//! of its input over the whole initialisation batch, gathered a chunk of samples at a time
//! (f64 sums, see [`ChannelStats`]: the whole batch's statistics up to rounding), so that only
//! one chunk's hidden maps exist at once.
//!
//! Pass 1 runs the first convolution for the first ActNorm; pass 2 runs through it (now
//! initialised) and the second convolution for the second ActNorm, keeping that layer's
//! outputs when they fit [`INIT_KEEP_BYTES`] so that the network's output needs no third pass.
//! On the CPU pass 2 uses the fused kernels' matrix products, elsewhere burn's operations.

use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};

use crate::conv::apply;
use crate::error::Result;
use crate::flow::{in_chunks, to_f32, Cond, Flow};
use crate::fused::kernels::{self, Dims, Params};
use crate::layers::{ActNorm, ChannelStats};
use crate::nets::{with_cond, ConvNet};

/// Bytes of second-layer activations kept for the whole batch rather than computed twice (at
/// Glow's width 512 on 28×28 images, 256 samples hold 100 MiB).
const INIT_KEEP_BYTES: usize = 256 << 20;

impl ConvNet {
    /// The network with both ActNorms initialised on `x` (with `cond`), `chunk` samples at a
    /// time, and its output on `x`.
    pub(crate) fn data_init_chunked(
        self,
        x: Tensor<4>,
        cond: Cond,
        chunk: usize,
    ) -> Result<(Self, Tensor<4>)> {
        let x = with_cond(x, cond, self.classes)?;
        let mut stats = ChannelStats::new(self.norm1.channels());
        in_chunks(&x, None, chunk, |x, _| stats.add(&apply(&self.conv1, x)))?;
        let net = ConvNet {
            norm1: self.norm1.init_from(&stats)?,
            ..self
        };
        let (norm2, y) = match net.fused_weights(&x.device()) {
            Some(_) => second_pass(&Fused::new(&net, &x)?, &x, chunk, net.norm2.clone())?,
            None => second_pass(&Composed(&net), &x, chunk, net.norm2.clone())?,
        };
        Ok((ConvNet { norm2, ..net }, y))
    }
}

/// How pass 2 computes the second convolution's output (before its ActNorm) of a chunk, and
/// the network's output from it.
trait SecondLayer {
    type Hidden;
    fn second(&self, x: Tensor<4>) -> Result<Self::Hidden>;
    fn add(&self, stats: &mut ChannelStats, h: &Self::Hidden) -> Result<()>;
    fn output(&self, norm2: &ActNorm, h: Self::Hidden) -> Result<Tensor<4>>;
}

/// Pass 2: the second ActNorm initialised, and the network's output on `x`.
fn second_pass<P: SecondLayer>(
    path: &P,
    x: &Tensor<4>,
    chunk: usize,
    norm2: ActNorm,
) -> Result<(ActNorm, Tensor<4>)> {
    let [n, _, h, w] = x.dims();
    let hidden = norm2.channels();
    let keep = n.saturating_mul(hidden * h * w * 4) <= INIT_KEEP_BYTES;
    let mut stats = ChannelStats::new(hidden);
    let kept = in_chunks(x, None, chunk, |x, _| {
        let h = path.second(x)?;
        path.add(&mut stats, &h)?;
        Ok(keep.then_some(h))
    })?;
    let norm2 = norm2.init_from(&stats)?;
    let parts = match keep {
        true => kept
            .into_iter()
            .flatten()
            .map(|h| path.output(&norm2, h))
            .collect::<Result<Vec<_>>>()?,
        false => in_chunks(x, None, chunk, |x, _| path.output(&norm2, path.second(x)?))?,
    };
    Ok((norm2, Tensor::cat(parts, 0)))
}

/// burn's operations on any device.
struct Composed<'a>(&'a ConvNet);

impl SecondLayer for Composed<'_> {
    type Hidden = Tensor<4>;

    fn second(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let net = self.0;
        let (h, _) = net.norm1.forward(apply(&net.conv1, x), None)?;
        Ok(apply(&net.conv2, relu(h)))
    }

    fn add(&self, stats: &mut ChannelStats, h: &Tensor<4>) -> Result<()> {
        stats.add(h)
    }

    fn output(&self, norm2: &ActNorm, h: Tensor<4>) -> Result<Tensor<4>> {
        let (h, _) = norm2.forward(h, None)?;
        Ok(self.0.out.forward(relu(h)))
    }
}

/// The fused kernels' products on the CPU, on host copies of the weights.
struct Fused {
    device: burn::tensor::Device,
    /// `c_in, hidden, c_out, h, w`; `n` is each chunk's.
    dims: Dims,
    w1: Vec<f32>,
    log_s1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    w3: Vec<f32>,
    b3: Vec<f32>,
    log_s3: Vec<f32>,
}

fn weight(conv: &Conv2d) -> Result<Vec<f32>> {
    to_f32(&conv.weight.val())
}

impl Fused {
    fn new(net: &ConvNet, x: &Tensor<4>) -> Result<Self> {
        let [_, c_in, h, w] = x.dims();
        Ok(Fused {
            device: x.device(),
            dims: Dims {
                n: 0,
                c_in,
                hidden: net.norm1.channels(),
                c_out: net.out.log_scale.dims()[0],
                h,
                w,
            },
            w1: weight(&net.conv1)?,
            log_s1: to_f32(&net.norm1.log_scale.val())?,
            b1: to_f32(&net.norm1.bias.val())?,
            w2: weight(&net.conv2)?,
            w3: weight(&net.out.conv)?,
            // Present: `fused_weights`, which chose this path, requires it.
            b3: match &net.out.conv.bias {
                Some(b) => to_f32(&b.val())?,
                None => Vec::new(),
            },
            log_s3: to_f32(&net.out.log_scale.val())?,
        })
    }

    fn params<'a>(&'a self, log_s2: &'a [f32], b2: &'a [f32]) -> Params<'a> {
        Params {
            w1: &self.w1,
            log_s1: &self.log_s1,
            b1: &self.b1,
            w2: &self.w2,
            log_s2,
            b2,
            w3: &self.w3,
            b3: &self.b3,
            log_s3: &self.log_s3,
        }
    }

    fn dims(&self, n: usize) -> Dims {
        Dims { n, ..self.dims }
    }
}

impl SecondLayer for Fused {
    /// One row per pixel of the chunk, and the chunk's sample count.
    type Hidden = (Vec<f32>, usize);

    fn second(&self, x: Tensor<4>) -> Result<(Vec<f32>, usize)> {
        let n = x.dims()[0];
        Ok((
            kernels::second(&to_f32(&x)?, self.dims(n), self.params(&[], &[])),
            n,
        ))
    }

    fn add(&self, stats: &mut ChannelStats, (h, _): &(Vec<f32>, usize)) -> Result<()> {
        stats.add_rows(h)
    }

    fn output(&self, norm2: &ActNorm, (h, n): (Vec<f32>, usize)) -> Result<Tensor<4>> {
        let (log_s2, b2) = (to_f32(&norm2.log_scale.val())?, to_f32(&norm2.bias.val())?);
        let d = self.dims(n);
        let y = kernels::from_second(h, d, self.params(&log_s2, &b2));
        Ok(Tensor::from_data(
            TensorData::new(y, [n, d.c_out, d.h, d.w]),
            &self.device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::ConvNetConfig;
    use crate::testing::*;
    use crate::transforms::Conditioner;

    /// Equal within 1e-5 relative (the target for chunked statistics).
    fn close(a: Tensor<1>, b: Tensor<1>, what: &str) {
        close_values(to_vec(a), to_vec(b), 1e-5, what)
    }

    fn close_values(a: Vec<f32>, b: Vec<f32>, tolerance: f32, what: &str) {
        assert_eq!(a.len(), b.len());
        // Relative to each value, or to the largest where values are near 0.
        let floor = a.iter().fold(0f32, |m, v| m.max(v.abs())) * 1e-2;
        for (x, y) in a.iter().zip(&b) {
            let rel = (x - y).abs() / x.abs().max(y.abs()).max(floor);
            assert!(rel < tolerance, "{what}: {x} vs {y} (relative {rel})");
        }
    }

    #[test]
    fn chunked_initialisation_gives_the_whole_batch_statistics() {
        let dev = device();
        dev.seed(9);
        let net = perturb(
            ConvNetConfig::new(3, 4, 16).with_classes(2).init(&dev),
            0.3,
            4,
        );
        let x = randn([11, 3, 5, 5], &dev) * 2.0 + 3.0;
        let labels = one_hot(&[0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], 2, &dev);
        let (whole, y) = net
            .clone()
            .data_init_chunked(x.clone(), Some(&labels), 11)
            .unwrap();
        for chunk in [1, 3, 4] {
            let (chunked, y_chunked) = net
                .clone()
                .data_init_chunked(x.clone(), Some(&labels), chunk)
                .unwrap();
            for (a, b, what) in [
                (&whole.norm1, &chunked.norm1, "norm1"),
                (&whole.norm2, &chunked.norm2, "norm2"),
            ] {
                assert!(b.is_initialized());
                close(a.bias.val(), b.bias.val(), what);
                close(a.log_scale.val(), b.log_scale.val(), what);
            }
            close_values(to_vec(y.clone()), to_vec(y_chunked), 1e-5, "output");
        }
        // The fused products (used above on the CPU) and burn's operations agree.
        let xc = with_cond(x.clone(), Some(&labels), 2).unwrap();
        let first = ConvNet {
            norm2: net.norm2.clone(),
            ..whole.clone()
        };
        let (norm2, y_composed) =
            second_pass(&Composed(&first), &xc, 4, net.norm2.clone()).unwrap();
        close(norm2.bias.val(), whole.norm2.bias.val(), "composed norm2");
        close(
            norm2.log_scale.val(),
            whole.norm2.log_scale.val(),
            "composed norm2",
        );
        // (The fused products fold ActNorm's scale into the weights: other rounding.)
        close_values(
            to_vec(y_composed),
            to_vec(y.clone()),
            1e-4,
            "composed output",
        );
        // The output is the initialised network's.
        let forward = Conditioner::forward(&whole, x.clone(), Some(&labels)).unwrap();
        close_values(to_vec(forward), to_vec(y), 1e-4, "forward");
        // The first ActNorm standardises the first convolution's output.
        let h = apply(&whole.conv1, xc);
        let (h, _) = whole.norm1.forward(h, None).unwrap();
        let flat = h.swap_dims(0, 1).reshape([16, -1]);
        for m in to_vec(flat.clone().mean_dim(1)) {
            assert!(m.abs() < 1e-4, "mean {m}");
        }
        for v in to_vec(flat.var(1)) {
            assert!((v - 1.0).abs() < 1e-3, "variance {v}");
        }
    }
}
