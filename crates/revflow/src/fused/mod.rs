//! Glow's coupling as single operations with their own backward passes, on the CPU backend.
//!
//! Composed from burn's operations, a coupling's network is dozens of separate passes, each
//! allocating and reading a hidden-width activation map (convolution, ActNorm's add and multiply,
//! ReLU, pads, slices, shifted adds), and the affine transform after it a few more. Here the
//! network is three matrix products with the element-wise work folded in ([`kernels`]), the
//! affine transform and its log-det terms one more pass, and a hand-written backward pass is
//! registered with burn's autodiff graph: the same products transposed. Other backends (a GPU)
//! use the composed layers; so does ActNorm's data-dependent initialisation.

pub mod kernels;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, ExtensionType, Flex};
use burn::tensor::{Device, Shape, Tensor, TensorData};

use kernels::{Dims, Params, Saved};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused operations off (or back on) for the whole process, to measure what they
/// bring (`revflow bench --unfused`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether tensors on `device` take the fused path.
pub fn applies(device: &Device) -> bool {
    ENABLED.load(Ordering::Relaxed) && crate::device::is_flex(device)
}

/// The parameters of a Glow coupling network, as the fused operation takes them (tensors of one
/// backend; `Weights<Dispatch>` at the call site).
#[derive(ExtensionType)]
pub struct Weights<B: Backend> {
    /// conv3×3 `[hidden, c_in, 3, 3]`, no bias.
    pub w1: FloatTensor<B>,
    pub log_s1: FloatTensor<B>,
    pub b1: FloatTensor<B>,
    /// conv1×1 `[hidden, hidden, 1, 1]`, no bias.
    pub w2: FloatTensor<B>,
    pub log_s2: FloatTensor<B>,
    pub b2: FloatTensor<B>,
    /// zero conv3×3 `[c_out, hidden, 3, 3]` with bias `b3`, output scaled by `exp(3·log_s3)`.
    pub w3: FloatTensor<B>,
    pub b3: FloatTensor<B>,
    pub log_s3: FloatTensor<B>,
}

impl<B: Backend> Weights<B> {
    /// `x` and the weights in the operation's order.
    fn with_input(self, x: FloatTensor<B>) -> [FloatTensor<B>; 10] {
        let w = self;
        [
            x, w.w1, w.log_s1, w.b1, w.w2, w.log_s2, w.b2, w.w3, w.b3, w.log_s3,
        ]
    }
}

/// conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU → zero conv3×3 on `x` (NCHW), in one
/// operation. Only for devices where [`applies`] is true.
pub fn coupling_net(x: Tensor<4>, weights: Weights<Dispatch>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CouplingNetOps>::glow_coupling_net(
        x.into_dispatch(),
        weights,
    ))
}

/// Glow's affine coupling of `x_b` given `x_a`, network and coupling in one operation: with
/// `(t, r)` the network's output on `x_a` and `s = σ(r + 2)`, returns `(x_b + t)·s` and `log s`
/// (the log-determinant's terms), or in `reverse` `x_b / s − t` and `−log s`. Only for devices
/// where [`applies`] is true.
pub fn affine_coupling(
    x_a: Tensor<4>,
    x_b: Tensor<4>,
    reverse: bool,
    weights: Weights<Dispatch>,
) -> (Tensor<4>, Tensor<4>) {
    let c = x_b.dims()[1];
    let out: Tensor<4> = Tensor::from_dispatch(<Dispatch as CouplingNetOps>::glow_affine_coupling(
        x_a.into_dispatch(),
        x_b.into_dispatch(),
        reverse,
        weights,
    ));
    (out.clone().narrow(1, 0, c), out.narrow(1, c, c))
}

/// The fused operations as a burn backend extension: implemented for the CPU backend and for
/// autodiff on top of it.
#[backend_extension(Flex, Autodiff)]
pub trait CouplingNetOps: Backend {
    /// The network's output (shift and raw scale).
    fn glow_coupling_net(
        x: FloatTensor<Self>,
        #[extension_type] weights: Weights<Self>,
    ) -> FloatTensor<Self>;

    /// The coupled half and `±log σ(r + 2)` side by side on the channel axis.
    fn glow_affine_coupling(
        x_a: FloatTensor<Self>,
        x_b: FloatTensor<Self>,
        reverse: bool,
        #[extension_type] weights: Weights<Self>,
    ) -> FloatTensor<Self>;
}

