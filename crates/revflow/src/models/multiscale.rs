//! Multi-scale image flows (RealNVP §3.6, Glow §3): each level squeezes, transforms and
//! factors out half of its channels as latents, so that early latents hold fine detail and
//! the top one the global structure.
//!
//! ```text
//! pixels → dequantize [→ logit] → level 1 → level 2 → … → level L → top prior
//!                                    ↓ z₁       ↓ z₂
//! ```
//!
//! Glow's level: squeeze → K × (ActNorm → permutation → coupling) → split with learned p(z|h).
//! RealNVP's level: checkerboard couplings → squeeze → channel couplings → split with N(0, I);
//! its last level has checkerboard couplings only.

use burn::module::{Module, ModuleDisplay};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use crate::distributions::{BaseDistribution, Gaussian, GaussianConfig};
use crate::error::{FlowError, Result};
use crate::flow::{Cond, Flow, Sequential};
use crate::layers::{
    ActNorm, ActNormConfig, BatchNormFlowConfig, CouplingConfig, Dequantize, Latent, Layer, Logit,
    Mask, Split, SplitConfig, Squeeze, VariationalConfig, VariationalDequantizer,
};
use crate::models::Noise;
use crate::nets::{ConvNet, ConvNetConfig, ResNet, ResNetConfig};
use crate::noise::Standard;
use crate::transforms::Conditioner;
use crate::transforms::Transform;

use super::{GlowConfig, RealNvpConfig, VariationalSize};

/// One scale: `before` at the input resolution, then an optional squeeze, `after`, and an
/// optional split.
#[derive(Module, Debug)]
pub struct Level<N: Module + ModuleDisplay> {
    pub before: Sequential<Layer<N>>,
    pub after: Sequential<Layer<N>>,
    pub split: Option<Split>,
    #[module(skip)]
    pub squeeze: bool,
}

impl<N: Conditioner<4>> Level<N> {
    /// `x → (h, z, log|det J| + log p(z | h))`.
    fn forward(
        &self,
        x: Tensor<4>,
        cond: Cond,
    ) -> Result<(Tensor<4>, Option<Tensor<4>>, Tensor<1>)> {
        let (h, logdet) = self.before.forward(x, cond)?;
        let h = if self.squeeze {
            Squeeze.forward(h, cond)?.0
        } else {
            h
        };
        let (h, more) = self.after.forward(h, cond)?;
        let logdet = logdet + more;
        match &self.split {
            Some(split) => {
                let (kept, z, log_p) = split.forward(h)?;
                Ok((kept, Some(z), logdet + log_p))
            }
            None => Ok((h, None, logdet)),
        }
    }

    /// `(h, z) → x`; `z` is the split's latent (`None` for a level without a split).
    fn inverse(&self, h: Tensor<4>, z: Option<Latent>, cond: Cond) -> Result<Tensor<4>> {
        let h = match (&self.split, z) {
            (Some(split), Some(z)) => split.inverse(h, z)?,
            (None, None) => h,
            _ => {
                return Err(FlowError::shape(
                    "decode",
                    "a latent for every split and none for a level without one",
                    "another pairing",
                ))
            }
        };
        let h = self.after.inverse(h, cond)?;
        let h = if self.squeeze {
            Squeeze.inverse(h, cond)?
        } else {
            h
        };
        self.before.inverse(h, cond)
    }

    fn data_init(self, x: Tensor<4>, cond: Cond) -> Result<(Self, Tensor<4>)> {
        let (before, h) = self.before.data_init(x, cond)?;
        let h = if self.squeeze {
            Squeeze.forward(h, cond)?.0
        } else {
            h
        };
        let (after, h) = self.after.data_init(h, cond)?;
        let h = match &self.split {
            Some(split) => split.forward(h)?.0,
            None => h,
        };
        Ok((
            Level {
                before,
                after,
                ..self
            },
            h,
        ))
    }
}

