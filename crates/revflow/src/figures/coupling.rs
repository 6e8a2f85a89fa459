//! Figure 4: the layers of a trained 2-D flow, animated. Points move layer by layer from the
//! data to the Gaussian and back through the inverse: ActNorm scales and shifts each
//! coordinate, the invertible 1×1 convolution (a 2×2 matrix here) mixes them, and a coupling
//! keeps one coordinate (the key, which drives the network) and shifts and scales the other
//! (the message):
//!
//! ```text
//! y_key = x_key,   y_msg = σ(r(x_key) + 2) · x_msg + t(x_key)
//! x_key = y_key,   x_msg = (y_msg − t(y_key)) / σ(r(y_key) + 2)
//! ```

use std::io::BufWriter;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage};
use plotters::prelude::*;

use super::gallery::SNAKE;
use super::{
    points, tensor, to_points, trained_flow, trained_spline, trained_toy, Made, Options, Toy,
};
use crate::error::{FlowError, Result};
use crate::files::write_atomic;
use crate::flow::Flow;
use crate::layers::Layer;
use crate::models::{Permutation, VectorFlowConfig};
use crate::nets::Mlp;
use crate::pictures::plot::{self, FONT};
use crate::pictures::save_png;
use crate::transforms::Transform;

/// What a layer does, in one line, given the points before and after it.
pub(super) fn describe(layer: &Layer<Mlp>, before: &[[f64; 2]], after: &[[f64; 2]]) -> String {
    match layer {
        Layer::ActNorm(_) => "ActNorm: each coordinate scaled and shifted".into(),
        Layer::InvConv(_) | Layer::InvConvLu(_) => {
            "invertible 1×1 convolution: a 2×2 matrix W mixes x₁ and x₂".into()
        }
        Layer::Permute(_) => "permutation: x₁ and x₂ swap places".into(),
        Layer::Coupling(c) => {
            let (key, msg) = match key_coordinate(before, after) {
                Some(0) => ("₁", "₂"),
                Some(_) => ("₂", "₁"),
                None => ("?", "?"),
            };
            match c.transform {
                Transform::Additive => {
                    format!("additive coupling: x{key} kept (key), x{msg} += t(x{key})")
                }
                Transform::Spline(_) => format!(
                    "spline coupling: x{key} kept (key), x{msg} ← monotone spline of x{msg} \
                     shaped by x{key}"
                ),
                _ => format!(
                    "affine coupling: x{key} kept (key), x{msg} ← s(x{key})·x{msg} + t(x{key})"
                ),
            }
        }
        Layer::Scale(_) => "diagonal scaling".into(),
        Layer::BatchNorm(_) => "batch normalisation".into(),
        Layer::Autoregressive(a) => format!(
            "{:?} layer: each coordinate moved by a {} transform of the ones before it",
            a.direction,
            a.transform.name()
        ),
    }
}

/// The coordinate a layer left exactly unchanged, if one.
pub(super) fn key_coordinate(before: &[[f64; 2]], after: &[[f64; 2]]) -> Option<usize> {
    (0..2).find(|&d| before.iter().zip(after).all(|(a, b)| a[d] == b[d]))
}

/// Largest change of a coupling's key coordinate: exactly 0 for a correct coupling.
fn key_change(before: &[[f64; 2]], after: &[[f64; 2]]) -> f64 {
    (0..2)
        .map(|d| {
            before
                .iter()
                .zip(after)
                .map(|(a, b)| (a[d] - b[d]).abs())
                .fold(0.0, f64::max)
        })
        .fold(f64::MAX, f64::min)
}

