//! Coupling layers (NICE §3.2, RealNVP §3.3, Glow §3.3, neural spline flows). The input is
//! split by a mask into an identity part `x_a` and a changed part `x_b`; a network reads `x_a`
//! (and the class, if any) and returns the parameters with which a [`Transform`] moves each
//! feature of `x_b` (additive, Glow or RealNVP affine, rational-quadratic spline); the log-det
//! is the sum of the transform's log-slopes. The inverse only needs the network on `x_a`,
//! which passes through unchanged.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{FlowError, Result};
use crate::flow::{check_channels, rank, sum_per_sample, Cond, Flow};
use crate::transforms::{Conditioner, Transform};

/// Which entries stay fixed and feed the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Channel halves: the first half is the identity part (`flip`: the second half).
    /// On vectors: feature halves.
    Channels { flip: bool },
    /// Spatial checkerboard, `(h + w)` even is the identity part (`flip`: odd).
    /// On vectors: alternating features.
    Checkerboard { flip: bool },
}

impl Mask {
    /// Channels the network reads.
    pub fn identity_channels(&self, channels: usize) -> usize {
        match self {
            Mask::Channels { .. } => channels / 2,
            Mask::Checkerboard { .. } => channels,
        }
    }

    /// Channels the layer changes (the network's output per parameter kind).
    pub fn changed_channels(&self, channels: usize) -> usize {
        match self {
            Mask::Channels { .. } => channels / 2,
            Mask::Checkerboard { .. } => channels,
        }
    }

    /// 1 where the entry is in the changed part; shape `[1, 1, H, W]` or `[1, C]`.
    fn changed<const D: usize>(&self, dims: [usize; D], device: &Device) -> Tensor<D> {
        let Mask::Checkerboard { flip } = *self else {
            unreachable!("only the checkerboard mask is multiplicative")
        };
        let odd = |i: usize| (((i % 2) == 1) != flip) as u8 as f32;
        if D == 4 {
            let (h, w) = (dims[2], dims[3]);
            let v: Vec<f32> = (0..h * w).map(|k| odd(k / w + k % w)).collect();
            rank::<4, D>(Tensor::from_data(TensorData::new(v, [1, 1, h, w]), device))
        } else {
            let c = dims[1];
            let v: Vec<f32> = (0..c).map(odd).collect();
            rank::<2, D>(Tensor::from_data(TensorData::new(v, [1, c]), device))
        }
    }

    /// `x → (x_a, x_b)`.
    fn split<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        match *self {
            Mask::Channels { flip } => {
                let half = x.dims()[1] / 2;
                let (first, second) = (x.clone().narrow(1, 0, half), x.narrow(1, half, half));
                if flip {
                    (second, first)
                } else {
                    (first, second)
                }
            }
            Mask::Checkerboard { .. } => {
                let b = self.changed(x.dims(), &x.device());
                (x.clone() * (b.ones_like() - b.clone()), x * b)
            }
        }
    }

    /// Keeps only the changed entries (no-op for channel halves).
    fn restrict<const D: usize>(&self, t: Tensor<D>) -> Tensor<D> {
        match self {
            Mask::Channels { .. } => t,
            Mask::Checkerboard { .. } => t.clone() * self.changed(t.dims(), &t.device()),
        }
    }

    /// `(x_a, y_b) → y`.
    fn merge<const D: usize>(&self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        match *self {
            Mask::Channels { flip: false } => Tensor::cat(vec![a, b], 1),
            Mask::Channels { flip: true } => Tensor::cat(vec![b, a], 1),
            Mask::Checkerboard { .. } => a + b,
        }
    }
}

/// Configuration of a [`Coupling`] layer.
#[derive(Debug, Clone)]
pub struct CouplingConfig {
    /// Channels (images) or features (vectors) of the input.
    pub channels: usize,
    pub mask: Mask,
    pub transform: Transform,
}

impl CouplingConfig {
    pub fn new(channels: usize, mask: Mask, transform: Transform) -> Self {
        Self {
            channels,
            mask,
            transform,
        }
    }

    /// Input channels the network must accept (before any conditioning channels).
    pub fn net_inputs(&self) -> usize {
        self.mask.identity_channels(self.channels)
    }

