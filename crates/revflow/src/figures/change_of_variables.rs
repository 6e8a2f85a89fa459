//! Figure 1: the change of variables in one dimension. For an invertible h = f(x),
//!
//! ```text
//! p_H(h) = p_X(f⁻¹(h)) · |d f⁻¹(h) / dh|
//! ```
//!
//! so where f squeezes space (|f′| < 1) the density rises, and it still integrates to 1.
//! Drawn for f(x) = x/10 and the non-linear f(x) = tanh(x/2), each checked against a
//! histogram of transformed samples.

use plotters::prelude::*;

use super::{Made, Options};
use crate::error::Result;
use crate::pictures::plot::{self, Drawn, FONT, PALETTE};
use crate::pictures::save_png;
use crate::rng::Rng;

/// p_X: a two-component Gaussian mixture, lopsided so that its image is easy to follow.
fn p_x(x: f64) -> f64 {
    let normal = |x: f64, mu: f64, sigma: f64| {
        (-0.5 * ((x - mu) / sigma).powi(2)).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt())
    };
    0.6 * normal(x, -1.0, 0.6) + 0.4 * normal(x, 1.5, 0.8)
}

fn sample_x(rng: &mut Rng) -> f64 {
    if rng.uniform() < 0.6 {
        -1.0 + 0.6 * rng.normal()
    } else {
        1.5 + 0.8 * rng.normal()
    }
}

/// One panel: a map h = f(x) with its inverse and the inverse's derivative.
struct Map {
    title: &'static str,
    axis: &'static str,
    range: (f64, f64),
    forward: fn(f64) -> f64,
    inverse: fn(f64) -> f64,
    inverse_slope: fn(f64) -> f64,
}

const MAPS: [Map; 3] = [
    Map {
        title: "p_X(x)",
        axis: "x",
        range: (-4.0, 5.0),
        forward: |x| x,
        inverse: |h| h,
        inverse_slope: |_| 1.0,
    },
    Map {
        title: "h = x/10:  p_H(h) = 10·p_X(10h)",
        axis: "h",
        range: (-0.4, 0.5),
        forward: |x| x / 10.0,
        inverse: |h| 10.0 * h,
        inverse_slope: |_| 10.0,
    },
    Map {
        title: "h = tanh(x/2):  p_H(h) = p_X(2 artanh h)·2/(1−h²)",
        axis: "h",
        range: (-1.0, 1.0),
        forward: |x| (x / 2.0).tanh(),
        inverse: |h| 2.0 * h.atanh(),
        inverse_slope: |h| 2.0 / (1.0 - h * h),
    },
];

impl Map {
    fn density(&self, h: f64) -> f64 {
        let d = p_x((self.inverse)(h)) * (self.inverse_slope)(h);
        if d.is_finite() {
            d
        } else {
            0.0
        }
    }

    /// ∫ p_H over a range that holds all but a negligible part of the mass (midpoint rule).
    fn integral(&self) -> f64 {
        let (lo, hi) = ((self.forward)(-12.0), (self.forward)(12.0));
        let cells = 200_000;
        let dh = (hi - lo) / cells as f64;
        (0..cells)
            .map(|i| self.density(lo + (i as f64 + 0.5) * dh) * dh)
            .sum()
    }
}

/// Total variation distance between a histogram of samples and the density it should follow,
/// over the bins: ½ Σ |count/n − ∫_bin p|.
fn total_variation(map: &Map, samples: &[f64], bins: usize) -> f64 {
    let (lo, hi) = map.range;
    let width = (hi - lo) / bins as f64;
    plot::histogram(samples, lo, hi, bins)
        .iter()
        .map(|&(left, _, density)| {
            let expected: f64 = (0..20)
                .map(|k| map.density(left + (k as f64 + 0.5) * width / 20.0) * width / 20.0)
                .sum();
            (density * width - expected).abs()
        })
        .sum::<f64>()
        / 2.0
}