fn ease(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

fn lerp(a: &[[f64; 2]], b: &[[f64; 2]], t: f64) -> Vec<[f64; 2]> {
    a.iter()
        .zip(b)
        .map(|(p, q)| [p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t])
        .collect()
}

struct Scene {
    half: f64,
    colours: Vec<RGBColor>,
}

impl Scene {
    fn frame(&self, points: &[[f64; 2]], heading: &str, what: &str) -> Result<RgbImage> {
        let h = self.half;
        plot::draw(440, 480, |root| {
            let (top, body) = root.split_vertically(62);
            top.draw(&Text::new(
                heading,
                (14, 8),
                (FONT, 17).into_font().style(FontStyle::Bold),
            ))?;
            top.draw(&Text::new(what, (14, 34), (FONT, 13)))?;
            let mut chart = ChartBuilder::on(&body)
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(36)
                .build_cartesian_2d(-h..h, -h..h)?;
            chart
                .configure_mesh()
                .label_style((FONT, 12))
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(
                points
                    .iter()
                    .zip(&self.colours)
                    .map(|(p, c)| Circle::new((p[0], p[1]), 2, c.filled())),
            )?;
            Ok(())
        })
    }
}

/// Three flows, each with its own animation: Glow's, NICE's and a neural spline flow.
fn variants() -> [(&'static str, &'static str, VectorFlowConfig); 3] {
    [
        (
            "coupling",
            "Glow: affine couplings, 1×1 convolution",
            VectorFlowConfig::default(),
        ),
        (
            "coupling-nice",
            "NICE: additive couplings, swap",
            VectorFlowConfig {
                affine: false,
                permutation: Permutation::Reverse,
                ..VectorFlowConfig::default()
            },
        ),
        (
            "coupling-spline",
            "neural spline flow: spline couplings, swap",
            VectorFlowConfig::neural_spline(),
        ),
    ]
}

pub(super) fn make(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    let mut made = Made::default();
    for (stem, title, flow) in variants() {
        let name = format!("{SNAKE}-{stem}");
        // The first and last are the gallery's flows on this set, trained once for both.
        let toy = match stem {
            "coupling" => trained_toy(SNAKE, options, progress)?,
            "coupling-spline" => trained_spline(SNAKE, options, progress)?,
            _ => trained_flow(SNAKE, &name, flow, options, progress)?,
        };
        progress(&format!("drawing {stem}.gif"));
        animate(&toy, stem, title, options, &mut made)?;
    }
    Ok(made)
}

/// The animation and the static strip of one trained flow; its numbers are prefixed `stem`.
fn animate(toy: &Toy, stem: &str, title: &str, options: &Options, made: &mut Made) -> Result<()> {
    let device = options.device.clone();
    let data: Vec<[f64; 2]> = points(&toy.data.test).into_iter().take(1000).collect();
    let layers = &toy.model.flow.layers;

    // Forward, one layer at a time, then back through the inverses.
    let mut forward = vec![data.clone()];
    for layer in layers {
        let x = tensor(forward.last().unwrap(), &device);
        forward.push(to_points(layer.forward(x, None)?.0));
    }
    let mut backward = vec![forward.last().unwrap().clone()];
    for layer in layers.iter().rev() {
        let y = tensor(backward.last().unwrap(), &device);
        backward.push(to_points(layer.inverse(y, None)?));
    }

    let prefix = stem.replace('-', "_");
    let key = layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l, Layer::Coupling(_)))
        .map(|(i, _)| key_change(&forward[i], &forward[i + 1]))
        .fold(0.0, f64::max);
    made.number(format!("{prefix}_key_max_change"), key);
    let back = backward.last().unwrap();
    let round_trip = data
        .iter()
        .zip(back)
        .flat_map(|(a, b)| [(a[0] - b[0]).abs(), (a[1] - b[1]).abs()])
        .fold(0.0, f64::max);
    made.number(format!("{prefix}_round_trip_max_error"), round_trip);
    let z = forward.last().unwrap();
    let std =
        (z.iter().map(|p| p[0] * p[0] + p[1] * p[1]).sum::<f64>() / (2.0 * z.len() as f64)).sqrt();
    made.number(format!("{prefix}_latent_std"), std);

    // One window for every frame, holding nearly all points of every stage.
    let mut extent: Vec<f64> = forward
        .iter()
        .flatten()
        .flat_map(|p| [p[0].abs(), p[1].abs()])
        .collect();
    extent.sort_by(f64::total_cmp);
    let scene = Scene {
        half: extent[(extent.len() as f64 * 0.995) as usize] * 1.1,
        colours: data
            .iter()
            .map(|p| {
                // Eight bands of colour: as easy to follow, and a GIF a third the size.
                let band = (p[0].hypot(p[1]) / 4.0 * 8.0).floor().min(7.0);
                plot::viridis(band / 7.0 * 0.9)
            })
            .collect(),
    };

    let steps = layers.len();
    let between = 4;
    let mut frames: Vec<(RgbImage, u32)> = Vec::new();
    frames.push((
        scene.frame(
            &data,
            &format!("data x · {title}"),
            "test points, coloured by their distance from the centre",
        )?,
        1200,
    ));
    for (i, layer) in layers.iter().enumerate() {
        let what = describe(layer, &forward[i], &forward[i + 1]);
        let heading = format!("forward f: layer {}/{steps}", i + 1);
        for k in 1..=between {
            let t = ease(k as f64 / between as f64);
            let delay = if k == between { 350 } else { 70 };
            frames.push((
                scene.frame(&lerp(&forward[i], &forward[i + 1], t), &heading, &what)?,
                delay,
            ));
        }
    }
    frames.push((
        scene.frame(z, "latents z = f(x)", "a standard Gaussian, as trained")?,
        1500,
    ));
    for (j, layer) in layers.iter().rev().enumerate() {
        let i = steps - 1 - j;
        let what = format!("undo: {}", describe(layer, &forward[i], &forward[i + 1]));
        let heading = format!("inverse f⁻¹: layer {}/{steps}", i + 1);
        for k in 1..=between / 2 {
            let t = ease(k as f64 / (between / 2) as f64);
            frames.push((
                scene.frame(&lerp(&backward[j], &backward[j + 1], t), &heading, &what)?,
                60,
            ));
        }
    }
    frames.push((
        scene.frame(
            back,
            "x = f⁻¹(z)",
            &format!("back to the data exactly (largest error {round_trip:.1e})"),
        )?,
        1500,
    ));

    // The static version: every third layer (one step of ActNorm, 1×1 conv, coupling).
    let stages: Vec<usize> = (0..=steps).step_by(3).collect();
    let cell = 300;
    let strip = plot::draw(cell * stages.len() as u32, cell + 40, |root| {
        let (heading, body) = root.split_vertically(40);
        heading.titled(
            &format!("{title}: data → latents, one step (ActNorm, mixing, coupling) at a time"),
            (FONT, 20),
        )?;
        for (panel, &s) in body.split_evenly((1, stages.len())).iter().zip(&stages) {
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    if s == 0 {
                        "x".to_string()
                    } else {
                        format!("after step {}", s / 3)
                    },
                    (FONT, 15),
                )
                .margin(6)
                .build_cartesian_2d(-scene.half..scene.half, -scene.half..scene.half)?;
            chart.configure_mesh().disable_mesh().draw()?;
            chart.draw_series(
                forward[s]
                    .iter()
                    .zip(&scene.colours)
                    .map(|(p, c)| Circle::new((p[0], p[1]), 1, c.filled())),
            )?;
        }
        Ok(())
    })?;
    let strip_path = super::file(options, &format!("{stem}-steps.png"));
    save_png(strip, &strip_path)?;

    let gif_path = super::file(options, &format!("{stem}.gif"));
    write_gif(&frames, &gif_path)?;
    made.number(format!("{prefix}_frames"), frames.len() as f64);
    made.files.extend([gif_path, strip_path]);
    Ok(())
}

