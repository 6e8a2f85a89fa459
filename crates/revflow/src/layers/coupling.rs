//! Coupling layers (NICE §3.2, RealNVP §3.3, Glow §3.3). The input is split by a mask into
//! an identity part `x_a` and a changed part `x_b`; a network reads `x_a` (and the class, if
//! any) and moves `x_b`:
//!
//! - additive (NICE):       `y_b = x_b + t(x_a)`,                         log-det 0
//! - affine, Glow:          `y_b = (x_b + t) · σ(r + 2)`,                  log-det Σ log σ(r + 2)
//! - affine, RealNVP:       `y_b = x_b · exp(s) + t`, `s = ρ · tanh(r)`,   log-det Σ s
//!
//! The inverse only needs the network on `x_a`, which passes through unchanged.

use burn::module::{Module, Param};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{FlowError, Result};
use crate::flow::{check_channels, rank, sum_per_sample, Cond, Flow};
use crate::nets::Conditioner;

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

    /// Keeps only the changed entries of a network output (no-op for channel halves).
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

/// How the changed part moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouplingKind {
    /// NICE: shift only, volume preserving.
    Additive,
    /// Glow: shift then scale by `sigmoid(raw + 2)`.
    AffineGlow,
    /// RealNVP: scale by `exp(ρ · tanh(raw))`, then shift; ρ is learned per channel.
    AffineRealNvp,
}

impl CouplingKind {
    /// Network outputs per changed channel: shift, and raw scale for affine kinds.
    pub fn outputs_per_channel(&self) -> usize {
        match self {
            CouplingKind::Additive => 1,
            _ => 2,
        }
    }
}

/// Configuration of a [`Coupling`] layer.
#[derive(Debug, Clone)]
pub struct CouplingConfig {
    /// Channels (images) or features (vectors) of the input.
    pub channels: usize,
    pub mask: Mask,
    pub kind: CouplingKind,
}

impl CouplingConfig {
    pub fn new(channels: usize, mask: Mask, kind: CouplingKind) -> Self {
        Self {
            channels,
            mask,
            kind,
        }
    }

    /// Input channels the network must accept (before any conditioning channels).
    pub fn net_inputs(&self) -> usize {
        self.mask.identity_channels(self.channels)
    }

    /// Output channels the network must produce.
    pub fn net_outputs(&self) -> usize {
        self.kind.outputs_per_channel() * self.mask.changed_channels(self.channels)
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
            rescale: (self.kind == CouplingKind::AffineRealNvp)
                .then(|| Param::from_tensor(Tensor::ones([c], device))),
            channels: self.channels,
            mask: self.mask,
            kind: self.kind,
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
    pub kind: CouplingKind,
}

impl<N: Module> Coupling<N> {
    fn check<const D: usize>(&self, x: &Tensor<D>) -> Result<()> {
        check_channels("Coupling", x, self.channels)
    }

    /// `(shift, log_scale)` for the changed part, both restricted to it by the mask.
    fn params<const D: usize>(&self, h: Tensor<D>) -> (Tensor<D>, Option<Tensor<D>>)
    where
        N: Conditioner<D>,
    {
        let c = h.dims()[1] / self.kind.outputs_per_channel();
        let shift = self.mask.restrict(h.clone().narrow(1, 0, c));
        let log_scale = match self.kind {
            CouplingKind::Additive => None,
            CouplingKind::AffineGlow => Some(log_sigmoid(h.narrow(1, c, c) + 2.0)),
            CouplingKind::AffineRealNvp => {
                let mut shape = [1; D];
                shape[1] = c;
                let rho = self.rescale.as_ref().expect("RealNVP coupling has ρ").val();
                Some(h.narrow(1, c, c).tanh() * rho.reshape(shape))
            }
        };
        (shift, log_scale.map(|s| self.mask.restrict(s)))
    }
}

impl<N: Module> Coupling<N> {
    /// `(x_a, x_b)` and the network's output on `x_a` → the coupling's output and log-det.
    fn couple<const D: usize>(
        &self,
        a: Tensor<D>,
        b: Tensor<D>,
        h: Tensor<D>,
    ) -> (Tensor<D>, Tensor<1>)
    where
        N: Conditioner<D>,
    {
        let n = a.dims()[0];
        let (shift, log_scale) = self.params(h);
        let (b, logdet) = match (self.kind, log_scale) {
            (CouplingKind::AffineGlow, Some(s)) => {
                ((b + shift) * s.clone().exp(), sum_per_sample(s))
            }
            (CouplingKind::AffineRealNvp, Some(s)) => {
                (b * s.clone().exp() + shift, sum_per_sample(s))
            }
            _ => (b + shift, Tensor::zeros([n], &a.device())),
        };
        (self.mask.merge(a, b), logdet)
    }
}

impl<const D: usize, N: Conditioner<D>> Flow<D> for Coupling<N> {
    fn forward(&self, x: Tensor<D>, cond: Cond) -> Result<(Tensor<D>, Tensor<1>)> {
        self.check(&x)?;
        let (a, b) = self.mask.split(x);
        if let (CouplingKind::AffineGlow, Mask::Channels { .. }) = (self.kind, self.mask) {
            // Network and coupling in one operation where the network offers it (CPU).
            if let Some((b, log_scale)) = self.net.affine_glow(&a, &b, false, cond)? {
                return Ok((self.mask.merge(a, b), sum_per_sample(log_scale)));
            }
        }
        let h = self.net.forward(a.clone(), cond)?;
        Ok(self.couple(a, b, h))
    }

