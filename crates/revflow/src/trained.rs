//! Using a trained run: what every front end offers (the command line, the web page) —
//! sampling, encoding, scoring, interpolation and manipulation along class or attribute
//! directions. Inputs are the specifications the scoring sources read (image files,
//! `test:N`, `train:A..B`, … see [`crate::scoring::source`]).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::data::{Data, Splits};
use crate::error::{FlowError, Result};
use crate::figures::{self, gallery};
use crate::latents::{self, pixels};
use crate::models::Model;
use crate::pictures::{grid, scatter};
use crate::scoring::{Context, Kind, Rows, Scorer};
use crate::training::{one_hot, rows, RunConfig, RunDir};

/// A trained run, ready for inference. Share it between threads: its model and data are
/// read-only.
pub struct TrainedRun {
    pub config: RunConfig,
    pub model: Model,
    pub device: Device,
    pub dir: RunDir,
    /// The run's data, loaded on first use (`test:N` inputs, class directions).
    splits: OnceLock<Splits>,
}

/// Inputs read for a model: values `(N, D)`, a label and, for a context-conditional run, the
/// raw context of each.
pub struct Inputs {
    pub x: Tensor<2>,
    pub labels: Vec<usize>,
    pub context: Vec<f32>,
    /// The rows as read (pixels 0‥255 or vector values), for scoring and comparing.
    pub rows: Rows,
}

impl TrainedRun {
    /// Loads the run in `run` (its last complete checkpoint) onto `device`.
    pub fn open(run: &Path, device: Device) -> Result<TrainedRun> {
        let dir = RunDir::new(run);
        let config = dir.read_config()?;
        let model = dir.load_model(&config, &device)?;
        Ok(TrainedRun {
            config,
            model,
            device,
            dir,
            splits: OnceLock::new(),
        })
    }

    pub fn classes(&self) -> usize {
        self.config.model.classes()
    }

    /// The image shape `[C, H, W]`, or an error saying that `what` needs an image model.
    pub fn image_shape(&self, what: &str) -> Result<[usize; 3]> {
        self.config.model.image_shape().ok_or_else(|| {
            FlowError::Config(format!(
                "{what} needs an image model; {} models vectors",
                self.dir.root.display()
            ))
        })
    }

    /// A class given by name or index.
    pub fn class(&self, name: &str) -> Result<usize> {
        let names = &self.config.class_names;
        names
            .iter()
            .position(|n| n == name)
            .or_else(|| name.parse::<usize>().ok().filter(|&i| i < names.len()))
            .ok_or_else(|| {
                FlowError::Config(format!(
                    "unknown class {name:?}; the run's classes are {names:?}"
                ))
            })
    }

    /// 8-bit pixels as the model sees them: each at the bottom of its bin of `n_bits` (what
    /// decoding gives back exactly).
    pub fn as_modelled(&self, pixels: &[f32]) -> Vec<u8> {
        let step = 1u32 << (8 - self.config.model.n_bits().unwrap_or(8));
        (pixels.iter())
            .map(|&p| (p.clamp(0.0, 255.0) as u32 / step * step) as u8)
            .collect()
    }

    /// The run's data, loaded and split as in training, once.
    pub fn splits(&self) -> Result<&Splits> {
        if let Some(splits) = self.splits.get() {
            return Ok(splits);
        }
        let splits = self.config.load_data()?;
        Ok(self.splits.get_or_init(|| splits))
    }

