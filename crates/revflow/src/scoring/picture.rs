//! The picture of a comparison: both sets' histograms of bits/dim with the numbers that tell
//! them apart, and (for images) strips of each set's most and least likely inputs.

use image::RgbImage;
use plotters::prelude::*;

use crate::error::Result;
use crate::pictures::grid;
use crate::pictures::plot::{self, Drawn, FONT, PALETTE};

use super::{Comparison, Scores};

/// A named set of scores.
pub struct Named<'a> {
    pub name: &'a str,
    pub scores: &'a Scores,
}

/// Width of the picture in pixels.
const WIDTH: u32 = 1000;
/// Height of the histogram.
const CHART: u32 = 460;
/// Height of a strip's caption.
const CAPTION: u32 = 26;

/// Pixels per image pixel in the strips: about 56 pixels an image, 16 to a row.
fn scale([_, h, w]: [usize; 3]) -> usize {
    ((WIDTH as usize - 40) / 16 / h.max(w).max(1)).clamp(1, 7)
}

/// Draws the comparison of `other` with `first`; `shape` (`[C, H, W]`) adds the image strips.
pub fn comparison(
    first: &Named,
    other: &Named,
    cmp: &Comparison,
    shape: Option<[usize; 3]>,
) -> Result<RgbImage> {
    let strips: Vec<(String, RgbImage)> = match shape {
        Some(shape) => {
            let strip = |kept: &[super::Kept]| {
                let images: Vec<Vec<u8>> = kept
                    .iter()
                    .map(|k| {
                        k.values
                            .iter()
                            .map(|&v| v.clamp(0.0, 255.0) as u8)
                            .collect()
                    })
                    .collect();
                grid(&images, shape, 16, scale(shape))
            };
            let range = |kept: &[super::Kept]| match (kept.first(), kept.last()) {
                (Some(a), Some(b)) => {
                    format!("{:.3} … {:.3} bits/dim", a.bits_per_dim, b.bits_per_dim)
                }
                _ => "none".to_string(),
            };
            let mut strips = Vec::new();
            for set in [first, other] {
                let s = set.scores;
                for (which, kept) in [("most", &s.most_likely), ("least", &s.least_likely)] {
                    let caption = format!(
                        "{}: the {} {which} likely ({})",
                        set.name,
                        kept.len(),
                        range(kept)
                    );
                    strips.push((caption, strip(kept)));
                }
            }
            strips
        }
        None => Vec::new(),
    };
    let height = CHART
        + strips
            .iter()
            .map(|(_, s)| CAPTION + s.height() + 8)
            .sum::<u32>()
        + 8;
    plot::draw(WIDTH, height, |root| {
        let (chart, below) = root.split_vertically(CHART);
        histogram(&chart, first, other, cmp)?;
        let mut y = 4;
        for (caption, strip) in &strips {
            below.draw(&Text::new(caption.clone(), (20, y as i32 + 4), (FONT, 16)))?;
            plot::paste(&below, strip, (20, (y + CAPTION) as i32))?;
            y += CAPTION + strip.height() + 8;
        }
        Ok(())
    })
}

/// The x axis of the histogram: bits/dim as they are, or their logarithm when the sets lie
/// orders of magnitude apart (out-of-distribution images often score 100 times worse).
#[derive(Clone, Copy)]
struct Axis {
    log: bool,
}

impl Axis {
    fn new(lo: f64, hi: f64) -> Self {
        Axis {
            log: lo > 0.0 && hi / lo > 20.0,
        }
    }

    fn to(self, v: f64) -> f64 {
        if self.log {
            v.log10()
        } else {
            v
        }
    }

    fn from(self, t: f64) -> f64 {
        if self.log {
            10f64.powf(t)
        } else {
            t
        }
    }
}

