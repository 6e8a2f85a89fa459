//! `revflow`: the command line over the revflow library. Errors from the library arrive typed
//! and leave here as one line on stderr with exit code 2.

use std::process::ExitCode;

use clap::Parser;

/// Reversible (flow-based) generative models: NICE, RealNVP and Glow.
///
/// A flow maps data x to latents z = f(x) through invertible layers, so that
/// log p(x) = log p_Z(f(x)) + log|det ∂f/∂x| is exact, sampling is x = f⁻¹(z), and
/// encoding an input to its latent and back is lossless.
#[derive(Parser, Debug)]
#[command(name = "revflow", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// List the invertible layers revflow provides, with their log-determinants.
    Layers,
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

fn run(cli: Cli) -> Result<(), revflow::FlowError> {
    match cli.command {
        Command::Layers => {
            for (name, what, logdet) in LAYERS {
                println!("{name:<26} {what:<46} log|det J| = {logdet}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("revflow: {e}");
            ExitCode::from(2)
        }
    }
}
