//! The three model families and vector flows, behind one [`Model`] type.
//!
//! Every model takes samples as flat rows `(N, D)`: 8-bit pixel values (0‥255) for image
//! models, real values for vector flows. It returns exact log-likelihoods, samples, and
//! latents (one `(N, dᵢ)` tensor per level) that decode back to the input.

mod context;
mod flat;
#[cfg(test)]
mod log_p_check;
mod multiscale;

pub use context::Context;
pub use flat::FlatFlow;
pub use multiscale::{Level, MultiScale};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{FlowError, Result};
use crate::flow::{check_finite, Cond};
use crate::layers::{Direction, InvConvConfig, Layer, Permute};
use crate::nets::Ordering;
use crate::nets::{ConvNet, ResNet};
use crate::noise::{self, Purpose, Standard};
use crate::transforms::{SplineConfig, Transform};
use crate::validate::{between, in_range};

/// How Glow mixes channels between couplings.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Permutation {
    Reverse,
    Shuffle,
    Invconv,
    InvconvLu,
}

impl Permutation {
    /// The layer that mixes `channels` features between two couplings.
    pub fn layer<N: Module>(self, channels: usize, seed: u64, device: &Device) -> Layer<N> {
        match self {
            Permutation::Reverse => Permute::reverse(channels, device).into(),
            Permutation::Shuffle => Permute::shuffle(channels, seed, device).into(),
            Permutation::Invconv => InvConvConfig::new(channels, seed).init(device).into(),
            Permutation::InvconvLu => InvConvConfig::new(channels, seed).init_lu(device).into(),
        }
    }
}

/// The size of variational dequantization's `q(u | x)` (Flow++): spline couplings
/// conditioned on the pixels.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariationalSize {
    pub couplings: usize,
    pub hidden: usize,
}

impl Default for VariationalSize {
    fn default() -> Self {
        Self {
            couplings: 4,
            hidden: 32,
        }
    }
}

/// Glow (Kingma & Dhariwal 2018). Defaults suit the 8×8 digits on 2 cores; the paper's
/// CIFAR-10 model is `levels: 3, depth: 32, hidden: 512, affine, invconv`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GlowConfig {
    /// `[C, H, W]` of the images.
    pub shape: [usize; 3],
    /// Levels L (squeeze → K steps → split).
    pub levels: usize,
    /// Steps per level K.
    pub depth: usize,
    /// Hidden width of the coupling networks.
    pub hidden: usize,
    /// Affine (true) or additive (false) coupling.
    pub affine: bool,
    /// Rational-quadratic spline couplings instead (`affine` is then ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spline: Option<SplineConfig>,
    pub permutation: Permutation,
    /// Learned mean and log-std of the top prior.
    pub learn_top: bool,
    /// Classes for a class-conditional (y-cond) model; 0: unconditional.
    pub classes: usize,
    /// Weight of the auxiliary classification loss in y-cond models (Glow: 0.01).
    pub class_weight: f64,
    pub n_bits: u32,
    /// A data-initialised ActNorm per pixel position before the first level (not in the paper;
    /// helps small data sets with near-constant pixels such as the digits' borders).
    pub pixel_norm: bool,
    /// Variational dequantization (Flow++) instead of uniform noise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variational: Option<VariationalSize>,
    pub seed: u64,
}

impl Default for GlowConfig {
    fn default() -> Self {
        Self {
            shape: [1, 8, 8],
            levels: 2,
            depth: 8,
            hidden: 64,
            affine: true,
            spline: None,
            permutation: Permutation::InvconvLu,
            learn_top: true,
            classes: 0,
            class_weight: 0.01,
            n_bits: 8,
            pixel_norm: false,
            variational: None,
            seed: 0,
        }
    }
}

/// RealNVP (Dinh et al. 2017).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RealNvpConfig {
    pub shape: [usize; 3],
    /// Scales; all but the last squeeze and split (paper: 2 on CIFAR-10 at 32×32 → 3 here would be 4).
    pub scales: usize,
    /// Feature maps of the ResNet coupling networks (paper: 64).
    pub hidden: usize,
    /// Residual blocks per network (paper: 8 on CIFAR-10, 4 on larger sets).
    pub blocks: usize,
    /// Logit margin α (paper: 0.05 on CIFAR-10; 1e-6 on MNIST).
    pub alpha: f64,
    pub n_bits: u32,
    /// Variational dequantization (Flow++) instead of uniform noise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variational: Option<VariationalSize>,
}

impl Default for RealNvpConfig {
    fn default() -> Self {
        Self {
            shape: [1, 8, 8],
            scales: 2,
            hidden: 32,
            blocks: 2,
            alpha: 0.05,
            n_bits: 8,
            variational: None,
        }
    }
}

/// NICE (Dinh et al. 2014) on flattened images.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NiceConfig {
    pub shape: [usize; 3],
    /// Additive couplings (paper: 4).
    pub couplings: usize,
    /// Units per hidden layer (paper, MNIST: 1000).
    pub hidden: usize,
    /// Hidden layers per coupling network (paper, MNIST: 5).
    pub layers: usize,
    pub n_bits: u32,
}

impl Default for NiceConfig {
    fn default() -> Self {
        Self {
            shape: [1, 8, 8],
            couplings: 4,
            hidden: 256,
            layers: 3,
            n_bits: 8,
        }
    }
}

/// Which layers a vector flow's steps end in.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VectorFlow {
    /// Coupling layers (RealNVP/Glow on vectors, neural spline flows).
    #[default]
    Coupling,
    /// Masked autoregressive flow: one network pass for the density, `D` for a sample.
    Maf,
    /// Inverse autoregressive flow: one pass for a sample, `D` for the density.
    Iaf,
}

impl VectorFlow {
    /// The model's name, as `--model` takes it.
    pub fn name(self) -> &'static str {
        match self {
            VectorFlow::Coupling => "vector",
            VectorFlow::Maf => "maf",
            VectorFlow::Iaf => "iaf",
        }
    }

    /// The autoregressive direction, for MAF and IAF.
    pub fn direction(self) -> Option<Direction> {
        match self {
            VectorFlow::Coupling => None,
            VectorFlow::Maf => Some(Direction::Maf),
            VectorFlow::Iaf => Some(Direction::Iaf),
        }
    }
}