/// A multi-scale flow on 8-bit images, with its preprocessing and top prior.
#[derive(Module, Debug)]
pub struct MultiScale<N: Module + ModuleDisplay> {
    /// An ActNorm over every pixel position, not just every channel (an option, not in the
    /// papers): data-initialised, it gives near-constant pixels (image borders) the
    /// per-position scale that channel-wise layers cannot.
    pub pixel_norm: Option<ActNorm>,
    pub levels: Vec<Level<N>>,
    pub top: Gaussian,
    /// Glow's y-cond auxiliary classifier on the spatial mean of the top latent.
    pub classifier: Option<Linear>,
    /// `[C, H, W]` of the input images.
    #[module(skip)]
    pub shape: [usize; 3],
    #[module(skip)]
    pub n_bits: u32,
    /// RealNVP's logit preprocessing margin; `None` for Glow's centred inputs.
    #[module(skip)]
    pub logit_alpha: Option<f64>,
    /// Variational dequantization's `q(u | x)`; `None`: uniform noise.
    pub dequantizer: Option<VariationalDequantizer>,
}

/// Latent shapes `[C, H, W]` of each split, then of the top.
fn latent_shapes<N: Module + ModuleDisplay>(
    shape: [usize; 3],
    levels: &[Level<N>],
) -> Vec<[usize; 3]> {
    let [mut c, mut h, mut w] = shape;
    let mut out = Vec::new();
    for level in levels {
        if level.squeeze {
            (c, h, w) = (4 * c, h / 2, w / 2);
        }
        if level.split.is_some() {
            out.push([c / 2, h, w]);
            c /= 2;
        }
    }
    out.push([c, h, w]);
    out
}

fn top_shape<N: Module + ModuleDisplay>(shape: [usize; 3], levels: &[Level<N>]) -> [usize; 3] {
    *latent_shapes(shape, levels).last().expect("a top latent")
}

impl<N: Conditioner<4>> MultiScale<N> {
    pub fn latent_shapes(&self) -> Vec<[usize; 3]> {
        latent_shapes(self.shape, &self.levels)
    }

    fn dequantize(&self) -> Dequantize {
        Dequantize {
            n_bits: self.n_bits,
            centered: self.logit_alpha.is_none(),
        }
    }

    /// Pixels `(N, C·H·W)` → model input `(N, C, H, W)` and the preprocessing log-det.
    fn preprocess(&self, x: Tensor<2>, noise: Noise) -> Result<(Tensor<4>, Tensor<1>)> {
        let (x, logdet) = self.dequantize_input(x, noise)?;
        match &self.pixel_norm {
            Some(norm) => {
                let (y, more) = per_pixel(x, |x| norm.forward(x, None))?;
                Ok((y, logdet + more))
            }
            None => Ok((x, logdet)),
        }
    }

    /// Dequantisation, and the logit for RealNVP.
    fn dequantize_input(&self, x: Tensor<2>, noise: Noise) -> Result<(Tensor<4>, Tensor<1>)> {
        let [n, d] = x.dims();
        let [c, h, w] = self.shape;
        if d != c * h * w {
            return Err(FlowError::shape(
                "image model",
                format!("images of {c}×{h}×{w} = {} values", c * h * w),
                format!("{d} values per sample"),
            ));
        }
        let noise = noise.map(|u| u.clone().reshape([u.dims()[0], c, h, w]));
        let (x, logdet) = match (noise, &self.dequantizer) {
            (Some(u), _) if u.dims()[0] != n => {
                return Err(FlowError::shape(
                    "dequantization noise",
                    format!("{n} rows"),
                    u.dims(),
                ))
            }
            // The host's uniform noise moved by q(u | x): log p(x + u) − log q(u | x).
            (Some(u0), Some(q)) => {
                let pixels = x.reshape([n, c, h, w]);
                let (centres, _) = self.dequantize().dequantize(pixels.clone(), None)?;
                let (u, log_q) = q.sample(u0, &centres.reshape([n, d]))?;
                let (x, logdet) = self.dequantize().dequantize(pixels, Some(u))?;
                (x, logdet - log_q)
            }
            (u, _) => self.dequantize().dequantize(x.reshape([n, c, h, w]), u)?,
        };
        match self.logit_alpha {
            Some(alpha) => {
                let (x, more) = Logit::new(alpha).forward(x, None)?;
                Ok((x, logdet + more))
            }
            None => Ok((x, logdet)),
        }
    }