    /// A source context of this run that loads its data at most once for all of them.
    pub fn context(&self) -> Context<'_> {
        Context::new(&self.config).shared_splits(&self.splits)
    }

    /// A scorer of this run's model with its noise seed (one dequantisation, the marginal
    /// likelihood for a conditional run).
    pub fn scorer(&self) -> Scorer<'_> {
        Scorer::new(
            &self.model,
            Kind::of(&self.config.model),
            self.classes(),
            self.config.train.seed,
        )
        .device(&self.device)
    }

    /// One-hot labels for a conditional model, `None` for an unconditional one.
    pub fn labels(&self, labels: &[usize]) -> Option<Tensor<2>> {
        (self.classes() > 0).then(|| one_hot(labels.iter().copied(), self.classes(), &self.device))
    }

    /// The inputs of `specs`, with labels (`class` if given, else the input's own where it
    /// has one of the run's, else 0) and, for a context-conditional run, each input's raw
    /// context (from its CSV columns or the run's data).
    pub fn inputs(&self, specs: &[String], class: Option<usize>) -> Result<Inputs> {
        let rows = self.context().read_all(specs)?;
        let labels = rows
            .classes
            .iter()
            .map(|c| class.or(*c).unwrap_or(0))
            .collect();
        let shape = [rows.len(), rows.dims];
        let x = Tensor::from_data(TensorData::new(rows.values.clone(), shape), &self.device);
        Ok(Inputs {
            x,
            labels,
            context: rows.context.clone(),
            rows,
        })
    }

    /// The conditioning input of `labels.len()` inputs: their raw context rows for a
    /// context-conditional run (when given), else one-hot labels for a class-conditional one.
    pub fn cond(&self, labels: &[usize], context: &[f32]) -> Option<Tensor<2>> {
        match (self.config.model.context(), labels.len()) {
            (Some(c), n) if n > 0 && context.len() == n * c.len() => {
                let data = TensorData::new(context.to_vec(), [n, c.len()]);
                Some(Tensor::from_data(data, &self.device))
            }
            _ => self.labels(labels),
        }
    }

    /// Samples `range` of the sequence drawn with `seed` at `temperature`: sample `i` is the
    /// same in any batch, whatever else is sampled at the same time. Classes in turn for a
    /// class-conditional run unless `class` is given; `context` (one raw row) for a
    /// context-conditional one.
    pub fn sample(
        &self,
        seed: u64,
        range: Range<usize>,
        temperature: f64,
        class: Option<usize>,
        context: Option<&[f32]>,
    ) -> Result<Tensor<2>> {
        let labels: Vec<usize> = range
            .clone()
            .map(|i| class.unwrap_or(i % self.classes().max(1)))
            .collect();
        let rows = context.map_or_else(Vec::new, |c| c.repeat(labels.len()));
        let cond = self.cond(&labels, &rows);
        let keys = crate::noise::indices(range.start as u64, range.len());
        self.model
            .sample(seed, &keys, temperature, cond.as_ref(), &self.device)
    }

    /// Mean latent (every level) of a group of inputs.
    fn mean_latent(&self, x: Tensor<2>, labels: &[usize]) -> Result<Vec<Tensor<2>>> {
        latents::mean(&self.model, x, self.labels(labels).as_ref())
    }

    /// Mean latent of up to `per_class` training inputs of `class`.
    pub fn class_mean(&self, class: usize, per_class: usize) -> Result<Vec<Tensor<2>>> {
        let train = &self.splits()?.train;
        let labels = match train {
            Data::Images(s) => &s.labels,
            Data::Vectors(s) => &s.labels,
        };
        let idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == class)
            .take(per_class)
            .collect();
        if idx.is_empty() {
            return Err(FlowError::Config(format!(
                "no training inputs of class {class}"
            )));
        }
        let (x, _) = rows(train, &idx, 0, &self.device);
        self.mean_latent(x, &vec![class; idx.len()])
    }

    /// The direction from class `from` to class `to`: the difference of their mean latents
    /// (Glow, section 5.3).
    pub fn class_direction(
        &self,
        from: usize,
        to: usize,
        per_class: usize,
    ) -> Result<Vec<Tensor<2>>> {
        let towards = self.class_mean(to, per_class)?;
        let away = self.class_mean(from, per_class)?;
        Ok(difference(towards, away))
    }

    /// The direction towards an attribute of a CSV (see [`attribute_groups`]): mean latent of
    /// the images with it minus that of the images without.
    pub fn attribute_direction(
        &self,
        csv: &Path,
        attribute: &str,
        per_group: usize,
    ) -> Result<Vec<Tensor<2>>> {
        let (with, without) = attribute_groups(csv, attribute, per_group)?;
        let mean = |paths: Vec<PathBuf>| -> Result<Vec<Tensor<2>>> {
            let specs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let inputs = self.inputs(&specs, None)?;
            self.mean_latent(inputs.x, &inputs.labels)
        };
        Ok(difference(mean(with)?, mean(without)?))
    }

    /// The images decoded from `zs + t·dir` for each `t` (one input's latents, every level).
    pub fn walk(
        &self,
        zs: &[Tensor<2>],
        dir: &[Tensor<2>],
        ts: &[f64],
        label: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let x = latents::walk(&self.model, zs, dir, ts, self.labels(&[label]).as_ref())?;
        Ok(pixels(x))
    }

    /// The images on the straight line between the latents of inputs `a` and `b`, at each
    /// `t` (0: `a`, 1: `b`).
    pub fn interpolate(&self, a: &str, b: &str, ts: &[f64]) -> Result<Vec<Vec<u8>>> {
        one_input(a)?;
        one_input(b)?;
        let inputs = self.inputs(&[a.to_string(), b.to_string()], None)?;
        let cond = self.cond(&inputs.labels, &inputs.context);
        let zs = self.model.encode(inputs.x, cond.as_ref())?;
        let start: Vec<Tensor<2>> = zs.iter().map(|z| z.clone().narrow(0, 0, 1)).collect();
        let end: Vec<Tensor<2>> = zs.iter().map(|z| z.clone().narrow(0, 1, 1)).collect();
        self.walk(
            &start,
            &difference(end, start.clone()),
            ts,
            inputs.labels[0],
        )
    }

    /// The images of `input` moved by each `α` along `direction` in latent space.
    pub fn manipulate(
        &self,
        input: &str,
        direction: &[Tensor<2>],
        alphas: &[f64],
    ) -> Result<Vec<Vec<u8>>> {
        one_input(input)?;
        let inputs = self.inputs(&[input.to_string()], None)?;
        let zs = self
            .model
            .encode(inputs.x, self.labels(&inputs.labels).as_ref())?;
        self.walk(&zs, direction, alphas, inputs.labels[0])
    }
}

