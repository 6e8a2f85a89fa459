//! `revflow`: the command line over the revflow library. Library errors arrive typed and
//! leave here as one line on stderr with exit code 2.

mod figures;
mod ranks;
mod score;
mod train;
mod use_model;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use revflow::device::Backend;
use revflow::validate::in_range;
use revflow::FlowError;

use ranks::Ranks;

/// Reversible (flow-based) generative models: NICE, RealNVP and Glow.
///
/// A flow maps data x to latents z = f(x) through invertible layers, so that
/// log p(x) = log p_Z(f(x)) + log|det ∂f/∂x| is exact, sampling is x = f⁻¹(z), and
/// encoding an input to its latent and back is lossless.
///
/// Start with `revflow train` (Glow on the embedded 8×8 digits, a few minutes), then
/// `revflow sample runs/glow-digits`, `revflow eval runs/glow-digits`.
#[derive(Parser, Debug)]
#[command(name = "revflow", version, about, long_about)]
struct Cli {
    /// Print one JSON object on stdout instead of the one-line summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// What a command did: one line for people, one JSON object for programs.
pub struct Report {
    pub human: String,
    pub json: serde_json::Value,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (default: Glow on the embedded digits) into a run directory.
    Train(Box<train::TrainArgs>),
    /// Bits/dim (and nats) of a trained run on its test or training split.
    Eval(use_model::EvalArgs),
    /// Per-input bits/dim of any data under a trained run; --against compares two sets.
    ///
    /// INPUTS (and --against) are any of:
    ///   test, train              the run's own test or training split (test:N, test:A..B for rows)
    ///   mnist:test, fashion-mnist:train, cifar10:test
    ///                            a public set's files in --data-dir (the split named explicitly)
    ///   idx:FILE                 an IDX images file, raw or .gz
    ///   images:FOLDER, FOLDER    PNG/JPEG images (sub-folders are classes)
    ///   FILE.png                 one image
    ///   csv:FILE                 numeric vectors (for vector runs)
    ///   invert:INPUT             the images of INPUT with every value v as 255 − v
    /// (a file or folder named like one of these forms: ./test)
    ///
    /// Images are resized or converted only when asked (--resize, --grayscale, --rgb); an input of
    /// another shape is refused with one line naming it. Writes OUT/scores.csv
    /// (input,label,nats,bits_per_dim); with --against also OUT/against.csv and
    /// OUT/comparison.png, and prints the AUROC of telling the two sets apart by bits/dim, the
    /// fraction of the other set above the first set's 95th percentile, and the typicality test
    /// (Nalisnick et al. 2019), since plain likelihood ranks some out-of-distribution sets as
    /// more likely than the training data.
    ///
    /// A score does not depend on the batch size or the order of the inputs: each input's
    /// dequantisation noise is keyed by the run's seed and the input's content.
    #[command(verbatim_doc_comment)]
    Score(Box<score::ScoreArgs>),
    /// Draw samples: an image grid, or a scatter plot and CSV for vectors.
    Sample(use_model::SampleArgs),
    /// Encode inputs to their latents (every level) in a file.
    Encode(use_model::EncodeArgs),
    /// Decode a latent file back to images (exactly the encoded ones) or vectors.
    Decode(use_model::DecodeArgs),
    /// Interpolate between two inputs in latent space: a strip of images.
    Interpolate(use_model::InterpolateArgs),
    /// Move an input along a class direction in latent space: a strip of images.
    Manipulate(use_model::ManipulateArgs),
    /// List the data sets, or download a public one.
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
    /// List the invertible layers revflow provides, with their log-determinants.
    Layers,
    /// List the devices this build can run on, as `--device` names them (cpu, wgpu:N, cuda:N).
    Devices,
    /// Draw the figures that show how flows work (change of variables, log-det, 2-D flows,
    /// coupling animation, image latents), computed from models trained on the spot.
    Figures(figures::FiguresArgs),
    /// Time Glow's training step, likelihood evaluation and sampling (see bench/ for the
    /// side-by-side comparison with PyTorch).
    Bench(BenchArgs),
    /// A web page over the runs of a folder: explore a run (samples at any temperature, an
    /// image encoded to its latents and decoded back exactly, its bits/dim among the test
    /// set's, interpolation, class and attribute directions), watch runs train (live curves,
    /// compared, as CSV), and a 2-D playground that trains flows on the spot. Works offline;
    /// stop it with Ctrl-C.
    Serve(ServeArgs),
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Train(_) => "train",
            Command::Eval(_) => "eval",
            Command::Score(_) => "score",
            Command::Sample(_) => "sample",
            Command::Encode(_) => "encode",
            Command::Decode(_) => "decode",
            Command::Interpolate(_) => "interpolate",
            Command::Manipulate(_) => "manipulate",
            Command::Data { .. } => "data",
            Command::Layers => "layers",
            Command::Devices => "devices",
            Command::Figures(_) => "figures",
            Command::Bench(_) => "bench",
            Command::Serve(_) => "serve",
        }
    }
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Configurations: digits (8×8×1), mnist (28×28×1), cifar (32×32×3).
    #[arg(long, value_delimiter = ',', default_value = "digits,mnist,cifar")]
    configs: Vec<String>,
    /// Timed repetitions of each operation (after 2 warm-ups); the median is reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Batch size (default: 64 digits, 32 mnist, 16 cifar).
    #[arg(long)]
    batch: Option<usize>,
    /// Hidden width of the coupling networks (default: 64 digits, 128 mnist, 256 cifar;
    /// Glow's paper: 512).
    #[arg(long)]
    hidden: Option<usize>,
    /// Instead of timing, write the first configuration's model, a batch and its log-likelihood
    /// into this folder for bench/reference.py to check.
    #[arg(long)]
    export: Option<std::path::PathBuf>,
    /// Time variants of the mnist configuration instead (image size, depth, batch size, one at
    /// a time) to show how the cost grows, with a large matrix product as the yardstick.
    #[arg(long, conflicts_with_all = ["configs", "export"])]
    scaling: bool,
    /// Compose Glow's coupling network from burn's operations instead of the fused CPU
    /// operation, to measure what the fusion brings.
    #[arg(long)]
    unfused: bool,
    /// Where to run: cpu, or a GPU: wgpu, wgpu:N, vulkan, cuda, cuda:N (see `revflow devices`);
    /// the GPU backends need revflow built with `--features wgpu` or `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: Backend,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The folder of runs (each one a `revflow train --out` directory).
    #[arg(default_value = "runs")]
    runs: std::path::PathBuf,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on. Any address but loopback (127.0.0.1, ::1) is reachable from other
    /// machines: every request then needs the token in the address printed at start.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Requests running or waiting for the model at once; more are answered 503 (busy).
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Largest request in bytes (an uploaded image is sent inside one, a third larger).
    #[arg(long, default_value_t = 8 << 20)]
    upload_limit: usize,
    #[command(flatten)]
    device: use_model::DeviceArg,
}

