//! Commands that use a trained run: eval, sample, encode, decode, interpolate, manipulate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use revflow::burn::tensor::Device;
use revflow::device::Backend;
use revflow::latents::{self, pixels};
use revflow::pictures::{check_grid, grid, save_png, scatter, single};
use revflow::scoring::{score_into, ClassMode};
use revflow::trained::{one_input, points_of, Inputs, TrainedRun};
use revflow::validate::in_range;
use revflow::{FlowError, Result};

use serde_json::json;

use crate::ranks::Ranks;
use crate::Report;

/// `--device`, on every command that runs a model.
#[derive(Args, Debug, Clone)]
pub struct DeviceArg {
    /// Where the model runs: cpu; wgpu (the best GPU wgpu finds, through Vulkan, Metal or
    /// DirectX; revflow built with `--features wgpu`), wgpu:N (adapter N of `revflow devices`),
    /// vulkan (wgpu pinned to Vulkan); cuda or cuda:N (`--features cuda`). Checkpoints do not
    /// depend on it: train on one device, sample on another.
    #[arg(long = "device", value_name = "DEVICE", default_value = "cpu")]
    pub backend: Backend,
}

impl DeviceArg {
    pub fn device(&self) -> Result<Device> {
        self.backend.device()
    }
}

pub(crate) fn open(run: &Path, device: &DeviceArg) -> Result<TrainedRun> {
    TrainedRun::open(run, device.device()?)
}

fn write_csv<T: std::fmt::Display>(path: &Path, rows: &[Vec<T>]) -> Result<()> {
    let text: String = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    revflow::files::write_atomic(path, text.as_bytes())
}

/// Bits/dim of a trained run on its data.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run directory (from `revflow train --out`).
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Which split: test or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Write each input's score to this CSV (input,label,nats,bits_per_dim, as `revflow
    /// score` writes it): rank inputs by likelihood to find unusual ones.
    #[arg(long)]
    pub per_sample: Option<PathBuf>,
    /// Inputs per batch (memory only: each input's dequantisation noise is keyed by its
    /// content, so the numbers do not depend on it).
    #[arg(long, default_value_t = revflow::training::EVAL_BATCH)]
    pub batch_size: usize,
    /// Average K dequantisations per input (importance-weighted, as `score` does): with
    /// variational dequantization, log (1/K) Σ p(x + u_k) / q(u_k | x), a tighter bound.
    #[arg(long, default_value_t = 1)]
    pub dequant_samples: usize,
}

pub fn eval(args: EvalArgs, ranks: &Ranks) -> Result<Report> {
    in_range("--batch-size", args.batch_size, 1..)?;
    let run = open(&args.run, &args.device)?;
    if !matches!(args.split.as_str(), "test" | "train") {
        return Err(FlowError::Config(format!(
            "--split must be test or train, not {:?}",
            args.split
        )));
    }
    let context = run.context();
    let splits = context.splits()?;
    let data = match args.split.as_str() {
        "test" => &splits.test,
        _ => &splits.train,
    };
    revflow::training::check_data(&run.config.model, data, &args.split)?;
    revflow::limits::check_inference(&run.config.model, args.batch_size)?;
    // The scoring core, as training's evaluation: each input's own label for a conditional run.
    let scorer = run
        .scorer()
        .class(ClassMode::OwnLabel)?
        .batch_size(args.batch_size)?
        .dequant_samples(args.dequant_samples)?
        .group(ranks.group());
    let mut inputs = context.open_all(std::slice::from_ref(&args.split))?;
    // Under MPI every rank gets every score; rank 0 writes them.
    let per_sample = args.per_sample.as_deref().filter(|_| ranks.leads());
    let scores = score_into(&scorer, &mut inputs, per_sample, 0, &mut |_| {})?;
    let dims = run.config.model.dims();
    let bits = scores.mean();
    Ok(Report {
        human: format!(
            "{} {}: {bits:.4} bits/dim, {:.3} nats per sample ({} samples of {dims} dimensions)",
            args.run.display(),
            args.split,
            scores.nats,
            data.len()
        ),
        json: json!({"run": args.run, "split": args.split, "samples": data.len(),
            "bits_per_dim": bits, "nats": scores.nats, "dims": dims,
            "per_sample": args.per_sample, "dequant_samples": args.dequant_samples}),
    })
}

