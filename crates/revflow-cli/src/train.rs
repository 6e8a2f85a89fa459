//! `revflow train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use revflow::data::{self, Data};
use revflow::models::{
    Context, GlowConfig, Model, ModelConfig, NiceConfig, Permutation, RealNvpConfig,
    VariationalSize, VectorFlow, VectorFlowConfig,
};
use revflow::nets::Ordering;
use revflow::training::{
    check_resume, per_pixel_baseline, Event, Run, RunConfig, RunDir, TrainConfig, RESUMABLE,
};
use revflow::transforms::{SplineConfig, Transform};
use revflow::{FlowError, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::ranks::Ranks;
use crate::use_model::DeviceArg;
use crate::Report;
use revflow::pictures::save_png;
use revflow::trained::sample_picture;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ModelKind {
    Glow,
    Realnvp,
    Nice,
    /// Coupling flow on vectors (a neural spline flow by default).
    Vector,
    /// Masked autoregressive flow on vectors: fast density, sampling in D passes.
    Maf,
    /// Inverse autoregressive flow on vectors: fast sampling, density in D passes.
    Iaf,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum DequantizationArg {
    Uniform,
    Variational,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderArg {
    Natural,
    Random,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CouplingArg {
    Additive,
    Affine,
    /// Rational-quadratic spline (neural spline flows); see --bins, --tail-bound.
    Spline,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PermutationArg {
    Reverse,
    Shuffle,
    Invconv,
    InvconvLu,
}

const DEFAULT_DATA: &str = "digits";
const DEFAULT_SAMPLES: usize = 8192;

/// Train a flow by maximum likelihood.
///
/// Without arguments: Glow on the embedded 8×8 digits into runs/glow-digits, then the test
/// bits/dim next to a per-pixel baseline, and sample grids in runs/glow-digits/samples/.
///
/// Ctrl-C (or SIGTERM) stops after the current step with a checkpoint of it and exit code 130;
/// `--resume` continues from there on the same loss curve. A run is trained by one process at
/// a time, and a crash at any moment leaves a complete checkpoint to resume from.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub device: DeviceArg,
    /// Model family (default: glow for images, vector for vectors).
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Data set: digits, mnist, fashion-mnist, cifar10, images:<folder>, csv:<file>, or a
    /// generated 2-D set (moons, circles, 8gaussians, checkerboard, pinwheel, 2spirals,
    /// rings, swissroll). See `revflow data list`. [default: digits]
    #[arg(long)]
    pub data: Option<String>,
    /// Folder holding mnist / fashion-mnist / cifar10 files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Training points of a generated 2-D set. [default: 8192]
    #[arg(long)]
    pub samples: Option<usize>,
    /// Resize the images of an images:<folder> set to WIDTHxHEIGHT (they must otherwise
    /// share one size).
    #[arg(long, value_parser = parse_size)]
    pub resize: Option<(u32, u32)>,
    /// Run directory (default: runs/<model>-<data>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint. A resume may change only --steps
    /// (to extend the run), --lr, --warmup, --grad-clip, --weight-decay, --eval-every and
    /// --checkpoint-every; any other option must agree with the run's config.json.
    #[arg(long)]
    pub resume: bool,

    // Optimisation.
    /// Optimiser steps [default: 3000 for Glow on the digits, 2000 otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate after warm-up [default: 1e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warm-up steps [default: 100].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Gradient-norm clipping [default: 50].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// L2 weight decay [default: 1e-2 for Glow on the digits, 0 otherwise].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Seed of every random choice (initialisation, batches, noise). [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,

    // Architecture (each family reads its own).
    /// Glow: levels L.
    #[arg(long)]
    pub levels: Option<usize>,
    /// Glow: steps per level K.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Hidden width of the coupling networks.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Glow / vector: coupling type [default: affine for Glow; for vector data a neural
    /// spline flow, spline couplings between swaps of the halves].
    #[arg(long, value_enum)]
    pub coupling: Option<CouplingArg>,
    /// Spline couplings: bins K per spline, 2 to 64. [default: 8]
    #[arg(long)]
    pub bins: Option<usize>,
    /// Spline couplings: each spline acts on [−B, B] and is the identity outside. [default: 3]
    #[arg(long)]
    pub tail_bound: Option<f64>,
    /// Glow / vector: how features are mixed between couplings (reverse: NICE's swap).
    #[arg(long, value_enum)]
    pub permutation: Option<PermutationArg>,
    /// Glow: use a fixed N(0, I) top prior instead of a learned one.
    #[arg(long)]
    pub no_learn_top: bool,
    /// Glow: a data-initialised ActNorm per pixel position before the first level (not in
    /// the paper; helps small data sets with near-constant pixels).
    #[arg(long)]
    pub pixel_norm: bool,
    /// Glow / vector: condition on the class labels (y-cond).
    #[arg(long)]
    pub ycond: bool,
    /// Vector / MAF / IAF on a CSV: model p(x | c), with the named columns as the context c
    /// and the other columns as x (e.g. --context temperature,pressure). The context is
    /// standardised with the training set's statistics, kept in the run.
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<String>,
    /// Glow: weight of the auxiliary class loss with --ycond.
    #[arg(long)]
    pub class_weight: Option<f64>,
    /// Bits per pixel kept, 1-8 [default: 4 for Glow on the digits, 8 otherwise].
    #[arg(long)]
    pub n_bits: Option<u32>,
    /// Glow / RealNVP: dequantization noise, uniform or learned (Flow++'s variational q(u | x):
    /// spline couplings conditioned on the pixels; bits/dim is then a variational bound,
    /// tightened by `eval`/`score --dequant-samples K`). [default: uniform]
    #[arg(long, value_enum)]
    pub dequantization: Option<DequantizationArg>,
    /// Variational dequantization: couplings of q. [default: 4]
    #[arg(long)]
    pub dequant_couplings: Option<usize>,
    /// Variational dequantization: hidden width of q's networks. [default: 32]
    #[arg(long)]
    pub dequant_hidden: Option<usize>,
    /// RealNVP: scales.
    #[arg(long)]
    pub scales: Option<usize>,
    /// RealNVP: residual blocks per coupling network.
    #[arg(long)]
    pub blocks: Option<usize>,
    /// RealNVP: logit margin α.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// NICE: couplings.
    #[arg(long)]
    pub couplings: Option<usize>,
    /// NICE / vector: hidden layers per coupling network.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Vector / MAF / IAF: flow steps.
    #[arg(long)]
    pub flow_steps: Option<usize>,
    /// MAF / IAF: residual MADE networks (hidden layers after the first add their input).
    #[arg(long)]
    pub residual: bool,
    /// MAF / IAF: the MADEs' feature order (random: seeded per step) [default: natural,
    /// reversed between steps by --permutation reverse].
    #[arg(long, value_enum)]
    pub order: Option<OrderArg>,
}

impl TrainArgs {
    fn data(&self) -> &str {
        self.data.as_deref().unwrap_or(DEFAULT_DATA)
    }

    fn samples(&self) -> usize {
        self.samples.unwrap_or(DEFAULT_SAMPLES)
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }
}

fn model_config(args: &TrainArgs, data: &Data) -> Result<ModelConfig> {
    let (shape, dims, classes) = match data {
        Data::Images(s) => (
            Some([s.channels, s.height, s.width]),
            s.sample_dims(),
            s.class_names.len(),
        ),
        Data::Vectors(s) => (None, s.dim, s.class_names.len()),
    };
    let kind = args.model.unwrap_or(if shape.is_some() {
        ModelKind::Glow
    } else {
        ModelKind::Vector
    });
    let classes = if args.ycond {
        if classes == 0 {
            return Err(FlowError::Config(format!(
                "--ycond needs labelled data; {} has no labels",
                args.data()
            )));
        }
        classes
    } else {
        0
    };
    let need_images = |name: &str| {
        shape.ok_or_else(|| {
            FlowError::Config(format!(
                "{name} models images; {} holds vectors (use --model vector)",
                args.data()
            ))
        })
    };
    let base = match kind {
        ModelKind::Glow => ModelConfig::Glow(GlowConfig {
            shape: need_images("Glow")?,
            seed: args.seed(),
            ..Default::default()
        }),
        ModelKind::Realnvp => ModelConfig::Realnvp(RealNvpConfig {
            shape: need_images("RealNVP")?,
            ..Default::default()
        }),
        ModelKind::Nice => ModelConfig::Nice(NiceConfig {
            shape: need_images("NICE")?,
            ..Default::default()
        }),
        ModelKind::Maf | ModelKind::Iaf if shape.is_some() => {
            return Err(FlowError::Config(format!(
                "MAF and IAF model vectors; {} holds images (use glow, realnvp or nice)",
                args.data()
            )))
        }
        ModelKind::Maf | ModelKind::Iaf => {
            let flow = match kind {
                ModelKind::Maf => VectorFlow::Maf,
                _ => VectorFlow::Iaf,
            };
            ModelConfig::Vector(VectorFlowConfig {
                dims,
                seed: args.seed(),
                context: Context::of_data(data)?,
                ..VectorFlowConfig::autoregressive(flow)
            })
        }
        ModelKind::Vector => {
            if shape.is_some() && args.model.is_some() {
                return Err(FlowError::Config(format!(
                    "{} holds images; use glow, realnvp or nice",
                    args.data()
                )));
            }
            // Measured best (bench/README.md): a neural spline flow, unless another coupling
            // is asked for (which then mixes with the default invertible linear map).
            let base = match args.coupling {
                None | Some(CouplingArg::Spline) => VectorFlowConfig::neural_spline(),
                Some(_) => VectorFlowConfig::default(),
            };
            ModelConfig::Vector(VectorFlowConfig {
                dims,
                seed: args.seed(),
                context: Context::of_data(data)?,
                ..base
            })
        }
    };
    Ok(with_model_options(args, base, classes))
}

/// `model` with the architecture options given on the command line applied; `--ycond`
/// conditions on `classes` classes.
fn with_model_options(args: &TrainArgs, model: ModelConfig, classes: usize) -> ModelConfig {
    let affine = args.coupling.map(|c| matches!(c, CouplingArg::Affine));
    // --coupling spline (or --bins / --tail-bound on a spline run) sets the spline; another
    // --coupling removes it.
    let spline = |saved: Option<SplineConfig>| {
        let base = match args.coupling {
            Some(CouplingArg::Spline) => Some(saved.unwrap_or_default()),
            Some(_) => None,
            None => saved,
        }?;
        Some(SplineConfig {
            bins: args.bins.unwrap_or(base.bins),
            tail_bound: args.tail_bound.unwrap_or(base.tail_bound),
        })
    };
    let classes = |saved: usize| if args.ycond { classes } else { saved };
    // --dequantization chooses; the size options resize a variational q.
    let variational = |saved: Option<VariationalSize>| {
        let base = match args.dequantization {
            Some(DequantizationArg::Variational) => Some(saved.unwrap_or_default()),
            Some(DequantizationArg::Uniform) => None,
            None => saved,
        }?;
        Some(VariationalSize {
            couplings: args.dequant_couplings.unwrap_or(base.couplings),
            hidden: args.dequant_hidden.unwrap_or(base.hidden),
        })
    };
    match model {
        ModelConfig::Glow(c) => ModelConfig::Glow(GlowConfig {
            levels: args.levels.unwrap_or(c.levels),
            depth: args.depth.unwrap_or(c.depth),
            hidden: args.hidden.unwrap_or(c.hidden),
            affine: affine.unwrap_or(c.affine),
            spline: spline(c.spline),
            permutation: permutation(args.permutation, c.permutation),
            learn_top: c.learn_top && !args.no_learn_top,
            classes: classes(c.classes),
            class_weight: args.class_weight.unwrap_or(c.class_weight),
            n_bits: args.n_bits.unwrap_or(c.n_bits),
            pixel_norm: c.pixel_norm || args.pixel_norm,
            variational: variational(c.variational),
            ..c
        }),
        ModelConfig::Realnvp(c) => ModelConfig::Realnvp(RealNvpConfig {
            scales: args.scales.unwrap_or(c.scales),
            hidden: args.hidden.unwrap_or(c.hidden),
            blocks: args.blocks.unwrap_or(c.blocks),
            alpha: args.alpha.unwrap_or(c.alpha),
            n_bits: args.n_bits.unwrap_or(c.n_bits),
            variational: variational(c.variational),
            ..c
        }),
        ModelConfig::Nice(c) => ModelConfig::Nice(NiceConfig {
            couplings: args.couplings.unwrap_or(c.couplings),
            hidden: args.hidden.unwrap_or(c.hidden),
            layers: args.layers.unwrap_or(c.layers),
            n_bits: args.n_bits.unwrap_or(c.n_bits),
            ..c
        }),
        ModelConfig::Vector(c) => ModelConfig::Vector(VectorFlowConfig {
            steps: args.flow_steps.unwrap_or(c.steps),
            hidden: args.hidden.unwrap_or(c.hidden),
            layers: args.layers.unwrap_or(c.layers),
            affine: affine.unwrap_or(c.affine),
            spline: spline(c.spline),
            permutation: permutation(args.permutation, c.permutation),
            classes: classes(c.classes),
            residual: c.residual || args.residual,
            order: match args.order {
                Some(OrderArg::Natural) => Ordering::Natural,
                Some(OrderArg::Random) => Ordering::Random,
                None => c.order,
            },
            ..c
        }),
    }
}

/// The run's saved configuration with this command's options applied, refused (naming the
/// option) where an option contradicts what the checkpoint was built and trained with.
fn resumed(args: &TrainArgs, dir: &RunDir) -> Result<RunConfig> {
    let saved = dir.read_config()?;
    let saved_context = saved
        .model
        .context()
        .map(|c| c.columns.clone())
        .unwrap_or_default();
    if !args.context.is_empty() && args.context != saved_context {
        return Err(for_options(FlowError::Resume {
            field: "context".into(),
            found: args.context.join(","),
            saved: saved_context.join(","),
        }));
    }
    let kind = args.model.map(|k| format!("{k:?}").to_lowercase());
    if let Some(kind) = kind.filter(|k| k != saved.model.name()) {
        return Err(for_options(FlowError::Resume {
            field: "model".into(),
            found: kind,
            saved: saved.model.name().into(),
        }));
    }
    let mut asked = RunConfig {
        model: with_model_options(args, saved.model.clone(), saved.class_names.len()),
        train: train_config(args, saved.train.clone()),
        ..saved
    };
    // Options with defaults are `Option`s, so that one given with its default value still
    // counts as given here.
    if let Some(data) = &args.data {
        asked.data = data.clone();
    }
    if let Some(samples) = args.samples {
        asked.data_samples = samples;
    }
    if let Some(seed) = args.seed {
        asked.train.seed = seed;
    }
    if args.data_dir.is_some() {
        asked.data_dir = args.data_dir.clone();
    }
    if args.resize.is_some() {
        asked.data_resize = args.resize;
    }
    check_resume(dir, &asked).map_err(for_options)?;
    Ok(asked)
}

/// The option that sets a field of config.json.
fn option_of(field: &str) -> String {
    let leaf = field.rsplit('.').next().unwrap_or(field);
    match field {
        "model.steps" => "--flow-steps".into(),
        "model.flow" => "--model".into(),
        "model.variational" => "--dequantization".into(),
        "model.variational.couplings" => "--dequant-couplings".into(),
        "model.variational.hidden" => "--dequant-hidden".into(),
        "model.classes" => "--ycond".into(),
        "model.affine" | "model.spline" => "--coupling".into(),
        "model.learn_top" => "--no-learn-top".into(),
        "data_samples" => "--samples".into(),
        _ if field.starts_with("data_resize") => "--resize".into(),
        _ => format!("--{}", leaf.replace('_', "-")),
    }
}

/// Errors about fields of the run's configuration, reworded in terms of the options.
fn for_options(e: FlowError) -> FlowError {
    match e {
        FlowError::Invalid {
            name,
            expected,
            found,
        } => FlowError::Invalid {
            name: option_of(&name),
            expected,
            found,
        },
        FlowError::Resume {
            field,
            found,
            saved,
        } => {
            let (option, leaf) = (
                option_of(&field),
                field.rsplit('.').next().unwrap_or(&field),
            );
            let asked = match option == format!("--{}", leaf.replace('_', "-")) {
                true => format!("{option} {found}"),
                false => format!("{option} (giving {leaf} {found})"),
            };
            let may: Vec<String> = RESUMABLE.iter().map(|f| option_of(f)).collect();
            FlowError::Training(format!(
                "{asked} contradicts the run's {leaf} {saved}; a resume may change only {}",
                may.join(", ")
            ))
        }
        other => other,
    }
}

fn permutation(arg: Option<PermutationArg>, default: Permutation) -> Permutation {
    match arg {
        None => default,
        Some(PermutationArg::Reverse) => Permutation::Reverse,
        Some(PermutationArg::Shuffle) => Permutation::Shuffle,
        Some(PermutationArg::Invconv) => Permutation::Invconv,
        Some(PermutationArg::InvconvLu) => Permutation::InvconvLu,
    }
}

fn train_config(args: &TrainArgs, base: TrainConfig) -> TrainConfig {
    TrainConfig {
        steps: args.steps.unwrap_or(base.steps),
        batch_size: args.batch_size.unwrap_or(base.batch_size),
        lr: args.lr.unwrap_or(base.lr),
        warmup: args.warmup.unwrap_or(base.warmup),
        grad_clip: args.grad_clip.unwrap_or(base.grad_clip),
        weight_decay: args.weight_decay.unwrap_or(base.weight_decay),
        eval_every: args.eval_every.unwrap_or(base.eval_every),
        checkpoint_every: args.checkpoint_every.unwrap_or(base.checkpoint_every),
        ..base
    }
}

pub(crate) fn parse_size(text: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("expected WIDTHxHEIGHT such as 32x32, found {text:?}");
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    match (w.parse(), h.parse()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(bad()),
    }
}

/// Loads the data a run was (or will be) trained on.
pub fn run(args: TrainArgs, ranks: &Ranks) -> Result<Report> {
    // Before anything is read or written: a device this build lacks is one line.
    let device = args.device.device()?;

    let (config, dir) = if args.resume {
        let out = args
            .out
            .clone()
            .ok_or_else(|| FlowError::Config("--resume needs --out RUN_DIR".into()))?;
        let dir = RunDir::new(&out);
        let config = resumed(&args, &dir)?;
        (config, dir)
    } else {
        let mut splits = data::load_resized(
            args.data(),
            args.data_dir.as_deref(),
            args.seed(),
            args.samples(),
            args.resize,
        )?;
        if !args.context.is_empty() {
            splits = splits.with_context(&args.context)?;
        }
        let model = model_config(&args, &splits.train)?;
        let base = TrainConfig {
            seed: args.seed(),
            ..TrainConfig::default()
        };
        let (model, base) = revflow::training::recipe(args.data(), model, base, args.n_bits);
        let name = args
            .data()
            .rsplit(['/', ':'])
            .next()
            .unwrap_or("data")
            .to_string();
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{name}", model.name())));
        let dir = RunDir::new(&out);
        let class_names = splits.train.class_names().to_vec();
        let config = RunConfig {
            model,
            train: train_config(&args, base),
            data: args.data().to_string(),
            data_dir: args.data_dir.clone(),
            data_samples: args.samples(),
            data_resize: args.resize,
            class_names,
        };
        (config, dir)
    };
    config.validate().map_err(for_options)?;
    let spline_option = (args.bins.map(|_| "--bins")).or(args.tail_bound.map(|_| "--tail-bound"));
    if let Some(name) = spline_option {
        if !matches!(config.model.transform(), Some(Transform::Spline(_))) {
            return Err(FlowError::Config(format!(
                "{name} shapes spline couplings; add --coupling spline (Glow or vector models)"
            )));
        }
    }
    let splits = config.load_data()?;
    let ranks_note = match ranks.group() {
        Some(g) => format!(" on {} ranks", g.size()),
        None => String::new(),
    };
    if ranks.leads() {
        eprintln!(
            "revflow: training {} on {} ({}) into {}{ranks_note}",
            config.model.name(),
            config.data,
            splits.description,
            dir.root.display()
        );
    }
    let samples_dir = dir.samples();
    let draw = |model: &Model, step: usize| -> Result<()> {
        let picture = sample_picture(model, &config, &splits.test, 0.7, &device)?;
        save_png(picture, &samples_dir.join(format!("step-{step:06}.png")))
    };
    let stop = stop_on_signals()?;
    let run = Run {
        config: config.clone(),
        data: &splits,
        dir: dir.clone(),
        draw_samples: Some(&draw),
        stop: Some(&stop),
        group: ranks.group(),
        device: device.clone(),
    };
    let mut progress = Progress::new();
    let summary = run
        .train(args.resume, &mut |event| {
            if ranks.leads() {
                progress.show(event)
            }
        })
        .map_err(for_options)?;
    progress.finish();
    // Training is over: from here a first Ctrl-C ends the process at once, as usual.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let baseline = match (&splits.train, &splits.test, config.model.image_shape()) {
        (Data::Images(train), Data::Images(test), Some(_)) => Some(per_pixel_baseline(
            train,
            test,
            config.model.n_bits().unwrap_or(8),
        )),
        _ => None,
    };
    let samples = samples_dir.join(format!("step-{:06}.png", summary.steps));
    let human_baseline = baseline
        .map(|b| format!(" (independent per-pixel model: {b:.3})"))
        .unwrap_or_default();
    Ok(Report {
        human: format!(
            "{} on {}: {} steps in {:.0} s; test {:.3} bits/dim{human_baseline}, {:.2} nats; samples {}; run {}",
            config.model.name(),
            config.data,
            summary.steps,
            summary.seconds,
            summary.test.bits_per_dim,
            summary.test.nats,
            samples.display(),
            dir.root.display()
        ),
        json: serde_json::json!({
            "model": config.model.name(), "data": config.data, "steps": summary.steps,
            "seconds": summary.seconds, "test_bits_per_dim": summary.test.bits_per_dim,
            "test_nats": summary.test.nats, "per_pixel_baseline_bits_per_dim": baseline,
            "run": dir.root, "samples": samples,
        }),
    })
}

/// A flag set by Ctrl-C or SIGTERM: training then stops after the current step and saves a
/// checkpoint. A second signal ends the process at once, which the checkpoint protocol makes
/// safe (the previous checkpoint stays complete).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
            .map_err(|e| FlowError::Training(format!("cannot handle signal {signal}: {e}")))?;
    }
    Ok(stop)
}

/// A progress bar on a terminal; periodic log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    steps: usize,
    start: usize,
    started: std::time::Instant,
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: None,
            steps: 0,
            start: 0,
            started: std::time::Instant::now(),
        }
    }

    fn show(&mut self, event: Event) {
        match event {
            Event::Started {
                step,
                steps,
                resumed,
            } => {
                self.steps = steps;
                self.start = step;
                if resumed {
                    eprintln!("revflow: resuming at step {step} of {steps}");
                }
                if std::io::stderr().is_terminal() {
                    let bar = ProgressBar::new(steps as u64).with_position(step as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    self.bar = Some(bar);
                }
            }
            Event::Step {
                step,
                loss,
                bits_per_dim,
                lr,
            } => match &self.bar {
                Some(bar) => {
                    bar.set_position(step as u64);
                    bar.set_message(format!(
                        "loss {loss:.4} bits/dim {bits_per_dim:.3} lr {lr:.1e}"
                    ));
                }
                None => {
                    if step % (self.steps / 20).max(1) == 0 {
                        let rate = (step - self.start) as f64
                            / self.started.elapsed().as_secs_f64().max(1e-9);
                        let eta = (self.steps - step) as f64 / rate.max(1e-9);
                        eprintln!(
                            "step {step}/{}: loss {loss:.4}, bits/dim {bits_per_dim:.3}, {rate:.1} it/s, ETA {eta:.0} s",
                            self.steps
                        );
                    }
                }
            },
            Event::Evaluated { step, test } => {
                let line = format!("step {step}: test {:.3} bits/dim", test.bits_per_dim);
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Checkpoint { .. } => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
