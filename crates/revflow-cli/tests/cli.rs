//! The command line end to end, on tiny models and the embedded or generated data.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{digits_as_idx, fails, json, ok, refused, revflow, temp, tiny_glow_with, TINY_GLOW};

/// Every value of `key` in a run's metrics.jsonl, in order.
fn metric(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| json(l)[key].as_f64())
        .collect()
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_luma8().into_raw()
}

#[test]
fn glow_trains_evaluates_samples_and_round_trips_exactly() {
    let dir = temp("glow");
    let mut args = vec![
        "train",
        "--steps",
        "60",
        "--eval-every",
        "30",
        "--out",
        "run",
        "--json",
    ];
    args.extend(TINY_GLOW);
    let summary = json(&ok(&args, &dir));
    let bpd = summary["test_bits_per_dim"].as_f64().unwrap();
    assert!(
        bpd.is_finite()
            && bpd > 0.0
            && summary["per_pixel_baseline_bits_per_dim"]
                .as_f64()
                .is_some()
    );
    for f in [
        "config.json",
        "metrics.jsonl",
        "LATEST",
        "ckpt-000060/model.safetensors",
        "ckpt-000060/optimizer.bin",
        "ckpt-000060/state.json",
        "ckpt-000060/config.json",
        "samples/step-000060.png",
    ] {
        assert!(dir.join("run").join(f).exists(), "{f} missing");
    }

    let eval = json(&ok(
        &["eval", "run", "--json", "--per-sample", "scores.csv"],
        &dir,
    ));
    assert!(
        (eval["bits_per_dim"].as_f64().unwrap() - bpd).abs() < 0.05,
        "{eval} vs {bpd}"
    );
    let scores = std::fs::read_to_string(dir.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 1 + 300);

    ok(
        &[
            "sample",
            "run",
            "-n",
            "16",
            "--temperatures",
            "0,0.7,1",
            "--out",
            "s.png",
        ],
        &dir,
    );
    let (w, h) = image::image_dimensions(dir.join("s.png")).unwrap();
    assert_eq!((w, h), (16 * 33 + 1, 3 * 33 + 1));

    // decode(encode(x)) = x, pixel for pixel, on real digits.
    ok(
        &["encode", "run", "test:0..8", "--out", "z.safetensors"],
        &dir,
    );
    ok(&["decode", "run", "z.safetensors", "--out", "dec"], &dir);
    // The same digits as files, through a second encode/decode.
    ok(
        &[
            "encode",
            "run",
            "dec/0.png",
            "dec/1.png",
            "--out",
            "z2.safetensors",
        ],
        &dir,
    );
    ok(&["decode", "run", "z2.safetensors", "--out", "dec2"], &dir);
    assert_eq!(
        pixels(&dir.join("dec/0.png")),
        pixels(&dir.join("dec2/0.png"))
    );
    assert_eq!(
        pixels(&dir.join("dec/1.png")),
        pixels(&dir.join("dec2/1.png"))
    );

    ok(
        &[
            "interpolate",
            "run",
            "test:0",
            "test:1",
            "--steps",
            "5",
            "--out",
            "i.png",
        ],
        &dir,
    );
    assert_eq!(
        image::image_dimensions(dir.join("i.png")).unwrap().0,
        5 * 33 + 1
    );
    ok(
        &[
            "manipulate",
            "run",
            "test:0",
            "--from",
            "1",
            "--to",
            "7",
            "--alphas",
            "0,1",
            "--out",
            "m.png",
        ],
        &dir,
    );
    assert!(dir.join("m.png").exists());

    // A wrong-size image is refused with one line.
    image::GrayImage::new(5, 5)
        .save(dir.join("small.png"))
        .unwrap();
    fails(
        &["encode", "run", "small.png"],
        &dir,
        "is 5×5 with 1 channel(s), the model expects 8×8",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn decoded_test_digits_equal_the_data_for_glow_and_realnvp() {
    let dir = temp("exact");
    let mut glow = vec!["train", "--steps", "20", "--out", "glow"];
    glow.extend(TINY_GLOW);
    ok(&glow, &dir);
    let realnvp = [
        "train", "--model", "realnvp", "--steps", "20", "--hidden", "8", "--blocks", "1", "--out",
        "realnvp",
    ];
    ok(&realnvp, &dir);
    for run in ["glow", "realnvp"] {
        ok(
            &["encode", run, "test:0..16", "--out", "z.safetensors"],
            &dir,
        );
        ok(&["decode", run, "z.safetensors", "--out", run], &dir);
    }
    // Both models decode their encodings to the test digits themselves, pixel for pixel.
    let splits = revflow::data::load("digits", None, 0, 0).unwrap();
    let revflow::data::Data::Images(test) = &splits.test else {
        panic!()
    };
    for k in 0..16 {
        for run in ["glow", "realnvp"] {
            assert_eq!(
                pixels(&dir.join(format!("{run}/{k}.png"))),
                test.image(k),
                "{run}: image {k}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vector_flow_on_moons_lowers_its_loss_and_samples_a_scatter() {
    let dir = temp("moons");
    let out = ok(
        &[
            "train",
            "--data",
            "moons",
            "--samples",
            "2048",
            "--steps",
            "150",
            "--eval-every",
            "50",
            "--flow-steps",
            "4",
            "--hidden",
            "32",
            "--out",
            "run",
            "--json",
        ],
        &dir,
    );
    assert_eq!(json(&out)["model"], "vector");
    let tests = metric(&dir.join("run"), "test_bits_per_dim");
    assert_eq!(tests.len(), 3);
    assert!(tests[2] < tests[0] - 0.1, "test bits/dim {tests:?}");
    ok(
        &[
            "sample", "run", "-n", "500", "--out", "s.png", "--csv", "s.csv",
        ],
        &dir,
    );
    let csv = std::fs::read_to_string(dir.join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 500);
    assert!(csv
        .lines()
        .all(|l| l.split(',').all(|v| v.parse::<f32>().unwrap().is_finite())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_continues_the_same_loss_curve() {
    let dir = temp("resume");
    let mut straight = vec![
        "train",
        "--steps",
        "30",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "30",
        "--out",
        "a",
    ];
    straight.extend(TINY_GLOW);
    ok(&straight, &dir);
    let mut first = vec![
        "train",
        "--steps",
        "20",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "30",
        "--out",
        "b",
    ];
    first.extend(TINY_GLOW);
    ok(&first, &dir);
    ok(&["train", "--resume", "--out", "b", "--steps", "30"], &dir);
    let (a, b) = (
        metric(&dir.join("a"), "loss"),
        metric(&dir.join("b"), "loss"),
    );
    assert_eq!(a.len(), 30);
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_one_clear_line_with_exit_code_2() {
    let dir = temp("bad");
    fails(&["train", "--data", "nosuchset"], &dir, "nosuchset");
    fails(
        &["train", "--data", "mnist", "--data-dir", "missing"],
        &dir,
        "train-images-idx3-ubyte",
    );
    std::fs::create_dir_all(dir.join("idx")).unwrap();
    // Labels fine, images truncated after the count.
    std::fs::write(
        dir.join("idx/train-labels-idx1-ubyte"),
        [&[0u8, 0, 8, 1, 0, 0, 0, 9][..], &[1; 9]].concat(),
    )
    .unwrap();
    std::fs::write(
        dir.join("idx/train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 9],
    )
    .unwrap();
    fails(
        &["train", "--data", "mnist", "--data-dir", "idx"],
        &dir,
        "train-images-idx3-ubyte",
    );
    fails(&["eval", "nowhere"], &dir, "not a revflow run");

    let mut args = vec!["train", "--steps", "4", "--out", "run"];
    args.extend(TINY_GLOW);
    ok(&args, &dir);
    fails(&["train", "--out", "run"], &dir, "already holds a run");
    // A corrupt checkpoint.
    let weights = dir.join("run/ckpt-000004/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    fails(&["eval", "run"], &dir, "model.safetensors");
    // A checkpoint of another model.
    std::fs::write(&weights, &good).unwrap();
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    std::fs::write(
        dir.join("run/config.json"),
        config.replace("\"hidden\": 16", "\"hidden\": 24"),
    )
    .unwrap();
    fails(&["eval", "run"], &dir, "does not match the model");

    // Divergence keeps the last good checkpoint and says what to try.
    let mut args = vec![
        "train",
        "--steps",
        "50",
        "--lr",
        "1e4",
        "--warmup",
        "1",
        "--grad-clip",
        "1e30",
        "--checkpoint-every",
        "1",
        "--out",
        "nan",
    ];
    args.extend(TINY_GLOW);
    fails(&args, &dir, "non-finite");
    let latest = std::fs::read_to_string(dir.join("nan/LATEST")).unwrap();
    let state = std::fs::read_to_string(dir.join("nan").join(latest).join("state.json")).unwrap();
    assert!(state.contains("\"step\""));
    ok(&["eval", "nan"], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn out_of_range_options_are_refused_naming_the_range_before_anything_is_written() {
    let dir = temp("ranges");
    let train = |extra: &[&str], needle: &str| {
        let mut args = vec!["train", "--out", "run"];
        args.extend(tiny_glow_with(extra));
        if !extra.contains(&"--steps") {
            args.extend(["--steps", "2"]);
        }
        refused(&args, &dir, needle);
        assert!(!dir.join("run").exists(), "{extra:?} left a run behind");
    };
    let positive = "must be a finite number > 0, found";
    train(
        &["--grad-clip", "inf"],
        &format!("--grad-clip {positive} inf"),
    );
    train(&["--grad-clip", "0"], &format!("--grad-clip {positive} 0"));
    train(&["--lr=-1"], &format!("--lr {positive} -1"));
    let non_negative = "must be a finite number ≥ 0, found";
    train(
        &["--weight-decay", "nan"],
        &format!("--weight-decay {non_negative} NaN"),
    );
    train(
        &["--weight-decay=-5"],
        &format!("--weight-decay {non_negative} -5"),
    );
    train(
        &["--n-bits", "9"],
        "--n-bits must be an integer in [1, 8], found 9",
    );
    train(
        &["--n-bits", "0"],
        "--n-bits must be an integer in [1, 8], found 0",
    );
    train(
        &["--levels", "0"],
        "--levels must be an integer ≥ 1, found 0",
    );
    train(&["--depth", "0"], "--depth must be an integer ≥ 1, found 0");
    train(
        &["--batch-size", "0"],
        "--batch-size must be an integer ≥ 1, found 0",
    );
    train(&["--steps", "0"], "--steps must be an integer ≥ 1, found 0");
    train(
        &["--eval-every", "0"],
        "--eval-every must be an integer ≥ 1, found 0",
    );
    train(
        &["--model", "realnvp", "--alpha", "nan"],
        "--alpha must be a finite number in (0, 0.5), found NaN",
    );
    train(
        &["--model", "vector", "--data", "moons", "--flow-steps", "0"],
        "--flow-steps must be an integer ≥ 1, found 0",
    );
    train(
        &["--levels", "70"],
        "70 squeezes need height and width divisible by 2^70",
    );
    // `train` takes --data-dir (`data fetch` takes --dir).
    train(&["--data", "mnist"], "pass --data-dir DIR");

    // Paths go into config.json and JSON reports: UTF-8 only.
    let out = Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(["sample", "nowhere", "--out"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"s\xff.png"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("revflow: arguments must be valid UTF-8 text"),
        "{stderr}"
    );

    // Options of the commands that use a run are checked before the run is opened.
    for (args, needle) in [
        (
            &["sample", "nowhere", "--temperature", "nan"][..],
            "--temperature must be a finite number ≥ 0, found NaN",
        ),
        (&["sample", "nowhere", "--temperature", "inf"], "found inf"),
        (&["sample", "nowhere", "--temperature=-1"], "found -1"),
        (
            &["sample", "nowhere", "--temperatures", "0,nan"],
            "--temperatures must be",
        ),
        (
            &["sample", "nowhere", "-n", "0"],
            "-n must be an integer ≥ 1, found 0",
        ),
        (
            &["interpolate", "nowhere", "test:0", "test:1", "--steps", "1"],
            "--steps must be an integer ≥ 2, found 1",
        ),
        (
            &[
                "manipulate",
                "nowhere",
                "test:0",
                "--from",
                "0",
                "--to",
                "1",
                "--alphas",
                "0,nan",
            ],
            "--alphas must be a finite number, found NaN",
        ),
        (
            &[
                "manipulate",
                "nowhere",
                "test:0",
                "--from",
                "0",
                "--to",
                "1",
                "--per-class",
                "0",
            ],
            "--per-class must be an integer ≥ 1, found 0",
        ),
        (
            &["eval", "nowhere", "--batch-size", "0"],
            "--batch-size must be an integer ≥ 1, found 0",
        ),
        (
            &["bench", "--iters", "0"],
            "--iters must be an integer ≥ 1, found 0",
        ),
        (
            &["bench", "--batch", "0"],
            "--batch must be an integer ≥ 1, found 0",
        ),
        (
            &["figures", "--steps", "0"],
            "--steps must be an integer ≥ 1, found 0",
        ),
    ] {
        refused(args, &dir, needle);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Overwrites the first (by name) f32 tensor of a safetensors file with NaN; returns its name.
fn poison_weights(path: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, info) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["dtype"] == "F32")
        .min_by_key(|(k, _)| k.as_str())
        .unwrap();
    let [a, b] = [0, 1].map(|i| info["data_offsets"][i].as_u64().unwrap() as usize);
    bytes[8 + n + a..8 + n + b].fill(0xFF);
    std::fs::write(path, bytes).unwrap();
    name.clone()
}

/// Writes a latent file by hand: level `i` holds `rows × cols[i]` copies of `value`.
fn latent_file(path: &Path, rows: usize, cols: &[usize], value: f32) {
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (i, c) in cols.iter().enumerate() {
        let start = data.len();
        data.extend((0..rows * c).flat_map(|_| value.to_le_bytes()));
        header.insert(
            format!("z{i}"),
            serde_json::json!({"dtype": "F32", "shape": [rows, c], "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let bytes = [&(header.len() as u64).to_le_bytes()[..], &header, &data].concat();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_run_files_and_contradicting_resumes_are_one_line_each() {
    let dir = temp("runfiles");
    for (out, hidden) in [("run", "16"), ("other", "8")] {
        let mut args = vec!["train", "--steps", "3", "--out", out];
        args.extend(tiny_glow_with(&["--hidden", hidden]));
        ok(&args, &dir);
    }
    let checkpoint = |run: &str| {
        revflow::training::RunDir::new(&dir.join(run))
            .current_checkpoint()
            .unwrap()
    };

    // A resume may change the schedule, nothing that describes the model or its data.
    let resume = ["train", "--resume", "--out", "run"];
    let may = "a resume may change only --steps, --lr, --warmup, --grad-clip, --weight-decay, --eval-every, --checkpoint-every";
    for (extra, needle) in [
        (
            &["--hidden", "32"][..],
            format!("--hidden 32 contradicts the run's hidden 16; {may}"),
        ),
        (
            &["--model", "realnvp"],
            "--model realnvp contradicts the run's model glow".into(),
        ),
        (
            &["--data", "moons"],
            "--data moons contradicts the run's data digits".into(),
        ),
        (
            &["--coupling", "additive"],
            "--coupling (giving affine false) contradicts the run's affine true".into(),
        ),
        (
            &["--batch-size", "8"],
            "--batch-size 8 contradicts the run's batch_size 32".into(),
        ),
        (
            &["--seed", "5"],
            "--seed 5 contradicts the run's seed 0".into(),
        ),
        (
            &["--steps", "2"],
            "--steps must be an integer ≥ 3, found 2".into(),
        ),
        (
            &["--lr", "nan"],
            "--lr must be a finite number > 0, found NaN".into(),
        ),
    ] {
        refused(&[&resume[..], extra].concat(), &dir, &needle);
    }
    ok(
        &[&resume[..], &["--steps", "4", "--lr", "5e-4"]].concat(),
        &dir,
    );

    // Another run's optimizer state: refused before burn sees it.
    let optimizer = checkpoint("run").join("optimizer.bin");
    let own = std::fs::read(&optimizer).unwrap();
    std::fs::copy(checkpoint("other").join("optimizer.bin"), &optimizer).unwrap();
    // (After the line saying what is being trained: the model is needed to check it.)
    fails(
        &[&resume[..], &["--steps", "6"]].concat(),
        &dir,
        "optimizer.bin: not the optimizer state of this run's model",
    );
    std::fs::write(&optimizer, own).unwrap();

    // Each interpolation end is one input, in range.
    refused(
        &["interpolate", "run", "test:0..5", "test:200"],
        &dir,
        "test:0..5: expected one input (an image file, test:N or train:N), not a range",
    );
    refused(
        &["interpolate", "run", "test:0", "test:300"],
        &dir,
        "indices below 300",
    );
    refused(
        &["interpolate", "run", "test:0", "test:18446744073709551615"],
        &dir,
        "indices below 300",
    );
    refused(
        &["sample", "run", "--class", "3"],
        &dir,
        "--class needs a class-conditional run",
    );

    // A latent file without rows.
    latent_file(&dir.join("empty.safetensors"), 0, &[64], 0.0);
    refused(
        &["decode", "run", "empty.safetensors"],
        &dir,
        "z0 has no rows",
    );

    // config.json edited by hand.
    let config = dir.join("run/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    for (edited, needle) in [
        (
            text.replace("\"n_bits\": 8", "\"n_bits\": 99"),
            "model.n_bits must be an integer in [1, 8], found 99",
        ),
        (
            text.replace("\"n_bits\": 8", "\"n_bits\": 0"),
            "model.n_bits must be an integer in [1, 8], found 0",
        ),
        (text.replace("\"lr\": 0.001", "\"lr\": null"), "config.json"),
        (
            text.replacen('{', "{\"colour\": 1,", 1),
            "unknown field `colour`",
        ),
    ] {
        std::fs::write(&config, edited).unwrap();
        refused(&["eval", "run"], &dir, needle);
    }
    std::fs::write(&config, text).unwrap();

    // NaN weights: named, not evaluated to "NaN bits/dim".
    let weights = checkpoint("run").join("model.safetensors");
    let tensor = poison_weights(&weights);
    refused(
        &["eval", "run"],
        &dir,
        &format!("model.safetensors: {tensor} holds NaN or infinite values"),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_list_names_every_set_and_fetch_fails_cleanly_offline() {
    let dir = temp("data");
    let list = ok(&["data", "list"], &dir);
    for name in ["digits", "mnist", "cifar10", "moons", "swissroll"] {
        assert!(list.contains(name), "{name}");
    }
    fails(
        &["data", "fetch", "nosuchset", "--dir", "d"],
        &dir,
        "nosuchset",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn glow_realnvp_and_nice_learn_from_mnist_format_files() {
    let dir = temp("idx");
    std::fs::create_dir_all(dir.join("mnist")).unwrap();
    digits_as_idx(&dir.join("mnist"));
    let common = [
        "--data",
        "mnist",
        "--data-dir",
        "mnist",
        "--steps",
        "200",
        "--eval-every",
        "100",
        "--batch-size",
        "32",
        "--n-bits",
        "4",
    ];
    let models: [&[&str]; 3] = [
        &[
            "--model", "glow", "--levels", "2", "--depth", "2", "--hidden", "16",
        ],
        &["--model", "realnvp", "--hidden", "8", "--blocks", "1"],
        &["--model", "nice", "--hidden", "64", "--layers", "2"],
    ];
    for (i, model) in models.iter().enumerate() {
        let out = format!("run{i}");
        let mut args: Vec<&str> = vec!["train", "--out", &out];
        args.extend(common);
        args.extend(*model);
        ok(&args, &dir);
        let steps = metric(&dir.join(&out), "bits_per_dim");
        let tests = metric(&dir.join(&out), "test_bits_per_dim");
        let (first, last) = (steps[0], tests[tests.len() - 1]);
        assert!(
            last < first - 0.5,
            "{model:?}: first training batch {first} bits/dim, final test {last}"
        );
        assert!(
            tests[1] <= tests[0] + 0.05,
            "{model:?}: test bits/dim {tests:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_image_folder_of_mixed_sizes_needs_resize_and_then_trains() {
    let dir = temp("folder");
    for (class, size) in [("a", 8), ("a", 8), ("b", 8), ("b", 12)] {
        let folder = dir.join("imgs").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        let n = std::fs::read_dir(&folder).unwrap().count();
        let img = image::GrayImage::from_fn(size, size, |x, y| {
            image::Luma([((x * 31 + y * 17) % 256) as u8])
        });
        img.save(folder.join(format!("{n}.png"))).unwrap();
    }
    fails(
        &["train", "--data", "images:imgs", "--steps", "2"],
        &dir,
        "--resize",
    );
    let mut args = vec![
        "train",
        "--data",
        "images:imgs",
        "--resize",
        "4x4",
        "--steps",
        "3",
        "--out",
        "run",
        "--json",
    ];
    args.extend(["--levels", "1", "--depth", "1", "--hidden", "8"]);
    let summary = json(&ok(&args, &dir));
    assert!(summary["test_bits_per_dim"].as_f64().unwrap().is_finite());
    // The run remembers the size: evaluation and sampling work on the same data.
    ok(&["eval", "run"], &dir);
    let sample = json(&ok(
        &["sample", "run", "-n", "4", "--out", "s.png", "--json"],
        &dir,
    ));
    assert_eq!(sample["samples"], 4);
    // An attribute direction from a CSV of image files.
    std::fs::create_dir_all(dir.join("attr")).unwrap();
    let mut csv = String::from("file,bright\n");
    for i in 0..4u8 {
        image::GrayImage::from_pixel(4, 4, image::Luma([40 + 60 * i]))
            .save(dir.join(format!("attr/{i}.png")))
            .unwrap();
        csv.push_str(&format!("{i}.png,{}\n", if i >= 2 { 1 } else { -1 }));
    }
    std::fs::write(dir.join("attr/attrs.csv"), csv).unwrap();
    let out = ok(
        &[
            "manipulate",
            "run",
            "attr/0.png",
            "--attributes",
            "attr/attrs.csv",
            "--attribute",
            "bright",
            "--alphas",
            "0,1",
            "--out",
            "m.png",
        ],
        &dir,
    );
    assert!(out.contains("towards bright"), "{out}");
    assert_eq!(
        image::image_dimensions(dir.join("m.png")).unwrap(),
        (2 * 17 + 1, 17 + 1)
    );
    fails(
        &[
            "manipulate",
            "run",
            "attr/0.png",
            "--attributes",
            "attr/attrs.csv",
            "--attribute",
            "dark",
        ],
        &dir,
        "has no column \"dark\"",
    );
    // A malformed option is clap's usage error: exit code 2, the problem named.
    let out = revflow(
        &["train", "--data", "images:imgs", "--resize", "4by4"],
        &dir,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected WIDTHxHEIGHT"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Python with PyTorch: bench/.venv (made by bench/setup.sh), else the system one.
fn python_with_torch() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join("bench/.venv/bin/python");
    [venv, PathBuf::from("python3")].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import torch, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn pytorch_reference_reproduces_the_log_likelihood() {
    let Some(python) = python_with_torch() else {
        eprintln!("SKIPPED pytorch_reference_reproduces_the_log_likelihood: PyTorch is not installed (run bench/setup.sh)");
        return;
    };
    let dir = temp("reference");
    ok(
        &[
            "bench",
            "--configs",
            "digits",
            "--batch",
            "8",
            "--export",
            "export",
        ],
        &dir,
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference.py");
    let out = Command::new(python)
        .arg(script)
        .arg("check")
        .arg(dir.join("export"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = json(&stdout);
    assert!(
        check["max_rel_diff_f32"].as_f64().unwrap() <= 1e-4,
        "{check}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn figures_draws_the_chosen_figure_and_refuses_unknown_ones() {
    let dir = temp("figures");
    let out = ok(
        &[
            "figures",
            "--out",
            "figs",
            "--only",
            "change-of-variables",
            "--json",
        ],
        &dir,
    );
    let report = json(&out);
    let figure = &report[0];
    assert_eq!(figure["figure"], "change-of-variables");
    let integral = figure["numbers"]["integral_tanh"].as_f64().unwrap();
    assert!((integral - 1.0).abs() < 1e-4, "{integral}");
    let picture = image::open(dir.join("figs/change-of-variables.png")).unwrap();
    assert!(picture.width() > 1000 && picture.height() > 400);
    fails(
        &["figures", "--only", "spirals"],
        &dir,
        "unknown figure \"spirals\"",
    );
    // A run folder that is not there: one line naming it.
    fails(
        &["figures", "--only", "latents", "--run", "nowhere"],
        &dir,
        "nowhere",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fails`, with `REVFLOW_MEMORY_LIMIT` set for the child process.
fn fails_under_limit(args: &[&str], cwd: &Path, limit: &str, needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .current_dir(cwd)
        .env("REVFLOW_MEMORY_LIMIT", limit)
        .output()
        .expect("revflow runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "revflow {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(needle), "expected {needle:?} in {last:?}");
}

#[test]
fn requests_beyond_the_memory_limit_are_one_line_and_outputs_come_in_batches() {
    let dir = temp("memory");
    let folder = dir.join("big");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..12 {
        image::GrayImage::from_pixel(16, 16, image::Luma([i * 20]))
            .save(folder.join(format!("{i}.png")))
            .unwrap();
    }
    // Twelve images of 16×16 under a 4 KiB limit stand for twelve of 20000×20000: refused
    // from their headers, before any is decoded.
    fails_under_limit(
        &["train", "--data", "images:big", "--steps", "1"],
        &dir,
        "4K",
        "memory limit",
    );
    fails(
        &[
            "train",
            "--data",
            "images:big",
            "--resize",
            "100000x100000",
            "--steps",
            "1",
        ],
        &dir,
        "REVFLOW_MEMORY_LIMIT",
    );
    fails(
        &["train", "--hidden", "1000000000", "--steps", "1"],
        &dir,
        "memory limit",
    );

    let mut args = vec!["train", "--steps", "2", "--out", "run"];
    args.extend(TINY_GLOW);
    ok(&args, &dir);
    fails(&["sample", "run", "-n", "1000000000"], &dir, "memory limit");
    fails(
        &[
            "interpolate",
            "run",
            "test:0",
            "test:1",
            "--steps",
            "100000000",
        ],
        &dir,
        "images",
    );
    // More samples than one batch: drawn batch by batch into one grid and CSV.
    let sample = json(&ok(
        &[
            "sample", "run", "-n", "300", "--out", "s.png", "--csv", "s.csv", "--json",
        ],
        &dir,
    ));
    assert_eq!(sample["samples"], 300);
    let csv = std::fs::read_to_string(dir.join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 300);
    assert_eq!(csv.lines().last().unwrap().split(',').count(), 64);
    // Set but empty means the default limit, as unset does.
    let out = Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(["sample", "run", "-n", "4", "--out", "e.png"])
        .current_dir(&dir)
        .env("REVFLOW_MEMORY_LIMIT", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg(not(feature = "wgpu"))]
fn a_device_this_build_lacks_is_one_line_before_anything_is_read_or_written() {
    let dir = temp("device");
    for args in [
        vec!["train", "--device", "wgpu", "--steps", "2", "--out", "run"],
        vec!["eval", "run", "--device", "wgpu"],
        vec!["sample", "run", "--device", "wgpu"],
        vec!["score", "run", "test", "--device", "wgpu"],
        vec!["encode", "run", "test", "--device", "wgpu:1"],
        vec!["decode", "run", "z.safetensors", "--device", "vulkan"],
        vec!["figures", "--device", "wgpu", "--out", "run"],
    ] {
        refused(&args, &dir, "built without the wgpu backend; rebuild with");
    }
    assert!(!dir.join("run").exists());
    // `revflow devices` names the CPU and how to build the GPU backends.
    let out = ok(&["devices"], &dir);
    assert!(out.starts_with("cpu "), "{out}");
    assert!(out.contains("--features wgpu"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_device_is_one_line_naming_the_forms() {
    let dir = temp("bad-device");
    for (device, says) in [
        ("tpu", "expected cpu, wgpu, wgpu:N, vulkan, cuda or cuda:N"),
        ("wgpu:x", "whole number"),
        ("cpu:1", "takes no index"),
    ] {
        // clap's error: its first line names the value and our reason, exit code 2.
        let out = revflow(&["sample", "run", "--device", device], &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(device) && first.contains(says), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spline_couplings_train_sample_and_check_their_options() {
    let dir = temp("spline");
    let moons = ["train", "--data", "moons", "--samples", "2000"];
    let with = |extra: &[&'static str]| [&moons[..], extra].concat();
    refused(
        &with(&[
            "--coupling",
            "affine",
            "--bins",
            "4",
            "--steps",
            "2",
            "--out",
            "a",
        ]),
        &dir,
        "--bins shapes spline couplings; add --coupling spline",
    );
    for (option, value, says) in [
        (
            "--bins",
            "1",
            "--bins must be an integer in [2, 64], found 1",
        ),
        (
            "--tail-bound",
            "nan",
            "--tail-bound must be a finite number",
        ),
        ("--tail-bound", "0", "[0.001, 10000], found 0"),
    ] {
        let args = with(&["--coupling", "spline", option, value, "--out", "a"]);
        refused(&args, &dir, says);
    }
    assert!(!dir.join("a").exists());
    // A short run: the loss falls, the config records the spline, samples are finite.
    let args = with(&[
        "--coupling",
        "spline",
        "--bins",
        "6",
        "--permutation",
        "reverse",
        "--steps",
        "150",
        "--batch-size",
        "128",
        "--eval-every",
        "150",
        "--out",
        "s",
    ]);
    ok(&args, &dir);
    let loss = metric(&dir.join("s"), "loss");
    let (first, last) = (
        loss[..10].iter().sum::<f64>() / 10.0,
        loss[140..].iter().sum::<f64>() / 10.0,
    );
    assert!(last < first - 0.3, "loss {first} → {last}");
    let config = json(
        &std::fs::read_to_string(dir.join("s/config.json"))
            .unwrap()
            .replace('\n', ""),
    );
    assert_eq!(config["model"]["spline"]["bins"], 6);
    ok(
        &[
            "sample", "s", "-n", "64", "--csv", "s.csv", "--out", "s.png",
        ],
        &dir,
    );
    let values: Vec<f64> = std::fs::read_to_string(dir.join("s.csv"))
        .unwrap()
        .split([',', '\n'])
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(values.len() >= 128 && values.iter().all(|v| v.is_finite()));
    // A resume may not change the spline.
    refused(
        &[
            "train", "--resume", "--out", "s", "--bins", "5", "--steps", "200",
        ],
        &dir,
        "--bins 5 contradicts the run's bins 6",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn maf_and_iaf_train_sample_and_score_from_the_command_line() {
    let dir = temp("maf-iaf");
    for (model, extra) in [
        ("maf", vec![]),
        (
            "iaf",
            vec!["--coupling", "spline", "--residual", "--order", "random"],
        ),
    ] {
        let mut args = vec![
            "train",
            "--model",
            model,
            "--data",
            "moons",
            "--samples",
            "2048",
            "--steps",
            "150",
            "--eval-every",
            "25",
            "--flow-steps",
            "3",
            "--hidden",
            "32",
            "--lr",
            "3e-3",
            "--warmup",
            "20",
            "--out",
            model,
            "--json",
        ];
        args.extend(extra.iter().copied());
        let out = json(&ok(&args, &dir));
        assert_eq!(out["model"], model);
        let config = std::fs::read_to_string(dir.join(model).join("config.json")).unwrap();
        assert!(
            config.contains(&format!("\"flow\": \"{model}\"")),
            "{config}"
        );
        let tests = metric(&dir.join(model), "test_bits_per_dim");
        eprintln!("{model}: test bits/dim {tests:?}");
        assert!(
            tests[5] < tests[0] - 0.1,
            "{model}: test bits/dim {tests:?}"
        );
        let csv = format!("{model}.csv");
        ok(
            &[
                "sample", model, "-n", "300", "--out", "s.png", "--csv", &csv,
            ],
            &dir,
        );
        let text = std::fs::read_to_string(dir.join(&csv)).unwrap();
        assert_eq!(text.lines().count(), 300);
        ok(&["score", model, "test"], &dir);
    }
    refused(
        &["train", "--model", "maf", "--steps", "1", "--out", "img"],
        &dir,
        "MAF and IAF model vectors; digits holds images",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CSV of points on rings whose radius is the column `r` (plus an unused column `w`).
fn rings_csv(path: &Path, n: usize) {
    let mut text = String::from("x,r,y,w\n");
    let mut state = 12345u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..n {
        let r = 1.0 + 2.0 * uniform();
        let t = std::f64::consts::TAU * uniform();
        let w = uniform();
        text += &format!("{:.5},{r:.5},{:.5},{w:.3}\n", r * t.cos(), r * t.sin());
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_context_conditional_flow_trains_samples_at_a_context_and_scores_csv_rows() {
    let dir = temp("context");
    rings_csv(&dir.join("rings.csv"), 2000);
    let data = "csv:rings.csv";
    ok(
        &[
            "train",
            "--model",
            "maf",
            "--data",
            data,
            "--context",
            "r,w",
            "--steps",
            "300",
            "--eval-every",
            "100",
            "--flow-steps",
            "3",
            "--hidden",
            "32",
            "--lr",
            "3e-3",
            "--out",
            "run",
        ],
        &dir,
    );
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    assert!(
        config.contains("\"columns\"") && config.contains("\"mean\""),
        "{config}"
    );
    let tests = metric(&dir.join("run"), "test_bits_per_dim");
    assert!(tests[2] < tests[0] - 0.1, "test bits/dim {tests:?}");
    // Samples follow the radius they are given.
    let mut radii = vec![];
    for r in ["1.5", "2.5"] {
        let context = format!("{r},0.5");
        ok(
            &[
                "sample",
                "run",
                "--context",
                &context,
                "-n",
                "400",
                "--temperature",
                "1",
                "--out",
                "s.png",
                "--csv",
                "s.csv",
            ],
            &dir,
        );
        let text = std::fs::read_to_string(dir.join("s.csv")).unwrap();
        let mean = text
            .lines()
            .map(|l| {
                let v: Vec<f64> = l.split(',').map(|c| c.parse().unwrap()).collect();
                v[0].hypot(v[1])
            })
            .sum::<f64>()
            / 400.0;
        radii.push(mean);
    }
    assert!(
        radii[1] - radii[0] > 0.6,
        "mean radii at r = 1.5 and 2.5: {radii:?}"
    );
    // Scoring reads the context from the CSV's own columns, in any order.
    ok(&["score", "run", data, "--out", "sc"], &dir);
    let scores = std::fs::read_to_string(dir.join("sc/scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 1 + 2000);
    // Encoding keeps each row's context with its latent, so decoding gives the row back.
    ok(&["encode", "run", data, "--out", "z.safetensors"], &dir);
    ok(
        &["decode", "run", "z.safetensors", "--out", "back.csv"],
        &dir,
    );
    let back = std::fs::read_to_string(dir.join("back.csv")).unwrap();
    let original = std::fs::read_to_string(dir.join("rings.csv")).unwrap();
    let mut rows = 0;
    for (b, o) in back.lines().zip(original.lines().skip(1)) {
        let b: Vec<f64> = b.split(',').map(|v| v.parse().unwrap()).collect();
        let o: Vec<f64> = o.split(',').map(|v| v.parse().unwrap()).collect();
        // The file's columns are x, r, y, w; the model's x is (x, y).
        assert!(
            (b[0] - o[0]).abs() < 1e-4 && (b[1] - o[2]).abs() < 1e-4,
            "{b:?} vs {o:?}"
        );
        rows += 1;
    }
    assert_eq!(rows, 2000);
    ok(
        &["encode", "run", "test:0..5", "--out", "t.safetensors"],
        &dir,
    );
    std::fs::write(dir.join("no-context.csv"), "x,y\n0.1,0.2\n").unwrap();
    refused(
        &["score", "run", "csv:no-context.csv"],
        &dir,
        "has no column 'r', which the model is conditioned on",
    );
    fails(
        &["sample", "run"],
        &dir,
        "conditioned on a context (r,w); give one with --context",
    );
    fails(
        &["sample", "run", "--context", "1"],
        &dir,
        "expected 2 comma-separated value(s) (r, w)",
    );
    fails(
        &["sample", "run", "--context", "1,x"],
        &dir,
        "'x' for w is not a finite number",
    );
    refused(
        &[
            "train",
            "--data",
            data,
            "--context",
            "q",
            "--steps",
            "1",
            "--out",
            "q",
        ],
        &dir,
        "rings.csv has no column 'q'; its columns are x, r, y, w",
    );
    refused(
        &[
            "train",
            "--data",
            data,
            "--context",
            "x,r,y,w",
            "--steps",
            "1",
            "--out",
            "q",
        ],
        &dir,
        "every column of",
    );
    refused(
        &["train", "--context", "r", "--steps", "1", "--out", "q"],
        &dir,
        "--context takes columns of vector data",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn variational_dequantization_trains_and_its_bound_tightens_with_more_draws() {
    let dir = temp("variational");
    let mut args = vec![
        "train",
        "--steps",
        "40",
        "--eval-every",
        "40",
        "--dequantization",
        "variational",
        "--dequant-couplings",
        "2",
        "--dequant-hidden",
        "8",
        "--out",
        "run",
    ];
    args.extend(TINY_GLOW);
    ok(&args, &dir);
    let config = std::fs::read_to_string(dir.join("run/config.json")).unwrap();
    assert!(config.contains("\"variational\""), "{config}");
    let eval = |k: &str| {
        json(&ok(
            &["eval", "run", "--json", "--dequant-samples", k],
            &dir,
        ))["bits_per_dim"]
            .as_f64()
            .unwrap()
    };
    let (one, many) = (eval("1"), eval("8"));
    assert!(many < one, "K = 8 gives {many} bits/dim, K = 1 {one}");
    ok(&["sample", "run", "-n", "4", "--out", "s.png"], &dir);
    refused(
        &[
            "train",
            "--dequantization",
            "variational",
            "--dequant-hidden",
            "0",
            "--steps",
            "1",
            "--out",
            "bad",
        ],
        &dir,
        "--dequant-hidden must be an integer ≥ 1, found 0",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_starts_on_the_port_it_prints_and_refuses_bad_options_in_one_line() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = temp("serve");
    std::fs::create_dir_all(dir.join("runs")).unwrap();
    refused(
        &["serve", "no-such-folder"],
        &dir,
        "no-such-folder is not a folder of runs",
    );
    refused(&["serve", "runs", "--queue", "0"], &dir, "--queue");
    refused(
        &["serve", "runs", "--upload-limit", "10"],
        &dir,
        "--upload-limit",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(["serve", "runs", "--port", "0"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "serving runs at http://127.0.0.1:PORT/"
    let url = line.split_whitespace().last().unwrap().to_string();
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The port it took is in use now: a second server on it is refused in one line.
    refused(
        &["serve", "runs", "--port", &port.to_string()],
        &dir,
        "cannot listen on",
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request =
        format!("GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"runs\":[]}"), "{answer}");
    std::fs::remove_dir_all(&dir).unwrap();
}
