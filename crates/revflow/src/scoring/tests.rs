//! The scoring core: scores independent of batching, equal to the model's own log p with the
//! same noise, the estimators for several dequantisations and for class-conditional models;
//! and the input sources.

use burn::tensor::{Device, Tensor, TensorData};

use super::*;
use crate::data::Convert;
use crate::models::{GlowConfig, ModelConfig, VectorFlowConfig};
use crate::testing::{perturb, to_vec};
use crate::training::{RunConfig, TrainConfig};

fn glow(classes: usize) -> (ModelConfig, Model) {
    let config = ModelConfig::Glow(GlowConfig {
        shape: [1, 8, 8],
        levels: 2,
        depth: 2,
        hidden: 8,
        classes,
        ..Default::default()
    });
    let device = Device::flex();
    device.seed(3);
    let model = config.init(&device).unwrap();
    (config, perturb(model, 0.05, 7))
}

/// `n` rows of pseudo-random 8-bit pixels, with ids and no labels.
fn pixel_rows(n: usize, d: usize, seed: u64) -> Rows {
    let mut rng = crate::rng::Rng::new(seed);
    Rows {
        values: (0..n * d).map(|_| (rng.next_u64() % 256) as f32).collect(),
        dims: d,
        ids: (0..n).map(|i| format!("row{i}")).collect(),
        labels: vec![None; n],
        classes: vec![None; n],
        context: Vec::new(),
    }
}

/// The rows at `idx`, in that order.
fn pick(rows: &Rows, idx: &[usize]) -> Rows {
    Rows {
        values: idx.iter().flat_map(|&i| rows.row(i).to_vec()).collect(),
        dims: rows.dims,
        ids: idx.iter().map(|&i| rows.ids[i].clone()).collect(),
        labels: idx.iter().map(|&i| rows.labels[i].clone()).collect(),
        classes: idx.iter().map(|&i| rows.classes[i]).collect(),
        context: Vec::new(),
    }
}

fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()).max(1e-30))
        .fold(0.0, f64::max)
}

#[test]
fn a_score_depends_on_neither_batch_size_nor_order_nor_chunking() {
    let (config, model) = glow(0);
    let kind = Kind::of(&config);
    let rows = pixel_rows(23, 64, 1);
    let scorer = |batch| Scorer::new(&model, kind, 0, 5).batch_size(batch).unwrap();
    let reference = scorer(64).log_probs(&rows).unwrap();
    for batch in [1, 2, 5, 7, 16] {
        let got = scorer(batch).log_probs(&rows).unwrap();
        let rel = max_relative(&reference, &got);
        assert!(rel <= 1e-6, "batch {batch}: relative difference {rel:e}");
    }
    // Reversed and shuffled order.
    let order: Vec<usize> = crate::rng::Rng::new(9).permutation(23);
    let got = scorer(4).log_probs(&pick(&rows, &order)).unwrap();
    let expected: Vec<f64> = order.iter().map(|&i| reference[i]).collect();
    assert!(max_relative(&expected, &got) <= 1e-6);
    // In two chunks of uneven size.
    let (a, b) = ((0..10).collect::<Vec<_>>(), (10..23).collect::<Vec<_>>());
    let mut got = scorer(3).log_probs(&pick(&rows, &a)).unwrap();
    got.extend(scorer(3).log_probs(&pick(&rows, &b)).unwrap());
    assert!(max_relative(&reference, &got) <= 1e-6);
    // The same input twice in one batch gets the same score (its noise comes from its content).
    let twice = pick(&rows, &[4, 4, 0]);
    let got = scorer(3).log_probs(&twice).unwrap();
    assert_eq!(got[0], got[1]);
}

