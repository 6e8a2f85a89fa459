//! The whole model's log p against an independent computation, for every family.
//!
//! `x ↦ ε` (every level's standardised latents, [`Model::standardize`]) is one bijection, so
//!
//! ```text
//! log p(x) = Σᵢ log p_standard(εᵢ) + log|det ∂ε/∂u|
//! ```
//!
//! where `u` is the dequantisation noise (`∂x_continuous/∂u = 1/bins` per value, so this
//! includes the `−D·ln(bins)` of the discrete likelihood) or, for vector flows, `x` itself.
//! The Jacobian is taken by autodiff (one backward pass per output), its determinant by an
//! f64 LU, and the standard density by formula in f64: no log-det the layers report enters.
//! A dropped, doubled or wrong log-det term anywhere — a level, a split prior, the top prior,
//! preprocessing — makes the two disagree. Parameters are perturbed away from their initial
//! values, where many log-dets are 0.

use burn::module::{Flag, Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};

use super::*;
use crate::linalg::Lu;
use crate::noise::{self, Purpose, Standard};
use crate::testing::*;

/// Every flag off: batch normalisation uses its running averages even on an autodiff input,
/// so that each sample's Jacobian is its own.
fn evaluation_mode(model: Model) -> Model {
    struct Off;
    impl ModuleMapper for Off {
        fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
            flag.with_value(false)
        }
    }
    model.map(&mut Off)
}

/// `Σ log p_standard(εᵢ)` in f64.
fn standard_log_density(standard: Standard, eps: &[f32]) -> f64 {
    eps.iter()
        .map(|&e| {
            let e = e as f64;
            match standard {
                Standard::Normal => -0.5 * e * e - 0.5 * (2.0 * std::f64::consts::PI).ln(),
                // log e^{−ε} / (1 + e^{−ε})², symmetric in ε.
                Standard::Logistic => -e.abs() - 2.0 * (-e.abs()).exp().ln_1p(),
            }
        })
        .sum()
}

/// `(Σ log p_standard(ε), log|det ∂ε/∂u|)` of each row of `x`, by the change of variables
/// through `ε`, with `u` the dequantisation noise of image models.
fn independent_log_p(
    model: &Model,
    x: &Tensor<2>,
    cond: Option<&Tensor<2>>,
    u: Option<&Tensor<2>>,
) -> Vec<(f64, f64)> {
    let [n, d] = x.dims();
    let cond = cond.map(|c| c.clone().autodiff());
    // The variable: the noise for image models, the input itself for vector flows.
    let var = match u {
        Some(u) => u.clone().autodiff().require_grad(),
        None => x.clone().autodiff().require_grad(),
    };
    let eps_of = |var: &Tensor<2>| -> Tensor<2> {
        let levels = match u {
            Some(_) => model.standardize(x.clone().autodiff(), cond.as_ref(), Some(var)),
            None => model.standardize(var.clone(), cond.as_ref(), None),
        };
        Tensor::cat(levels.unwrap(), 1)
    };
    let eps = to_vec(eps_of(&var));
    assert_eq!(eps.len(), n * d, "ε has as many values as x");
    let mut jac = vec![vec![0.0f64; d * d]; n];
    for j in 0..d {
        let out = eps_of(&var).narrow(1, j, 1).sum();
        let grads = out.backward();
        let g = to_vec(var.grad(&grads).expect("a gradient for the input"));
        for (s, rows) in jac.iter_mut().enumerate() {
            for k in 0..d {
                rows[j * d + k] = g[s * d + k] as f64;
            }
        }
    }
    (0..n)
        .map(|s| {
            (
                standard_log_density(model.standard(), &eps[s * d..(s + 1) * d]),
                Lu::new(&jac[s], d).log_abs_det(),
            )
        })
        .collect()
}

type Batch = (Tensor<2>, Option<Tensor<2>>, Option<Tensor<2>>);

