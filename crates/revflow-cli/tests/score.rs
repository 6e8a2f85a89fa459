//! `revflow score` end to end: every kind of input, the comparison of the test digits with
//! the same digits inverted, class-conditional runs, and one-line errors for bad inputs.

mod common;

use std::io::Write;
use std::path::Path;

use common::{digits_as_idx, json, ok, refused, temp, tiny_glow_with};

/// A small Glow trained on the digits for `steps` steps (300: a few seconds), keeping 4 bits
/// as the digits' recipe does.
fn train_glow(dir: &Path, out: &str, steps: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--steps",
        steps,
        "--eval-every",
        steps,
        "--out",
        out,
    ];
    args.extend(tiny_glow_with(&["--n-bits", "4"]));
    args.extend(extra);
    ok(&args, dir);
}

/// (input, label, bits/dim) of each line of a scores CSV, after checking its header.
fn rows(path: &Path) -> Vec<(String, String, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("input,label,nats,bits_per_dim"));
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), 4, "{l}");
            let (nats, bits): (f64, f64) = (cells[2].parse().unwrap(), cells[3].parse().unwrap());
            // nats = bits/dim · 64 · ln 2 on an 8×8 grey image.
            let expected = bits * 64.0 * std::f64::consts::LN_2;
            assert!((nats - expected).abs() <= 1e-9 * expected.abs(), "{l}");
            (cells[0].to_string(), cells[1].to_string(), bits)
        })
        .collect()
}

fn bits(path: &Path) -> Vec<f64> {
    rows(path).into_iter().map(|r| r.2).collect()
}

fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(y.abs()))
        .fold(0.0, f64::max)
}

/// The digits' test images as raw C×H×W bytes (300 of 64).
fn test_digits() -> Vec<u8> {
    let splits = revflow::data::load("digits", None, 0, 0).unwrap();
    let revflow::data::Data::Images(test) = splits.test else {
        panic!()
    };
    test.pixels
}

/// An IDX images file of 8×8 images, gzipped.
fn idx_gz(path: &Path, pixels: &[u8]) {
    let mut bytes = vec![0, 0, 8, 3];
    for v in [(pixels.len() / 64) as u32, 8, 8] {
        bytes.extend(v.to_be_bytes());
    }
    bytes.extend(pixels);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&bytes).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

