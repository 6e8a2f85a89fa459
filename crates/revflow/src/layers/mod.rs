//! The invertible layers of NICE, RealNVP, Glow, MAF and IAF, and [`Layer`], the enum a flow's steps are
//! made of so that one [`Sequential`](crate::flow::Sequential) composes them all.

mod actnorm;
mod autoregressive;
mod batchnorm;
mod coupling;
mod invconv;
mod permute;
mod preprocess;
mod scale;
mod split;
mod squeeze;
mod variational;

pub(crate) use actnorm::ChannelStats;
pub use actnorm::{ActNorm, ActNormConfig};
pub use autoregressive::{Autoregressive, Direction};
pub use batchnorm::{BatchNormFlow, BatchNormFlowConfig};
pub use coupling::{Coupling, CouplingConfig, Mask};
pub use invconv::{InvConv1x1, InvConv1x1Lu, InvConvConfig};
pub use permute::Permute;
pub use preprocess::{Dequantize, Logit};
pub use scale::DiagScale;
pub use split::{Latent, Split, SplitConfig};
pub use squeeze::Squeeze;
pub use variational::{PixelConditioned, VariationalConfig, VariationalDequantizer};

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::flow::{Cond, Flow};
use crate::transforms::Conditioner;

/// Declares the [`Layer`] enum and forwards [`Flow`] to the variant it holds.
macro_rules! layer_enum {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One step of a flow, generic over the coupling network `N`
        /// (a [`ConvNet`](crate::nets::ConvNet) or [`ResNet`](crate::nets::ResNet) for images,
        /// an [`Mlp`](crate::nets::Mlp) for vectors).
        #[derive(Module, Debug)]
        pub enum Layer<N: Module> {
            $($variant($ty)),*
        }

        impl<const D: usize, N: Conditioner<D>> Flow<D> for Layer<N> {
            fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
                match self {
                    $(Layer::$variant(layer) => layer.forward(x, cond)),*
                }
            }

            fn inverse(&self, y: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
                match self {
                    $(Layer::$variant(layer) => layer.inverse(y, cond)),*
                }
            }

            fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
                match self {
                    $(Layer::$variant(layer) => {
                        layer.data_init(x, cond).map(|(l, y)| (Layer::$variant(l), y))
                    })*
                }
            }
        }

        $(impl<N: Module> From<$ty> for Layer<N> {
            fn from(layer: $ty) -> Self {
                Layer::$variant(layer)
            }
        })*
    };
}