#[test]
fn a_score_is_the_models_log_prob_with_the_same_noise_passed_explicitly() {
    let (config, model) = glow(0);
    let rows = pixel_rows(6, 64, 2);
    let device = Device::flex();
    let seed = 11;
    let keys: Vec<u64> = rows.values.chunks(64).map(noise::content_key).collect();
    let x = Tensor::<2>::from_data(TensorData::new(rows.values.clone(), [6, 64]), &device);
    let explicit = |draw: u64| -> Vec<f64> {
        let u = noise::uniform(seed, Purpose::Score, &keys, draw, 64, &device);
        to_vec(model.log_prob(x.clone(), None, Some(&u)).unwrap().0)
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let scorer = Scorer::new(&model, Kind::of(&config), 0, seed);
    let got = scorer.log_probs(&rows).unwrap();
    assert!(max_relative(&explicit(0), &got) <= 1e-6);

    // K dequantisations: log of the mean of p over draws 0..K, which is at least the mean of
    // the logs (Jensen).
    let k3 = scorer.dequant_samples(3).unwrap().log_probs(&rows).unwrap();
    let draws: Vec<Vec<f64>> = (0..3).map(explicit).collect();
    for i in 0..6 {
        let terms: Vec<f64> = draws.iter().map(|d| d[i]).collect();
        let by_hand = log_mean_exp(&terms);
        assert!((k3[i] - by_hand).abs() <= 1e-6 * by_hand.abs(), "{i}");
        assert!(k3[i] >= terms.iter().sum::<f64>() / 3.0 - 1e-9);
    }
}

#[test]
fn a_conditional_model_gives_the_marginal_or_one_class() {
    let (config, model) = glow(3);
    let mut rows = pixel_rows(5, 64, 3);
    let device = Device::flex();
    let keys: Vec<u64> = rows.values.chunks(64).map(noise::content_key).collect();
    let u = noise::uniform(0, Purpose::Score, &keys, 0, 64, &device);
    let x = Tensor::<2>::from_data(TensorData::new(rows.values.clone(), [5, 64]), &device);
    let given = |y: usize| -> Vec<f64> {
        let cond = one_hot(std::iter::repeat_n(y, 5), 3, &device);
        to_vec(model.log_prob(x.clone(), Some(&cond), Some(&u)).unwrap().0)
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let per_class: Vec<Vec<f64>> = (0..3).map(given).collect();
    let scorer = || Scorer::new(&model, Kind::of(&config), 3, 0);
    let marginal = scorer().log_probs(&rows).unwrap();
    for i in 0..5 {
        let by_hand = log_mean_exp(&[per_class[0][i], per_class[1][i], per_class[2][i]]);
        assert!((marginal[i] - by_hand).abs() <= 1e-6 * by_hand.abs());
    }
    let one = scorer()
        .class(ClassMode::Given(2))
        .unwrap()
        .log_probs(&rows)
        .unwrap();
    assert!(max_relative(&one, &per_class[2]) <= 1e-6);
    // Each input's own label, as evaluation does; a missing one is named.
    rows.classes = vec![Some(0), Some(1), Some(2), Some(0), Some(1)];
    let own = scorer()
        .class(ClassMode::OwnLabel)
        .unwrap()
        .log_probs(&rows)
        .unwrap();
    for i in 0..5 {
        assert!((own[i] - per_class[i % 3][i]).abs() <= 1e-6 * own[i].abs());
    }
    rows.classes[3] = None;
    let e = scorer()
        .class(ClassMode::OwnLabel)
        .unwrap()
        .log_probs(&rows)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("row3: has no label among the run's classes"),
        "{e}"
    );
    // Bad options are refused with their range.
    let e = scorer()
        .class(ClassMode::Given(3))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "--class must be an integer < 3, found 3");
    let (_, plain) = glow(0);
    let e = Scorer::new(&plain, Kind::of(&config), 0, 0)
        .class(ClassMode::Given(0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--class needs a class-conditional run"), "{e}");
    let e = scorer().dequant_samples(0).err().unwrap().to_string();
    assert_eq!(e, "--dequant-samples must be an integer ≥ 1, found 0");
}

#[test]
fn vector_models_are_scored_without_noise() {
    let config = ModelConfig::Vector(VectorFlowConfig {
        dims: 3,
        steps: 2,
        hidden: 8,
        ..Default::default()
    });
    let device = Device::flex();
    let model = perturb(config.init(&device).unwrap(), 0.1, 2);
    let rows = Rows {
        values: vec![0.1, -0.4, 2.0, 1.5, 0.0, -1.0],
        dims: 3,
        ids: vec!["a".into(), "b".into()],
        labels: vec![None; 2],
        classes: vec![None; 2],
        context: Vec::new(),
    };
    let x = Tensor::<2>::from_data(TensorData::new(rows.values.clone(), [2, 3]), &device);
    let by_model: Vec<f64> = to_vec(model.log_prob(x, None, None).unwrap().0)
        .into_iter()
        .map(f64::from)
        .collect();
    let scorer = Scorer::new(&model, Kind::of(&config), 0, 0);
    assert!(max_relative(&scorer.log_probs(&rows).unwrap(), &by_model) <= 1e-6);
    // More dequantisations change nothing (and cost nothing): vectors have none.
    let k = scorer.dequant_samples(4).unwrap();
    assert_eq!(k.passes(), 1);
    assert!(max_relative(&k.log_probs(&rows).unwrap(), &by_model) <= 1e-6);
}

fn digits_run(config: ModelConfig) -> RunConfig {
    RunConfig {
        model: config,
        train: TrainConfig::default(),
        data: "digits".into(),
        data_dir: None,
        data_samples: 0,
        data_resize: None,
        class_names: (0..10).map(|d| d.to_string()).collect(),
    }
}

#[test]
fn score_streams_every_input_and_keeps_the_extremes() {
    let (config, model) = glow(0);
    let run = digits_run(config.clone());
    let ctx = Context::new(&run);
    let scorer = Scorer::new(&model, Kind::of(&config), 0, 0)
        .batch_size(7)
        .unwrap();
    let mut seen = Vec::new();
    let mut done = Vec::new();
    let mut inputs = ctx
        .open_all(&["test:0..20".into(), "test:290..300".into()])
        .unwrap();
    assert_eq!(inputs.len(), Some(30));
    let scores = score(
        &scorer,
        &mut inputs,
        4,
        &mut |s| {
            seen.push((
                s.id.to_string(),
                s.label.map(str::to_string),
                s.bits_per_dim,
            ));
            assert_eq!(s.values.len(), 64);
            Ok(())
        },
        &mut |n| done.push(n),
    )
    .unwrap();
    assert_eq!(seen.len(), 30);
    assert_eq!(seen[0].0, "test:0");
    assert_eq!(seen[29].0, "test:299");
    assert!(seen.iter().all(|s| s.1.is_some()));
    assert_eq!(done, vec![7, 14, 20, 27, 30]);
    let mut sorted: Vec<f64> = scores.bits_per_dim.clone();
    sorted.sort_by(f64::total_cmp);
    let most: Vec<f64> = scores.most_likely.iter().map(|k| k.bits_per_dim).collect();
    let least: Vec<f64> = scores.least_likely.iter().map(|k| k.bits_per_dim).collect();
    assert_eq!(most, sorted[..4]);
    assert_eq!(
        least,
        sorted.iter().rev().take(4).copied().collect::<Vec<_>>()
    );
    let nats: f64 = scores.bits_per_dim.iter().sum::<f64>() / 30.0 * 64.0 * std::f64::consts::LN_2;
    assert!((scores.nats - nats).abs() < 1e-9 * nats);
    // The whole split equals its parts.
    let mut whole = ctx.open_all(&["test".into()]).unwrap();
    let all = score(&scorer, &mut whole, 0, &mut |_| Ok(()), &mut |_| {}).unwrap();
    assert_eq!(all.bits_per_dim.len(), 300);
    assert!(max_relative(&all.bits_per_dim[..20], &scores.bits_per_dim[..20]) <= 1e-6);
    // The training set's mean from a subsample.
    let splits = ctx.splits().unwrap();
    let h = train_mean(&scorer, &splits.train, 100).unwrap();
    assert!(h.is_finite() && h > 0.0);
}

/// A temporary folder for one test.
fn temp(tag: &str) -> crate::data::tests_support::TempDir {
    crate::data::tests_support::temp_dir(&format!("score-{tag}"))
}

fn idx_file(path: &std::path::Path, n: usize, h: usize, w: usize, value: impl Fn(usize) -> u8) {
    let mut b = Vec::new();
    for v in [0x0803u32, n as u32, h as u32, w as u32] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..n * h * w).map(value));
    std::fs::write(path, b).unwrap();
}