    fn inverse(&self, y: Tensor<D>, cond: Cond) -> Result<Tensor<D>> {
        self.check(&y)?;
        let (a, b) = self.mask.split(y);
        if let (CouplingKind::AffineGlow, Mask::Channels { .. }) = (self.kind, self.mask) {
            if let Some((b, _)) = self.net.affine_glow(&a, &b, true, cond)? {
                return Ok(self.mask.merge(a, b));
            }
        }
        let (shift, log_scale) = self.params(self.net.forward(a.clone(), cond)?);
        let b = match (self.kind, log_scale) {
            (CouplingKind::AffineGlow, Some(s)) => b * s.neg().exp() - shift,
            (CouplingKind::AffineRealNvp, Some(s)) => (b - shift) * s.neg().exp(),
            _ => b - shift,
        };
        Ok(self.mask.merge(a, b))
    }

    /// The network initialised on the batch; its output then gives the coupling's, so that
    /// the network runs once.
    fn data_init(self, x: Tensor<D>, cond: Cond) -> Result<(Self, Tensor<D>)> {
        self.check(&x)?;
        let (a, b) = self.mask.split(x);
        let (net, h) = self.net.data_init(a.clone(), cond)?;
        let layer = Coupling { net, ..self };
        let (y, _) = layer.couple(a, b, h);
        Ok((layer, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::{ConvNetConfig, MlpConfig, ResNetConfig};
    use crate::testing::*;

    const MASKS: [Mask; 4] = [
        Mask::Channels { flip: false },
        Mask::Channels { flip: true },
        Mask::Checkerboard { flip: false },
        Mask::Checkerboard { flip: true },
    ];
    const KINDS: [CouplingKind; 3] = [
        CouplingKind::Additive,
        CouplingKind::AffineGlow,
        CouplingKind::AffineRealNvp,
    ];

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
            let layer = perturb(config.init(net, &dev).unwrap(), 0.3, i as u64);
            check_flow(&layer, randn([2, 4, 4, 4], &dev), None);
        }
    }

    #[test]
    fn resnet_coupling_inverts_and_logdet_matches_jacobian() {
        let dev = device();
        let config = CouplingConfig::new(
            2,
            Mask::Checkerboard { flip: false },
            CouplingKind::AffineRealNvp,
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
            let layer = perturb(config.init(net, &dev).unwrap(), 0.3, 20 + i as u64);
            check_flow(&layer, randn([3, 6], &dev), None);
        }
    }

    #[test]
    fn class_conditional_coupling_depends_on_the_class() {
        let dev = device();
        let config =
            CouplingConfig::new(4, Mask::Channels { flip: false }, CouplingKind::AffineGlow);
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
        let config = CouplingConfig::new(3, Mask::Channels { flip: false }, CouplingKind::Additive);
        let err = config
            .init(MlpConfig::new(1, 1, 4, 1).init(&dev), &dev)
            .unwrap_err();
        assert!(
            err.to_string().contains("even number of channels, got 3"),
            "{err}"
        );
        let config = CouplingConfig::new(4, Mask::Channels { flip: false }, CouplingKind::Additive);
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