    /// Model space `(N, C, H, W)` → pixels `(N, C·H·W)`, exact 8-bit levels.
    fn postprocess(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        let x = match &self.pixel_norm {
            Some(norm) => per_pixel(x, |x| Ok((norm.inverse(x, None)?, ())))?.0,
            None => x,
        };
        let x = match self.logit_alpha {
            Some(alpha) => Logit::new(alpha).inverse(x, None)?,
            None => x,
        };
        let n = x.dims()[0];
        Ok(self.dequantize().inverse(x, None)?.reshape([n as i64, -1]))
    }

    /// Runs every level: the latents (splits, then top) and the summed log-det + log p(z|h).
    fn run(&self, x: Tensor<4>, cond: Cond) -> Result<(Vec<Tensor<4>>, Tensor<1>)> {
        let n = x.dims()[0];
        let mut logdet = Tensor::zeros([n], &x.device());
        let mut zs = Vec::new();
        let mut h = x;
        for level in &self.levels {
            let (next, z, ld) = level.forward(h, cond)?;
            zs.extend(z);
            logdet = logdet + ld;
            h = next;
        }
        zs.push(h);
        Ok((zs, logdet))
    }

    pub fn log_prob(
        &self,
        x: Tensor<2>,
        cond: Cond,
        noise: Noise,
    ) -> Result<(Tensor<1>, Option<Tensor<2>>)> {
        let (x, pre) = self.preprocess(x, noise)?;
        let (zs, logdet) = self.run(x, cond)?;
        let top = zs.last().expect("a top latent").clone();
        let logits = self.classifier.as_ref().map(|c| {
            let [n, ch, _, _] = top.dims();
            c.forward(
                top.clone()
                    .reshape([n as i64, ch as i64, -1])
                    .mean_dim(2)
                    .reshape([n, ch]),
            )
        });
        Ok((pre + logdet + self.top.log_prob(top, cond)?, logits))
    }

    pub fn encode(&self, x: Tensor<2>, cond: Cond) -> Result<Vec<Tensor<2>>> {
        let (x, _) = self.preprocess(x, None)?;
        let (zs, _) = self.run(x, cond)?;
        Ok(zs.into_iter().map(flatten).collect())
    }

    /// Standardised latents of every level, the top last: each split's `(z − μ(h)) / σ(h)`
    /// and the top's `(z − μ) / σ`. `x ↦ ε` is a bijection with
    /// `log p(x) = log N(ε; 0, I) + log|det ∂ε/∂x|`, split priors included.
    pub fn standardize(&self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Vec<Tensor<2>>> {
        let (mut h, _) = self.preprocess(x, noise)?;
        let mut eps = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let (kept, z, _) = level.forward(h, cond)?;
            if let (Some(split), Some(z)) = (&level.split, z) {
                eps.push(flatten(split.standardize(&kept, z)));
            }
            h = kept;
        }
        eps.push(flatten(self.top.standardize(h, cond)?));
        Ok(eps)
    }

    /// The latents of every level, checked against their shapes: `(N, C, H, W)` each.
    fn unflatten_all(&self, zs: &[Tensor<2>], what: &'static str) -> Result<Vec<Tensor<4>>> {
        let shapes = self.latent_shapes();
        if zs.len() != shapes.len() {
            return Err(FlowError::shape(
                what,
                format!("{} latent levels", shapes.len()),
                format!("{} levels", zs.len()),
            ));
        }
        zs.iter()
            .zip(shapes)
            .map(|(z, shape)| unflatten(z, shape))
            .collect()
    }

