//! Figure 3: from a complex distribution to a simple one. 2-D flows trained on two spirals map
//! them onto a Gaussian: the data, its latents, the latent grid pulled back into data space,
//! and the learned density, for the affine flow and the spline flow; then both flows on every
//! generated set (a gallery).

use burn::tensor::Device;
use image::{Rgb, RgbImage};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{points, tensor, to_points, trained_spline, trained_toy, Made, Options, Toy};
use crate::data::TOY_SETS;
use crate::error::Result;
use crate::flow::Flow;
use crate::models::FlatFlow;
use crate::noise::{self, Purpose};
use crate::pictures::plot::{self, Area, Drawn, FONT};
use crate::pictures::save_png;

/// The set of the large figure: a snake-like density no Gaussian comes near.
pub(super) const SNAKE: &str = "2spirals";

/// A square window `(centre, half width)` around the points, with a margin.
pub(crate) fn window(points: &[[f64; 2]]) -> ([f64; 2], f64) {
    let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for p in points {
        for d in 0..2 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let half = (0..2).map(|d| hi[d] - lo[d]).fold(0.0, f64::max) / 2.0 * 1.15;
    (
        [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0],
        half.max(1e-3),
    )
}

/// The model's density on an `n`×`n` grid of cell centres over the window, row by row from
/// the top, and its integral over the window (≈ 1 when the window holds the mass).
pub(crate) fn density(
    model: &FlatFlow,
    (c, half): ([f64; 2], f64),
    n: usize,
    device: &Device,
) -> Result<(Vec<f64>, f64)> {
    let cell = 2.0 * half / n as f64;
    let grid: Vec<[f64; 2]> = (0..n * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            [
                c[0] - half + (col as f64 + 0.5) * cell,
                c[1] + half - (row as f64 + 0.5) * cell,
            ]
        })
        .collect();
    let mut p = Vec::with_capacity(n * n);
    for chunk in grid.chunks(16_384) {
        let (log_p, _) = model.log_prob(tensor(chunk, device), None, None)?;
        let values = log_p.into_data().try_to_vec_as::<f32>().expect("f32");
        p.extend(values.into_iter().map(|v| (v as f64).exp()));
    }
    let integral = p.iter().sum::<f64>() * cell * cell;
    Ok((p, integral))
}

/// Bits/dim of the best Gaussian (the training mean and covariance) on the test points.
fn gaussian_bits_per_dim(train: &[[f64; 2]], test: &[[f64; 2]]) -> f64 {
    let n = train.len() as f64;
    let mean = [0, 1].map(|d| train.iter().map(|p| p[d]).sum::<f64>() / n);
    let cov = |a: usize, b: usize| {
        train
            .iter()
            .map(|p| (p[a] - mean[a]) * (p[b] - mean[b]))
            .sum::<f64>()
            / n
    };
    let (sxx, sxy, syy) = (cov(0, 0), cov(0, 1), cov(1, 1));
    let det = sxx * syy - sxy * sxy;
    let nll: f64 = test
        .iter()
        .map(|p| {
            let (dx, dy) = (p[0] - mean[0], p[1] - mean[1]);
            let q = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det;
            0.5 * q + 0.5 * det.ln() + (2.0 * std::f64::consts::PI).ln()
        })
        .sum::<f64>()
        / test.len() as f64;
    nll / (2.0 * std::f64::consts::LN_2)
}

/// The density as a viridis picture (linear, from 0 to its maximum).
pub(crate) fn heat_map(p: &[f64], n: usize) -> RgbImage {
    let top = p.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    RgbImage::from_fn(n as u32, n as u32, |x, y| {
        let c = plot::viridis(p[y as usize * n + x as usize] / top);
        Rgb([c.0, c.1, c.2])
    })
}

/// Colour of a data point: its distance from the window's centre, so that the arms of a
/// spiral keep their colours wherever the flow moves them.
pub(super) fn colours(points: &[[f64; 2]], (c, half): ([f64; 2], f64)) -> Vec<RGBColor> {
    points
        .iter()
        .map(|p| plot::viridis(((p[0] - c[0]).hypot(p[1] - c[1]) / half).min(1.0) * 0.9))
        .collect()
}

