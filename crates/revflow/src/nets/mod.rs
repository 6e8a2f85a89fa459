//! Conditioners: the coupling networks, which read the identity half of a coupling layer and
//! output the transform's parameters, and [`Made`], which gives every feature's parameters
//! from the features before it (autoregressive flows). They need not be invertible. Each ends
//! in a zero-initialised layer so that every layer starts as the identity (Glow §3.3).

mod made;

pub use made::{Made, MadeConfig, Masked, Ordering};

use burn::backend::Dispatch;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::conv::{apply, ZeroConv2d};
use crate::error::{FlowError, Result};
use crate::flow::{Cond, Flow, INIT_CHUNK};
use crate::fused;
use crate::layers::{ActNorm, ActNormConfig};
use crate::transforms::{Conditioner, Transform};

/// Appends the class one-hot `(N, K)` as K constant channels (images) or features (vectors).
pub(crate) fn with_cond<const D: usize>(
    x: Tensor<D>,
    cond: Cond,
    classes: usize,
) -> Result<Tensor<D>> {
    match (cond, classes) {
        // An unconditional network ignores labels the model may pass to every layer.
        (_, 0) => Ok(x),
        (Some(y), k) if k > 0 && y.dims() == [x.dims()[0], k] => {
            let mut shape = x.dims();
            shape[1] = k;
            let mut view = [1; D];
            view[..2].copy_from_slice(&[shape[0], k]);
            let y = y.clone().reshape(view).expand(shape);
            Ok(Tensor::cat(vec![x, y], 1))
        }
        (None, k) => Err(FlowError::shape(
            "class-conditional network",
            format!("one-hot labels (N, {k})"),
            "no labels",
        )),
        (Some(y), k) => Err(FlowError::shape(
            "network",
            format!("labels (N={}, {k})", x.dims()[0]),
            y.dims(),
        )),
    }
}

/// A 3×3 "same" convolution, or 1×1.
fn conv(c_in: usize, c_out: usize, k: usize, bias: bool, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .init(device)
}

/// Zero-initialised linear layer with a learned output scale, the vector twin of [`ZeroConv2d`].
#[derive(Module, Debug)]
pub struct ZeroLinear {
    pub linear: Linear,
    pub log_scale: Param<Tensor<1>>,
}

impl ZeroLinear {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        ZeroLinear {
            linear: LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::Zeros)
                .init(device),
            log_scale: Param::from_tensor(Tensor::zeros([d_out], device)),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let d = self.log_scale.dims()[0];
        self.linear.forward(x) * (self.log_scale.val() * 3.0).exp().reshape([1, d])
    }
}

/// Glow's coupling network: conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU → zero conv3×3.
#[derive(Debug, Clone)]
pub struct ConvNetConfig {
    pub inputs: usize,
    pub outputs: usize,
    /// Hidden width (Glow: 512).
    pub hidden: usize,
    /// Number of classes appended as constant channels (0: unconditional).
    pub classes: usize,
}

impl ConvNetConfig {
    pub fn new(inputs: usize, outputs: usize, hidden: usize) -> Self {
        Self {
            inputs,
            outputs,
            hidden,
            classes: 0,
        }
    }

    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    pub fn init(&self, device: &Device) -> ConvNet {
        let h = self.hidden;
        ConvNet {
            conv1: conv(self.inputs + self.classes, h, 3, false, device),
            norm1: ActNormConfig::new(h).init(device),
            conv2: conv(h, h, 1, false, device),
            norm2: ActNormConfig::new(h).init(device),
            out: ZeroConv2d::new(h, self.outputs, device),
            classes: self.classes,
        }
    }
}

#[derive(Module, Debug)]
pub struct ConvNet {
    pub conv1: Conv2d,
    pub norm1: ActNorm,
    pub conv2: Conv2d,
    pub norm2: ActNorm,
    pub out: ZeroConv2d,
    #[module(skip)]
    pub classes: usize,
}

impl ConvNet {
    /// The network from burn's operations, on `x` with any class channels appended.
    pub(crate) fn composed(&self, x: Tensor<4>) -> Result<Tensor<4>> {
        let h = apply(&self.conv1, x);
        let (h, _) = self.norm1.forward(h, None)?;
        let h = apply(&self.conv2, relu(h));
        let (h, _) = self.norm2.forward(h, None)?;
        Ok(self.out.forward(relu(h)))
    }

    /// The network's parameters for the fused operations, when they apply on `device` and the
    /// layers have the expected form (bias only in the zero conv, 3×3 / 1×1 / 3×3 kernels).
    pub(crate) fn fused_weights(&self, device: &Device) -> Option<fused::Weights<Dispatch>> {
        let k = |c: &Conv2d| c.weight.dims()[2];
        let plain = self.conv1.bias.is_none() && self.conv2.bias.is_none();
        let shape = (k(&self.conv1), k(&self.conv2), k(&self.out.conv)) == (3, 1, 3);
        if !fused::applies(device) || !plain || !shape {
            return None;
        }
        Some(fused::Weights {
            w1: self.conv1.weight.val().into_dispatch(),
            log_s1: self.norm1.log_scale.val().into_dispatch(),
            b1: self.norm1.bias.val().into_dispatch(),
            w2: self.conv2.weight.val().into_dispatch(),
            log_s2: self.norm2.log_scale.val().into_dispatch(),
            b2: self.norm2.bias.val().into_dispatch(),
            w3: self.out.conv.weight.val().into_dispatch(),
            b3: self.out.conv.bias.as_ref()?.val().into_dispatch(),
            log_s3: self.out.log_scale.val().into_dispatch(),
        })
    }
}