    /// Inverse from the top latent `z`, given each split's latent (bottom first).
    fn descend(&self, top: Tensor<4>, zs: Vec<Latent>, cond: Cond) -> Result<Tensor<2>> {
        let mut zs = zs.into_iter().rev();
        let mut h = top;
        for level in self.levels.iter().rev() {
            let z = match level.split {
                Some(_) => Some(zs.next().ok_or_else(|| {
                    FlowError::shape("decode", "a latent for every split", "too few")
                })?),
                None => None,
            };
            h = level.inverse(h, z, cond)?;
        }
        self.postprocess(h)
    }

    pub fn decode(&self, zs: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        let mut levels = self.unflatten_all(zs, "decode")?;
        let top = levels.pop().expect("a top latent");
        self.descend(top, levels.into_iter().map(Latent::Value).collect(), cond)
    }

    /// Inverse of [`standardize`](Self::standardize).
    pub fn destandardize(&self, eps: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        let mut levels = self.unflatten_all(eps, "destandardize")?;
        let top = self
            .top
            .destandardize(levels.pop().expect("a top latent"), cond)?;
        self.descend(
            top,
            levels.into_iter().map(Latent::Standard).collect(),
            cond,
        )
    }

    /// Decodes the top latent `z` with every lower level given by its standardised latent
    /// (bottom first; zeros: each prior's mean given the levels above).
    pub fn decode_top(
        &self,
        top: &Tensor<2>,
        lower: &[Tensor<2>],
        cond: Cond,
    ) -> Result<Tensor<2>> {
        let mut all = lower.to_vec();
        all.push(top.clone());
        let mut levels = self.unflatten_all(&all, "decode_top")?;
        let top = levels.pop().expect("a top latent");
        self.descend(
            top,
            levels.into_iter().map(Latent::Standard).collect(),
            cond,
        )
    }

    pub fn standard(&self) -> Standard {
        BaseDistribution::<4>::standard(&self.top)
    }

