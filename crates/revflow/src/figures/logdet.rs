//! Figure 2: why the log-determinant is needed. Maximum likelihood of a flow is
//! `log p_Z(f(x)) + log |det ∂f/∂x|`; the second term pays for every contraction. Drop it and
//! the cheapest way to raise `log p_Z(f(x))` is to map every point onto the mode of p_Z: the
//! latents collapse to a Dirac delta and the real likelihood of the data falls apart.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use plotters::prelude::*;

use super::{points, tensor, to_points, Made, Options};
use crate::data;
use crate::distributions::BaseDistribution;
use crate::error::Result;
use crate::flow::Flow;
use crate::models::{bits_per_dim, Model, ModelConfig, VectorFlowConfig};
use crate::pictures::plot::{self, Drawn, FONT, PALETTE};
use crate::pictures::save_png;
use crate::training::{batch_indices, for_training, rows};

const SET: &str = "8gaussians";

/// One training run, recorded.
struct Trace {
    with_logdet: bool,
    /// `(step, standard deviation of the latents)`.
    spread: Vec<(usize, f64)>,
    /// `(step, first latent coordinate of every probe point)`.
    snapshots: Vec<(usize, Vec<f64>)>,
    /// Test bits/dim (the real likelihood, log-det included) at the end.
    bits_per_dim: f64,
}

fn flat(model: &Model) -> &crate::models::FlatFlow {
    match model {
        Model::Flat(m) => m,
        _ => unreachable!("a vector config builds a flat flow"),
    }
}

fn train(with_logdet: bool, options: &Options) -> Result<Trace> {
    let splits = data::load(SET, None, options.seed, 4000)?;
    let probe = points(&splits.test);
    let device = options.device.clone().autodiff();
    device.seed(options.seed);
    let config = ModelConfig::Vector(VectorFlowConfig {
        steps: 4,
        seed: options.seed,
        ..VectorFlowConfig::default()
    });
    let (x0, _) = rows(
        &splits.train,
        &batch_indices(splits.train.len(), 512, 0, options.seed),
        0,
        &device,
    );
    let mut model = for_training(config.init(&device)?.data_init(x0, None, None)?);
    let mut optimizer = AdamConfig::new().init();
    let steps = options.steps;
    let snapshot_at = [0, steps / 20, steps / 4, steps];
    let record_every = (steps / 100).max(1);
    let mut trace = Trace {
        with_logdet,
        spread: Vec::new(),
        snapshots: Vec::new(),
        bits_per_dim: f64::NAN,
    };
    for step in 0..=steps {
        if step % record_every == 0 || snapshot_at.contains(&step) {
            let inference = model.valid();
            let (z, _) = flat(&inference)
                .flow
                .forward(tensor(&probe, &options.device), None)?;
            let z = to_points(z);
            let n = z.len() as f64;
            let var: f64 = z.iter().map(|p| p[0] * p[0] + p[1] * p[1]).sum::<f64>() / (2.0 * n);
            trace.spread.push((step, var.sqrt()));
            if snapshot_at.contains(&step) {
                trace
                    .snapshots
                    .push((step, z.iter().map(|p| p[0]).collect()));
            }
            if step == steps {
                let (log_p, _) = inference.log_prob(tensor(&probe, &options.device), None, None)?;
                let mean = log_p.mean().into_scalar::<f32>() as f64;
                trace.bits_per_dim = bits_per_dim(mean, 2);
            }
        }
        if step == steps {
            break;
        }
        let idx = batch_indices(splits.train.len(), 256, step, options.seed);
        let (x, _) = rows(&splits.train, &idx, 0, &device);
        let flow = flat(&model);
        let (z, logdet) = flow.flow.forward(x, None)?;
        let mut objective = flow.prior.log_prob(z, None)?;
        if with_logdet {
            objective = objective + logdet;
        }
        let loss = objective.mean().neg();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(3e-3, model, grads);
    }
    Ok(trace)
}