/// `a − b`, level by level.
fn difference(a: Vec<Tensor<2>>, b: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    a.into_iter().zip(b).map(|(a, b)| a - b).collect()
}

/// An interpolation end or a manipulated input is one input: an image file, `test:N` or
/// `train:N`, not a range `test:A..B`.
pub fn one_input(spec: &str) -> Result<()> {
    match spec.split_once(':') {
        Some(("test" | "train", range)) if range.contains("..") => Err(FlowError::Config(format!(
            "{spec}: expected one input (an image file, test:N or train:N), not a range"
        ))),
        _ => Ok(()),
    }
}

/// The rows of `(N, D)` values, one vector each.
pub fn points_of(x: Tensor<2>) -> Vec<Vec<f32>> {
    let d = x.dims()[1];
    x.into_data()
        .try_to_vec_as::<f32>()
        .expect("floats")
        .chunks(d.max(1))
        .map(<[f32]>::to_vec)
        .collect()
}

/// The two groups of an attribute column of `csv`: (present, absent) image files, up to
/// `per_group` each. The CSV has a `file` column (paths relative to the CSV) and one column
/// per attribute, > 0 meaning present (CelebA's -1/1 works).
pub fn attribute_groups(
    csv: &Path,
    attribute: &str,
    per_group: usize,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let bad = |problem: String| FlowError::Data {
        source_name: csv.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(csv).map_err(|source| FlowError::Io {
        path: csv.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    let file_col = header
        .iter()
        .position(|h| h.eq_ignore_ascii_case("file"))
        .unwrap_or(0);
    let col = header.iter().position(|h| *h == attribute).ok_or_else(|| {
        bad(format!(
            "has no column {attribute:?}; its columns are {header:?}"
        ))
    })?;
    let base = csv.parent().unwrap_or(Path::new("."));
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let value: f64 = cells
            .get(col)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("line {}: {attribute} is not a number", i + 2)))?;
        let file = base.join(cells.get(file_col).copied().unwrap_or_default());
        let group = if value > 0.0 { &mut with } else { &mut without };
        if group.len() < per_group {
            group.push(file);
        }
    }
    if with.is_empty() || without.is_empty() {
        return Err(bad(format!(
            "{attribute} needs images both with (> 0) and without (≤ 0) it"
        )));
    }
    Ok((with, without))
}