    pub fn data_init(self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Self> {
        let (mut x, _) = self.dequantize_input(x, noise)?;
        let pixel_norm = match self.pixel_norm {
            Some(norm) => {
                let mut init = None;
                x = per_pixel(x, |x| {
                    let (norm, y) = norm.clone().data_init(x, None)?;
                    init = Some(norm);
                    Ok((y, ()))
                })?
                .0;
                init
            }
            None => None,
        };
        let mut levels = Vec::with_capacity(self.levels.len());
        let mut h = x;
        for level in self.levels {
            let (level, next) = level.data_init(h, cond)?;
            levels.push(level);
            h = next;
        }
        Ok(MultiScale {
            levels,
            pixel_norm,
            ..self
        })
    }
}

/// Applies `f` to images viewed as flat rows `(N, C·H·W)`.
fn per_pixel<T>(
    x: Tensor<4>,
    f: impl FnOnce(Tensor<2>) -> Result<(Tensor<2>, T)>,
) -> Result<(Tensor<4>, T)> {
    let dims = x.dims();
    let (y, extra) = f(flatten(x))?;
    Ok((y.reshape(dims), extra))
}

fn flatten(z: Tensor<4>) -> Tensor<2> {
    let n = z.dims()[0];
    z.reshape([n as i64, -1])
}

/// A flat `(N, C·H·W)` latent of one level back to `(N, C, H, W)`, checked.
fn unflatten(z: &Tensor<2>, [c, h, w]: [usize; 3]) -> Result<Tensor<4>> {
    let [n, d] = z.dims();
    if d != c * h * w {
        return Err(FlowError::shape(
            "decode",
            format!("a latent of {c}×{h}×{w}"),
            format!("{d} values"),
        ));
    }
    Ok(z.clone().reshape([n, c, h, w]))
}

/// Builds Glow; refuses what [`GlowConfig::validate`] refuses.
pub fn glow(config: &GlowConfig, device: &Device) -> Result<MultiScale<ConvNet>> {
    config.validate()?;
    let mut c = config.shape[0];
    let mut levels = Vec::with_capacity(config.levels);
    for l in 0..config.levels {
        c *= 4;
        let mut steps: Vec<Layer<ConvNet>> = Vec::new();
        for k in 0..config.depth {
            let seed = config.seed.wrapping_add((l * 1000 + k) as u64);
            steps.push(ActNormConfig::new(c).init(device).into());
            steps.push(config.permutation.layer(c, seed, device));
            let coupling =
                CouplingConfig::new(c, Mask::Channels { flip: false }, config.transform());
            let net =
                ConvNetConfig::new(coupling.net_inputs(), coupling.net_outputs(), config.hidden)
                    .init(device);
            steps.push(coupling.init(net, device)?.into());
        }
        let split = if l + 1 < config.levels {
            let split = SplitConfig::new(c, true).init(device)?;
            c /= 2;
            Some(split)
        } else {
            None
        };
        levels.push(Level {
            before: Sequential::new(Vec::new()),
            after: Sequential::new(steps),
            split,
            squeeze: true,
        });
    }
    let top_shape = top_shape(config.shape, &levels);
    Ok(MultiScale {
        levels,
        top: GaussianConfig::standard(&top_shape)
            .with_learn_top(config.learn_top)
            .with_classes(config.classes)
            .init(device),
        classifier: (config.classes > 0)
            .then(|| LinearConfig::new(top_shape[0], config.classes).init(device)),
        shape: config.shape,
        n_bits: config.n_bits,
        logit_alpha: None,
        dequantizer: dequantizer(config.shape, config.variational, device)?,
        pixel_norm: config
            .pixel_norm
            .then(|| ActNormConfig::new(config.shape.iter().product()).init(device)),
    })
}

/// Builds RealNVP; refuses what [`RealNvpConfig::validate`] refuses.
pub fn realnvp(config: &RealNvpConfig, device: &Device) -> Result<MultiScale<ResNet>> {
    config.validate()?;
    let [mut c, _, _] = config.shape;
    let couplings =
        |c: usize, mask: fn(bool) -> Mask, count: usize| -> Result<Sequential<Layer<ResNet>>> {
            let mut layers: Vec<Layer<ResNet>> = Vec::new();
            for i in 0..count {
                let coupling = CouplingConfig::new(c, mask(i % 2 == 1), Transform::AffineRealNvp);
                let net = ResNetConfig::new(
                    coupling.net_inputs(),
                    coupling.net_outputs(),
                    config.hidden,
                    config.blocks,
                )
                .init(device);
                layers.push(coupling.init(net, device)?.into());
                layers.push(BatchNormFlowConfig::new(c).init(device).into());
            }
            Ok(Sequential::new(layers))
        };
    let checker = |flip| Mask::Checkerboard { flip };
    let channels = |flip| Mask::Channels { flip };
    let mut levels = Vec::with_capacity(config.scales);
    for s in 0..config.scales {
        if s + 1 == config.scales {
            levels.push(Level {
                before: couplings(c, checker, 4)?,
                after: Sequential::new(Vec::new()),
                split: None,
                squeeze: false,
            });
        } else {
            let before = couplings(c, checker, 3)?;
            c *= 4;
            let after = couplings(c, channels, 3)?;
            let split = SplitConfig::new(c, false).init(device)?;
            c /= 2;
            levels.push(Level {
                before,
                after,
                split: Some(split),
                squeeze: true,
            });
        }
    }
    let top_shape = top_shape(config.shape, &levels);
    Ok(MultiScale {
        levels,
        top: GaussianConfig::standard(&top_shape).init(device),
        classifier: None,
        shape: config.shape,
        n_bits: config.n_bits,
        logit_alpha: Some(config.alpha),
        pixel_norm: None,
        dequantizer: dequantizer(config.shape, config.variational, device)?,
    })
}

/// `q(u | x)` for variational dequantization, when configured.
fn dequantizer(
    shape: [usize; 3],
    variational: Option<VariationalSize>,
    device: &Device,
) -> Result<Option<VariationalDequantizer>> {
    variational
        .map(|v| {
            VariationalConfig {
                shape,
                couplings: v.couplings,
                hidden: v.hidden,
            }
            .init(device)
        })
        .transpose()
}