    /// Output channels the network must produce: the transform's parameters per changed one.
    pub fn net_outputs(&self) -> usize {
        self.transform.params() * self.mask.changed_channels(self.channels)
    }

    /// Wraps a network built for `net_inputs() → net_outputs()` channels.
    pub fn init<N: Module>(&self, net: N, device: &Device) -> Result<Coupling<N>> {
        if matches!(self.mask, Mask::Channels { .. }) && !self.channels.is_multiple_of(2) {
            return Err(FlowError::Config(format!(
                "a channel-half coupling needs an even number of channels, got {}",
                self.channels
            )));
        }
        let c = self.mask.changed_channels(self.channels);
        Ok(Coupling {
            net,
            rescale: (self.transform == Transform::AffineRealNvp)
                .then(|| Param::from_tensor(Tensor::ones([c], device))),
            channels: self.channels,
            mask: self.mask,
            transform: self.transform,
        })
    }
}

#[derive(Module, Debug)]
pub struct Coupling<N: Module> {
    pub net: N,
    /// RealNVP's learned per-channel bound ρ on the log-scale.
    pub rescale: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub channels: usize,
    #[module(skip)]
    pub mask: Mask,
    #[module(skip)]
    pub transform: Transform,
}

impl<N: Module> Coupling<N> {
    fn check<const D: usize>(&self, x: &Tensor<D>) -> Result<()> {
        check_channels("Coupling", x, self.channels)
    }

    fn rho(&self) -> Option<Tensor<1>> {
        self.rescale.as_ref().map(|r| r.val())
    }

    /// `x_a` and the moved `x_b` (with its elementwise log-slopes) → the layer's output and
    /// log-det; a checkerboard mask keeps only the changed entries of both.
    fn merge<const D: usize>(
        &self,
        a: Tensor<D>,
        b: Tensor<D>,
        log_slope: Option<Tensor<D>>,
    ) -> (Tensor<D>, Tensor<1>) {
        let logdet = match log_slope {
            Some(l) => sum_per_sample(self.mask.restrict(l)),
            None => Tensor::zeros([a.dims()[0]], &a.device()),
        };
        (self.mask.merge(a, self.mask.restrict(b)), logdet)
    }
}