/// `n` inputs (pixels or real vectors), labels for a conditional model, and noise.
fn batch(config: &ModelConfig, n: usize, dev: &Device) -> Batch {
    let d = config.dims();
    let images = config.image_shape().is_some();
    let x = match images {
        true => Tensor::<2>::random([n, d], burn::tensor::Distribution::Uniform(0.0, 256.0), dev)
            .floor()
            .clamp(0.0, 255.0),
        // Spread wider than N(0, I), so that ActNorm's initial scale is far from 1.
        false => randn([n, d], dev) * 3.0 + 1.0,
    };
    let classes = config.classes();
    let y = (classes > 0).then(|| {
        one_hot(
            &(0..n).map(|i| i % classes).collect::<Vec<_>>(),
            classes,
            dev,
        )
    });
    // Raw context values, away from the standardised range.
    let y = y.or_else(|| {
        config
            .context()
            .map(|c| randn([n, c.len()], dev) * 4.0 + 7.0)
    });
    let u = images.then(|| noise::uniform(5, Purpose::Score, &noise::indices(0, n), 0, d, dev));
    (x, y, u)
}

/// A model initialised on 32 inputs with every parameter perturbed, and 3 inputs to check.
fn prepared(config: &ModelConfig, dev: &Device) -> (Model, Batch) {
    let (x, y, u) = batch(config, 32, dev);
    let model = config
        .init(dev)
        .unwrap()
        .data_init(x, y.as_ref(), u.as_ref())
        .unwrap();
    (
        evaluation_mode(perturb(model, 0.05, 9)),
        batch(config, 3, dev),
    )
}

/// The model's own log p and the independent one's two terms, per sample.
fn both(config: &ModelConfig) -> Vec<(f64, (f64, f64))> {
    let dev = device();
    dev.seed(2);
    let (model, (x, y, u)) = prepared(config, &dev);
    let (own, _) = model.log_prob(x.clone(), y.as_ref(), u.as_ref()).unwrap();
    let want = independent_log_p(&model, &x, y.as_ref(), u.as_ref());
    to_vec(own).iter().map(|v| *v as f64).zip(want).collect()
}

/// log|det| of a volume-preserving flow: the dequantisation's `−D·ln(bins)` alone.
fn volume_preserving(config: &ModelConfig) -> f64 {
    let n_bits = match config {
        ModelConfig::Glow(c) => c.n_bits,
        ModelConfig::Realnvp(c) => c.n_bits,
        ModelConfig::Nice(c) => c.n_bits,
        ModelConfig::Vector(_) => return 0.0,
    };
    -(config.dims() as f64) * (n_bits as f64 * std::f64::consts::LN_2)
}