/// An operation's inputs as contiguous f32 tensors, in order: the network's input, its nine
/// weights, and for the affine coupling `x_b`; and the sizes they imply.
#[derive(Debug, Clone)]
struct Inputs {
    dims: Dims,
    tensors: Vec<FlexTensor>,
    /// The affine coupling's direction.
    reverse: bool,
}

impl Inputs {
    fn new(tensors: Vec<FlexTensor>, reverse: bool) -> Self {
        let tensors: Vec<FlexTensor> = tensors
            .into_iter()
            .map(|t| match t.as_slice::<f32>() {
                Some(_) => t,
                None => t.to_contiguous(),
            })
            .collect();
        let [n, c_in, h, w] = tensors[0].shape().dims();
        let dims = Dims {
            n,
            c_in,
            hidden: tensors[1].shape()[0],
            c_out: tensors[7].shape()[0],
            h,
            w,
        };
        Inputs {
            dims,
            tensors,
            reverse,
        }
    }

    fn slice(&self, i: usize) -> &[f32] {
        self.tensors[i]
            .as_slice::<f32>()
            .expect("the fused coupling network takes f32 tensors")
    }

    fn params(&self) -> Params<'_> {
        Params {
            w1: self.slice(1),
            log_s1: self.slice(2),
            b1: self.slice(3),
            w2: self.slice(4),
            log_s2: self.slice(5),
            b2: self.slice(6),
            w3: self.slice(7),
            b3: self.slice(8),
            log_s3: self.slice(9),
        }
    }

    /// The affine coupling's `x_b`, if this is that operation.
    fn x_b(&self) -> Option<&[f32]> {
        (self.tensors.len() == 11).then(|| self.slice(10))
    }

    /// The operation's output on these inputs, and what the backward pass needs if `keep`.
    fn forward(&self, keep: bool) -> (FlexTensor, Option<Saved>) {
        let (d, x, p) = (self.dims, self.slice(0), self.params());
        let (out, saved) = match self.x_b() {
            None => kernels::forward(x, d, p, keep),
            Some(x_b) => kernels::affine_forward(x, x_b, self.reverse, d, p, keep),
        };
        let out = FlexTensor::from_data(TensorData::new(out, [d.n, d.c_out, d.h, d.w]));
        (out, saved)
    }

    /// Gradients for every input, in order, with their shapes.
    fn backward(&self, grad_out: &[f32], saved: &Saved, with_x: bool) -> Vec<(Vec<f32>, Shape)> {
        let (d, p) = (self.dims, self.params());
        let (g, g_b) = match self.x_b() {
            None => (kernels::backward(grad_out, d, p, saved, with_x), None),
            Some(x_b) => {
                let reverse = self.reverse;
                let (g, g_b) =
                    kernels::affine_backward(grad_out, x_b, reverse, d, p, saved, with_x);
                (g, Some(g_b))
            }
        };
        let weights = [
            g.w1, g.log_s1, g.b1, g.w2, g.log_s2, g.b2, g.w3, g.b3, g.log_s3,
        ];
        std::iter::once(g.x)
            .chain(weights)
            .chain(g_b)
            .zip(&self.tensors)
            .map(|(v, t)| (v, t.shape()))
            .collect()
    }
}

impl CouplingNetOps for Flex {
    fn glow_coupling_net(x: FlexTensor, weights: Weights<Self>) -> FlexTensor {
        Inputs::new(weights.with_input(x).into(), false)
            .forward(false)
            .0
    }

    fn glow_affine_coupling(
        x_a: FlexTensor,
        x_b: FlexTensor,
        reverse: bool,
        weights: Weights<Self>,
    ) -> FlexTensor {
        let mut tensors: Vec<FlexTensor> = weights.with_input(x_a).into();
        tensors.push(x_b);
        Inputs::new(tensors, reverse).forward(false).0
    }
}