fn serve(args: ServeArgs) -> Result<Report, FlowError> {
    let config = revflow_serve::ServeConfig {
        host: args.host,
        port: args.port,
        queue: args.queue,
        upload_limit: args.upload_limit,
        ..revflow_serve::ServeConfig::new(&args.runs, args.device.device()?)
    };
    let server = revflow_serve::Server::bind(config)?;
    // A bug in one request answers that request with a 500; the server stays up.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("revflow serve: internal error in a request: {info} (please report it)");
    }));
    println!("serving {} at {}", args.runs.display(), server.url);
    eprintln!("revflow serve: Ctrl-C stops");
    server.run()?;
    Ok(Report {
        human: "stopped".into(),
        json: serde_json::json!({"stopped": true}),
    })
}

fn bench(args: BenchArgs) -> Result<Report, FlowError> {
    in_range("--iters", args.iters, 1..)?;
    if let Some(batch) = args.batch {
        in_range("--batch", batch, 1..)?;
    }
    if let Some(hidden) = args.hidden {
        in_range("--hidden", hidden, 1..=4096)?;
    }
    revflow::fused::set_enabled(!args.unfused);
    let presets = revflow::bench::presets();
    let mut chosen = Vec::new();
    if args.scaling {
        chosen = revflow::bench::scaling();
    }
    for name in args.configs.iter().filter(|_| !args.scaling) {
        let mut config = presets
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                FlowError::Config(format!(
                    "unknown bench configuration {name:?}: use digits, mnist or cifar"
                ))
            })?;
        config.batch = args.batch.unwrap_or(config.batch);
        config.glow.hidden = args.hidden.unwrap_or(config.glow.hidden);
        chosen.push(config);
    }
    if let Some(dir) = &args.export {
        let config = chosen
            .first()
            .ok_or_else(|| FlowError::Config("no configuration".into()))?;
        revflow::bench::export(config, dir)?;
        return Ok(Report {
            human: format!("{} exported to {}", config.name, dir.display()),
            json: serde_json::json!({"config": config.name, "dir": dir}),
        });
    }
    let mut rows = Vec::new();
    let mut lines = vec![format!(
        "{:<9} {:>5} {:>10} {:>10} {:>10} {:>12} {:>9} {:>11}",
        "config",
        "batch",
        "train ms",
        "eval ms",
        "sample ms",
        "train GFLOP/s",
        "peak MiB",
        "gradient MB"
    )];
    for config in &chosen {
        let t = revflow::bench::run(config, args.iters, args.device)?;
        // One process times every scaling row, so its peak memory is the largest so far.
        let peak = match args.scaling {
            true => "-".to_string(),
            false => format!("{:.0}", t.peak_rss_mb),
        };
        lines.push(format!(
            "{:<9} {:>5} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>9} {:>11.2}",
            t.config,
            t.batch,
            t.train_ms,
            t.eval_ms,
            t.sample_ms,
            t.train_gflops,
            peak,
            // What a data-parallel step all-reduces (see README, Distributed training).
            t.trained_parameters as f64 * 4.0 / 1e6
        ));
        if let Some(d) = t.logp_vs_cpu {
            lines.push(format!(
                "{:<9} log p on {} vs cpu: max relative difference {d:.1e}",
                t.config, args.device
            ));
        }
        rows.push(t);
    }
    // The yardstick for the CPU's FLOP/s: what gemm reaches on one large product here.
    let gemm = match args.device {
        Backend::Cpu => Some(revflow::bench::gemm_gflops(1024, args.iters)?),
        _ => None,
    };
    match gemm {
        Some(g) => lines.push(format!("1024×1024 matrix product: {g:.1} GFLOP/s")),
        None => lines.push(format!("device: {}", args.device)),
    }
    Ok(Report {
        human: lines.join("\n"),
        json: serde_json::json!({
            "rows": rows,
            "gemm_1024_gflops": gemm,
            "device": args.device.to_string(),
        }),
    })
}