/// Draw samples from a trained run.
#[derive(Args, Debug)]
pub struct SampleArgs {
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Number of samples (per temperature).
    #[arg(short, default_value_t = 64)]
    pub n: usize,
    /// Temperature T: latents drawn from N(μ, (T·σ)²); lower is smoother, less varied.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// A sweep: one row per temperature, e.g. 0,0.5,0.7,1.0 (overrides --temperature).
    #[arg(long, value_delimiter = ',')]
    pub temperatures: Vec<f64>,
    /// Class to sample (name or index) for class-conditional runs.
    #[arg(long)]
    pub class: Option<String>,
    /// The context to sample at, for runs conditioned on one (trained with --context): one
    /// value per context column, comma-separated, e.g. --context 2.5,0.1.
    #[arg(long, allow_hyphen_values = true)]
    pub context: Option<String>,
    /// Output PNG.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write the samples as CSV (vectors: the values; images: the pixels).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Seed of the latents: sample i is the same for a given seed whatever -n or the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Samples drawn at once by `sample`.
const SAMPLE_BATCH: usize = revflow::training::EVAL_BATCH;

pub fn sample(args: SampleArgs) -> Result<Report> {
    in_range("-n", args.n, 1..)?;
    in_range("--temperature", args.temperature, 0.0..)?;
    for &t in &args.temperatures {
        in_range("--temperatures", t, 0.0..)?;
    }
    let run = open(&args.run, &args.device)?;
    let class = args.class.as_deref().map(|c| run.class(c)).transpose()?;
    if class.is_some() && run.classes() == 0 {
        return Err(FlowError::Config(format!(
            "--class needs a class-conditional run (trained with --ycond); {} is not one",
            args.run.display()
        )));
    }
    if run.classes() > 0 && class.is_none() {
        eprintln!(
            "revflow: class-conditional run; sampling classes in turn (choose one with --class)"
        );
    }
    // A context-conditional run samples p(x | c) at the one context given.
    let context = match (run.config.model.context(), &args.context) {
        (Some(context), Some(text)) => Some(context.parse(text)?),
        (Some(context), None) => {
            return Err(FlowError::Config(format!(
                "{} is conditioned on a context ({}); give one with --context",
                args.run.display(),
                context.columns.join(",")
            )))
        }
        (None, Some(_)) => {
            return Err(FlowError::Config(format!(
                "--context needs a run trained with --context; {} is not one",
                args.run.display()
            )))
        }
        (None, None) => None,
    };
    let temperatures = if args.temperatures.is_empty() {
        vec![args.temperature]
    } else {
        args.temperatures.clone()
    };
    // Sampled batch by batch: memory follows the output (pixels, picture, CSV), not the
    // model's activations for every sample at once.
    let total = args.n.saturating_mul(temperatures.len());
    let dims = run.config.model.dims() as f64;
    let csv_bytes = |per_value: f64| match args.csv {
        Some(_) => total as f64 * dims * per_value,
        None => 0.0,
    };
    let image_shape = run.config.model.image_shape();
    let cols = match temperatures.len() {
        1 => (args.n as f64).sqrt().ceil() as usize,
        _ => args.n,
    };
    match image_shape {
        Some(shape) => check_grid(total, shape, cols, 4, total as f64 * dims + csv_bytes(4.0))?,
        None => revflow::limits::check(
            format!("{total} samples"),
            total as f64 * dims * 4.0 + csv_bytes(16.0),
        )?,
    }
    let (mut images, mut points) = (Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    for &t in &temperatures {
        for start in (0..args.n).step_by(SAMPLE_BATCH) {
            let len = SAMPLE_BATCH.min(args.n - start);
            // Sample i has the same latents at every temperature and in every batch.
            let x = run.sample(args.seed, start..start + len, t, class, context.as_deref())?;
            match image_shape {
                Some(_) => images.extend(pixels(x)),
                None => points.extend(points_of(x)),
            }
        }
    }
    // The sampling alone, without loading the run or writing the outputs.
    let seconds = started.elapsed().as_secs_f64();
    let picture = match image_shape {
        Some(shape) => grid(&images, shape, cols, 4),
        None => {
            let pts: Vec<[f32; 2]> = points
                .iter()
                .map(|p| [p[0], p.get(1).copied().unwrap_or(0.0)])
                .collect();
            scatter(&pts, &[], 480)
        }
    };
    save_png(picture, &args.out)?;
    if let Some(csv) = &args.csv {
        match image_shape {
            Some(_) => write_csv(csv, &images)?,
            None => write_csv(csv, &points)?,
        }
    }
    Ok(Report {
        human: format!(
            "{} samples at T = {temperatures:?} in {}",
            args.n * temperatures.len(),
            args.out.display()
        ),
        json: json!({"samples": args.n * temperatures.len(), "temperatures": temperatures,
            "out": args.out, "csv": args.csv, "seconds": seconds}),
    })
}

/// Encode inputs to latent files.
#[derive(Args, Debug)]
pub struct EncodeArgs {
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Image files, or rows of the run's data: test:N, train:N, test:A..B.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// Class of file inputs (name or index) for class-conditional runs.
    #[arg(long)]
    pub class: Option<String>,
    /// Latent file to write (safetensors: z0 … zK, every level).
    #[arg(long, default_value = "latents.safetensors")]
    pub out: PathBuf,
}

pub fn encode(args: EncodeArgs) -> Result<Report> {
    let run = open(&args.run, &args.device)?;
    let class = args.class.as_deref().map(|c| run.class(c)).transpose()?;
    let Inputs {
        x, labels, context, ..
    } = run.inputs(&args.inputs, class)?;
    let zs = latents::encode(&run.model, x, run.cond(&labels, &context).as_ref())?;
    let joined = |v: &[String]| v.join(",");
    let mut meta = HashMap::from([
        ("run".to_string(), args.run.display().to_string()),
        ("model".to_string(), run.config.model.name().to_string()),
        (
            "labels".to_string(),
            joined(&labels.iter().map(|l| l.to_string()).collect::<Vec<_>>()),
        ),
    ]);
    // The context goes with the latents, so that decode conditions on the same one (f32's
    // shortest round-trip text, so exactly).
    if !context.is_empty() {
        let text: Vec<String> = context.iter().map(|v| v.to_string()).collect();
        meta.insert("context".to_string(), joined(&text));
    }
    latents::save(&args.out, &zs, meta)?;
    let sizes: Vec<usize> = zs.iter().map(|z| z.dims()[1]).collect();
    Ok(Report {
        human: format!(
            "{} input(s) → {} ({} levels of {sizes:?} values)",
            labels.len(),
            args.out.display(),
            zs.len()
        ),
        json: json!({"inputs": labels.len(), "out": args.out, "level_sizes": sizes}),
    })
}

/// Decode a latent file.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    pub latents: PathBuf,
    /// Folder for the decoded images (0.png, 1.png, …) or, for vectors, a CSV file.
    #[arg(long, default_value = "decoded")]
    pub out: PathBuf,
}

pub fn decode(args: DecodeArgs) -> Result<Report> {
    let run = open(&args.run, &args.device)?;
    let (zs, meta) = latents::load(&args.latents, &run.device)?;
    let n = zs[0].dims()[0];
    let labels: Vec<usize> = meta
        .get("labels")
        .map(|l| l.split(',').filter_map(|v| v.parse().ok()).collect())
        .filter(|l: &Vec<usize>| l.len() == n)
        .unwrap_or_else(|| vec![0; n]);
    let context: Vec<f32> = meta
        .get("context")
        .map(|c| c.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    let x = latents::decode(&run.model, &zs, run.cond(&labels, &context).as_ref())?;
    match run.config.model.image_shape() {
        Some(shape) => {
            std::fs::create_dir_all(&args.out).map_err(|source| FlowError::Io {
                path: args.out.clone(),
                source,
            })?;
            for (i, img) in pixels(x).iter().enumerate() {
                save_png(single(img, shape), &args.out.join(format!("{i}.png")))?;
            }
        }
        None => write_csv(&args.out, &points_of(x))?,
    }
    Ok(Report {
        human: format!("{n} decoded into {}", args.out.display()),
        json: json!({"decoded": n, "out": args.out}),
    })
}

/// Interpolate between two inputs.
#[derive(Args, Debug)]
pub struct InterpolateArgs {
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// First input (image file or test:N / train:N).
    pub a: String,
    /// Second input.
    pub b: String,
    /// Images in the strip, the two ends included.
    #[arg(long, default_value_t = 9)]
    pub steps: usize,
    #[arg(long, default_value = "interpolation.png")]
    pub out: PathBuf,
}

pub fn interpolate(args: InterpolateArgs) -> Result<Report> {
    in_range("--steps", args.steps, 2..)?;
    one_input(&args.a)?;
    one_input(&args.b)?;
    let run = open(&args.run, &args.device)?;
    let shape = run.image_shape("interpolate")?;
    let steps = args.steps;
    let dims = run.config.model.dims() as f64;
    check_grid(steps, shape, steps, 4, steps as f64 * dims * 5.0)?;
    let ts: Vec<f64> = (0..steps).map(|i| i as f64 / (steps - 1) as f64).collect();
    let images = run.interpolate(&args.a, &args.b, &ts)?;
    save_png(grid(&images, shape, steps, 4), &args.out)?;
    Ok(Report {
        human: format!(
            "{steps} images from {} to {} in {}",
            args.a,
            args.b,
            args.out.display()
        ),
        json: json!({"images": steps, "a": args.a, "b": args.b, "out": args.out}),
    })
}

/// Move an input along a direction in latent space: from one class to another, or towards
/// an attribute listed in a CSV.
#[derive(Args, Debug)]
pub struct ManipulateArgs {
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// The input (image file or test:N / train:N).
    pub input: String,
    /// Class the direction starts from (name or index).
    #[arg(long, required_unless_present = "attributes")]
    pub from: Option<String>,
    /// Class the direction points to (name or index).
    #[arg(long, required_unless_present = "attributes")]
    pub to: Option<String>,
    /// A CSV of image attributes instead of classes: a `file` column (paths relative to the
    /// CSV) and one column per attribute, > 0 meaning present (CelebA's -1/1 works).
    #[arg(long, requires = "attribute", conflicts_with_all = ["from", "to"])]
    pub attributes: Option<PathBuf>,
    /// The attribute column: direction = mean(z | present) − mean(z | absent).
    #[arg(long, requires = "attributes")]
    pub attribute: Option<String>,
    /// Multiples α of the direction added to the input's latent.
    #[arg(long, value_delimiter = ',', default_value = "-1,-0.5,0,0.5,1,1.5")]
    pub alphas: Vec<f64>,
    /// Inputs per group used for the mean latents.
    #[arg(long, default_value_t = 500)]
    pub per_class: usize,
    #[arg(long, default_value = "manipulation.png")]
    pub out: PathBuf,
}

pub fn manipulate(args: ManipulateArgs) -> Result<Report> {
    for &alpha in &args.alphas {
        in_range("--alphas", alpha, ..)?;
    }
    in_range("--per-class", args.per_class, 1..)?;
    one_input(&args.input)?;
    let run = open(&args.run, &args.device)?;
    let shape = run.image_shape("manipulate")?;
    // The input first: a bad one is refused before the mean latents are computed.
    run.inputs(std::slice::from_ref(&args.input), None)?;
    let (direction, what) = match (&args.attributes, &args.attribute) {
        (Some(csv), Some(attribute)) => (
            run.attribute_direction(csv, attribute, args.per_class)?,
            format!("towards {attribute}"),
        ),
        _ => {
            let (from_name, to_name) = (
                args.from.clone().unwrap_or_default(),
                args.to.clone().unwrap_or_default(),
            );
            let (from, to) = (run.class(&from_name)?, run.class(&to_name)?);
            (
                run.class_direction(from, to, args.per_class)?,
                format!("along {from_name} → {to_name}"),
            )
        }
    };
    let images = run.manipulate(&args.input, &direction, &args.alphas)?;
    save_png(grid(&images, shape, args.alphas.len(), 4), &args.out)?;
    Ok(Report {
        human: format!(
            "{} moved by α ∈ {:?} {what} in {}",
            args.input,
            args.alphas,
            args.out.display()
        ),
        json: json!({"input": args.input, "alphas": args.alphas, "direction": what, "out": args.out}),
    })
}