/// How a panel is framed: with labelled axes (the large figure) or bare (the gallery).
#[derive(Clone, Copy)]
pub(super) enum Frame<'a> {
    Axes(&'a str, &'a str),
    Bare,
}

/// A chart over the square `view`, with `title`, in `frame`.
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    (c, half): ([f64; 2], f64),
    frame: Frame,
) -> std::result::Result<
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    Box<dyn std::error::Error>,
> {
    let (size, label) = match frame {
        Frame::Axes(..) => (17, 35),
        Frame::Bare => (15, 0),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, size))
        .margin(10)
        .x_label_area_size(label)
        .y_label_area_size(label + 5 * (label > 0) as u32)
        .build_cartesian_2d(c[0] - half..c[0] + half, c[1] - half..c[1] + half)?;
    match frame {
        Frame::Axes(x, y) => chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE)
            .draw()?,
        Frame::Bare => chart.configure_mesh().disable_mesh().draw()?,
    }
    Ok(chart)
}

pub(super) fn scatter_panel(
    area: &Area,
    title: &str,
    points: &[[f64; 2]],
    colours: &[RGBColor],
    view: ([f64; 2], f64),
    frame: Frame,
) -> Drawn {
    let radius = if matches!(frame, Frame::Bare) { 1 } else { 2 };
    chart(area, title, view, frame)?.draw_series(
        points
            .iter()
            .zip(colours)
            .map(|(p, col)| Circle::new((p[0], p[1]), radius, col.filled())),
    )?;
    Ok(())
}

/// Lines of constant z₁ (`true`) and z₂ in latent space, pulled back into data space by f⁻¹.
pub(super) fn pulled_back_grid(
    model: &FlatFlow,
    device: &Device,
) -> Result<Vec<(bool, Vec<[f64; 2]>)>> {
    let along: Vec<f64> = (0..=300).map(|i| -3.2 + 6.4 * i as f64 / 300.0).collect();
    let mut lines = Vec::new();
    for t in (-6..=6).map(|k| k as f64 * 0.5) {
        for vertical in [true, false] {
            let line: Vec<[f64; 2]> = along
                .iter()
                .map(|&s| if vertical { [t, s] } else { [s, t] })
                .collect();
            let back = model.flow.inverse(tensor(&line, device), None)?;
            lines.push((vertical, to_points(back)));
        }
    }
    Ok(lines)
}

pub(super) fn grid_panel(
    area: &Area,
    title: &str,
    data: &[[f64; 2]],
    lines: &[(bool, Vec<[f64; 2]>)],
    view: ([f64; 2], f64),
    frame: Frame,
) -> Drawn {
    let mut chart = chart(area, title, view, frame)?;
    chart.draw_series(
        data.iter()
            .map(|p| Circle::new((p[0], p[1]), 1, RGBColor(200, 200, 200).filled())),
    )?;
    for (vertical, line) in lines {
        let colour = plot::PALETTE[if *vertical { 0 } else { 1 }];
        chart.draw_series(LineSeries::new(
            line.iter().map(|p| (p[0], p[1])),
            colour.mix(0.8).stroke_width(1),
        ))?;
    }
    Ok(())
}

/// The density picture centred in `area`, as large as fits under a title line.
pub(super) fn heat_panel(area: &Area, title: &str, heat: &RgbImage) -> Drawn {
    area.titled(title, (FONT, 15))?;
    let (w, h) = area.dim_in_pixel();
    let side = w.min(h).saturating_sub(40).max(heat.width());
    let big = image::imageops::resize(heat, side, side, image::imageops::FilterType::Nearest);
    plot::paste(
        area,
        &big,
        ((w - side) as i32 / 2, (h - side) as i32 / 2 + 12),
    )
}