/// A flow for real vectors (2-D sets, tabular data).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VectorFlowConfig {
    pub dims: usize,
    /// Coupling layers, or MADE-based autoregressive layers (MAF, IAF).
    #[serde(skip_serializing_if = "is_default")]
    pub flow: VectorFlow,
    /// Steps of ActNorm → permutation or invertible linear → coupling (or MAF/IAF layer).
    pub steps: usize,
    pub hidden: usize,
    /// Hidden layers per coupling network (per MADE).
    pub layers: usize,
    /// MAF/IAF: residual MADE (hidden layers after the first add their input back).
    #[serde(skip_serializing_if = "is_default")]
    pub residual: bool,
    /// MAF/IAF: the MADEs' ordering of the features (random: seeded per step).
    #[serde(skip_serializing_if = "is_default")]
    pub order: Ordering,
    pub affine: bool,
    /// Rational-quadratic spline couplings instead (`affine` is then ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spline: Option<SplineConfig>,
    /// How features are mixed between couplings: an invertible linear map (Glow's 1×1
    /// convolution) with alternating halves, or NICE's swap (`reverse`) with a fixed split.
    pub permutation: Permutation,
    pub classes: usize,
    /// Conditioning on a real-valued context vector instead of classes: `p(x | c)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    pub seed: u64,
}

impl VectorFlowConfig {
    /// A masked (MAF) or inverse (IAF) autoregressive flow with affine transforms between
    /// reversals of the features, as in the MAF paper.
    pub fn autoregressive(flow: VectorFlow) -> Self {
        VectorFlowConfig {
            flow,
            permutation: Permutation::Reverse,
            ..VectorFlowConfig::default()
        }
    }

    /// A neural spline flow (Durkan et al. 2019): rational-quadratic spline couplings between
    /// swaps of the halves. The command line's default for vector data: on checkerboard, four
    /// rings and two spirals it beats the affine flow by 0.16–0.37 bits/dim (bench/README.md).
    pub fn neural_spline() -> Self {
        VectorFlowConfig {
            spline: Some(SplineConfig::default()),
            permutation: Permutation::Reverse,
            ..VectorFlowConfig::default()
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Default for VectorFlowConfig {
    fn default() -> Self {
        Self {
            dims: 2,
            flow: VectorFlow::Coupling,
            steps: 8,
            hidden: 64,
            layers: 2,
            residual: false,
            order: Ordering::Natural,
            affine: true,
            spline: None,
            permutation: Permutation::Invconv,
            classes: 0,
            context: None,
            seed: 0,
        }
    }
}

/// Bits per pixel a model may keep.
const N_BITS: std::ops::RangeInclusive<u32> = 1..=8;

/// Images `[C, H, W]` that `squeezes` 2×2 squeezes can divide.
fn check_shape(shape: [usize; 3], squeezes: usize) -> Result<()> {
    let [c, h, w] = shape;
    let divisible = |n: usize| n != 0 && n.trailing_zeros() as usize >= squeezes;
    if c == 0 || !divisible(h) || !divisible(w) {
        let f = match u32::try_from(squeezes)
            .ok()
            .and_then(|s| 1usize.checked_shl(s))
        {
            Some(f) => f.to_string(),
            None => format!("2^{squeezes}"),
        };
        return Err(FlowError::Config(format!(
            "{squeezes} squeezes need height and width divisible by {f}, got {c}×{h}×{w}; use fewer levels"
        )));
    }
    Ok(())
}

/// Coupling layers split the features in two halves, each non-empty.
fn check_dims(dims: usize) -> Result<()> {
    if dims < 2 {
        return Err(FlowError::Config(format!(
            "a coupling flow needs at least 2 dimensions, got {dims}"
        )));
    }
    Ok(())
}

impl GlowConfig {
    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        in_range("levels", self.levels, 1..)?;
        in_range("depth", self.depth, 1..)?;
        in_range("hidden", self.hidden, 1..)?;
        in_range("n_bits", self.n_bits, N_BITS)?;
        in_range("class_weight", self.class_weight, 0.0..)?;
        check_spline(self.spline)?;
        check_variational(self.variational)?;
        check_shape(self.shape, self.levels)
    }

    /// The couplings' elementwise transform.
    pub fn transform(&self) -> Transform {
        coupling_transform(self.affine, self.spline)
    }
}

impl RealNvpConfig {
    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        in_range("scales", self.scales, 1..)?;
        in_range("hidden", self.hidden, 1..)?;
        in_range("alpha", self.alpha, between(0.0, 0.5))?;
        in_range("n_bits", self.n_bits, N_BITS)?;
        check_variational(self.variational)?;
        check_shape(self.shape, self.scales - 1)
    }
}

impl NiceConfig {
    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        // No hidden layers (`layers: 0`) makes each coupling's network linear, a valid flow.
        in_range("couplings", self.couplings, 1..)?;
        in_range("hidden", self.hidden, 1..)?;
        in_range("n_bits", self.n_bits, N_BITS)?;
        check_shape(self.shape, 0)?;
        check_dims(self.shape.iter().product())
    }
}

impl VectorFlowConfig {
    /// Every field in range; errors name the field and its valid range.
    pub fn validate(&self) -> Result<()> {
        in_range("steps", self.steps, 1..)?;
        in_range("hidden", self.hidden, 1..)?;
        check_spline(self.spline)?;
        if let Some(context) = &self.context {
            context.validate()?;
            if self.classes > 0 {
                return Err(FlowError::Config(
                    "a vector flow conditions on classes or on a context, not both".into(),
                ));
            }
        }
        match self.flow {
            VectorFlow::Coupling => check_dims(self.dims),
            // A MADE needs a hidden layer; one feature is a valid (if plain) autoregression.
            VectorFlow::Maf | VectorFlow::Iaf => {
                in_range("layers", self.layers, 1..)?;
                in_range("dims", self.dims, 1..)
            }
        }
    }

    /// The couplings' elementwise transform.
    pub fn transform(&self) -> Transform {
        coupling_transform(self.affine, self.spline)
    }

    /// Width of the conditioning input: the classes' one-hot or the context vector.
    pub fn conditions(&self) -> usize {
        self.classes + self.context.as_ref().map_or(0, Context::len)
    }
}

fn coupling_transform(affine: bool, spline: Option<SplineConfig>) -> Transform {
    match (spline, affine) {
        (Some(s), _) => Transform::Spline(s),
        (None, true) => Transform::AffineGlow,
        (None, false) => Transform::Additive,
    }
}