/// Encodes `(frame, milliseconds)` pairs as a looping GIF, written atomically.
fn write_gif(frames: &[(RgbImage, u32)], path: &std::path::Path) -> Result<()> {
    let picture_error =
        |e: image::ImageError| FlowError::Picture(format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(BufWriter::new(&mut bytes), 20);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(picture_error)?;
        for (image, ms) in frames {
            let rgba = image::DynamicImage::ImageRgb8(image.clone()).to_rgba8();
            let frame = Frame::from_parts(rgba, 0, 0, Delay::from_numer_denom_ms(*ms, 1));
            encoder.encode_frame(frame).map_err(picture_error)?;
        }
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;
    use image::AnimationDecoder;

    #[test]
    fn couplings_keep_their_key_and_the_animation_returns_to_the_data() {
        let (_dir, options) = options("coupling");
        let made = make(&options, &mut |_| {}).unwrap();
        for (i, prefix) in ["coupling", "coupling_nice", "coupling_spline"]
            .iter()
            .enumerate()
        {
            // The key half passes through a coupling bit for bit.
            assert_eq!(made.get(&format!("{prefix}_key_max_change")), 0.0);
            let err = made.get(&format!("{prefix}_round_trip_max_error"));
            // Points span about ±3; f32 through 24 layers and back.
            assert!(err < 1e-3, "{prefix}: f⁻¹(f(x)) − x up to {err}");
            let gif = std::fs::File::open(&made.files[2 * i]).unwrap();
            let decoder =
                image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif)).unwrap();
            let frames = decoder.into_frames().count();
            assert_eq!(frames as f64, made.get(&format!("{prefix}_frames")));
            assert!(frames > 100, "{frames} frames");
        }
        let std = made.get("coupling_latent_std");
        assert!((0.6..1.5).contains(&std), "latent std {std}");
    }

    #[test]
    fn key_change_sees_a_moved_key() {
        let before = [[0.0, 0.0], [1.0, 1.0]];
        assert_eq!(key_change(&before, &[[0.0, 5.0], [1.0, -1.0]]), 0.0);
        assert_eq!(key_coordinate(&before, &[[0.0, 5.0], [1.0, -1.0]]), Some(0));
        assert!(key_change(&before, &[[0.5, 5.0], [1.0, -1.0]]) > 0.0);
    }
}