fn histogram(area: &plot::Area, first: &Named, other: &Named, cmp: &Comparison) -> Drawn {
    let all = first
        .scores
        .bits_per_dim
        .iter()
        .chain(&other.scores.bits_per_dim)
        .copied();
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let axis = Axis::new(lo, hi);
    let (lo, hi) = (axis.to(lo), axis.to(hi));
    let pad = ((hi - lo) * 0.04).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    let bins = 80;
    // The share of each set in each bin (of equal width on the axis drawn).
    let shares = |scores: &Scores| -> Vec<(f64, f64, f64)> {
        let t: Vec<f64> = scores.bits_per_dim.iter().map(|&v| axis.to(v)).collect();
        plot::histogram(&t, lo, hi, bins)
            .into_iter()
            .map(|(l, r, density)| (l, r, density * (r - l)))
            .collect()
    };
    let (first_bins, other_bins) = (shares(first.scores), shares(other.scores));
    let top = first_bins
        .iter()
        .chain(&other_bins)
        .map(|b| b.2)
        .fold(0.0, f64::max)
        * 1.3;
    let q95 = first.scores.summary().q95;
    let t = &cmp.typicality;
    let caption = format!(
        "AUROC {:.3}; {:.1} % of {} above the 95th percentile of {}; typicality (M = {}): {:.1} % vs {:.1} % of batches flagged",
        cmp.auroc,
        100.0 * cmp.above_q95,
        other.name,
        first.name,
        t.batch,
        100.0 * t.other_flagged,
        100.0 * t.reference_flagged,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 17))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0.0..top.max(1e-9))?;
    let x_desc = match axis.log {
        true => "bits/dim, logarithmic axis (lower: more likely under the model)",
        false => "bits/dim (lower: more likely under the model)",
    };
    let x_label = |t: &f64| {
        let v = axis.from(*t);
        match v.abs() {
            a if a >= 100.0 => format!("{v:.0}"),
            a if a >= 10.0 => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("share of the set per bin")
        .x_label_formatter(&x_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (set, bins, colour) in [
        (first, &first_bins, PALETTE[0]),
        (other, &other_bins, PALETTE[1]),
    ] {
        let s = set.scores.summary();
        chart
            .draw_series(
                bins.iter().map(|&(l, r, d)| {
                    Rectangle::new([(l, 0.0), (r, d)], colour.mix(0.45).filled())
                }),
            )?
            .label(format!(
                "{}: {} inputs, mean {:.3}, median {:.3}",
                set.name, s.count, s.mean, s.median
            ))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], colour.mix(0.45).filled())
            });
    }
    let vertical = |v: f64| vec![(axis.to(v), 0.0), (axis.to(v), top)];
    chart
        .draw_series(std::iter::once(PathElement::new(
            vertical(q95),
            BLACK.mix(0.6).stroke_width(2),
        )))?
        .label(format!("95th percentile of {}: {q95:.3}", first.name))
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6).stroke_width(2))
        });
    chart
        .draw_series(std::iter::once(PathElement::new(
            vertical(t.train_mean),
            PALETTE[2].stroke_width(2),
        )))?
        .label(format!(
            "training set's mean H = {:.3} (ε = {:.3})",
            t.train_mean, t.epsilon
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PALETTE[2].stroke_width(2)));
    plot::legend(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::super::{Kept, Typicality};
    use super::*;

    fn scores(centre: f64, value: f32) -> Scores {
        let kept = |b: f64| Kept {
            id: "x".into(),
            bits_per_dim: b,
            values: vec![value; 16],
        };
        Scores {
            bits_per_dim: (0..200).map(|i| centre + (i % 20) as f64 * 0.05).collect(),
            nats: 0.0,
            most_likely: vec![kept(centre); 16],
            least_likely: vec![kept(centre + 1.0); 3],
            seconds: 1.0,
        }
    }

    #[test]
    fn the_picture_has_both_histograms_and_a_strip_per_set_and_end() {
        let (a, b) = (scores(2.0, 0.0), scores(3.0, 255.0));
        let cmp = Comparison {
            auroc: 0.99,
            above_q95: 0.9,
            typicality: Typicality {
                batch: 16,
                train_mean: 2.1,
                epsilon: 0.1,
                draws: 10,
                reference_flagged: 0.01,
                other_flagged: 1.0,
            },
        };
        let (first, other) = (
            Named {
                name: "test",
                scores: &a,
            },
            Named {
                name: "other",
                scores: &b,
            },
        );
        let picture = comparison(&first, &other, &cmp, Some([1, 4, 4])).unwrap();
        let cell = 4 * scale([1, 4, 4]) as u32 + 1;
        assert_eq!(picture.height(), CHART + 4 * (CAPTION + cell + 1 + 8) + 8);
        // Both colours of the histogram are there.
        let near = |p: &image::Rgb<u8>, c: RGBColor| {
            let blend = |v: u8| (v as f64 * 0.45 + 255.0 * 0.55) as i32;
            (p[0] as i32 - blend(c.0)).abs() < 4
                && (p[1] as i32 - blend(c.1)).abs() < 4
                && (p[2] as i32 - blend(c.2)).abs() < 4
        };
        for colour in [PALETTE[0], PALETTE[1]] {
            let count = picture.pixels().filter(|p| near(p, colour)).count();
            assert!(count > 500, "{count} pixels of {colour:?}");
        }
        // The least likely strip of `other` holds its white images.
        let white = picture.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert!(white > 0);
        // Sets orders of magnitude apart: a logarithmic axis, both still drawn.
        let far = scores(200.0, 255.0);
        let other = Named {
            name: "far",
            scores: &far,
        };
        let picture = comparison(&first, &other, &cmp, None).unwrap();
        for colour in [PALETTE[0], PALETTE[1]] {
            let count = picture.pixels().filter(|p| near(p, colour)).count();
            assert!(count > 500, "{count} pixels of {colour:?}");
        }
        assert!(
            Axis::new(2.0, 300.0).log && !Axis::new(2.0, 30.0).log && !Axis::new(-1.0, 300.0).log
        );
        // Vectors: the histogram alone.
        let picture = comparison(&first, &other, &cmp, None).unwrap();
        assert_eq!(picture.height(), CHART + 8);
    }
}
