//! The invertible layers of NICE, RealNVP and Glow, and [`Layer`], the enum a flow's steps are
//! made of so that one [`Sequential`](crate::flow::Sequential) composes them all.

mod actnorm;
mod batchnorm;
mod coupling;
mod invconv;
mod permute;
mod preprocess;
mod scale;
mod split;
mod squeeze;

pub use actnorm::{ActNorm, ActNormConfig};
pub use batchnorm::{BatchNormFlow, BatchNormFlowConfig};
pub use coupling::{Coupling, CouplingConfig, CouplingKind, Mask};
pub use invconv::{InvConv1x1, InvConv1x1Lu, InvConvConfig};
pub use permute::Permute;
pub use preprocess::{Dequantize, Logit};
pub use scale::DiagScale;
pub use split::{Split, SplitConfig};
pub use squeeze::Squeeze;

use burn::module::Module;
use burn::tensor::Tensor;

use crate::error::Result;
use crate::flow::{Cond, Flow};
use crate::nets::Conditioner;

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
}