/// Everything drawn for one trained flow.
struct Panels {
    set: &'static str,
    view: ([f64; 2], f64),
    data: Vec<[f64; 2]>,
    colours: Vec<RGBColor>,
    latents: Vec<[f64; 2]>,
    grid: Vec<(bool, Vec<[f64; 2]>)>,
    heat: RgbImage,
    samples: Vec<[f64; 2]>,
    integral: f64,
    bits_per_dim: f64,
    gaussian: f64,
}

fn panels(set: &'static str, toy: &Toy, options: &Options) -> Result<Panels> {
    let (seed, device) = (options.seed, &options.device);
    let train = points(&toy.data.train);
    let data = points(&toy.data.test);
    let view = window(&train);
    let latents = to_points(toy.model.flow.forward(tensor(&data, device), None)?.0);
    let n = 220;
    let (p, integral) = density(&toy.model, view, n, device)?;
    // Seeded, so that the command redraws the same picture.
    let keys = noise::indices(0, data.len().min(2000));
    let eps = noise::standard(
        toy.model.standard(),
        seed,
        Purpose::Sample,
        &keys,
        0,
        2,
        device,
    );
    let samples = to_points(toy.model.destandardize(&[eps], None)?);
    Ok(Panels {
        set,
        view,
        colours: colours(&data, view),
        gaussian: gaussian_bits_per_dim(&train, &data),
        grid: pulled_back_grid(&toy.model, device)?,
        heat: heat_map(&p, n),
        data,
        latents,
        samples,
        integral,
        bits_per_dim: toy.test_bits_per_dim,
    })
}

/// The latent window: a standard Gaussian's ±3.6.
pub(super) const LATENT_VIEW: ([f64; 2], f64) = ([0.0, 0.0], 3.6);

/// The four panels of each flow, one row per flow: data, latents, deformed grid, density.
fn complex_to_simple(flows: &[(&str, &Panels)], options: &Options) -> Result<std::path::PathBuf> {
    let row = 490;
    let picture = plot::draw(1800, 50 + row * flows.len() as u32, |root| {
        let (title, body) = root.split_vertically(50);
        title.titled(
            &format!(
                "2-D flows on {}: f maps the data to a Gaussian",
                flows[0].1.set
            ),
            (FONT, 24),
        )?;
        let rows = body.split_evenly((flows.len(), 1));
        for ((name, p), area) in flows.iter().zip(&rows) {
            let (label, panels) = area.split_vertically(30);
            label.titled(
                &format!("{name}: {:.3} bits/dim on test points", p.bits_per_dim),
                (FONT, 19),
            )?;
            let areas = panels.split_evenly((1, 4));
            let data_axes = Frame::Axes("x₁", "x₂");
            scatter_panel(
                &areas[0],
                "data x (test points)",
                &p.data,
                &p.colours,
                p.view,
                data_axes,
            )?;
            scatter_panel(
                &areas[1],
                "latents z = f(x)",
                &p.latents,
                &p.colours,
                LATENT_VIEW,
                Frame::Axes("z₁", "z₂"),
            )?;
            grid_panel(
                &areas[2],
                "latent grid pulled back: f⁻¹(grid)",
                &p.data,
                &p.grid,
                p.view,
                data_axes,
            )?;
            heat_panel(
                &areas[3],
                &format!("learned density p(x), ∫ = {:.3}", p.integral),
                &p.heat,
            )?;
        }
        Ok(())
    })?;
    let path = super::file(options, "complex-to-simple.png");
    save_png(picture, &path)?;
    Ok(path)
}

/// The two flows of the gallery: name, number prefix.
const FLOWS: [(&str, &str); 2] = [("affine", ""), ("spline", "spline_")];