/// The backward step registered in the autodiff graph, for an operation of `N` inputs.
#[derive(Debug)]
struct CouplingBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for CouplingBackward<N> {
    type State = (Inputs, Saved);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (inputs, saved) = ops.state;
        let grad_out = grads.consume::<Flex>(&ops.node).to_contiguous();
        let grad_out = grad_out.as_slice::<f32>().expect("an f32 gradient");
        let with_x = ops.parents[0].is_some();
        let results = inputs.backward(grad_out, &saved, with_x);
        for (parent, (v, shape)) in ops.parents.into_iter().zip(results) {
            if let Some(node) = parent {
                let t = FlexTensor::from_data(TensorData::new(v, shape));
                grads.register::<Flex>(node.id, t);
            }
        }
    }
}

/// Runs an operation on autodiff tensors: registers its backward step when any input is
/// tracked, and keeps what that step needs.
fn tracked<C: CheckpointStrategy, const N: usize>(
    inputs: [FloatTensor<Autodiff<Flex, C>>; N],
    reverse: bool,
) -> FloatTensor<Autodiff<Flex, C>> {
    let nodes = inputs.each_ref().map(|t| t.node());
    let inputs = Inputs::new(inputs.map(|t| t.into_primitive()).into(), reverse);
    match CouplingBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = inputs.forward(true);
            let saved = saved.expect("kept for the backward pass");
            prep.finish((inputs, saved), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(inputs.forward(false).0),
    }
}

impl<C: CheckpointStrategy> CouplingNetOps for Autodiff<Flex, C> {
    fn glow_coupling_net(x: FloatTensor<Self>, weights: Weights<Self>) -> FloatTensor<Self> {
        tracked::<C, 10>(weights.with_input(x), false)
    }

