//! `revflow score`: per-input bits/dim of any data against a trained run, and the comparison
//! of two sets (`--against`). The work is the library's (`revflow::scoring`); this parses the
//! options, shows progress and prints.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use revflow::data::Convert;
use revflow::pictures::save_png;
use revflow::scoring::picture::{comparison, Named};
use revflow::scoring::{score_into, train_mean, ClassMode, Comparison, Inputs, Scorer, Scores};
use revflow::validate::in_range;
use revflow::{FlowError, Result};
use serde_json::json;

use crate::ranks::Ranks;
use crate::use_model::{open, DeviceArg};
use crate::Report;
use revflow::trained::TrainedRun;

/// The options of `revflow score` (its help is on the subcommand, in main.rs).
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Run directory (from `revflow train --out`).
    pub run: PathBuf,
    #[command(flatten)]
    pub device: DeviceArg,
    /// What to score (see above); several are scored as one set.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// A second set to compare with the first (same forms; put it after the inputs).
    #[arg(long, num_args = 1..)]
    pub against: Vec<String>,
    /// Folder of the mnist / fashion-mnist / cifar10 files (`revflow data fetch NAME --dir DIR`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Resize every image to WIDTHxHEIGHT (triangle filter) before scoring.
    #[arg(long, value_parser = crate::train::parse_size)]
    pub resize: Option<(u32, u32)>,
    /// Convert colour images to grey (ITU-R BT.709 luma).
    #[arg(long, conflicts_with = "rgb")]
    pub grayscale: bool,
    /// Convert grey images to colour (the grey value in each channel).
    #[arg(long)]
    pub rgb: bool,
    /// Class-conditional runs: score p(x | y) for this class (name or index). By default
    /// they give the marginal p(x) = Σ_y p(x | y) p(y) with p(y) uniform over the classes.
    #[arg(long)]
    pub class: Option<String>,
    /// Average K dequantisations per input (importance-weighted: log of the mean of
    /// p(x, u_k)), a tighter estimate of the discrete likelihood; costs K passes.
    #[arg(long, default_value_t = 1)]
    pub dequant_samples: usize,
    /// Inputs per forward pass (memory and speed only; the scores do not depend on it).
    #[arg(long, default_value_t = revflow::training::EVAL_BATCH)]
    pub batch_size: usize,
    /// Inputs per batch M of the typicality test (with --against).
    #[arg(long, default_value_t = 16)]
    pub typicality_batch: usize,
    /// Training inputs (evenly spaced) whose mean bits/dim is the typicality test's reference.
    #[arg(long, default_value_t = 2000)]
    pub train_reference: usize,
    /// Folder for the results.
    #[arg(long, default_value = "scores")]
    pub out: PathBuf,
}

/// Inputs kept per set for the strips of the picture.
const STRIP: usize = 16;