impl Conditioner<4> for ConvNet {
    fn forward(&self, x: Tensor<4>, cond: Cond) -> Result<Tensor<4>> {
        let x = with_cond(x, cond, self.classes)?;
        match self.fused_weights(&x.device()) {
            Some(weights) => Ok(fused::coupling_net(x, weights)),
            None => self.composed(x),
        }
    }

    /// Glow's affine transform with this network's parameters runs as one fused CPU
    /// operation (network and transform, forward or inverse) where it applies.
    fn transform(
        &self,
        transform: &Transform,
        x_a: Tensor<4>,
        x_b: Tensor<4>,
        reverse: bool,
        cond: Cond,
        rho: Option<Tensor<1>>,
    ) -> Result<(Tensor<4>, Option<Tensor<4>>)> {
        let fits = *transform == Transform::AffineGlow
            && self.out.log_scale.dims()[0] == 2 * x_b.dims()[1];
        let x_a = with_cond(x_a, cond, self.classes)?;
        let h = match self.fused_weights(&x_a.device()) {
            Some(weights) if fits => {
                let (b, log_slope) = fused::affine_coupling(x_a, x_b, reverse, weights);
                return Ok((b, Some(log_slope)));
            }
            Some(weights) => fused::coupling_net(x_a, weights),
            None => self.composed(x_a)?,
        };
        Ok(transform.apply(x_b, h, reverse, rho))
    }

    fn data_init(self, x: Tensor<4>, cond: Cond) -> Result<(Self, Tensor<4>)> {
        self.data_init_chunked(x, cond, INIT_CHUNK)
    }
}

/// RealNVP's coupling network: conv3×3 in, residual blocks (ReLU → conv3×3 → ReLU → conv3×3,
/// plus the skip), ReLU, zero conv3×3 out.
#[derive(Debug, Clone)]
pub struct ResNetConfig {
    pub inputs: usize,
    pub outputs: usize,
    /// Feature maps in the blocks (RealNVP: 64).
    pub hidden: usize,
    /// Residual blocks (RealNVP: 8 on CIFAR-10).
    pub blocks: usize,
    pub classes: usize,
}

impl ResNetConfig {
    pub fn new(inputs: usize, outputs: usize, hidden: usize, blocks: usize) -> Self {
        Self {
            inputs,
            outputs,
            hidden,
            blocks,
            classes: 0,
        }
    }

    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    pub fn init(&self, device: &Device) -> ResNet {
        let h = self.hidden;
        ResNet {
            input: conv(self.inputs + self.classes, h, 3, true, device),
            blocks: (0..self.blocks)
                .map(|_| [conv(h, h, 3, true, device), conv(h, h, 3, true, device)])
                .collect(),
            out: ZeroConv2d::new(h, self.outputs, device),
            classes: self.classes,
        }
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub input: Conv2d,
    pub blocks: Vec<[Conv2d; 2]>,
    pub out: ZeroConv2d,
    #[module(skip)]
    pub classes: usize,
}

impl Conditioner<4> for ResNet {
    fn forward(&self, x: Tensor<4>, cond: Cond) -> Result<Tensor<4>> {
        let mut h = apply(&self.input, with_cond(x, cond, self.classes)?);
        for [a, b] in &self.blocks {
            h = h.clone() + apply(b, relu(apply(a, relu(h))));
        }
        Ok(self.out.forward(relu(h)))
    }
}

/// NICE's coupling network for vectors: `layers` hidden ReLU layers, zero-initialised output.
#[derive(Debug, Clone)]
pub struct MlpConfig {
    pub inputs: usize,
    pub outputs: usize,
    /// Units per hidden layer (NICE on MNIST: 1000).
    pub hidden: usize,
    /// Hidden layers (NICE on MNIST: 5).
    pub layers: usize,
    pub classes: usize,
}

impl MlpConfig {
    pub fn new(inputs: usize, outputs: usize, hidden: usize, layers: usize) -> Self {
        Self {
            inputs,
            outputs,
            hidden,
            layers,
            classes: 0,
        }
    }

    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    pub fn init(&self, device: &Device) -> Mlp {
        let widths = std::iter::once(self.inputs + self.classes)
            .chain(std::iter::repeat_n(self.hidden, self.layers));
        Mlp {
            hidden: widths
                .clone()
                .zip(widths.skip(1))
                .map(|(i, o)| LinearConfig::new(i, o).init(device))
                .collect(),
            out: ZeroLinear::new(
                if self.layers == 0 {
                    self.inputs + self.classes
                } else {
                    self.hidden
                },
                self.outputs,
                device,
            ),
            classes: self.classes,
        }
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub hidden: Vec<Linear>,
    pub out: ZeroLinear,
    #[module(skip)]
    pub classes: usize,
}

impl Conditioner<2> for Mlp {
    fn forward(&self, x: Tensor<2>, cond: Cond) -> Result<Tensor<2>> {
        let h = with_cond(x, cond, self.classes)?;
        let h = self.hidden.iter().fold(h, |h, l| relu(l.forward(h)));
        Ok(self.out.forward(h))
    }
}
