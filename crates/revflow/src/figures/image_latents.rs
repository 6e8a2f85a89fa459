//! Figure 5: an image model's latent space. Samples over temperatures; reconstructions from
//! the top level alone versus every level (a multi-scale flow factors its latent into levels,
//! and only all of them together determine the image exactly); interpolation between test
//! images; and moving an image along the direction between two classes' mean latents.

use burn::tensor::Tensor;
use image::RgbImage;
use plotters::prelude::*;

use super::{trained, Made, Options};
use crate::data::{self, Data, ImageSet, Splits};
use crate::error::{FlowError, Result};
use crate::latents::{mean, pixels, walk};
use crate::models::{GlowConfig, Model, ModelConfig};
use crate::pictures::plot::{self, FONT};
use crate::pictures::{grid, save_png};
use crate::training::{one_hot, rows, RunConfig, RunDir, TrainConfig};

/// Magnification of the images in the figures.
const SCALE: usize = 6;

/// The image model: the run given, or a Glow trained on the digits into `OUT/runs/digits-glow`
/// (reused when a finished run with the same settings is there).
fn image_model(
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(RunConfig, Model, Splits)> {
    if let Some(run) = &options.run {
        let dir = RunDir::new(run);
        let config = dir.read_config()?;
        if config.model.image_shape().is_none() {
            return Err(FlowError::Config(format!(
                "{} holds a {} model of vectors; the latent figures need an image model",
                run.display(),
                config.model.name()
            )));
        }
        let splits = config.load_data()?;
        progress(&format!("using the image model in {}", run.display()));
        let model = dir.load_model(&config, &options.device)?;
        return Ok((config, model, splits));
    }
    let splits = data::load("digits", None, options.seed, 0)?;
    let class_names = splits.train.class_names().to_vec();
    // The recipe of `revflow train` on the digits (4 bits, weight decay), shorter.
    let config = RunConfig {
        model: ModelConfig::Glow(GlowConfig {
            n_bits: 4,
            seed: options.seed,
            ..GlowConfig::default()
        }),
        train: TrainConfig {
            steps: options.image_steps,
            weight_decay: 1e-2,
            eval_every: options.image_steps,
            checkpoint_every: options.image_steps,
            seed: options.seed,
            ..TrainConfig::default()
        },
        data: "digits".into(),
        data_dir: None,
        data_samples: 0,
        data_resize: None,
        class_names,
    };
    let dir = RunDir::new(&options.out.join("runs").join("digits-glow"));
    progress("digits: no --run DIR given, so the latent figures use a Glow on the digits");
    let (model, _) = trained(&config, &splits, &dir, "digits", &options.device, progress)?;
    Ok((config, model, splits))
}

/// Bits per pixel the model keeps (decoded pixels are the lowest 8-bit level of their bin).
fn n_bits(model: &ModelConfig) -> u32 {
    match model {
        ModelConfig::Glow(c) => c.n_bits,
        ModelConfig::Realnvp(c) => c.n_bits,
        ModelConfig::Nice(c) => c.n_bits,
        ModelConfig::Vector(_) => 8,
    }
}

/// Rows of images, each with a label on its left, under a title.
fn labelled_rows(title: &str, rows: &[(String, RgbImage)]) -> Result<RgbImage> {
    let label_w = 330;
    let widest = rows.iter().map(|r| r.1.width()).max().unwrap_or(0);
    // About 11 px per character of the 22 px title.
    let width = (label_w + widest + 20).max(24 + 11 * title.chars().count() as u32);
    let row_h = rows.iter().map(|r| r.1.height()).max().unwrap_or(0) + 12;
    plot::draw(width, 56 + row_h * rows.len() as u32, |root| {
        root.draw(&Text::new(title, (12, 14), (FONT, 22)))?;
        for (i, (label, picture)) in rows.iter().enumerate() {
            let y = 56 + (i as u32 * row_h) as i32;
            root.draw(&Text::new(
                label.as_str(),
                (12, y + picture.height() as i32 / 2 - 9),
                (FONT, 17),
            ))?;
            plot::paste(root, picture, (label_w as i32, y))?;
        }
        Ok(())
    })
}

pub(super) fn make(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Made> {
    let (config, model, splits) = image_model(options, progress)?;
    let shape = config.model.image_shape().expect("an image model");
    let classes = config.model.classes();
    let device = options.device.clone();
    let Data::Images(test) = &splits.test else {
        unreachable!("an image model's data are images")
    };
    let n = 12.min(test.len());
    let cond =
        |labels: &[usize]| (classes > 0).then(|| one_hot(labels.iter().copied(), classes, &device));
    let strip = |x: Tensor<2>, cols: usize| grid(&pixels(x), shape, cols, SCALE);
    let mut made = Made::default();

    progress("drawing samples over temperatures");
    let mut sample_rows = Vec::new();
    let labels: Vec<usize> = (0..n)
        .map(|i| if classes > 0 { i % classes } else { 0 })
        .collect();
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        // The same noise in every row, scaled by T: a row shows where T takes each sample.
        let keys = crate::noise::indices(0, n);
        let x = model.sample(
            options.seed.wrapping_add(17),
            &keys,
            t,
            cond(&labels).as_ref(),
            &device,
        )?;
        sample_rows.push((format!("temperature T = {t}"), strip(x, n)));
    }
    let path = super::file(options, "latents-temperatures.png");
    save_png(
        labelled_rows(
            "Samples x = f⁻¹(T·ε): lower T trades variety for cleaner images",
            &sample_rows,
        )?,
        &path,
    )?;
    made.files.push(path);

    progress("reconstructing from the top level and from every level");
    let idx: Vec<usize> = (0..n).collect();
    let (x, c) = rows(&splits.test, &idx, classes, &device);
    let zs = model.encode(x.clone(), c.as_ref())?;
    let top = zs.last().expect("a top level").clone();
    let all = model.decode(&zs, c.as_ref())?;
    let seed = options.seed.wrapping_add(23);
    let top_mean = model.decode_top(&top, 0.0, c.as_ref(), seed)?;
    let top_sampled = model.decode_top(&top, 1.0, c.as_ref(), seed)?;
    let step = (1u32 << (8 - n_bits(&config.model))) as f32;
    let quantized = (x.clone() / step).floor() * step;
    let wrong = |y: &Tensor<2>| {
        let (a, b) = (pixels(y.clone()), pixels(quantized.clone()));
        let mismatched = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .filter(|(p, q)| p != q)
            .count();
        let error: f64 = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(&p, &q)| (p as f64 - q as f64).abs())
            .sum::<f64>()
            / (a.len() * shape.iter().product::<usize>()).max(1) as f64;
        (mismatched, error)
    };
    let (all_wrong, all_error) = wrong(&all);
    let (top_wrong, top_error) = wrong(&top_mean);
    made.number("levels", zs.len() as f64);
    made.number("all_levels_mismatched_pixels", all_wrong as f64);
    made.number("all_levels_mean_abs_error", all_error);
    made.number("top_only_mismatched_pixels", top_wrong as f64);
    made.number("top_only_mean_abs_error", top_error);
    let top_dims = top.dims()[1];
    let level_rows = vec![
        ("test images x".to_string(), strip(quantized.clone(), n)),
        (
            format!("all {} levels: {all_wrong} pixels differ", zs.len()),
            strip(all, n),
        ),
        (
            format!("top level ({top_dims} values), rest at mean"),
            strip(top_mean, n),
        ),
        (
            "top level, rest sampled (T = 1)".to_string(),
            strip(top_sampled, n),
        ),
    ];
    let path = super::file(options, "latents-levels.png");
    save_png(
        labelled_rows(
            &format!(
                "Exact only with every level: top alone is off by {top_error:.1} grey levels per pixel on average"
            ),
            &level_rows,
        )?,
        &path,
    )?;
    made.files.push(path);

    progress("interpolating and manipulating");
    let steps = 9;
    let ts: Vec<f64> = (0..steps).map(|i| i as f64 / (steps - 1) as f64).collect();
    let pairs = [(0, 1), (2, 3), (4, 5), (6, 7)];
    let mut interp_rows = Vec::new();
    let mut endpoint_mismatch = 0usize;
    for &(a, b) in pairs.iter().filter(|(a, b)| *a < n && *b < n) {
        let (x, c) = rows(&splits.test, &[a, b], classes, &device);
        let zs = model.encode(x, c.as_ref())?;
        let first: Vec<Tensor<2>> = zs.iter().map(|z| z.clone().narrow(0, 0, 1)).collect();
        let dir: Vec<Tensor<2>> = zs
            .iter()
            .map(|z| z.clone().narrow(0, 1, 1) - z.clone().narrow(0, 0, 1))
            .collect();
        let c0 = c.map(|c| c.narrow(0, 0, 1));
        let path_x = walk(&model, &first, &dir, &ts, c0.as_ref())?;
        let decoded = pixels(path_x.clone());
        let ends = pixels(
            quantized
                .clone()
                .select(0, Tensor::from_ints([a as i32, b as i32], &device)),
        );
        endpoint_mismatch += [(0, 0), (steps - 1, 1)]
            .iter()
            .map(|&(i, j)| {
                decoded[i]
                    .iter()
                    .zip(&ends[j])
                    .filter(|(p, q)| p != q)
                    .count()
            })
            .sum::<usize>();
        interp_rows.push((format!("test {a} → test {b}"), strip(path_x, steps)));
    }
    made.number(
        "interpolation_endpoint_mismatched_pixels",
        endpoint_mismatch as f64,
    );
    let path = super::file(options, "latents-interpolation.png");
    save_png(
        labelled_rows(
            "Interpolation z = (1−t)·f(a) + t·f(b), every level",
            &interp_rows,
        )?,
        &path,
    )?;
    made.files.push(path);

    if let Some(path) = manipulation(&config, &model, &splits, test, options, &mut made)? {
        made.files.push(path);
    }
    Ok(made)
}