layer_enum! {
    ActNorm(ActNorm),
    InvConv(InvConv1x1),
    InvConvLu(InvConv1x1Lu),
    Permute(Permute),
    Coupling(Coupling<N>),
    Scale(DiagScale),
    BatchNorm(BatchNormFlow),
    Autoregressive(Autoregressive),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::distributions::{BaseDistribution, GaussianConfig, Logistic};
    use crate::flow::Sequential;
    use crate::nets::{ConvNet, ConvNetConfig, Mlp, MlpConfig};
    use crate::testing::*;
    use crate::transforms::{SplineConfig, Transform};
    use burn::tensor::Device;

    /// One of every layer, on images: the composition's log-det must still be exact.
    pub fn image_flow(device: &Device, seed: u64) -> Sequential<Layer<ConvNet>> {
        let coupling = |mask, kind| {
            let config = CouplingConfig::new(4, mask, kind);
            let net = ConvNetConfig::new(config.net_inputs(), config.net_outputs(), 8).init(device);
            Layer::from(config.init(net, device).unwrap())
        };
        Sequential::new(vec![
            ActNormConfig::new(4).init(device).into(),
            InvConvConfig::new(4, seed).init(device).into(),
            coupling(Mask::Channels { flip: false }, Transform::AffineGlow),
            Permute::shuffle(4, seed, device).into(),
            InvConvConfig::new(4, seed + 1).init_lu(device).into(),
            coupling(Mask::Checkerboard { flip: true }, Transform::AffineRealNvp),
            BatchNormFlowConfig::new(4).init(device).into(),
            Permute::reverse(4, device).into(),
            coupling(Mask::Channels { flip: true }, Transform::Additive),
            DiagScale::new(4 * 4 * 4, device).into(),
        ])
    }

    /// The same on 2-D vectors.
    fn vector_flow(device: &Device, seed: u64) -> Sequential<Layer<Mlp>> {
        let coupling = |mask, kind| {
            let config = CouplingConfig::new(2, mask, kind);
            let net = MlpConfig::new(config.net_inputs(), config.net_outputs(), 16, 2).init(device);
            Layer::from(config.init(net, device).unwrap())
        };
        Sequential::new(vec![
            ActNormConfig::new(2).init(device).into(),
            coupling(Mask::Channels { flip: false }, Transform::AffineGlow),
            InvConvConfig::new(2, seed).init(device).into(),
            coupling(Mask::Checkerboard { flip: false }, Transform::AffineRealNvp),
            Permute::reverse(2, device).into(),
            coupling(Mask::Channels { flip: true }, Transform::Additive),
            coupling(
                Mask::Checkerboard { flip: true },
                Transform::Spline(SplineConfig {
                    bins: 5,
                    tail_bound: 3.0,
                }),
            ),
            InvConvConfig::new(2, seed + 1).init_lu(device).into(),
            BatchNormFlowConfig::new(2).init(device).into(),
            DiagScale::new(2, device).into(),
        ])
    }

    #[test]
    fn composed_image_flow_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        dev.seed(1);
        let x = randn([2, 4, 4, 4], &dev);
        let (flow, _) = image_flow(&dev, 3).data_init(x.clone(), None).unwrap();
        let flow = perturb(flow, 0.05, 7);
        check_flow(&flow, x, None);
        // Data-dependent init standardised the first layer's output...
        let Layer::ActNorm(actnorm) = &flow.layers[0] else {
            panic!()
        };
        assert!(actnorm.is_initialized());
    }

    #[test]
    fn composed_flow_gradients_reach_every_parameter() {
        let ad = ad();
        ad.seed(2);
        let x = randn([4, 4, 4, 4], &ad);
        let (flow, _) = image_flow(&ad, 3).data_init(x.clone(), None).unwrap();
        check_gradients(perturb(flow, 0.1, 8), x, None);
    }

    /// ∫ p(x) dx over a grid that covers the flow's samples with a wide margin.
    fn integral<P: BaseDistribution<2>>(
        flow: &Sequential<Layer<Mlp>>,
        prior: &P,
        dev: &Device,
    ) -> f64 {
        let keys = crate::noise::indices(0, 4000);
        let eps = crate::noise::standard(
            prior.standard(),
            1,
            crate::noise::Purpose::Sample,
            &keys,
            0,
            2,
            dev,
        );
        let z: Tensor<2> = prior.destandardize(eps, None).unwrap();
        let x = to_vec(flow.inverse(z, None).unwrap());
        let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
        for p in x.chunks(2) {
            for d in 0..2 {
                lo[d] = lo[d].min(p[d]);
                hi[d] = hi[d].max(p[d]);
            }
        }
        let steps = 600;
        let (mut points, mut cell) = (Vec::with_capacity(2 * steps * steps), 1.0);
        let mut axis = [vec![], vec![]];
        for d in 0..2 {
            let width = (hi[d] - lo[d]) as f64;
            let (a, b) = (lo[d] as f64 - width, hi[d] as f64 + width);
            let h = (b - a) / steps as f64;
            cell *= h;
            axis[d] = (0..steps)
                .map(|i| (a + (i as f64 + 0.5) * h) as f32)
                .collect();
        }
        for &u in &axis[0] {
            for &v in &axis[1] {
                points.extend([u, v]);
            }
        }
        let grid = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(points, [steps * steps, 2]),
            dev,
        );
        let (z, logdet) = flow.forward(grid, None).unwrap();
        let log_p = prior.log_prob(z, None).unwrap() + logdet;
        to_vec(log_p).iter().map(|l| (*l as f64).exp()).sum::<f64>() * cell
    }

    #[test]
    fn two_dimensional_density_integrates_to_one() {
        let dev = device();
        dev.seed(5);
        for seed in [1, 2] {
            let x = randn([256, 2], &dev) * 2.0 + 1.0;
            let (flow, _) = vector_flow(&dev, seed).data_init(x, None).unwrap();
            let flow = perturb(flow, 0.15, seed);
            check_flow(&flow, randn([3, 2], &dev), None);
            let gaussian = integral(&flow, &GaussianConfig::standard(&[2]).init(&dev), &dev);
            eprintln!("seed {seed}: Gaussian prior ∫p = {gaussian:.5}");
            assert!(
                (gaussian - 1.0).abs() < 0.01,
                "Gaussian prior: ∫p = {gaussian}"
            );
            let logistic = integral(&flow, &Logistic::new(&[2]), &dev);
            eprintln!("seed {seed}: logistic prior ∫p = {logistic:.5}");
            assert!(
                (logistic - 1.0).abs() < 0.01,
                "logistic prior: ∫p = {logistic}"
            );
        }
    }
}