#[test]
fn the_test_digits_against_the_same_digits_inverted_give_an_auroc_above_0_95() {
    let dir = temp("score-ood");
    train_glow(&dir, "run", "300", &[]);
    // The inverted digits, 255 − x, written by the test itself as a gzipped IDX file.
    let inverted: Vec<u8> = test_digits().iter().map(|&p| 255 - p).collect();
    idx_gz(&dir.join("inverted.gz"), &inverted);
    let report = json(&ok(
        &[
            "score",
            "run",
            "test",
            "--against",
            "idx:inverted.gz",
            "--out",
            "ood",
            "--json",
        ],
        &dir,
    ));
    let cmp = &report["comparison"];
    let auroc = cmp["auroc"].as_f64().unwrap();
    assert!(auroc >= 0.95, "AUROC {auroc}: {report}");
    assert!(cmp["above_q95"].as_f64().unwrap() > 0.5, "{report}");
    let t = &cmp["typicality"];
    assert!(t["other_flagged"].as_f64().unwrap() > 0.9, "{report}");
    assert!(t["reference_flagged"].as_f64().unwrap() < 0.1, "{report}");
    assert_eq!(report["inputs"]["count"], 300);
    assert_eq!(report["against"]["count"], 300);
    let (test, other) = (
        bits(&dir.join("ood/scores.csv")),
        bits(&dir.join("ood/against.csv")),
    );
    assert_eq!((test.len(), other.len()), (300, 300));
    // The AUROC the command printed is the one of the CSVs' numbers (pairs counted).
    let wins: f64 = other
        .iter()
        .map(|o| {
            test.iter()
                .map(|t| f64::from(u8::from(o > t)) + if o == t { 0.5 } else { 0.0 })
                .sum::<f64>()
        })
        .sum();
    assert!((wins / 90000.0 - auroc).abs() < 1e-9);
    let summary = &report["inputs"]["summary"];
    assert!(summary["q05"].as_f64() <= summary["median"].as_f64());
    assert!(report["inputs"]["inputs_per_second"].as_f64().unwrap() > 0.0);
    // The picture: histogram and four strips of 16.
    let (w, h) = image::image_dimensions(dir.join("ood/comparison.png")).unwrap();
    assert!(w == 1000 && h > 460 + 4 * 50, "{w}×{h}");

    // The same set inverted by `invert:` scores exactly as the file does.
    ok(&["score", "run", "invert:test", "--out", "inv"], &dir);
    assert!(max_relative(&bits(&dir.join("inv/scores.csv")), &other) <= 1e-12);
    // A score depends on the input, not on where it came from, the batch size or the order:
    // the test split as MNIST-format files, in batches of 7, equals the run's own split.
    std::fs::create_dir_all(dir.join("mnist")).unwrap();
    digits_as_idx(&dir.join("mnist"));
    ok(
        &[
            "score",
            "run",
            "mnist:test",
            "--data-dir",
            "mnist",
            "--batch-size",
            "7",
            "--out",
            "idx",
        ],
        &dir,
    );
    let from_files = rows(&dir.join("idx/scores.csv"));
    assert_eq!(from_files[5].0, "mnist:test#5");
    let own = rows(&dir.join("ood/scores.csv"));
    assert_eq!(from_files[5].1, own[5].1, "labels");
    let from_files: Vec<f64> = from_files.iter().map(|r| r.2).collect();
    assert!(max_relative(&from_files, &test) <= 1e-6);
    // Rows in another order and split differently.
    ok(
        &[
            "score",
            "run",
            "test:150..300",
            "test:0..150",
            "--batch-size",
            "13",
            "--out",
            "swap",
        ],
        &dir,
    );
    let swapped = bits(&dir.join("swap/scores.csv"));
    let expected: Vec<f64> = test[150..].iter().chain(&test[..150]).copied().collect();
    assert!(max_relative(&swapped, &expected) <= 1e-6);
    // eval --per-sample is the same scores.
    ok(&["eval", "run", "--per-sample", "eval.csv"], &dir);
    assert_eq!(bits(&dir.join("eval.csv")), test);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_kind_of_input_is_scored_and_bad_ones_are_one_line_naming_the_file() {
    let dir = temp("score-sources");
    train_glow(&dir, "run", "20", &[]);
    let digits = test_digits();
    // A folder of PNGs in two class sub-folders, and one of the files.
    for (k, class) in [(0, "a"), (1, "a"), (2, "b")] {
        let folder = dir.join("pngs").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        image::GrayImage::from_raw(8, 8, digits[k * 64..(k + 1) * 64].to_vec())
            .unwrap()
            .save(folder.join(format!("{k}.png")))
            .unwrap();
    }
    ok(
        &[
            "score",
            "run",
            "images:pngs",
            "pngs/b/2.png",
            "test:0..3",
            "--out",
            "o",
        ],
        &dir,
    );
    let got = rows(&dir.join("o/scores.csv"));
    let ids: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pngs/a/0.png",
            "pngs/a/1.png",
            "pngs/b/2.png",
            "pngs/b/2.png",
            "test:0",
            "test:1",
            "test:2"
        ]
    );
    assert_eq!(
        (got[0].1.as_str(), got[2].1.as_str(), got[3].1.as_str()),
        ("a", "b", "")
    );
    // The PNGs hold the test digits 0..3: the same scores as the rows themselves.
    for (png, row) in [(0, 4), (1, 5), (2, 6), (3, 6)] {
        assert!(
            (got[png].2 - got[row].2).abs() <= 1e-6 * got[row].2,
            "{got:?}"
        );
    }

    // CIFAR-10 batches (3×32×32) fit an 8×8 grey run only when asked.
    std::fs::create_dir_all(dir.join("cifar")).unwrap();
    let mut batch = Vec::new();
    for i in 0..5u8 {
        batch.push(i % 10);
        batch.extend((0..3072).map(|j| ((j / 96) as u8).wrapping_mul(7).wrapping_add(i)));
    }
    std::fs::write(dir.join("cifar/test_batch.bin"), &batch).unwrap();
    let cifar = [
        "score",
        "run",
        "cifar10:test",
        "--data-dir",
        "cifar",
        "--out",
        "c",
    ];
    refused(
        &cifar,
        &dir,
        "test_batch.bin: is 32×32 with 3 channel(s), the model expects 8×8 with 1 channel(s); pass --resize 8x8 --grayscale",
    );
    let report = json(&ok(
        &[&cifar[..], &["--resize", "8x8", "--grayscale", "--json"]].concat(),
        &dir,
    ));
    assert_eq!(report["inputs"]["count"], 5);
    let got = rows(&dir.join("c/scores.csv"));
    assert_eq!(
        (got[4].0.as_str(), got[4].1.as_str()),
        ("cifar10:test#4", "deer")
    );

    // Bad inputs: one line, exit code 2, the file named.
    image::GrayImage::new(5, 5)
        .save(dir.join("small.png"))
        .unwrap();
    refused(
        &["score", "run", "test", "small.png"],
        &dir,
        "small.png: is 5×5 with 1 channel(s), the model expects 8×8 with 1 channel(s); pass --resize 8x8",
    );
    image::RgbImage::new(8, 8)
        .save(dir.join("colour.png"))
        .unwrap();
    refused(&["score", "run", "colour.png"], &dir, "colour.png: is 8×8 with 3 channel(s), the model expects 8×8 with 1 channel(s); pass --grayscale");
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    // A folder with one bad file is refused before anything is scored or written.
    image::GrayImage::new(8, 9)
        .save(dir.join("pngs/b/odd.png"))
        .unwrap();
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0, 8];
    idx.extend([0; 100]);
    std::fs::write(dir.join("short-idx"), idx).unwrap();
    std::fs::write(dir.join("v.csv"), "1,2\n").unwrap();
    for (args, needle) in [
        (&["broken.png"][..], "broken.png: cannot read image"),
        (&["missing.png"], "missing.png: cannot read image"),
        (
            &["pngs", "--out", "never"],
            "odd.png: is 8×9 with 1 channel(s)",
        ),
        (
            &["idx:short-idx"],
            "short-idx: truncated: the header promises 576 data bytes (9×8×8), found 100",
        ),
        (
            &["csv:v.csv"],
            "v.csv: holds vectors of 2 values, the model expects 8×8",
        ),
        (
            &["mnist:test"],
            "mnist:test: needs the folder holding the mnist files: pass --data-dir DIR",
        ),
        (
            &["mnist"],
            "mnist: name the split: mnist:test or mnist:train",
        ),
        (&["test:300"], "indices below 300"),
        (
            &["test", "--against", "svhn:test"],
            "svhn:test: unknown input",
        ),
        (
            &["test", "--class", "3"],
            "--class 3: needs a class-conditional run",
        ),
    ] {
        refused(&[&["score", "run"][..], args].concat(), &dir, needle);
    }
    assert!(!dir.join("never").exists());
    for (args, needle) in [
        (
            &["--dequant-samples", "0"][..],
            "--dequant-samples must be an integer ≥ 1, found 0",
        ),
        (
            &["--typicality-batch", "0"],
            "--typicality-batch must be an integer ≥ 1, found 0",
        ),
        (&[], "nowhere"),
    ] {
        refused(
            &[&["score", "nowhere", "test"][..], args].concat(),
            &dir,
            needle,
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_vector_run_scores_a_csv_and_a_conditional_run_gives_the_marginal_or_one_class() {
    let dir = temp("score-vectors");
    ok(
        &[
            "train",
            "--data",
            "moons",
            "--samples",
            "512",
            "--steps",
            "30",
            "--flow-steps",
            "2",
            "--hidden",
            "8",
            "--out",
            "moons",
        ],
        &dir,
    );
    std::fs::write(
        dir.join("points.csv"),
        "x,y,label\n0.5,0.2,near\n40,-30,far\n",
    )
    .unwrap();
    let report = json(&ok(
        &["score", "moons", "csv:points.csv", "--out", "v", "--json"],
        &dir,
    ));
    assert_eq!(report["inputs"]["count"], 2);
    let text = std::fs::read_to_string(dir.join("v/scores.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("points.csv:2,near,") && lines[2].starts_with("points.csv:3,far,"),
        "{text}"
    );
    let bpd = |l: &str| l.rsplit(',').next().unwrap().parse::<f64>().unwrap();
    assert!(
        bpd(lines[2]) > bpd(lines[1]) + 10.0,
        "a point far from the moons is far less likely: {text}"
    );
    // More dequantisations change nothing for vectors.
    ok(
        &[
            "score",
            "moons",
            "csv:points.csv",
            "--out",
            "v4",
            "--dequant-samples",
            "4",
        ],
        &dir,
    );
    assert_eq!(
        text,
        std::fs::read_to_string(dir.join("v4/scores.csv")).unwrap()
    );

    // A class-conditional Glow: the marginal by default, p(x | y) with --class.
    train_glow(&dir, "ycond", "20", &["--ycond"]);
    let marginal = json(&ok(
        &["score", "ycond", "test:0..40", "--out", "m", "--json"],
        &dir,
    ));
    assert_eq!(
        marginal["likelihood"],
        "marginal log p(x) over 10 equally likely classes"
    );
    ok(
        &[
            "score",
            "ycond",
            "test:0..40",
            "--class",
            "3",
            "--out",
            "y3",
        ],
        &dir,
    );
    let (m, y3) = (
        bits(&dir.join("m/scores.csv")),
        bits(&dir.join("y3/scores.csv")),
    );
    // log p(x) = log mean_y p(x | y) ≥ log p(x | 3) − ln 10, i.e. in bits/dim
    // marginal ≤ given + log2(10)/64; and the two differ.
    for (a, b) in m.iter().zip(&y3) {
        assert!(*a <= b + 10f64.log2() / 64.0 + 1e-9, "{a} vs {b}");
    }
    assert!(max_relative(&m, &y3) > 1e-4);
    // K dequantisations: each estimate is finite and close to the single draw's.
    ok(
        &[
            "score",
            "ycond",
            "test:0..40",
            "--dequant-samples",
            "3",
            "--out",
            "k3",
        ],
        &dir,
    );
    let k3 = bits(&dir.join("k3/scores.csv"));
    assert!(max_relative(&k3, &m) < 0.05 && max_relative(&k3, &m) > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
