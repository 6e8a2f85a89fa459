//! `revflow figures`: the pictures of how flows work, computed from real models.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use revflow::figures::{make, Figure, Options};
use revflow::validate::in_range;
use revflow::FlowError;
use serde_json::json;

use crate::use_model::DeviceArg;
use crate::Report;

/// Draw the figures that explain flows: the 1-D change of variables, why the log-determinant
/// is needed, 2-D flows on every generated set, an animation of coupling layers, and an image
/// model's latent space. Each is computed from models trained here (about 5 minutes for all
/// on 2 cores in a release build); trained models are kept in OUT/runs and reused.
#[derive(Args, Debug)]
pub struct FiguresArgs {
    /// Folder for the pictures.
    #[arg(long, default_value = "figures")]
    pub out: PathBuf,
    /// Only these figures: change-of-variables, logdet, gallery, coupling, latents.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Training steps of each 2-D flow.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Training steps of the digits Glow trained when no --run is given.
    #[arg(long, default_value_t = 1500)]
    pub image_steps: usize,
    /// A trained image model (run folder) for the latent figures, e.g. runs/glow-digits.
    #[arg(long)]
    pub run: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: FiguresArgs) -> Result<Report, FlowError> {
    in_range("--steps", args.steps, 1..)?;
    in_range("--image-steps", args.image_steps, 1..)?;
    let figures = if args.only.is_empty() {
        Figure::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|name| Figure::from_name(name.trim()))
            .collect::<Result<Vec<_>, _>>()?
    };
    let options = Options {
        out: args.out.clone(),
        steps: args.steps,
        image_steps: args.image_steps,
        run: args.run.clone(),
        seed: args.seed,
        device: args.device.device()?,
    };
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut records = Vec::new();
    for figure in figures {
        eprintln!("revflow: {}: {}", figure.name(), figure.describe());
        let made = make(figure, &options, &mut |what| {
            eprintln!(
                "revflow:   {what} ({:.0} s)",
                started.elapsed().as_secs_f64()
            )
        })?;
        let numbers: Vec<String> = made
            .numbers
            .iter()
            .map(|(name, value)| match value.abs() {
                v if v != 0.0 && v < 1e-3 => format!("{name} = {value:.2e}"),
                _ => format!("{name} = {value:.4}"),
            })
            .collect();
        for file in &made.files {
            lines.push(format!("{}", file.display()));
        }
        eprintln!("revflow:   {}", numbers.join(", "));
        records.push(json!({
            "figure": figure.name(),
            "files": made.files,
            "numbers": made.numbers.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    Ok(Report {
        human: format!(
            "{} pictures in {:.0} s:\n{}",
            lines.len(),
            started.elapsed().as_secs_f64(),
            lines.join("\n")
        ),
        json: json!(records),
    })
}