pub(super) fn make(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    let mut made = Made::default();
    let mut columns = Vec::new();
    for set in TOY_SETS {
        let affine = panels(set, &trained_toy(set, options, progress)?, options)?;
        let spline = panels(set, &trained_spline(set, options, progress)?, options)?;
        made.number(format!("gaussian_bits_per_dim_{set}"), affine.gaussian);
        for ((_, prefix), p) in FLOWS.iter().zip([&affine, &spline]) {
            made.number(format!("{prefix}test_bits_per_dim_{set}"), p.bits_per_dim);
            made.number(format!("{prefix}integral_{set}"), p.integral);
        }
        if set == SNAKE {
            let flows = [("affine couplings", &affine), ("spline couplings", &spline)];
            made.files.push(complex_to_simple(&flows, options)?);
        }
        columns.push([affine, spline]);
    }
    let cell = 250;
    let mut rows = vec!["test data".to_string()];
    for (name, _) in FLOWS {
        for what in ["latents f(x)", "f⁻¹(grid)", "density", "samples"] {
            rows.push(format!("{name}: {what}"));
        }
    }
    let picture = plot::draw(
        170 + cell * columns.len() as u32,
        60 + rows.len() as u32 * cell,
        |root| {
            let (title, body) = root.split_vertically(60);
            title.titled(
                "2-D flows on every generated set (captions: test bits/dim of the affine and spline flows vs the best Gaussian)",
                (FONT, 22),
            )?;
            let (labels, grid) = body.split_horizontally(170);
            for (r, label) in rows.iter().enumerate() {
                let y = (r as u32 * cell + cell / 2) as i32;
                labels.draw(&Text::new(label.as_str(), (10, y), (FONT, 16)))?;
            }
            let areas = grid.split_evenly((rows.len(), columns.len()));
            let at = |r: usize, c: usize| &areas[r * columns.len() + c];
            for (c, [a, b]) in columns.iter().enumerate() {
                let caption = format!(
                    "{}: {:.2} / {:.2} vs {:.2}",
                    a.set, a.bits_per_dim, b.bits_per_dim, a.gaussian
                );
                scatter_panel(at(0, c), &caption, &a.data, &a.colours, a.view, Frame::Bare)?;
                for (f, p) in [a, b].into_iter().enumerate() {
                    let r = 1 + 4 * f;
                    scatter_panel(
                        at(r, c),
                        "",
                        &p.latents,
                        &p.colours,
                        LATENT_VIEW,
                        Frame::Bare,
                    )?;
                    grid_panel(at(r + 1, c), "", &p.data, &p.grid, p.view, Frame::Bare)?;
                    heat_panel(at(r + 2, c), "", &p.heat)?;
                    let orange = vec![plot::PALETTE[1]; p.samples.len()];
                    scatter_panel(at(r + 3, c), "", &p.samples, &orange, p.view, Frame::Bare)?;
                }
            }
            Ok(())
        },
    )?;
    let path = super::file(options, "gallery.png");
    save_png(picture, &path)?;
    made.files.push(path);
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    #[test]
    fn the_gaussian_baseline_matches_a_hand_computation() {
        // Train on the four corners of a square of side 2: mean 0, covariance I.
        let train = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        // At the origin: −log N(0; 0, I) = log 2π, over 2 dimensions in bits.
        let bpd = gaussian_bits_per_dim(&train, &[[0.0, 0.0]]);
        let expected = (2.0 * std::f64::consts::PI).ln() / (2.0 * std::f64::consts::LN_2);
        assert!((bpd - expected).abs() < 1e-12, "{bpd} vs {expected}");
    }

    #[test]
    fn every_flow_beats_a_gaussian_and_its_density_integrates_to_one() {
        let (_dir, options) = options("gallery");
        let made = make(&options, &mut |_| {}).unwrap();
        for set in TOY_SETS {
            let gauss = made.get(&format!("gaussian_bits_per_dim_{set}"));
            for (name, prefix) in FLOWS {
                let integral = made.get(&format!("{prefix}integral_{set}"));
                assert!(
                    (0.95..1.02).contains(&integral),
                    "{name} {set}: ∫ = {integral}"
                );
                let flow = made.get(&format!("{prefix}test_bits_per_dim_{set}"));
                assert!(
                    flow < gauss - 0.05,
                    "{name} {set}: flow {flow} vs Gaussian {gauss}"
                );
            }
        }
        assert_eq!(made.files.len(), 2);
        assert!(made.files.iter().all(|f| f.exists()));
    }
}