fn check_variational(variational: Option<VariationalSize>) -> Result<()> {
    if let Some(v) = variational {
        in_range("variational.couplings", v.couplings, 1..)?;
        in_range("variational.hidden", v.hidden, 1..)?;
    }
    Ok(())
}

fn check_spline(spline: Option<SplineConfig>) -> Result<()> {
    spline.as_ref().map_or(Ok(()), SplineConfig::validate)
}

/// Which model, with its hyper-parameters; saved as `config.json` in a checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum ModelConfig {
    Glow(GlowConfig),
    Realnvp(RealNvpConfig),
    Nice(NiceConfig),
    Vector(VectorFlowConfig),
}

impl ModelConfig {
    /// Every field in range (see each family's `validate`).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Glow(c) => c.validate(),
            ModelConfig::Realnvp(c) => c.validate(),
            ModelConfig::Nice(c) => c.validate(),
            ModelConfig::Vector(c) => c.validate(),
        }
    }

    /// A fresh model; refuses a configuration [`validate`](Self::validate) refuses.
    pub fn init(&self, device: &Device) -> Result<Model> {
        crate::limits::check(
            format!("the {} model's parameters", self.name()),
            crate::limits::parameters(self),
        )?;
        Ok(match self {
            ModelConfig::Glow(c) => Model::Glow(multiscale::glow(c, device)?),
            ModelConfig::Realnvp(c) => Model::Realnvp(multiscale::realnvp(c, device)?),
            ModelConfig::Nice(c) => Model::Flat(flat::nice(c, device)?),
            ModelConfig::Vector(c) => Model::Flat(flat::vector(c, device)?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Glow(_) => "glow",
            ModelConfig::Realnvp(_) => "realnvp",
            ModelConfig::Nice(_) => "nice",
            ModelConfig::Vector(c) => c.flow.name(),
        }
    }

    /// Values per sample.
    pub fn dims(&self) -> usize {
        match self {
            ModelConfig::Glow(c) => c.shape.iter().product(),
            ModelConfig::Realnvp(c) => c.shape.iter().product(),
            ModelConfig::Nice(c) => c.shape.iter().product(),
            ModelConfig::Vector(c) => c.dims,
        }
    }

    /// Bits per pixel an image model keeps (`None` for vectors). It decodes each pixel to
    /// the bottom of its bin, so round trips are exact at this depth.
    pub fn n_bits(&self) -> Option<u32> {
        match self {
            ModelConfig::Glow(c) => Some(c.n_bits),
            ModelConfig::Realnvp(c) => Some(c.n_bits),
            ModelConfig::Nice(c) => Some(c.n_bits),
            ModelConfig::Vector(_) => None,
        }
    }

    /// `[C, H, W]` for image models.
    pub fn image_shape(&self) -> Option<[usize; 3]> {
        match self {
            ModelConfig::Glow(c) => Some(c.shape),
            ModelConfig::Realnvp(c) => Some(c.shape),
            ModelConfig::Nice(c) => Some(c.shape),
            ModelConfig::Vector(_) => None,
        }
    }

    /// The couplings' elementwise transform, for the families that choose one.
    pub fn transform(&self) -> Option<Transform> {
        match self {
            ModelConfig::Glow(c) => Some(c.transform()),
            ModelConfig::Vector(c) => Some(c.transform()),
            _ => None,
        }
    }

    /// The context vector the model conditions on, if any.
    pub fn context(&self) -> Option<&Context> {
        match self {
            ModelConfig::Vector(c) => c.context.as_ref(),
            _ => None,
        }
    }

    /// Classes the model conditions on (0: unconditional).
    pub fn classes(&self) -> usize {
        match self {
            ModelConfig::Glow(c) => c.classes,
            ModelConfig::Vector(c) => c.classes,
            _ => 0,
        }
    }
}

/// Dequantisation noise for image models: `None` puts every 8-bit value at its bin's centre;
/// `Some(u)`, `u ∈ [0, 1)` of shape `(N, D)`, places each value within its bin. Drawn by the
/// caller from [`crate::noise`], keyed per input, so that a likelihood never depends on a
/// batch, a process or a device. Vector models ignore it.
pub type Noise<'a> = Option<&'a Tensor<2>>;

/// A trained or trainable model of any family.
#[derive(Module, Debug)]
pub enum Model {
    Glow(MultiScale<ConvNet>),
    Realnvp(MultiScale<ResNet>),
    Flat(FlatFlow),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Model::Glow($m) => $e,
            Model::Realnvp($m) => $e,
            Model::Flat($m) => $e,
        }
    };
}

impl Model {
    /// `log p(x)` in nats per sample — of the discrete 8-bit data for image models (the
    /// dequantisation log-det included), of the density for vectors — and class logits for
    /// y-cond models. With `noise`, an unbiased estimate (a lower bound in expectation) of
    /// the discrete log-probability; without, the density at the bins' centres.
    pub fn log_prob(
        &self,
        x: Tensor<2>,
        cond: Cond,
        noise: Noise,
    ) -> Result<(Tensor<1>, Option<Tensor<2>>)> {
        each!(self, m => m.log_prob(x, cond, noise))
    }