pub(super) fn make(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    let mut traces = Vec::new();
    for with_logdet in [true, false] {
        progress(&format!(
            "{SET}: training a 2-D flow for {} steps {} the log-determinant",
            options.steps,
            if with_logdet { "with" } else { "without" }
        ));
        traces.push(train(with_logdet, options)?);
    }
    let mut made = Made::default();
    for t in &traces {
        let name = if t.with_logdet { "with" } else { "without" };
        made.number(format!("latent_std_{name}"), t.spread.last().unwrap().1);
        made.number(format!("test_bits_per_dim_{name}"), t.bits_per_dim);
    }
    let picture = plot::draw(1400, 1000, |root| draw(root, &traces))?;
    let path = super::file(options, "logdet-collapse.png");
    save_png(picture, &path)?;
    made.files.push(path);
    Ok(made)
}

fn draw(root: &plot::Area, traces: &[Trace]) -> Drawn {
    let (title, body) = root.split_vertically(50);
    title.titled(
        "Maximum likelihood with and without log|det ∂f/∂x|: without it the latents collapse",
        (FONT, 24),
    )?;
    let (histograms, curve) = body.split_vertically(620);
    let rows = histograms.split_evenly((2, 4));
    for (r, trace) in traces.iter().enumerate() {
        let colour = PALETTE[if trace.with_logdet { 0 } else { 3 }];
        for (c, (step, z)) in trace.snapshots.iter().enumerate() {
            let bins = plot::histogram(z, -4.0, 4.0, 80);
            let gauss = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let top = bins.iter().map(|b| b.2).fold(0.45, f64::max) * 1.1;
            let std = (z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64).sqrt();
            let mut chart = ChartBuilder::on(&rows[4 * r + c])
                .caption(
                    format!(
                        "{} log-det, step {step}: std {std:.3}",
                        if trace.with_logdet { "with" } else { "without" }
                    ),
                    (FONT, 15),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(-4.0..4.0, 0.0..top)?;
            chart
                .configure_mesh()
                .x_desc("z₁")
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .disable_mesh()
                .draw()?;
            chart
                .draw_series(bins.iter().map(|&(l, r, d)| {
                    Rectangle::new([(l, 0.0), (r, d)], colour.mix(0.6).filled())
                }))?;
            chart.draw_series(LineSeries::new(
                (0..=200).map(|i| {
                    let x = -4.0 + 8.0 * i as f64 / 200.0;
                    (x, gauss(x))
                }),
                BLACK.mix(0.6).stroke_width(2),
            ))?;
        }
    }
    let steps = traces[0].spread.last().unwrap().0.max(1);
    let lowest = traces
        .iter()
        .flat_map(|t| t.spread.iter().map(|s| s.1))
        .fold(1.0, f64::min)
        .max(1e-6);
    let mut chart = ChartBuilder::on(&curve)
        .caption("spread of the latents during training", (FONT, 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..steps, (lowest * 0.5..3.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("std of z (log scale)")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for t in traces {
        let colour = PALETTE[if t.with_logdet { 0 } else { 3 }];
        chart
            .draw_series(LineSeries::new(t.spread.clone(), colour.stroke_width(3)))?
            .label(format!(
                "{}: test {:.2} bits/dim",
                if t.with_logdet {
                    "log p_Z(f(x)) + log|det|"
                } else {
                    "log p_Z(f(x)) only"
                },
                t.bits_per_dim
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
    }
    plot::legend(&mut chart, SeriesLabelPosition::LowerLeft)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    #[test]
    fn without_the_log_determinant_the_latents_collapse() {
        let (_dir, options) = options("logdet");
        let made = make(&options, &mut |_| {}).unwrap();
        let (with, without) = (made.get("latent_std_with"), made.get("latent_std_without"));
        assert!((0.6..1.5).contains(&with), "with the log-det: std {with}");
        assert!(without < 0.05, "without the log-det: std {without}");
        // The collapsed flow is a terrible density of the data, the trained one a good one.
        let (bpd_with, bpd_without) = (
            made.get("test_bits_per_dim_with"),
            made.get("test_bits_per_dim_without"),
        );
        assert!(bpd_without > bpd_with + 2.0, "{bpd_with} vs {bpd_without}");
        assert!(made.files[0].exists());
    }
}