    fn glow_affine_coupling(
        x_a: FloatTensor<Self>,
        x_b: FloatTensor<Self>,
        reverse: bool,
        weights: Weights<Self>,
    ) -> FloatTensor<Self> {
        let [x, w1, log_s1, b1, w2, log_s2, b2, w3, b3, log_s3] = weights.with_input(x_a);
        let inputs = [x, w1, log_s1, b1, w2, log_s2, b2, w3, b3, log_s3, x_b];
        tracked::<C, 11>(inputs, reverse)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Gradients;

    use super::*;
    use crate::nets::ConvNetConfig;
    use crate::testing::*;

    /// Every trainable parameter's gradient, in visiting order.
    fn param_grads<M: Module>(module: &M, grads: &Gradients) -> Vec<(Vec<usize>, Vec<f32>)> {
        struct Collect<'a>(&'a Gradients, Vec<(Vec<usize>, Vec<f32>)>);
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let t = param.val();
                if t.is_require_grad() {
                    let g = t.grad(self.0).expect("every parameter gets a gradient");
                    self.1.push((t.dims().to_vec(), to_vec(g)));
                }
            }
        }
        let mut collect = Collect(grads, Vec::new());
        module.visit(&mut collect);
        collect.1
    }

    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    #[test]
    fn matches_the_composed_network_and_its_gradients() {
        // One thread takes the path of several blocks of images (each adding its share of the
        // weight gradients), the default pool here that of one block with split products.
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        one_thread.install(compare_with_the_composed_network);
        compare_with_the_composed_network();
    }

    fn compare_with_the_composed_network() {
        let dev = ad();
        // (batch, c_in, hidden, c_out, height, width): odd and non-square sizes, a 1×2 image
        // where every tap but the centre row falls outside, 4 images of 9×8 (two blocks).
        for (n, c_in, hidden, c_out, h, w) in [
            (2, 3, 8, 6, 5, 4),
            (1, 2, 16, 4, 3, 3),
            (3, 6, 5, 2, 1, 2),
            (4, 3, 8, 6, 9, 8),
        ] {
            let net = perturb(ConvNetConfig::new(c_in, c_out, hidden).init(&dev), 0.3, 7);
            let weights = || net.fused_weights(&dev).expect("a Glow network");
            let x = randn([n, c_in, h, w], &dev).require_grad();
            let g = randn([n, c_out, h, w], &dev);
            let fused = coupling_net(x.clone(), weights());
            let composed = net.composed(x.clone()).unwrap();
            let size = to_vec(composed.clone().abs().max())[0];
            assert!(size > 0.1, "the network's output is not trivial");
            assert!(
                max_abs_diff(&fused, &composed) < 1e-4 * size.max(1.0),
                "{n}×{c_in}×{h}×{w}: values differ"
            );

            let plain = coupling_net(
                x.clone().inner(),
                net.valid().fused_weights(&device()).unwrap(),
            );
            assert!(
                max_abs_diff(&plain, &composed.clone().inner()) < 1e-4 * size.max(1.0),
                "values differ outside the autodiff graph"
            );

            let grads_fused = (fused * g.clone()).sum().backward();
            let grads_composed = (composed * g).sum().backward();
            let (a, b) = (
                x.grad(&grads_fused).unwrap(),
                x.grad(&grads_composed).unwrap(),
            );
            assert!(
                relative_error(&to_vec(a), &to_vec(b)) < 1e-4,
                "gradient of the input differs"
            );
            let ours = param_grads(&net, &grads_fused);
            let theirs = param_grads(&net, &grads_composed);
            assert_eq!(ours.len(), 9, "every parameter of the network is compared");
            for ((shape, a), (_, b)) in ours.iter().zip(&theirs) {
                assert!(b.iter().any(|v| *v != 0.0), "{shape:?}: zero gradient");
                let e = relative_error(a, b);
                assert!(e < 1e-4, "{shape:?}: gradient differs (relative {e})");
            }
        }
    }

    #[test]
    fn the_affine_coupling_matches_its_composition_and_gradients() {
        use burn::tensor::activation::log_sigmoid;
        let dev = ad();
        for (reverse, (n, c_in, hidden, c, h, w)) in [
            (false, (2, 3, 8, 2, 5, 4)),
            (false, (1, 4, 6, 3, 2, 3)),
            (true, (2, 3, 8, 2, 5, 4)),
        ] {
            let net = perturb(ConvNetConfig::new(c_in, 2 * c, hidden).init(&dev), 0.3, 9);
            let x_a = randn([n, c_in, h, w], &dev).require_grad();
            let x_b = randn([n, c, h, w], &dev).require_grad();
            let (g_y, g_ls) = (randn([n, c, h, w], &dev), randn([n, c, h, w], &dev));

            let weights = net.fused_weights(&dev).unwrap();
            let (y, ls) = affine_coupling(x_a.clone(), x_b.clone(), reverse, weights);
            let out = net.composed(x_a.clone()).unwrap();
            let log_s = log_sigmoid(out.clone().narrow(1, c, c) + 2.0);
            let t = out.narrow(1, 0, c);
            let (y_ref, log_s) = match reverse {
                false => ((x_b.clone() + t) * log_s.clone().exp(), log_s),
                true => (x_b.clone() * log_s.clone().neg().exp() - t, log_s.neg()),
            };
            assert!(max_abs_diff(&y, &y_ref) < 1e-4, "y_b differs");
            assert!(max_abs_diff(&ls, &log_s) < 1e-4, "log σ differs");

            let loss = |y: Tensor<4>, ls: Tensor<4>| (y * g_y.clone() + ls * g_ls.clone()).sum();
            let ours = loss(y, ls).backward();
            let theirs = loss(y_ref, log_s).backward();
            for (name, t) in [("x_a", &x_a), ("x_b", &x_b)] {
                let (a, b) = (t.grad(&ours).unwrap(), t.grad(&theirs).unwrap());
                let e = relative_error(&to_vec(a), &to_vec(b));
                assert!(e < 1e-4, "gradient of {name} differs (relative {e})");
            }
            for ((shape, a), (_, b)) in param_grads(&net, &ours)
                .iter()
                .zip(&param_grads(&net, &theirs))
            {
                let e = relative_error(a, b);
                assert!(e < 1e-4, "{shape:?}: gradient differs (relative {e})");
            }
        }
    }

    #[test]
    fn class_channels_and_the_switch_route_through_the_same_network() {
        use crate::flow::Cond;
        use crate::transforms::Conditioner;
        let dev = ad();
        let net = perturb(
            ConvNetConfig::new(2, 4, 8).with_classes(3).init(&dev),
            0.3,
            5,
        );
        let x = randn([2, 2, 4, 4], &dev);
        let y = one_hot(&[0, 2], 3, &dev);
        let cond: Cond = Some(&y);
        assert!(applies(&dev) && applies(&device()));
        let out = net.forward(x.clone(), cond).unwrap();
        let with_classes = Tensor::cat(
            vec![x, y.clone().reshape([2, 3, 1, 1]).expand([2, 3, 4, 4])],
            1,
        );
        let composed = net.composed(with_classes).unwrap();
        assert!(max_abs_diff(&out, &composed) < 1e-4);
    }
}