/// The picture of a run's samples during training: an image grid (a row per class for
/// conditional models), or a scatter of the first two coordinates over the test data. The
/// same latents at every call, so that successive pictures show training progress.
pub fn sample_picture(
    model: &Model,
    config: &RunConfig,
    test: &Data,
    temperature: f64,
    device: &Device,
) -> Result<RgbImage> {
    let classes = config.model.classes();
    let n = if config.model.image_shape().is_some() {
        64
    } else {
        2000
    };
    let labels: Vec<usize> = (0..n)
        .map(|i| if classes > 0 { (i / 8) % classes } else { 0 })
        .collect();
    let mut cond = (classes > 0).then(|| one_hot(labels.iter().copied(), classes, device));
    // A context-conditional model samples at the test points' contexts in turn, so that the
    // scatter compares like with like.
    if let (Some(_), Data::Vectors(s)) = (config.model.context(), test) {
        let k = s.context_columns.len();
        let rows: Vec<f32> = (0..n)
            .flat_map(|i| s.context_row(i % s.len().max(1)).to_vec())
            .collect();
        cond = Some(Tensor::from_data(TensorData::new(rows, [n, k]), device));
    }
    let keys = crate::noise::indices(0, n);
    let x = model.sample(config.train.seed, &keys, temperature, cond.as_ref(), device)?;
    Ok(match config.model.image_shape() {
        Some(shape) => grid(&pixels(x), shape, 8, 4),
        None => {
            let reference: Vec<[f32; 2]> = match test {
                Data::Vectors(s) => (0..s.len()).map(|i| [s.row(i)[0], s.row(i)[1]]).collect(),
                Data::Images(_) => Vec::new(),
            };
            let pts: Vec<[f32; 2]> = points_of(x).iter().map(|p| [p[0], p[1]]).collect();
            scatter(&pts, &reference, 480)
        }
    })
}

/// A 2-D run's density over a square window, as a picture to draw points on.
pub struct DensityMap {
    /// The density as a heat map, `n`×`n` pixels, north up.
    pub heat: RgbImage,
    centre: [f64; 2],
    half: f64,
}

impl TrainedRun {
    /// The density of a flow of 2-D vectors on an `n`×`n` grid over its test data (with a
    /// margin); `None` for other runs.
    pub fn density_map(&self, n: usize) -> Result<Option<DensityMap>> {
        let Model::Flat(flow) = &self.model else {
            return Ok(None);
        };
        if flow.dims != 2 || flow.context.is_some() || self.classes() > 0 {
            return Ok(None);
        }
        let points = figures::points(&self.splits()?.test);
        let (centre, half) = gallery::window(&points);
        let (p, _) = gallery::density(flow, (centre, half), n, &self.device)?;
        Ok(Some(DensityMap {
            heat: gallery::heat_map(&p, n),
            centre,
            half,
        }))
    }
}

impl DensityMap {
    /// The heat map with `points` on it as white dots (those in the window).
    pub fn with_points(&self, points: &[[f32; 2]]) -> RgbImage {
        let mut picture = self.heat.clone();
        let n = picture.width() as f64;
        let corner = [self.centre[0] - self.half, self.centre[1] + self.half];
        for p in points {
            let col = (p[0] as f64 - corner[0]) / (2.0 * self.half) * n;
            let row = (corner[1] - p[1] as f64) / (2.0 * self.half) * n;
            if (0.0..n).contains(&col) && (0.0..n).contains(&row) {
                picture.put_pixel(col as u32, row as u32, image::Rgb([255, 255, 255]));
            }
        }
        picture
    }
}