    /// Standardised latents `ε` of every level, `(N, dᵢ)` each, the top last: each latent
    /// mapped to the [`standard`](Self::standard) distribution under its prior (a Glow
    /// split's `(z − μ(h)) / σ(h)`). `x ↦ ε` is one bijection whose Jacobian gives the whole
    /// likelihood: `log p(x) = Σ log p_standard(ε) + log|det ∂ε/∂x|`.
    pub fn standardize(&self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Vec<Tensor<2>>> {
        each!(self, m => m.standardize(x, cond, noise))
    }

    /// Inverse of [`standardize`](Self::standardize), to exact pixels for image models.
    pub fn destandardize(&self, eps: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        let x = each!(self, m => m.destandardize(eps, cond))?;
        check_finite("decode", &x)?;
        Ok(x)
    }

    /// The distribution of standardised latents.
    pub fn standard(&self) -> Standard {
        each!(self, m => m.standard())
    }

    /// Each level's latent shape `[C, H, W]`, the top last (image models; `None` for a flat
    /// flow of vectors).
    pub fn latent_shapes(&self) -> Option<Vec<[usize; 3]>> {
        match self {
            Model::Glow(m) => Some(m.latent_shapes()),
            Model::Realnvp(m) => Some(m.latent_shapes()),
            Model::Flat(_) => None,
        }
    }

    /// Values per level of the latents, the top last.
    pub fn latent_dims(&self) -> Vec<usize> {
        match self {
            Model::Flat(m) => vec![m.dims],
            _ => (self.latent_shapes().unwrap_or_default().iter())
                .map(|s| s.iter().product())
                .collect(),
        }
    }

    /// Standardised latents drawn from the host generator, one row per key, scaled by
    /// `temperature` and split into levels.
    fn draw_standard(
        &self,
        seed: u64,
        keys: &[u64],
        draw: u64,
        temperature: f64,
        levels: &[usize],
        device: &Device,
    ) -> Vec<Tensor<2>> {
        let total = levels.iter().sum();
        let eps = noise::standard(
            self.standard(),
            seed,
            Purpose::Sample,
            keys,
            draw,
            total,
            device,
        ) * temperature;
        split_levels(&eps, levels)
    }

    /// Latents of every level, `(N, dᵢ)` each, the top last.
    pub fn encode(&self, x: Tensor<2>, cond: Cond) -> Result<Vec<Tensor<2>>> {
        each!(self, m => m.encode(x, cond))
    }

    /// Inverse of [`encode`](Self::encode).
    pub fn decode(&self, zs: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
        let x = each!(self, m => m.decode(zs, cond))?;
        check_finite("decode", &x)?;
        Ok(x)
    }

    /// Decodes from the top latent alone, the lower levels drawn from their priors at
    /// `temperature` (0: their means), keyed by each top row's content and `seed` (the same
    /// top row always gets the same lower levels). A flat flow has one level: the plain
    /// inverse.
    pub fn decode_top(
        &self,
        top: &Tensor<2>,
        temperature: f64,
        cond: Cond,
        seed: u64,
    ) -> Result<Tensor<2>> {
        in_range("temperature", temperature, 0.0..)?;
        let mut dims = self.latent_dims();
        dims.pop();
        let keys: Vec<u64> = crate::flow::to_f32(top)?
            .chunks(top.dims()[1].max(1))
            .map(noise::content_key)
            .collect();
        let lower = self.draw_standard(seed, &keys, 1, temperature, &dims, &top.device());
        let x = match self {
            Model::Glow(m) => m.decode_top(top, &lower, cond),
            Model::Realnvp(m) => m.decode_top(top, &lower, cond),
            Model::Flat(m) => m.decode(std::slice::from_ref(top), cond),
        }?;
        check_finite("decode", &x)?;
        Ok(x)
    }

    /// One sample per key at `temperature`: sample `i` decodes standardised latents drawn
    /// from the generator keyed by `(seed, keys[i])` (see [`crate::noise`]), so it is the
    /// same in any batch and on any device. [`noise::indices`] numbers samples.
    pub fn sample(
        &self,
        seed: u64,
        keys: &[u64],
        temperature: f64,
        cond: Cond,
        device: &Device,
    ) -> Result<Tensor<2>> {
        in_range("temperature", temperature, 0.0..)?;
        let eps = self.draw_standard(seed, keys, 0, temperature, &self.latent_dims(), device);
        let x = each!(self, m => m.destandardize(&eps, cond))?;
        check_finite("sample", &x)?;
        Ok(x)
    }

    /// Data-dependent initialisation (ActNorm) from a first batch.
    ///
    /// It runs without autodiff, whatever the device (statistics need no gradients, and a
    /// graph would hold every activation of the batch), and ready for training again after.
    pub fn data_init(self, x: Tensor<2>, cond: Cond, noise: Noise) -> Result<Self> {
        if x.device().is_autodiff() {
            let cond = cond.map(|c| c.clone().inner());
            let noise = noise.map(|u| u.clone().inner());
            let model = self
                .valid()
                .data_init(x.inner(), cond.as_ref(), noise.as_ref())?;
            return Ok(model.train());
        }
        Ok(match self {
            Model::Glow(m) => Model::Glow(m.data_init(x, cond, noise)?),
            Model::Realnvp(m) => Model::Realnvp(m.data_init(x, cond, noise)?),
            Model::Flat(m) => Model::Flat(m.data_init(x, cond, noise)?),
        })
    }
}

/// Rows of every level's latents side by side `(N, Σ dᵢ)` → one `(N, dᵢ)` tensor per level.
fn split_levels(all: &Tensor<2>, dims: &[usize]) -> Vec<Tensor<2>> {
    let mut start = 0;
    dims.iter()
        .map(|&d| {
            start += d;
            all.clone().narrow(1, start - d, d)
        })
        .collect()
}

/// Bits per dimension from a log-likelihood in nats over `dims` dimensions.
pub fn bits_per_dim(log_p_nats: f64, dims: usize) -> f64 {
    -log_p_nats / (dims as f64 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use burn::tensor::{Distribution, Tensor};

    fn pixels(n: usize, d: usize, dev: &Device) -> Tensor<2> {
        Tensor::<2>::random([n, d], Distribution::Uniform(0.0, 256.0), dev)
            .floor()
            .clamp(0.0, 255.0)
    }

    fn configs() -> Vec<ModelConfig> {
        let shape = [1, 4, 4];
        vec![
            ModelConfig::Glow(GlowConfig {
                shape,
                levels: 2,
                depth: 2,
                hidden: 8,
                ..Default::default()
            }),
            ModelConfig::Glow(GlowConfig {
                shape,
                levels: 1,
                depth: 1,
                hidden: 8,
                pixel_norm: true,
                ..Default::default()
            }),
            ModelConfig::Glow(GlowConfig {
                shape: [3, 4, 4],
                levels: 1,
                depth: 2,
                hidden: 8,
                affine: false,
                permutation: Permutation::Shuffle,
                learn_top: false,
                ..Default::default()
            }),
            ModelConfig::Realnvp(RealNvpConfig {
                shape,
                scales: 2,
                hidden: 8,
                blocks: 1,
                ..Default::default()
            }),
            ModelConfig::Nice(NiceConfig {
                shape,
                hidden: 16,
                layers: 2,
                ..Default::default()
            }),
        ]
    }

    #[test]
    fn image_models_decode_their_encodings_pixel_for_pixel() {
        let dev = device();
        dev.seed(4);
        for config in configs() {
            let d = config.dims();
            let x = pixels(3, d, &dev);
            let model = config
                .init(&dev)
                .unwrap()
                .data_init(x.clone(), None, Some(&noise_like(&x)))
                .unwrap();
            let model = perturb(model, 0.05, 3);
            let zs = model.encode(x.clone(), None).unwrap();
            assert_eq!(
                zs.iter().map(|z| z.dims()[1]).sum::<usize>(),
                d,
                "{}",
                config.name()
            );
            let back = model.decode(&zs, None).unwrap();
            assert_eq!(to_vec(back), to_vec(x.clone()), "{}", config.name());
            // Likelihood finite, samples are valid pixels.
            let (log_p, _) = model
                .log_prob(x.clone(), None, Some(&noise_like(&x)))
                .unwrap();
            assert!(to_vec(log_p).iter().all(|v| v.is_finite()));
            let s = to_vec(model.sample(0, &keys(4), 0.7, None, &dev).unwrap());
            assert!(
                s.iter()
                    .all(|v| (0.0..=255.0).contains(v) && v.fract() == 0.0),
                "{}",
                config.name()
            );
        }
    }

    #[test]
    fn glow_at_initialisation_matches_a_hand_computed_bits_per_dim() {
        // Zero-initialised additive couplings and split priors, identity ActNorm and a rotation
        // for the 1×1 convolutions make Glow an orthogonal map followed by N(0, I); orthogonal
        // maps keep ‖x‖², so log p = Σ log N(xᵢ; 0, 1) − D·ln 256 with xᵢ = (kᵢ + ½)/256 − ½.
        // (An affine coupling starts at scale σ(2), not 1.)
        let dev = device();
        let config = ModelConfig::Glow(GlowConfig {
            shape: [1, 4, 4],
            levels: 2,
            depth: 2,
            hidden: 8,
            affine: false,
            ..Default::default()
        });
        let model = config.init(&dev).unwrap();
        let x = pixels(2, 16, &dev);
        let (log_p, _) = model.log_prob(x.clone(), None, None).unwrap();
        let got = to_vec(log_p);
        for (i, row) in to_vec(x).chunks(16).enumerate() {
            let by_hand: f64 = row
                .iter()
                .map(|k| {
                    let v = (*k as f64 + 0.5) / 256.0 - 0.5;
                    -0.5 * v * v - 0.5 * (2.0 * std::f64::consts::PI).ln() - 256f64.ln()
                })
                .sum();
            let (a, b) = (bits_per_dim(got[i] as f64, 16), bits_per_dim(by_hand, 16));
            assert!((a - b).abs() < 1e-4, "bits/dim {a} vs hand {b}");
        }
    }

    #[test]
    fn nice_matches_a_hand_computed_bits_per_dim() {
        // Additive couplings start as the identity, so log p = Σ log logistic(xᵢ·eˢⁱ) + Σ sᵢ − D·ln 256.
        let dev = device();
        let config = ModelConfig::Nice(NiceConfig {
            shape: [1, 2, 2],
            hidden: 8,
            layers: 1,
            ..Default::default()
        });
        let Model::Flat(mut flat) = config.init(&dev).unwrap() else {
            panic!()
        };
        let s = [0.3f32, -0.2, 0.5, 0.0];
        let layer = flat.flow.layers.pop().unwrap();
        let crate::layers::Layer::Scale(mut scale) = layer else {
            panic!()
        };
        scale.log_scale = scale.log_scale.map(|t| Tensor::from_floats(s, &t.device()));
        flat.flow.layers.push(scale.into());
        let x = pixels(1, 4, &dev);
        let (log_p, _) = flat.log_prob(x.clone(), None, None).unwrap();
        let by_hand: f64 = to_vec(x)
            .iter()
            .zip(s)
            .map(|(k, s)| {
                let z = (*k as f64 + 0.5) / 256.0 * (s as f64).exp();
                -z - 2.0 * (-z).exp().ln_1p() + s as f64 - 256f64.ln()
            })
            .sum();
        let got = to_vec(log_p)[0] as f64;
        assert!(
            (bits_per_dim(got, 4) - bits_per_dim(by_hand, 4)).abs() < 1e-4,
            "{got} vs {by_hand}"
        );
    }

    #[test]
    fn class_conditional_glow_needs_labels_and_predicts_classes() {
        let dev = device();
        let config = ModelConfig::Glow(GlowConfig {
            shape: [1, 4, 4],
            levels: 1,
            depth: 1,
            hidden: 8,
            classes: 3,
            ..Default::default()
        });
        let model = config.init(&dev).unwrap();
        let x = pixels(2, 16, &dev);
        let err = model.log_prob(x.clone(), None, None).unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let y = one_hot(&[0, 2], 3, &dev);
        let (_, logits) = model
            .log_prob(x.clone(), Some(&y), Some(&noise_like(&x)))
            .unwrap();
        assert_eq!(logits.unwrap().dims(), [2, 3]);
        let s = model.sample(0, &keys(2), 1.0, Some(&y), &dev).unwrap();
        assert_eq!(s.dims(), [2, 16]);
    }

    #[test]
    fn an_overflowing_inverse_is_an_error_not_black_pixels_or_nan_rows() {
        let dev = device();
        let vector = ModelConfig::Vector(VectorFlowConfig {
            dims: 2,
            steps: 2,
            hidden: 8,
            ..Default::default()
        });
        for config in [configs().swap_remove(0), vector] {
            let model = config.init(&dev).unwrap();
            // A temperature beyond f32's range makes every latent infinite.
            let err = model
                .sample(0, &keys(2), 1e300, None, &dev)
                .unwrap_err()
                .to_string();
            assert!(err.contains("NaN or infinite"), "{}: {err}", config.name());
            let zs: Vec<Tensor<2>> = model
                .encode(Tensor::zeros([1, config.dims()], &dev), None)
                .unwrap()
                .into_iter()
                .map(|z| z.ones_like() * f32::MAX)
                .collect();
            let err = model.decode(&zs, None).unwrap_err().to_string();
            assert!(err.contains("NaN or infinite"), "{}: {err}", config.name());
            // Ordinary latents still decode.
            let zs: Vec<Tensor<2>> = zs.into_iter().map(|z| z.zeros_like()).collect();
            model.decode(&zs, None).unwrap();
        }
    }

    #[test]
    fn vector_flow_inverts_and_has_a_density() {
        let dev = device();
        let config = ModelConfig::Vector(VectorFlowConfig {
            dims: 3,
            steps: 2,
            hidden: 8,
            ..Default::default()
        });
        let x = randn([5, 3], &dev);
        let model = perturb(
            config
                .init(&dev)
                .unwrap()
                .data_init(x.clone(), None, Some(&noise_like(&x)))
                .unwrap(),
            0.1,
            2,
        );
        let zs = model.encode(x.clone(), None).unwrap();
        assert!(max_abs_diff(&model.decode(&zs, None).unwrap(), &x) < 1e-4);
        let (lp, _) = model
            .log_prob(x.clone(), None, Some(&noise_like(&x)))
            .unwrap();
        assert!(to_vec(lp).iter().all(|v| v.is_finite()));
    }

    /// ∫ p(x | c) dx of a 2-D model over a grid that covers 4000 of its samples (given `c`,
    /// one row) with a margin of their spread on every side.
    pub(crate) fn integral_2d(model: &Model, cond: Option<&Tensor<2>>, dev: &Device) -> f64 {
        let rows = |n: usize| cond.map(|c| c.clone().expand([n, c.dims()[1]]));
        let samples = to_vec(
            model
                .sample(3, &keys(4000), 1.0, rows(4000).as_ref(), dev)
                .unwrap(),
        );
        let steps = 600;
        let mut axes = [vec![], vec![]];
        let mut cell = 1.0;
        for (d, axis) in axes.iter_mut().enumerate() {
            let values = samples.iter().skip(d).step_by(2).map(|v| *v as f64);
            let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
            let (a, b) = (lo - (hi - lo), hi + (hi - lo));
            let h = (b - a) / steps as f64;
            cell *= h;
            *axis = (0..steps)
                .map(|i| (a + (i as f64 + 0.5) * h) as f32)
                .collect();
        }
        let points: Vec<f32> = axes[0]
            .iter()
            .flat_map(|&u| axes[1].iter().flat_map(move |&v| [u, v]))
            .collect();
        let n = steps * steps;
        let grid = Tensor::<2>::from_data(burn::tensor::TensorData::new(points, [n, 2]), dev);
        let (log_p, _) = model.log_prob(grid, rows(n).as_ref(), None).unwrap();
        to_vec(log_p).iter().map(|l| (*l as f64).exp()).sum::<f64>() * cell
    }

    #[test]
    fn maf_and_iaf_densities_integrate_to_one() {
        let dev = device();
        dev.seed(8);
        for (flow, spline) in [
            (VectorFlow::Maf, None),
            (VectorFlow::Iaf, None),
            (VectorFlow::Maf, Some(SplineConfig::default())),
        ] {
            let config = ModelConfig::Vector(VectorFlowConfig {
                steps: 3,
                hidden: 16,
                spline,
                ..VectorFlowConfig::autoregressive(flow)
            });
            let x = randn([256, 2], &dev) * 2.0 + 1.0;
            let model = config.init(&dev).unwrap().data_init(x, None, None).unwrap();
            let model = perturb(model, 0.15, 4);
            let total = integral_2d(&model, None, &dev);
            eprintln!("{flow:?} spline {}: ∫p = {total:.5}", spline.is_some());
            assert!((total - 1.0).abs() < 0.01, "{flow:?}: ∫p = {total}");
        }
    }

    #[test]
    fn conditional_densities_integrate_to_one_for_every_context() {
        let dev = device();
        dev.seed(9);
        // Raw contexts far from standard, so that the standardisation matters.
        let raw: Vec<f32> = (0..64).map(|i| 10.0 + (i % 8) as f32 * 3.0).collect();
        let context = Context::fit(vec!["c".into()], &raw).unwrap();
        for config in [
            VectorFlowConfig {
                steps: 2,
                hidden: 16,
                context: Some(context.clone()),
                ..VectorFlowConfig::autoregressive(VectorFlow::Maf)
            },
            VectorFlowConfig {
                steps: 2,
                hidden: 16,
                context: Some(context.clone()),
                ..VectorFlowConfig::neural_spline()
            },
        ] {
            let name = config.flow.name();
            let config = ModelConfig::Vector(config);
            let x = randn([64, 2], &dev) * 2.0 + 1.0;
            let c =
                Tensor::<2>::from_data(burn::tensor::TensorData::new(raw.clone(), [64, 1]), &dev);
            let model = config
                .init(&dev)
                .unwrap()
                .data_init(x, Some(&c), None)
                .unwrap();
            let model = perturb(model, 0.2, 5);
            let mut densities = vec![];
            for v in [10.0f32, 20.0, 35.0] {
                let c = Tensor::<2>::from_floats([[v]], &dev);
                let total = integral_2d(&model, Some(&c), &dev);
                eprintln!("{name}, context {v}: ∫p = {total:.5}");
                assert!(
                    (total - 1.0).abs() < 0.01,
                    "{name}, context {v}: ∫p = {total}"
                );
                let at = Tensor::<2>::from_floats([[0.5, -0.5]], &dev);
                densities.push(to_vec(model.log_prob(at, Some(&c), None).unwrap().0)[0]);
            }
            // The density does change with the context.
            assert!(
                (densities[0] - densities[2]).abs() > 0.05,
                "{name}: {densities:?}"
            );
            // A conditional model refuses to run without its context.
            let err = model.log_prob(randn([1, 2], &dev), None, None).unwrap_err();
            assert!(
                err.to_string().contains("conditioned on a context (c)"),
                "{err}"
            );
        }
    }

    /// A 4-pixel, 1-bit Glow whose 16 images can all be enumerated, with a perturbed q.
    fn tiny_variational_glow(dev: &Device) -> (Model, Model) {
        let config = ModelConfig::Glow(GlowConfig {
            shape: [1, 2, 2],
            levels: 1,
            depth: 2,
            hidden: 8,
            n_bits: 1,
            variational: Some(VariationalSize {
                couplings: 2,
                hidden: 8,
            }),
            ..Default::default()
        });
        // Initialised on the 16 images so that the density sits over their cells, then moved
        // off the identity (q included).
        let x = Tensor::cat(all_images(dev), 0).repeat_dim(0, 4);
        let u = noise_like(&x);
        let model = config
            .init(dev)
            .unwrap()
            .data_init(x, None, Some(&u))
            .unwrap();
        let model = perturb(model, 0.1, 4);
        let Model::Glow(glow) = &model else {
            unreachable!()
        };
        let uniform = Model::Glow(MultiScale {
            dequantizer: None,
            ..glow.clone()
        });
        (model, uniform)
    }

    /// Every 4-pixel image at 1 bit (pixel values 0 and 255), as rows.
    fn all_images(dev: &Device) -> Vec<Tensor<2>> {
        (0..16u32)
            .map(|bits| {
                let row: Vec<f32> = (0..4).map(|p| 255.0 * ((bits >> p) & 1) as f32).collect();
                Tensor::from_data(burn::tensor::TensorData::new(row, [1, 4]), dev)
            })
            .collect()
    }

    #[test]
    fn the_variational_bound_stays_below_the_discrete_likelihood_and_tightens_with_k() {
        use crate::scoring::log_mean_exp;
        let dev = device();
        dev.seed(12);
        let (model, uniform) = tiny_variational_glow(&dev);
        // The same density integrated over each image's cell by the midpoint rule on a 10⁴
        // grid: log P(x) = log ∫ p(x + u) du (the 1/bins⁴ is in the dequantisation's log-det).
        let steps: usize = 10;
        let grid: Vec<f32> = (0..steps.pow(4))
            .flat_map(|i| (0..4u32).map(move |p| ((i / steps.pow(p)) % steps) as f32 + 0.5))
            .map(|v| v / steps as f32)
            .collect();
        let grid =
            Tensor::<2>::from_data(burn::tensor::TensorData::new(grid, [steps.pow(4), 4]), &dev);
        let n = steps.pow(4);
        let mut total = 0.0;
        for x in all_images(&dev) {
            let xs = x.clone().expand([n, 4]);
            let (log_p, _) = uniform.log_prob(xs, None, Some(&grid)).unwrap();
            let log_p_x = log_mean_exp(&crate::flow::to_f64(&log_p));
            // The midpoint rule is accurate here: a 14⁴ grid moves it by less than 0.01 nats.
            let fine = 14usize;
            let points: Vec<f32> = (0..fine.pow(4))
                .flat_map(|i| (0..4u32).map(move |p| ((i / fine.pow(p)) % fine) as f32 + 0.5))
                .map(|v| v / fine as f32)
                .collect();
            let points = Tensor::<2>::from_data(
                burn::tensor::TensorData::new(points, [fine.pow(4), 4]),
                &dev,
            );
            let (finer, _) = uniform
                .log_prob(x.clone().expand([fine.pow(4), 4]), None, Some(&points))
                .unwrap();
            let finer = log_mean_exp(&crate::flow::to_f64(&finer));
            assert!(
                (finer - log_p_x).abs() < 0.01,
                "grids: {log_p_x} vs {finer}"
            );
            total += log_p_x.exp();
            // The bound E_q[log p(x + u) − log q(u | x)], from 4096 draws of q.
            let draws = 4096;
            let u0 = Tensor::<2>::random([draws, 4], Distribution::Uniform(0.0, 1.0), &dev);
            let (terms, _) = model
                .log_prob(x.clone().expand([draws, 4]), None, Some(&u0))
                .unwrap();
            let terms = crate::flow::to_f64(&terms);
            let bound = terms.iter().sum::<f64>() / draws as f64;
            // Importance-weighted estimates with K draws each, averaged over 4096 / K groups,
            // with three standard errors of that average as the Monte Carlo margin.
            let iw = |k: usize| {
                let groups: Vec<f64> = terms.chunks(k).map(log_mean_exp).collect();
                let g = groups.len() as f64;
                let mean = groups.iter().sum::<f64>() / g;
                let var = groups.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (g - 1.0);
                (mean, 3.0 * (var / g).sqrt())
            };
            let [(k1, m1), (k4, m4), (k16, m16), (k64, m64)] = [1, 4, 16, 64].map(iw);
            eprintln!(
                "log P(x) {log_p_x:.4}: bound {bound:.4} ±{m1:.4}, K=4 {k4:.4} ±{m4:.4}, \
                 K=16 {k16:.4} ±{m16:.4}, K=64 {k64:.4} ±{m64:.4}"
            );
            assert!((k1 - bound).abs() < 1e-9);
            // Jensen: E_q[log w] ≤ log E_q[w] = log P(x), and more draws never loosen it.
            let grid_error = 0.01;
            assert!(
                bound <= log_p_x + grid_error + m1,
                "bound {bound} above log P(x) {log_p_x}"
            );
            assert!(k4 >= bound - m4 - m1 && k16 >= k4 - m16 - m4 && k64 >= k16 - m64 - m16);
            assert!(
                k64 <= log_p_x + grid_error + m64,
                "K = 64: {k64} above log P(x) {log_p_x}"
            );
            assert!(
                log_p_x - k64 < (log_p_x - bound) / 2.0,
                "64 draws tighten the bound"
            );
        }
        // The 16 images' probabilities are the density's mass over the dequantisation box:
        // at most 1 (an untrained flow spills some outside it).
        eprintln!("Σ P(x) = {total:.4}");
        assert!(total <= 1.001, "Σ P(x) = {total}");
    }

    #[test]
    fn wrong_sizes_and_shapes_are_clear_errors() {
        let dev = device();
        let err = ModelConfig::Glow(GlowConfig {
            shape: [1, 6, 6],
            levels: 2,
            ..Default::default()
        })
        .init(&dev)
        .unwrap_err();
        assert!(
            err.to_string().contains("divisible by 4, got 1×6×6"),
            "{err}"
        );
        let model = configs()[0].init(&dev).unwrap();
        let err = model.log_prob(pixels(1, 20, &dev), None, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected images of 1×4×4 = 16 values, found"),
            "{err}"
        );
        let err = model.decode(&[randn([1, 8], &dev)], None).unwrap_err();
        assert!(err.to_string().contains("latent levels"), "{err}");
    }

    #[test]
    fn initialisation_on_the_training_device_keeps_no_graph_and_stays_trainable() {
        let dev = device();
        dev.seed(6);
        let config = configs()[0].clone();
        let fresh = config.init(&dev).unwrap();
        let x = pixels(5, config.dims(), &dev);
        // The same dequantisation noise for both.
        let u = noise_like(&x);
        let plain = fresh.clone().data_init(x.clone(), None, Some(&u)).unwrap();
        let trained = fresh
            .train()
            .data_init(x.clone().autodiff(), None, Some(&u.clone().autodiff()))
            .unwrap();
        let Model::Glow(glow) = &trained else {
            panic!("glow expected")
        };
        let crate::layers::Layer::ActNorm(norm) = &glow.levels[0].after.layers[0] else {
            panic!("ActNorm first")
        };
        assert!(norm.bias.val().is_require_grad() && norm.bias.val().device().is_autodiff());
        let (a, _) = plain.log_prob(x.clone(), None, None).unwrap();
        let (b, _) = trained.valid().log_prob(x, None, None).unwrap();
        assert!(
            max_abs_diff(&a, &b) < 1e-4,
            "{:?} vs {:?}",
            to_vec(a),
            to_vec(b)
        );
    }

    #[test]
    fn config_round_trips_through_json() {
        for config in configs() {
            let text = serde_json::to_string(&config).unwrap();
            assert_eq!(serde_json::from_str::<ModelConfig>(&text).unwrap(), config);
        }
        let err = serde_json::from_str::<ModelConfig>(r#"{"model":"glow","depht":3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `depht`"), "{err}");
    }

    #[test]
    fn validation_names_the_field_and_its_range() {
        let glow = |edit: fn(&mut GlowConfig)| {
            let mut c = GlowConfig::default();
            edit(&mut c);
            ModelConfig::Glow(c)
                .init(&device())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            glow(|c| c.n_bits = 0),
            "n_bits must be an integer in [1, 8], found 0"
        );
        assert_eq!(
            glow(|c| c.n_bits = 9),
            "n_bits must be an integer in [1, 8], found 9"
        );
        assert_eq!(
            glow(|c| c.levels = 0),
            "levels must be an integer ≥ 1, found 0"
        );
        assert_eq!(
            glow(|c| c.depth = 0),
            "depth must be an integer ≥ 1, found 0"
        );
        assert_eq!(
            glow(|c| c.hidden = 0),
            "hidden must be an integer ≥ 1, found 0"
        );
        assert_eq!(
            glow(|c| c.class_weight = f64::NAN),
            "class_weight must be a finite number ≥ 0, found NaN"
        );
        assert!(glow(|c| c.shape = [0, 8, 8]).contains("got 0×8×8"));
        // More squeezes than bits in a usize: refused, not an overflow.
        assert!(glow(|c| c.levels = 200)
            .contains("200 squeezes need height and width divisible by 2^200"));

        let realnvp = |edit: fn(&mut RealNvpConfig)| {
            let mut c = RealNvpConfig::default();
            edit(&mut c);
            ModelConfig::Realnvp(c).validate().unwrap_err().to_string()
        };
        for alpha in [f64::NAN, 0.0, 0.5, -1.0] {
            let err = ModelConfig::Realnvp(RealNvpConfig {
                alpha,
                ..Default::default()
            })
            .validate()
            .unwrap_err()
            .to_string();
            assert_eq!(
                err,
                format!("alpha must be a finite number in (0, 0.5), found {alpha}")
            );
        }
        assert_eq!(
            realnvp(|c| c.scales = 0),
            "scales must be an integer ≥ 1, found 0"
        );
        assert_eq!(
            realnvp(|c| c.n_bits = 0),
            "n_bits must be an integer in [1, 8], found 0"
        );

        let nice = |edit: fn(&mut NiceConfig)| {
            let mut c = NiceConfig::default();
            edit(&mut c);
            ModelConfig::Nice(c).validate().unwrap_err().to_string()
        };
        assert_eq!(
            nice(|c| c.couplings = 0),
            "couplings must be an integer ≥ 1, found 0"
        );
        assert!(nice(|c| c.shape = [1, 1, 1]).contains("at least 2 dimensions"));

        let vector = |edit: fn(&mut VectorFlowConfig)| {
            let mut c = VectorFlowConfig::default();
            edit(&mut c);
            ModelConfig::Vector(c).validate().unwrap_err().to_string()
        };
        assert_eq!(
            vector(|c| c.steps = 0),
            "steps must be an integer ≥ 1, found 0"
        );
        assert!(vector(|c| c.dims = 1).contains("at least 2 dimensions, got 1"));

        // No hidden layers is a linear coupling network, which is valid.
        for config in configs() {
            config.validate().unwrap();
        }
        ModelConfig::Nice(NiceConfig {
            layers: 0,
            ..Default::default()
        })
        .validate()
        .unwrap();
    }

    #[test]
    fn a_sample_depends_on_its_key_alone_and_equals_destandardized_host_noise() {
        let dev = device();
        for config in configs() {
            let model = perturb(config.init(&dev).unwrap(), 0.05, 4);
            let all = to_vec(model.sample(7, &[0, 1, 2, 3, 4], 0.8, None, &dev).unwrap());
            let some = to_vec(model.sample(7, &[3, 1], 0.8, None, &dev).unwrap());
            let d = config.dims();
            assert_eq!(some[..d], all[3 * d..4 * d], "{}", config.name());
            assert_eq!(some[d..], all[d..2 * d], "{}", config.name());
            // The same as decoding T·ε drawn from the host generator.
            let eps =
                noise::standard(model.standard(), 7, Purpose::Sample, &[3, 1], 0, d, &dev) * 0.8;
            let levels = split_levels(&eps, &model.latent_dims());
            let by_hand = to_vec(model.destandardize(&levels, None).unwrap());
            assert_eq!(by_hand, some, "{}", config.name());
            // And standardize inverts it (bin centres: the pixels decode to themselves).
            let x = model.destandardize(&levels, None).unwrap();
            let again =
                model.destandardize(&model.standardize(x.clone(), None, None).unwrap(), None);
            assert_eq!(to_vec(again.unwrap()), to_vec(x), "{}", config.name());
        }
    }

    #[test]
    fn sampling_refuses_a_negative_or_non_finite_temperature() {
        let dev = device();
        let model = configs()[0].init(&dev).unwrap();
        for t in [f64::NAN, f64::INFINITY, -1.0] {
            let err = model
                .sample(0, &keys(2), t, None, &dev)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("temperature must be a finite number ≥ 0, found"),
                "{err}"
            );
        }
        model.sample(0, &keys(2), 0.0, None, &dev).unwrap();
    }
}