fn export(
    name: &str,
    out: &std::path::Path,
    samples: usize,
    seed: u64,
) -> Result<Report, FlowError> {
    in_range("--samples", samples, 1..)?;
    let splits = revflow::data::load(name, None, seed, samples)?;
    std::fs::create_dir_all(out)
        .map_err(|e| FlowError::Config(format!("{}: {e}", out.display())))?;
    let mut files = Vec::new();
    for (split, data) in [("train", &splits.train), ("test", &splits.test)] {
        let revflow::data::Data::Vectors(set) = data else {
            return Err(FlowError::Config(format!(
                "{name} holds images; `data export` writes vector sets (2-D sets, csv:)"
            )));
        };
        let path = out.join(format!("{split}.csv"));
        revflow::files::write_atomic(&path, revflow::data::to_csv(set).as_bytes())?;
        files.push((path, set.len()));
    }
    Ok(Report {
        human: files
            .iter()
            .map(|(p, n)| format!("{}: {n} rows", p.display()))
            .collect::<Vec<_>>()
            .join("\n"),
        json: serde_json::json!(files
            .iter()
            .map(|(p, n)| serde_json::json!({"file": p, "rows": n}))
            .collect::<Vec<_>>()),
    })
}

/// Every device of every backend built in; a backend without adapters says so.
fn devices() -> Result<Report, FlowError> {
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for family in [Backend::Cpu, Backend::Wgpu(None), Backend::Cuda(None)] {
        match revflow::device::adapters(family) {
            Ok(found) if found.is_empty() => lines.push(format!("{family:<8} no adapter found")),
            Ok(found) => {
                for a in found {
                    lines.push(format!("{:<8} {}", a.spec, a.name));
                    rows.push(serde_json::json!({"device": a.spec.to_string(), "name": a.name}));
                }
            }
            Err(_) => lines.push(format!(
                "{family:<8} not built (cargo build --release -p revflow-cli --features {family})"
            )),
        }
    }
    Ok(Report {
        human: lines.join("\n"),
        json: serde_json::json!(rows),
    })
}