pub(super) fn make(options: &Options) -> Result<Made> {
    let mut rng = Rng::new(options.seed);
    let xs: Vec<f64> = (0..100_000).map(|_| sample_x(&mut rng)).collect();
    let mut made = Made::default();
    let mut panels = Vec::new();
    for (i, map) in MAPS.iter().enumerate() {
        let hs: Vec<f64> = xs.iter().map(|&x| (map.forward)(x)).collect();
        let integral = map.integral();
        let tv = total_variation(map, &hs, 60);
        let name = ["x", "x_over_10", "tanh"][i];
        made.number(format!("integral_{name}"), integral);
        made.number(format!("histogram_tv_{name}"), tv);
        panels.push((map, hs, integral));
    }
    let peak = |m: &Map| {
        let (lo, hi) = m.range;
        (0..=2000)
            .map(|i| m.density(lo + (hi - lo) * i as f64 / 2000.0))
            .fold(0.0, f64::max)
    };
    made.number("peak_ratio_x_over_10", peak(&MAPS[1]) / peak(&MAPS[0]));

    let picture = plot::draw(1650, 520, |root| {
        let (top, body) = root.split_vertically(50);
        top.titled(
            "Change of variables: squeezing space raises the density, the total stays 1",
            (FONT, 26),
        )?;
        for ((map, hs, integral), area) in panels.iter().zip(body.split_evenly((1, 3))) {
            draw_panel(&area, map, hs, *integral)?;
        }
        Ok(())
    })?;
    let path = options.out.join("change-of-variables.png");
    save_png(picture, &path)?;
    made.files.push(path);
    Ok(made)
}

fn draw_panel(area: &plot::Area, map: &Map, hs: &[f64], integral: f64) -> Drawn {
    let (lo, hi) = map.range;
    let curve: Vec<(f64, f64)> = (0..=600)
        .map(|i| lo + (hi - lo) * i as f64 / 600.0)
        .map(|h| (h, map.density(h)))
        .collect();
    let bins = plot::histogram(hs, lo, hi, 60);
    let top = curve.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(map.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(lo..hi, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(map.axis)
        .y_desc("density")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    chart
        .draw_series(
            bins.iter().map(|&(l, r, d)| {
                Rectangle::new([(l, 0.0), (r, d)], PALETTE[0].mix(0.25).filled())
            }),
        )?
        .label("histogram of 100 000 samples pushed through f")
        .legend(|(x, y)| {
            Rectangle::new([(x, y - 5), (x + 18, y + 5)], PALETTE[0].mix(0.25).filled())
        });
    chart
        .draw_series(LineSeries::new(curve, PALETTE[3].stroke_width(3)))?
        .label(format!("formula, ∫ = {integral:.4}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PALETTE[3].stroke_width(3)));
    plot::legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    #[test]
    fn both_densities_integrate_to_one_and_match_their_samples() {
        let (dir, options) = options("cov");
        let made = make(&options).unwrap();
        for name in ["x", "x_over_10", "tanh"] {
            let integral = made.get(&format!("integral_{name}"));
            assert!((integral - 1.0).abs() < 1e-4, "{name}: ∫ = {integral}");
            // 100 000 samples over 60 bins: sampling noise alone gives about 0.01.
            let tv = made.get(&format!("histogram_tv_{name}"));
            assert!(tv < 0.02, "{name}: TV {tv}");
        }
        // Squeezing by 10 raises the peak by exactly 10.
        let ratio = made.get("peak_ratio_x_over_10");
        assert!((ratio - 10.0).abs() < 1e-6, "{ratio}");
        assert!(made.files[0].exists());
        drop(dir);
    }

    #[test]
    fn a_wrong_jacobian_factor_is_caught_by_the_histogram() {
        // The same check with |df⁻¹/dh| left out must fail: this is what makes it a test.
        let wrong = Map {
            inverse_slope: |_| 1.0,
            ..MAPS[2]
        };
        let mut rng = Rng::new(1);
        let hs: Vec<f64> = (0..100_000)
            .map(|_| (wrong.forward)(sample_x(&mut rng)))
            .collect();
        assert!(total_variation(&wrong, &hs, 60) > 0.1);
        assert!((wrong.integral() - 1.0).abs() > 0.1);
    }
}