fn families() -> Vec<(&'static str, ModelConfig)> {
    let glow = |affine, permutation, learn_top, classes, pixel_norm| {
        ModelConfig::Glow(GlowConfig {
            shape: [1, 4, 4],
            levels: 2,
            depth: 2,
            hidden: 8,
            affine,
            permutation,
            learn_top,
            classes,
            pixel_norm,
            ..Default::default()
        })
    };
    vec![
        (
            "glow affine invconv-lu learn-top",
            glow(true, Permutation::InvconvLu, true, 0, false),
        ),
        (
            "glow affine invconv",
            glow(true, Permutation::Invconv, false, 0, false),
        ),
        (
            "glow additive shuffle",
            glow(false, Permutation::Shuffle, true, 0, false),
        ),
        (
            "glow additive reverse pixel-norm",
            glow(false, Permutation::Reverse, false, 0, true),
        ),
        (
            "glow y-cond",
            glow(true, Permutation::InvconvLu, true, 3, false),
        ),
        (
            "glow 3 channels, 5 bits",
            ModelConfig::Glow(GlowConfig {
                shape: [3, 4, 2],
                levels: 1,
                depth: 2,
                hidden: 8,
                n_bits: 5,
                ..Default::default()
            }),
        ),
        (
            "glow spline",
            ModelConfig::Glow(GlowConfig {
                shape: [1, 4, 4],
                levels: 2,
                depth: 2,
                hidden: 8,
                spline: Some(SplineConfig {
                    bins: 4,
                    tail_bound: 2.0,
                }),
                ..Default::default()
            }),
        ),
        (
            "glow with variational dequantization",
            ModelConfig::Glow(GlowConfig {
                shape: [1, 4, 4],
                levels: 2,
                depth: 1,
                hidden: 8,
                variational: Some(VariationalSize {
                    couplings: 2,
                    hidden: 8,
                }),
                ..Default::default()
            }),
        ),
        (
            "realnvp with variational dequantization, 3 channels",
            ModelConfig::Realnvp(RealNvpConfig {
                shape: [3, 4, 2],
                scales: 1,
                hidden: 8,
                blocks: 1,
                variational: Some(VariationalSize {
                    couplings: 2,
                    hidden: 8,
                }),
                ..Default::default()
            }),
        ),
        (
            "realnvp",
            ModelConfig::Realnvp(RealNvpConfig {
                shape: [1, 4, 4],
                scales: 2,
                hidden: 8,
                blocks: 1,
                ..Default::default()
            }),
        ),
        (
            "nice",
            ModelConfig::Nice(NiceConfig {
                shape: [1, 4, 4],
                hidden: 16,
                layers: 2,
                ..Default::default()
            }),
        ),
        (
            "vector affine invconv",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 5,
                steps: 3,
                hidden: 8,
                ..Default::default()
            }),
        ),
        (
            "vector spline y-cond",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 3,
                steps: 3,
                hidden: 8,
                spline: Some(SplineConfig::default()),
                classes: 2,
                ..Default::default()
            }),
        ),
        (
            "maf affine reverse",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 4,
                steps: 3,
                hidden: 8,
                ..VectorFlowConfig::autoregressive(VectorFlow::Maf)
            }),
        ),
        (
            "maf additive invconv-lu y-cond",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 3,
                steps: 2,
                hidden: 8,
                affine: false,
                permutation: Permutation::InvconvLu,
                classes: 2,
                ..VectorFlowConfig::autoregressive(VectorFlow::Maf)
            }),
        ),
        (
            "iaf spline residual random order y-cond",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 3,
                steps: 2,
                hidden: 8,
                layers: 2,
                spline: Some(SplineConfig::default()),
                residual: true,
                order: crate::nets::Ordering::Random,
                classes: 2,
                ..VectorFlowConfig::autoregressive(VectorFlow::Iaf)
            }),
        ),
        (
            "maf spline with a context",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 3,
                steps: 2,
                hidden: 8,
                spline: Some(SplineConfig::default()),
                context: Some(Context {
                    columns: vec!["a".into(), "b".into()],
                    mean: vec![7.0, 6.0],
                    std: vec![4.0, 3.0],
                }),
                ..VectorFlowConfig::autoregressive(VectorFlow::Maf)
            }),
        ),
        (
            "vector flow with a context",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 2,
                steps: 2,
                hidden: 8,
                context: Some(Context {
                    columns: vec!["a".into()],
                    mean: vec![7.0],
                    std: vec![4.0],
                }),
                ..Default::default()
            }),
        ),
        (
            "vector additive reverse y-cond",
            ModelConfig::Vector(VectorFlowConfig {
                dims: 4,
                steps: 3,
                hidden: 8,
                affine: false,
                permutation: Permutation::Reverse,
                classes: 2,
                ..Default::default()
            }),
        ),
    ]
}

#[test]
fn every_family_s_log_p_equals_the_change_of_variables_through_its_full_jacobian() {
    for (name, config) in families() {
        for (own, (density, logdet)) in both(&config) {
            let want = density + logdet;
            let tol = 2e-3 + 2e-5 * want.abs();
            assert!(
                (own - want).abs() <= tol,
                "{name}: the model's log p {own} but the change of variables gives {want}"
            );
            // The check has teeth: the flow is far from volume-preserving (by 0.4 to 20 nats
            // here, 100× the tolerance and more), so a missing or doubled term cannot hide.
            let moved = (logdet - volume_preserving(&config)).abs();
            assert!(moved > 0.2, "{name}: log|det J| moved only {moved} nats");
        }
    }
}