#[derive(Subcommand, Debug)]
enum DataAction {
    /// The data sets revflow can load.
    List,
    /// Download mnist, fashion-mnist or cifar10 into a directory (checksums verified).
    Fetch {
        name: String,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Write a vector data set's training and test splits, exactly as `train --data NAME
    /// --samples N --seed S` sees them, as OUT/train.csv and OUT/test.csv (to compare
    /// with other libraries on the same points).
    Export {
        name: String,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Training points of a generated 2-D set (its test split has a quarter as many).
        #[arg(long = "samples", default_value_t = 20_000)]
        data_samples: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

const LAYERS: &[(&str, &str, &str)] = &[
    (
        "ActNorm",
        "per-channel (x + b)·exp(log s), data-initialised",
        "H·W·Σ log s",
    ),
    (
        "InvConv1x1",
        "1×1 convolution / linear map by W",
        "H·W·log|det W|",
    ),
    (
        "InvConv1x1Lu",
        "W = P·L·(U + diag(sign·exp(log s)))",
        "H·W·Σ log s",
    ),
    (
        "Permute",
        "fixed reverse or seeded shuffle of channels",
        "0",
    ),
    ("Coupling (additive)", "y_b = x_b + t(x_a)", "0"),
    (
        "Coupling (Glow affine)",
        "y_b = (x_b + t)·σ(r + 2)",
        "Σ log σ(r + 2)",
    ),
    (
        "Coupling (RealNVP affine)",
        "y_b = x_b·exp(ρ·tanh r) + t",
        "Σ ρ·tanh r",
    ),
    (
        "Coupling (spline)",
        "rational-quadratic spline on [−B, B], K bins",
        "Σ log y_b′(x_b)",
    ),
    ("Squeeze", "2×2 space-to-depth", "0"),
    (
        "Split",
        "half the channels leave as latents, p(z | h)",
        "log p(z | h)",
    ),
    ("DiagScale", "NICE scaling x·exp(s)", "Σ s"),
    (
        "BatchNormFlow",
        "RealNVP batch normalisation",
        "H·W·Σ (log γ − ½ log(σ² + ε))",
    ),
    (
        "Dequantize",
        "8-bit → n bits → uniform in each bin",
        "−D·ln(2^n)",
    ),
    (
        "Logit",
        "logit(α + (1 − 2α)·x)",
        "Σ log((1 − 2α)/(p(1 − p)))",
    ),
];

fn run(command: Command, ranks: &Ranks) -> Result<Report, FlowError> {
    match &command {
        Command::Train(_) | Command::Eval(_) | Command::Score(_) => {}
        other => ranks.alone(other.name())?,
    }
    match command {
        Command::Train(args) => train::run(*args, ranks),
        Command::Eval(args) => use_model::eval(args, ranks),
        Command::Score(args) => score::run(*args, ranks),
        Command::Sample(args) => use_model::sample(args),
        Command::Encode(args) => use_model::encode(args),
        Command::Decode(args) => use_model::decode(args),
        Command::Interpolate(args) => use_model::interpolate(args),
        Command::Manipulate(args) => use_model::manipulate(args),
        Command::Data {
            action: DataAction::List,
        } => {
            let list = revflow::data::catalogue();
            Ok(Report {
                human: list.iter().map(|(name, what)| format!("{name:<18} {what}")).collect::<Vec<_>>().join("\n"),
                json: serde_json::json!(list.iter().map(|(name, what)| serde_json::json!({"name": name, "description": what})).collect::<Vec<_>>()),
            })
        }
        Command::Data {
            action: DataAction::Fetch { name, dir },
        } => {
            revflow::data::fetch(&name, &dir)?;
            Ok(Report {
                human: format!("{name}: files in {}", dir.display()),
                json: serde_json::json!({"data": name, "dir": dir}),
            })
        }
        Command::Data {
            action:
                DataAction::Export {
                    name,
                    out,
                    data_samples,
                    seed,
                },
        } => export(&name, &out, data_samples, seed),
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
        Command::Devices => devices(),
        Command::Figures(args) => figures::run(args),
        Command::Layers => Ok(Report {
            human: LAYERS
                .iter()
                .map(|(name, what, logdet)| format!("{name:<26} {what:<46} log|det J| = {logdet}"))
                .collect::<Vec<_>>()
                .join("\n"),
            json: serde_json::json!(LAYERS
                .iter()
                .map(|(name, what, logdet)| serde_json::json!({"layer": name, "map": what, "log_det": logdet}))
                .collect::<Vec<_>>()),
        }),
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("revflow: internal error: {msg} (please report it)");
        std::process::exit(2);
    }));
    // Paths end up in config.json and the JSON reports, which hold only UTF-8 text.
    if let Some(arg) = std::env::args_os().find(|a| a.to_str().is_none()) {
        eprintln!("revflow: arguments must be valid UTF-8 text, found {arg:?}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let ranks = Ranks::start();
    match run(cli.command, &ranks) {
        Ok(report) => {
            match (ranks.leads(), cli.json) {
                (false, _) => {}
                (true, true) => println!("{}", report.json),
                (true, false) => println!("{}", report.human),
            }
            ExitCode::SUCCESS
        }
        // One line; 130 (the shell's code for an interrupt) when stopped by Ctrl-C or
        // SIGTERM at a checkpoint.
        Err(e) => ranks.fail(e),
    }
}