pub fn run(args: ScoreArgs, ranks: &Ranks) -> Result<Report> {
    in_range("--dequant-samples", args.dequant_samples, 1..)?;
    in_range("--batch-size", args.batch_size, 1..)?;
    in_range("--typicality-batch", args.typicality_batch, 1..)?;
    in_range("--train-reference", args.train_reference, 1..)?;
    let run = open(&args.run, &args.device)?;
    let class = match &args.class {
        Some(name) if run.classes() == 0 => {
            return Err(FlowError::Config(format!(
            "--class {name}: needs a class-conditional run (trained with --ycond); {} is not one",
            args.run.display()
        )))
        }
        Some(name) => ClassMode::Given(run.class(name)?),
        None => ClassMode::Marginal,
    };
    revflow::limits::check_inference(&run.config.model, args.batch_size)?;
    let scorer = run
        .scorer()
        .class(class)?
        .dequant_samples(args.dequant_samples)?
        .batch_size(args.batch_size)?
        .group(ranks.group());
    // Under MPI every rank scores a share of each batch and gets every score; rank 0 writes.
    let lead = ranks.leads();
    let convert = Convert {
        resize: args.resize,
        channels: match (args.grayscale, args.rgb) {
            (true, _) => Some(1),
            (_, true) => Some(3),
            _ => None,
        },
    };
    let context = revflow::scoring::Context::new(&run.config)
        .data_dir(args.data_dir.as_deref())
        .convert(convert);
    // Every input of both sets is checked before anything is scored.
    let mut first = context.open_all(&args.inputs)?;
    let mut other = context.open_all(&args.against)?;
    let comparing = !args.against.is_empty();
    if lead {
        std::fs::create_dir_all(&args.out).map_err(|source| FlowError::Io {
            path: args.out.clone(),
            source,
        })?;
    }
    let keep = if comparing { STRIP } else { 0 };
    let csv = args.out.join("scores.csv");
    let scores = scored(&scorer, &mut first, lead.then_some(&*csv), keep)?;
    let what = likelihood(&run, class);
    let mut human = vec![format!(
        "{}: {} ({} inputs, {what}): {} bits/dim; {:.0} inputs/s; {}",
        args.run.display(),
        first.names(),
        scores.bits_per_dim.len(),
        scores.summary().line(),
        scores.per_second(),
        csv.display()
    )];
    let mut report = json!({
        "run": args.run,
        "likelihood": what,
        "inputs": set_json(&first, &scores, &csv),
    });
    if comparing {
        let against_csv = args.out.join("against.csv");
        let other_scores = scored(&scorer, &mut other, lead.then_some(&*against_csv), keep)?;
        let splits = context.splits()?;
        let h = train_mean(&scorer, &splits.train, args.train_reference)?;
        let cmp = Comparison::of(
            &scores.bits_per_dim,
            &other_scores.bits_per_dim,
            h,
            args.typicality_batch,
            run.config.train.seed,
        );
        let picture = args.out.join("comparison.png");
        let (a, b) = (first.names(), other.names());
        let image = comparison(
            &Named {
                name: &a,
                scores: &scores,
            },
            &Named {
                name: &b,
                scores: &other_scores,
            },
            &cmp,
            run.config.model.image_shape(),
        )?;
        if lead {
            save_png(image, &picture)?;
        }
        human.push(format!(
            "against {b} ({} inputs): {} bits/dim; {}",
            other_scores.bits_per_dim.len(),
            other_scores.summary().line(),
            against_csv.display()
        ));
        let t = &cmp.typicality;
        human.push(format!(
            "AUROC {:.4} ({b} vs {a} by bits/dim); {:.1} % of {b} above the 95th percentile of {a} ({:.3}); \
             typicality (M = {}, H = {:.3} from {} training inputs, ε = {:.3}): {:.1} % of {b}'s batches flagged, {:.1} % of {a}'s; {}",
            cmp.auroc,
            100.0 * cmp.above_q95,
            scores.summary().q95,
            t.batch,
            t.train_mean,
            splits.train.len().min(args.train_reference),
            t.epsilon,
            100.0 * t.other_flagged,
            100.0 * t.reference_flagged,
            picture.display()
        ));
        report["against"] = set_json(&other, &other_scores, &against_csv);
        report["comparison"] = json!(cmp);
        report["picture"] = json!(picture);
    }
    Ok(Report {
        human: human.join("\n"),
        json: report,
    })
}

/// What likelihood the scores are, in words.
fn likelihood(run: &TrainedRun, class: ClassMode) -> String {
    match class {
        ClassMode::Given(y) => format!(
            "log p(x | class {})",
            run.config.class_names.get(y).cloned().unwrap_or_default()
        ),
        _ if run.classes() > 0 => format!(
            "marginal log p(x) over {} equally likely classes",
            run.classes()
        ),
        _ => "log p(x)".to_string(),
    }
}

fn set_json(inputs: &Inputs, scores: &Scores, csv: &Path) -> serde_json::Value {
    json!({
        "specs": inputs.names(),
        "count": scores.bits_per_dim.len(),
        "summary": scores.summary(),
        "nats": scores.nats,
        "seconds": scores.seconds,
        "inputs_per_second": scores.per_second(),
        "csv": csv,
    })
}

/// Scores a set into `csv` (rank 0 only), with a progress bar on a terminal for more than a
/// few batches.
fn scored(scorer: &Scorer, inputs: &mut Inputs, csv: Option<&Path>, keep: usize) -> Result<Scores> {
    let total = inputs.len();
    let show = csv.is_some() && std::io::stderr().is_terminal();
    let bar = (show && total.is_none_or(|n| n > 1000)).then(|| {
        let bar = ProgressBar::new(total.unwrap_or(0) as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} inputs, {msg}, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let started = std::time::Instant::now();
    let scores = score_into(scorer, inputs, csv, keep, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{rate:.0} inputs/s"));
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    scores
}