#[test]
fn every_source_kind_reads_and_a_shape_that_does_not_fit_is_named() {
    let (config, _) = glow(0);
    let run = digits_run(config);
    let dir = temp("sources");
    let read = |ctx: &Context, spec: &str| ctx.read_all(&[spec.to_string()]);

    // An IDX file, and the same images inverted.
    let idx = dir.join("imgs-idx3-ubyte");
    idx_file(&idx, 3, 8, 8, |i| (i % 256) as u8);
    let ctx = Context::new(&run);
    let rows = read(&ctx, &format!("idx:{}", idx.display())).unwrap();
    assert_eq!((rows.len(), rows.dims), (3, 64));
    assert_eq!(rows.ids[2], format!("idx:{}#2", idx.display()));
    assert_eq!(rows.row(1)[5], 69.0);
    let inv = read(&ctx, &format!("invert:idx:{}", idx.display())).unwrap();
    assert_eq!(inv.row(1)[5], 255.0 - 69.0);
    assert!(inv.ids[0].starts_with("invert:idx:"));

    // A folder with class sub-folders, and one of its files.
    for (class, v) in [("a", 10u8), ("b", 200)] {
        std::fs::create_dir_all(dir.join("folder").join(class)).unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([v]))
            .save(dir.join(format!("folder/{class}/x.png")))
            .unwrap();
    }
    let rows = read(&ctx, &format!("images:{}", dir.join("folder").display())).unwrap();
    assert_eq!(rows.labels, vec![Some("a".into()), Some("b".into())]);
    assert_eq!(
        rows.classes,
        vec![None, None],
        "a and b are not the run's classes"
    );
    assert_eq!(rows.row(1)[0], 200.0);
    let file = dir.join("folder/b/x.png");
    let rows = read(&ctx, &file.display().to_string()).unwrap();
    assert_eq!(
        (rows.len(), rows.ids[0].clone()),
        (1, file.display().to_string())
    );

    // A colour image: named, with both shapes; with --resize/--grayscale on offer, the options.
    let big = dir.join("big.png");
    image::RgbImage::from_pixel(16, 12, image::Rgb([255, 0, 0]))
        .save(&big)
        .unwrap();
    let e = read(&ctx, &big.display().to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.png: is 16×12 with 3 channel(s), the model expects 8×8 with 1 channel(s)"),
        "{e}"
    );
    let offering = Context::new(&run).convert(Convert::default());
    let e = read(&offering, &big.display().to_string())
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("; pass --resize 8x8 --grayscale"), "{e}");
    let converting = Context::new(&run).convert(Convert {
        resize: Some((8, 8)),
        channels: Some(1),
    });
    let rows = read(&converting, &big.display().to_string()).unwrap();
    // Pure red in BT.709 luma.
    assert!(
        rows.row(0).iter().all(|&v| (v - 54.0).abs() <= 1.0),
        "{:?}",
        rows.row(0)
    );
    // A conversion that the input does not need.
    let needless = Context::new(&run).convert(Convert {
        resize: Some((4, 4)),
        channels: None,
    });
    let e = read(&needless, "test:0").unwrap_err().to_string();
    assert!(
        e.contains("test:0: is 8×8 with 1 channel(s) (4×4 with 1 channel(s) once converted), the model expects 8×8 with 1 channel(s); it fits as it is: leave out --resize 4x4"),
        "{e}"
    );
    // In a folder, the file that does not fit is named before anything is decoded.
    image::GrayImage::from_pixel(9, 8, image::Luma([0]))
        .save(dir.join("folder/b/y.png"))
        .unwrap();
    let e = read(&ctx, &format!("images:{}", dir.join("folder").display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("y.png: is 9×8 with 1 channel(s)"), "{e}");
    // An unreadable image.
    std::fs::write(dir.join("broken.png"), b"no png").unwrap();
    let e = read(&ctx, &dir.join("broken.png").display().to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.png: cannot read image"), "{e}");

    // MNIST-format files in a data folder: labels become class names; CIFAR-10 does not fit.
    std::fs::create_dir_all(dir.join("mnist")).unwrap();
    idx_file(&dir.join("mnist/t10k-images-idx3-ubyte"), 2, 8, 8, |_| 7);
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 2];
    labels.extend([3u8, 9]);
    std::fs::write(dir.join("mnist/t10k-labels-idx1-ubyte"), labels).unwrap();
    let e = read(&ctx, "mnist:test").unwrap_err().to_string();
    assert!(
        e.contains("mnist:test: needs the folder holding the mnist files: pass --data-dir"),
        "{e}"
    );
    let with_dir = Context::new(&run).data_dir(Some(&dir.join("mnist")));
    let rows = read(&with_dir, "mnist:test").unwrap();
    assert_eq!(rows.ids, vec!["mnist:test#0", "mnist:test#1"]);
    assert_eq!(rows.labels, vec![Some("3".into()), Some("9".into())]);
    assert_eq!(rows.classes, vec![Some(3), Some(9)]);
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), vec![1u8; 3073]).unwrap();
    let e = read(&Context::new(&run).data_dir(Some(&cifar)), "cifar10:test")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test_batch.bin: is 32×32 with 3 channel(s), the model expects 8×8"),
        "{e}"
    );
    // A CSV on an image run; test ranges out of bounds.
    std::fs::write(dir.join("v.csv"), "1,2\n3,4\n").unwrap();
    let e = read(&ctx, &format!("csv:{}", dir.join("v.csv").display()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("v.csv: holds vectors of 2 values, the model expects 8×8"),
        "{e}"
    );
    let e = read(&ctx, "test:300").unwrap_err().to_string();
    assert!(e.contains("indices below 300"), "{e}");
}

#[test]
fn a_csv_feeds_a_vector_run_with_its_labels_and_lines() {
    let config = ModelConfig::Vector(VectorFlowConfig {
        dims: 2,
        ..Default::default()
    });
    let run = RunConfig {
        data: "moons".into(),
        class_names: Vec::new(),
        ..digits_run(config)
    };
    let dir = temp("csv");
    let path = dir.join("v.csv");
    std::fs::write(&path, "x,y,label\n0.5,1,in\n\n-3,2,out\n").unwrap();
    let rows = Context::new(&run)
        .read_all(&[format!("csv:{}", path.display())])
        .unwrap();
    assert_eq!(rows.values, vec![0.5, 1.0, -3.0, 2.0]);
    assert_eq!(
        rows.ids,
        vec![
            format!("{}:2", path.display()),
            format!("{}:4", path.display())
        ]
    );
    assert_eq!(rows.labels, vec![Some("in".into()), Some("out".into())]);
    let e = Context::new(&run)
        .read_all(&[format!("invert:csv:{}", path.display())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("invert: needs images"), "{e}");
}