/// Moves test images of one class along `mean z(to) − mean z(from)`; needs labelled data.
fn manipulation(
    config: &RunConfig,
    model: &Model,
    splits: &Splits,
    test: &ImageSet,
    options: &Options,
    made: &mut Made,
) -> Result<Option<std::path::PathBuf>> {
    let Data::Images(train) = &splits.train else {
        return Ok(None);
    };
    let n_classes = train.class_names.len();
    if n_classes < 2 || train.labels.is_empty() || test.labels.is_empty() {
        return Ok(None);
    }
    let shape = config.model.image_shape().expect("an image model");
    let classes = config.model.classes();
    let device = options.device.clone();
    let alphas = [-0.5, 0.0, 0.5, 1.0, 1.5];
    let mut out_rows = Vec::new();
    let mut identity_mismatch = 0usize;
    for (from, to) in [(3, 8), (1, 7), (4, 9), (6, 0)] {
        let (from, to) = (from % n_classes, to % n_classes);
        let Some(input) = test.labels.iter().position(|&l| l == from) else {
            continue;
        };
        let group = |class: usize| -> Result<Vec<Tensor<2>>> {
            let idx: Vec<usize> = (0..train.labels.len())
                .filter(|&i| train.labels[i] == class)
                .take(500)
                .collect();
            let (x, c) = rows(&splits.train, &idx, classes, &device);
            mean(model, x, c.as_ref())
        };
        let dir: Vec<Tensor<2>> = group(to)?
            .into_iter()
            .zip(group(from)?)
            .map(|(a, b)| a - b)
            .collect();
        let (x, c) = rows(&splits.test, &[input], classes, &device);
        let zs = model.encode(x.clone(), c.as_ref())?;
        let moved = walk(model, &zs, &dir, &alphas, c.as_ref())?;
        let (decoded, again) = (
            pixels(moved.clone()),
            pixels(model.decode(&zs, c.as_ref())?),
        );
        identity_mismatch += decoded[1]
            .iter()
            .zip(&again[0])
            .filter(|(p, q)| p != q)
            .count();
        out_rows.push((
            format!(
                "{} → {}: α = {:?}",
                train.class_names[from], train.class_names[to], alphas
            ),
            grid(&decoded, shape, alphas.len(), SCALE),
        ));
    }
    made.number(
        "manipulation_alpha0_mismatched_pixels",
        identity_mismatch as f64,
    );
    let path = super::file(options, "latents-manipulation.png");
    save_png(
        labelled_rows(
            "Manipulation z + α·(mean z of class B − mean z of class A)",
            &out_rows,
        )?,
        &path,
    )?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    #[test]
    fn only_every_level_reconstructs_the_images_exactly() {
        let (_dir, options) = options("latents");
        let made = make(&options, &mut |_| {}).unwrap();
        assert_eq!(made.get("levels"), 2.0);
        assert_eq!(made.get("all_levels_mismatched_pixels"), 0.0);
        // The top level alone loses information: many pixels come back wrong.
        assert!(
            made.get("top_only_mismatched_pixels") > 50.0,
            "{:?}",
            made.numbers
        );
        assert!(
            made.get("top_only_mean_abs_error") > 1.0,
            "{:?}",
            made.numbers
        );
        assert_eq!(made.get("interpolation_endpoint_mismatched_pixels"), 0.0);
        assert_eq!(made.get("manipulation_alpha0_mismatched_pixels"), 0.0);
        assert_eq!(made.files.len(), 4);
        assert!(made.files.iter().all(|f| f.exists()));
    }
}