impl<const D: usize, N: Conditioner<D>> Flow<D> for Coupling<N> {
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        self.check(&x)?;
        let (a, b) = self.mask.split(x);
        let (b, log_slope) =
            self.net
                .transform(&self.transform, a.clone(), b, false, cond, self.rho())?;
        Ok(self.merge(a, b, log_slope))
    }

    fn inverse(&self, y: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        self.check(&y)?;
        let (a, b) = self.mask.split(y);
        let (b, _) = self
            .net
            .transform(&self.transform, a.clone(), b, true, cond, self.rho())?;
        Ok(self.merge(a, b, None).0)
    }

    /// The network initialised on the batch; its output then gives the coupling's, so that
    /// the network runs once.
    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        self.check(&x)?;
        let (a, b) = self.mask.split(x);
        let (net, h) = self.net.data_init(a.clone(), cond)?;
        let layer = Coupling { net, ..self };
        let (b, log_slope) = layer.transform.apply(b, h, false, layer.rho());
        let (y, _) = layer.merge(a, b, log_slope);
        Ok((layer, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{ConvNetConfig, MlpConfig, ResNetConfig};
    use crate::testing::*;
    use crate::transforms::SplineConfig;

    const MASKS: [Mask; 4] = [
        Mask::Channels { flip: false },
        Mask::Channels { flip: true },
        Mask::Checkerboard { flip: false },
        Mask::Checkerboard { flip: true },
    ];
    const KINDS: [Transform; 4] = [
        Transform::Additive,
        Transform::AffineGlow,
        Transform::AffineRealNvp,
        Transform::Spline(SplineConfig {
            bins: 5,
            tail_bound: 2.5,
        }),
    ];

    /// How far from zero the networks' weights are moved. A spline's raw parameters add up
    /// over more outputs, and where a steep spline is nearly flat f32 cannot invert it to
    /// 1e-4 (transforms::spline's tests bound that), so its weights move less.
    fn std(kind: Transform) -> f64 {
        match kind {
            Transform::Spline(_) => 0.1,
            _ => 0.3,
        }
    }

    #[test]
    fn image_couplings_invert_and_logdet_matches_jacobian() {
        let dev = device();
        for (i, (mask, kind)) in MASKS
            .iter()
            .flat_map(|m| KINDS.map(|k| (*m, k)))
            .enumerate()
        {
            let config = CouplingConfig::new(4, mask, kind);
            let net = ConvNetConfig::new(config.net_inputs(), config.net_outputs(), 8).init(&dev);
            let layer = perturb(config.init(net, &dev).unwrap(), std(kind), i as u64);
            check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        }
    }

    #[test]
    fn resnet_coupling_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let config = CouplingConfig::new(
            2,
            Mask::Checkerboard { flip: false },
            Transform::AffineRealNvp,
        );
        let net = ResNetConfig::new(config.net_inputs(), config.net_outputs(), 8, 2).init(&dev);
        let layer = perturb(config.init(net, &dev).unwrap(), 0.2, 9);
        check_flow(&layer, randn([2, 2, 4, 4], &dev), None);
    }

    #[test]
    fn vector_couplings_invert_and_logdet_matches_jacobian() {
        let dev = device();
        for (i, (mask, kind)) in MASKS
            .iter()
            .flat_map(|m| KINDS.map(|k| (*m, k)))
            .enumerate()
        {
            let config = CouplingConfig::new(6, mask, kind);
            let net = MlpConfig::new(config.net_inputs(), config.net_outputs(), 16, 2).init(&dev);
            let layer = perturb(config.init(net, &dev).unwrap(), std(kind), 20 + i as u64);
            check_flow(&layer, randn([3, 6], &dev), None);
        }
    }

    #[test]
    fn class_conditional_coupling_depends_on_the_class() {
        let dev = device();
        let config = CouplingConfig::new(4, Mask::Channels { flip: false }, Transform::AffineGlow);
        let net = ConvNetConfig::new(config.net_inputs(), config.net_outputs(), 8)
            .with_classes(3)
            .init(&dev);
        let layer = perturb(config.init(net, &dev).unwrap(), 0.3, 4);
        let x = randn([2, 4, 4, 4], &dev);
        let y0 = one_hot(&[0, 1], 3, &dev);
        let y1 = one_hot(&[2, 2], 3, &dev);
        check_flow(&layer, x.clone(), Some(&y0));
        let (a, _) = layer.forward(x.clone(), Some(&y0)).unwrap();
        let (b, _) = layer.forward(x, Some(&y1)).unwrap();
        assert!(max_abs_diff(&a, &b) > 1e-3);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let ad = ad();
        for kind in KINDS {
            let config = CouplingConfig::new(4, Mask::Channels { flip: false }, kind);
            let net = ConvNetConfig::new(config.net_inputs(), config.net_outputs(), 8).init(&ad);
            let x = randn([2, 4, 4, 4], &ad);
            let (layer, _) = config
                .init(net, &ad)
                .unwrap()
                .data_init(x.clone(), None)
                .unwrap();
            // Zero-initialised output layers stop gradients from reaching earlier ones, so
            // step away from the identity first, as training does after one update.
            check_gradients(perturb(layer, 0.1, 5), x, None);
            let config = CouplingConfig::new(4, Mask::Checkerboard { flip: true }, kind);
            let net = MlpConfig::new(config.net_inputs(), config.net_outputs(), 8, 1).init(&ad);
            check_gradients(
                perturb(config.init(net, &ad).unwrap(), 0.1, 6),
                randn([3, 4], &ad),
                None,
            );
        }
    }

    #[test]
    fn rejects_odd_channels_and_wrong_shapes() {
        let dev = device();
        let config = CouplingConfig::new(3, Mask::Channels { flip: false }, Transform::Additive);
        let err = config
            .init(MlpConfig::new(1, 1, 4, 1).init(&dev), &dev)
            .unwrap_err();
        assert!(
            err.to_string().contains("even number of channels, got 3"),
            "{err}"
        );
        let config = CouplingConfig::new(4, Mask::Channels { flip: false }, Transform::Additive);
        let layer = config
            .init(ConvNetConfig::new(2, 2, 4).init(&dev), &dev)
            .unwrap();
        let err = layer.forward(randn([1, 3, 4, 4], &dev), None).unwrap_err();
        assert!(
            err.to_string().contains("Coupling: expected 4 channels"),
            "{err}"
        );
    }
}
