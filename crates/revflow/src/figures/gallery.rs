//! Figure 3: from a complex distribution to a simple one. A 2-D flow trained on two spirals
//! maps them onto a Gaussian: the data, its latents, the latent grid pulled back into data
//! space, and the learned density; then the same flow on every generated set (a gallery).

use burn::tensor::Device;
use image::{Rgb, RgbImage};
use plotters::prelude::*;

use super::{points, tensor, to_points, trained_toy, Made, Options, Toy};
use crate::data::TOY_SETS;
use crate::distributions::BaseDistribution;
use crate::error::Result;
use crate::flow::Flow;
use crate::models::FlatFlow;
use crate::pictures::plot::{self, Area, Drawn, FONT};
use crate::pictures::save_png;

/// The set of the large figure: a snake-like density no Gaussian comes near.
pub(super) const SNAKE: &str = "2spirals";

/// A square window `(centre, half width)` around the points, with a margin.
fn window(points: &[[f64; 2]]) -> ([f64; 2], f64) {
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
fn density(model: &FlatFlow, (c, half): ([f64; 2], f64), n: usize) -> Result<(Vec<f64>, f64)> {
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
    let device = Device::flex();
    let mut p = Vec::with_capacity(n * n);
    for chunk in grid.chunks(16_384) {
        let (log_p, _) = model.log_prob(tensor(chunk, &device), None, false)?;
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
fn heat_map(p: &[f64], n: usize) -> RgbImage {
    let top = p.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    RgbImage::from_fn(n as u32, n as u32, |x, y| {
        let c = plot::viridis(p[y as usize * n + x as usize] / top);
        Rgb([c.0, c.1, c.2])
    })
}

/// Colour of a data point: its distance from the window's centre, so that the arms of a
/// spiral keep their colours wherever the flow moves them.
fn colours(points: &[[f64; 2]], (c, half): ([f64; 2], f64)) -> Vec<RGBColor> {
    points
        .iter()
        .map(|p| plot::viridis(((p[0] - c[0]).hypot(p[1] - c[1]) / half).min(1.0) * 0.9))
        .collect()
}

fn scatter_panel(
    area: &Area,
    title: &str,
    points: &[[f64; 2]],
    colours: &[RGBColor],
    (c, half): ([f64; 2], f64),
    axes: (&str, &str),
) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(c[0] - half..c[0] + half, c[1] - half..c[1] + half)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE)
        .draw()?;
    chart.draw_series(
        points
            .iter()
            .zip(colours)
            .map(|(p, col)| Circle::new((p[0], p[1]), 2, col.filled())),
    )?;
    Ok(())
}

/// The four-panel figure of one flow: data, latents, deformed grid, density.
fn complex_to_simple(toy: &Toy, made: &mut Made, options: &Options) -> Result<()> {
    let device = Device::flex();
    let data = points(&toy.data.test);
    let view = window(&points(&toy.data.train));
    let colour = colours(&data, view);
    let z = to_points(toy.model.flow.forward(tensor(&data, &device), None)?.0);
    // Lines of constant z₁ and z₂ in latent space, pulled back into data space by f⁻¹.
    let ticks: Vec<f64> = (-6..=6).map(|k| k as f64 * 0.5).collect();
    let along: Vec<f64> = (0..=300).map(|i| -3.2 + 6.4 * i as f64 / 300.0).collect();
    let mut grid_lines = Vec::new();
    for &t in &ticks {
        for vertical in [true, false] {
            let line: Vec<[f64; 2]> = along
                .iter()
                .map(|&s| if vertical { [t, s] } else { [s, t] })
                .collect();
            let back = toy.model.flow.inverse(tensor(&line, &device), None)?;
            grid_lines.push((vertical, to_points(back)));
        }
    }
    let n = 220;
    let (p, integral) = density(&toy.model, view, n)?;
    made.number(format!("integral_{SNAKE}_large"), integral);
    let heat = heat_map(&p, n);

    let picture = plot::draw(1800, 540, |root| {
        let (title, body) = root.split_vertically(50);
        title.titled(
            &format!(
                "A 2-D flow on {SNAKE}: f maps the data to a Gaussian ({:.3} bits/dim on test points)",
                toy.test_bits_per_dim
            ),
            (FONT, 24),
        )?;
        let panels = body.split_evenly((1, 4));
        scatter_panel(
            &panels[0],
            "data x (test points)",
            &data,
            &colour,
            view,
            ("x₁", "x₂"),
        )?;
        let latent_view = ([0.0, 0.0], 3.6);
        scatter_panel(
            &panels[1],
            "latents z = f(x)",
            &z,
            &colour,
            latent_view,
            ("z₁", "z₂"),
        )?;
        let mut chart = ChartBuilder::on(&panels[2])
            .caption("latent grid pulled back: f⁻¹(grid)", (FONT, 17))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(40)
            .build_cartesian_2d(
                view.0[0] - view.1..view.0[0] + view.1,
                view.0[1] - view.1..view.0[1] + view.1,
            )?;
        chart
            .configure_mesh()
            .x_desc("x₁")
            .y_desc("x₂")
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(
            data.iter()
                .map(|p| Circle::new((p[0], p[1]), 1, RGBColor(200, 200, 200).filled())),
        )?;
        for (vertical, line) in &grid_lines {
            let colour = if *vertical {
                plot::PALETTE[0]
            } else {
                plot::PALETTE[1]
            };
            chart.draw_series(LineSeries::new(
                line.iter().map(|p| (p[0], p[1])),
                colour.mix(0.8).stroke_width(1),
            ))?;
        }
        let area = &panels[3];
        area.titled(
            &format!("learned density p(x), ∫ = {integral:.3}"),
            (FONT, 17),
        )?;
        let (w, h) = area.dim_in_pixel();
        let at = ((w as i32 - n as i32) / 2, (h as i32 - n as i32) / 2);
        let big = image::imageops::resize(
            &heat,
            (w.min(h) - 60).max(n as u32),
            (w.min(h) - 60).max(n as u32),
            image::imageops::FilterType::Nearest,
        );
        let at = (
            at.0 - (big.width() as i32 - n as i32) / 2,
            at.1 - (big.height() as i32 - n as i32) / 2 + 10,
        );
        plot::paste(area, &big, at)?;
        Ok(())
    })?;
    let path = super::file(options, "complex-to-simple.png");
    save_png(picture, &path)?;
    made.files.push(path);
    Ok(())
}

pub(super) fn make(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    let mut made = Made::default();
    let mut columns = Vec::new();
    let n = 200;
    for set in TOY_SETS {
        let toy = trained_toy(set, options, progress)?;
        if set == SNAKE {
            complex_to_simple(&toy, &mut made, options)?;
        }
        let train = points(&toy.data.train);
        let test = points(&toy.data.test);
        let view = window(&train);
        let (p, integral) = density(&toy.model, view, n)?;
        let gaussian = gaussian_bits_per_dim(&train, &test);
        made.number(format!("test_bits_per_dim_{set}"), toy.test_bits_per_dim);
        made.number(format!("gaussian_bits_per_dim_{set}"), gaussian);
        made.number(format!("integral_{set}"), integral);
        let samples =
            to_points(
                toy.model
                    .sample(test.len().min(2000), 1.0, None, &Device::flex())?,
            );
        let _ = toy
            .model
            .prior
            .log_prob(tensor(&samples[..1], &Device::flex()), None)?;
        columns.push((
            set,
            test,
            samples,
            heat_map(&p, n),
            view,
            toy.test_bits_per_dim,
            gaussian,
        ));
    }
    let cell = 250;
    let picture = plot::draw(110 + cell * columns.len() as u32, 60 + 3 * cell, |root| {
        let (title, body) = root.split_vertically(60);
        title.titled(
            "2-D flows on every generated set: data, learned density, samples (bits/dim: flow vs best Gaussian)",
            (FONT, 22),
        )?;
        let (labels, grid) = body.split_horizontally(110);
        for (r, label) in ["test data", "density", "samples"].iter().enumerate() {
            labels.draw(&Text::new(
                *label,
                (10, (r as u32 * cell + cell / 2) as i32),
                (FONT, 18),
            ))?;
        }
        let panels = grid.split_evenly((3, columns.len()));
        for (c, (set, test, samples, heat, view, bpd, gaussian)) in columns.iter().enumerate() {
            let colour = vec![plot::PALETTE[0]; test.len()];
            let caption = format!("{set}: {bpd:.2} vs {gaussian:.2}");
            scatter_small(&panels[c], &caption, test, &colour, *view)?;
            let area = &panels[columns.len() + c];
            let (w, h) = area.dim_in_pixel();
            plot::paste(
                area,
                heat,
                ((w as i32 - n as i32) / 2, (h as i32 - n as i32) / 2),
            )?;
            let colour = vec![plot::PALETTE[1]; samples.len()];
            scatter_small(&panels[2 * columns.len() + c], "", samples, &colour, *view)?;
        }
        Ok(())
    })?;
    let path = super::file(options, "gallery.png");
    save_png(picture, &path)?;
    made.files.push(path);
    Ok(made)
}

fn scatter_small(
    area: &Area,
    title: &str,
    points: &[[f64; 2]],
    colours: &[RGBColor],
    (c, half): ([f64; 2], f64),
) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 15))
        .margin(12)
        .build_cartesian_2d(c[0] - half..c[0] + half, c[1] - half..c[1] + half)?;
    chart.configure_mesh().disable_mesh().draw()?;
    chart.draw_series(
        points
            .iter()
            .zip(colours)
            .map(|(p, col)| Circle::new((p[0], p[1]), 1, col.filled())),
    )?;
    Ok(())
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
            let integral = made.get(&format!("integral_{set}"));
            assert!((0.95..1.02).contains(&integral), "{set}: ∫ = {integral}");
            let (flow, gauss) = (
                made.get(&format!("test_bits_per_dim_{set}")),
                made.get(&format!("gaussian_bits_per_dim_{set}")),
            );
            assert!(
                flow < gauss - 0.05,
                "{set}: flow {flow} vs Gaussian {gauss}"
            );
        }
        assert_eq!(made.files.len(), 2);
        assert!(made.files.iter().all(|f| f.exists()));
    }
}
