//! Tests of the training loop: it learns, it resumes onto the same loss curve, its run
//! directory is complete and consistent, and it fails clearly.
//!
//! The flex backend keeps one random generator for the whole process, so tests that run in
//! parallel draw from each other's streams. The tests that need bit-for-bit reproducibility
//! (resuming, re-evaluating a checkpoint) therefore run [`alone`] in a child process; run in
//! process next to the crate's other tests, the resume test failed 2 times out of 6.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use super::*;
use crate::data::{load, ImageSet, VectorSet};
use crate::flow::to_f64;
use crate::models::{GlowConfig, NiceConfig, RealNvpConfig, VectorFlowConfig};

// ---------------------------------------------------------------------------------------
// Helpers

/// A fresh, empty run folder unique to this process and test, removed when dropped.
struct TempRun(PathBuf);

impl TempRun {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("revflow-training-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    /// The folder of run `name` inside this one (not created).
    fn dir(&self, name: &str) -> RunDir {
        RunDir::new(&self.0.join(name))
    }
}

impl Drop for TempRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the test `name` of this module with the process to itself: directly when this
/// process was started for it, otherwise by starting this test binary again for just that
/// test and failing with its output if it fails.
fn alone(name: &str, body: impl FnOnce()) {
    const VAR: &str = "REVFLOW_TRAINING_TEST_ALONE";
    if std::env::var(VAR).as_deref() == Ok(name) {
        body();
        return;
    }
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, m)| m);
    let test = format!("{module}::{name}");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, name)
        .output()
        .expect("start the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its own process ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn tiny_glow(shape: [usize; 3]) -> ModelConfig {
    ModelConfig::Glow(GlowConfig {
        shape,
        levels: 2,
        depth: 1,
        hidden: 8,
        ..Default::default()
    })
}

fn tiny_vector() -> ModelConfig {
    ModelConfig::Vector(VectorFlowConfig {
        dims: 2,
        steps: 2,
        hidden: 16,
        ..Default::default()
    })
}

fn train_config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 32,
        lr: 1e-3,
        warmup: 5,
        grad_clip: 50.0,
        weight_decay: 0.0,
        eval_every: 10,
        checkpoint_every: 5,
        init_samples: 64,
        seed: 3,
    }
}

fn run_config(model: ModelConfig, train: TrainConfig, data: &str) -> RunConfig {
    RunConfig {
        model,
        train,
        data: data.to_string(),
        data_dir: None,
        data_samples: 0,
        data_resize: None,
        class_names: Vec::new(),
    }
}

/// The digits with the test part cut to `test` images, so that evaluation stays quick.
fn digits(test: usize) -> Splits {
    let mut splits = load("digits", None, 0, 0).unwrap();
    if let Data::Images(set) = &splits.test {
        let idx: Vec<usize> = (0..test.min(set.len())).collect();
        splits.test = Data::Images(set.subset(&idx));
    }
    splits
}

fn train(config: RunConfig, data: &Splits, dir: &RunDir, resume: bool) -> Result<Summary> {
    Run {
        config,
        data,
        dir: dir.clone(),
        draw_samples: None,
        stop: None,
        group: None,
        device: Device::flex(),
    }
    .train(resume, &mut |_| {})
}

/// `metrics.jsonl` as JSON values, in order.
fn metrics(dir: &RunDir) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.metrics())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (step, loss) of every training line.
fn losses(dir: &RunDir) -> Vec<(u64, f64)> {
    metrics(dir)
        .iter()
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

/// (step, test bits/dim) of every evaluation line.
fn evaluations(dir: &RunDir) -> Vec<(u64, f64)> {
    metrics(dir)
        .iter()
        .filter(|v| v.get("test_bits_per_dim").is_some())
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["test_bits_per_dim"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Test bits/dim of the checkpoint in `dir`, evaluated as training evaluates.
fn evaluate_checkpoint(config: &RunConfig, data: &Splits, dir: &RunDir) -> f64 {
    let device = Device::flex();
    let model = dir.load_model(config, &device).unwrap();
    evaluate(
        &model,
        &data.test,
        config.model.dims(),
        config.model.classes(),
        super::EVAL_BATCH,
        config.train.seed,
        &device,
        None,
    )
    .unwrap()
    .bits_per_dim
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn images(pixels: Vec<u8>, height: usize, width: usize) -> ImageSet {
    ImageSet {
        pixels,
        channels: 1,
        height,
        width,
        labels: Vec::new(),
        class_names: Vec::new(),
    }
}

fn image_splits(height: usize, width: usize, n: usize) -> Splits {
    let d = height * width;
    let pixels = (0..n * d)
        .map(|i| ((i * 37 + i / d * 11) % 256) as u8)
        .collect();
    let set = images(pixels, height, width);
    Splits {
        train: Data::Images(set.clone()),
        test: Data::Images(set),
        name: "synthetic".into(),
        description: String::new(),
    }
}

/// Every float parameter of `model`, in order.
fn parameters(model: &Model) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.push(crate::testing::to_vec(param.val()));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Test bits/dim of `config`'s data-initialised model after one warm-up step (at a tenth of
/// the learning rate or less): a run needs at least one step.
fn untrained_bits_per_dim(config: &RunConfig, data: &Splits, dir: &RunDir) -> f64 {
    let start = RunConfig {
        train: TrainConfig {
            steps: 1,
            ..config.train.clone()
        },
        ..config.clone()
    };
    train(start, data, dir, false).unwrap().test.bits_per_dim
}

// ---------------------------------------------------------------------------------------
// Learning

#[test]
fn glow_on_digits_lowers_test_bits_per_dim() {
    let tmp = TempRun::new("glow-learns");
    let dir = tmp.dir("run");
    let data = digits(300);
    let config = run_config(
        tiny_glow([1, 8, 8]),
        TrainConfig {
            steps: 150,
            batch_size: 32,
            lr: 3e-3,
            warmup: 10,
            eval_every: 1000,
            checkpoint_every: 1000,
            ..train_config(0)
        },
        "digits",
    );
    let started = Instant::now();
    let before = untrained_bits_per_dim(&config, &data, &tmp.dir("start"));
    let summary = train(config, &data, &dir, false).unwrap();
    let after = summary.test.bits_per_dim;
    let (Data::Images(tr), Data::Images(te)) = (&data.train, &data.test) else {
        unreachable!()
    };
    let baseline = per_pixel_baseline(tr, te, 8);
    let l = losses(&dir);
    let (first, last) = (
        mean(&l[..10].iter().map(|p| p.1).collect::<Vec<_>>()),
        mean(&l[l.len() - 10..].iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    eprintln!(
        "glow on digits: test bits/dim {before:.3} → {after:.3} (per-pixel baseline {baseline:.3}); \
         training loss {first:.3} → {last:.3} (means of the first and last 10 steps); {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Measured over seeds 0-5: 8.62 → 7.35‥7.43 bits/dim, training loss 8.55 → 7.37‥7.45.
    assert!(after < before - 0.8, "bits/dim {before} → {after}");
    assert!(last < first - 0.8, "training loss {first} → {last}");
    // Not asserted: beating the per-pixel baseline (2.42 bits/dim on this split). The digits
    // have 17 grey levels, which a categorical per pixel captures exactly, while an 8-bit flow
    // must learn 17 spikes 1/256 wide; even L2 K2 h16 for 600 steps reaches only 6.3 (n_bits 8)
    // or 2.63 against a 2.37 baseline (n_bits 4). It is printed for reference.
}

#[test]
fn vector_flow_on_moons_lowers_the_loss() {
    let tmp = TempRun::new("moons-learns");
    let dir = tmp.dir("run");
    let data = load("moons", None, 0, 512).unwrap();
    let config = run_config(
        tiny_vector(),
        TrainConfig {
            steps: 200,
            batch_size: 64,
            lr: 5e-3,
            warmup: 10,
            eval_every: 1000,
            checkpoint_every: 1000,
            ..train_config(0)
        },
        "moons",
    );
    let started = Instant::now();
    let before = untrained_bits_per_dim(&config, &data, &tmp.dir("start"));
    let after = train(config, &data, &dir, false).unwrap().test.bits_per_dim;
    let l = losses(&dir);
    let (first, last) = (
        mean(&l[..10].iter().map(|p| p.1).collect::<Vec<_>>()),
        mean(&l[l.len() - 10..].iter().map(|p| p.1).collect::<Vec<_>>()),
    );
    eprintln!(
        "vector flow on moons: test bits/dim {before:.3} → {after:.3}; training loss {first:.3} → {last:.3}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Measured over seeds 0-5: 2.50‥2.54 → 2.01‥2.12 bits/dim.
    assert!(after < before - 0.25, "bits/dim {before} → {after}");
    assert!(last < first - 0.25, "training loss {first} → {last}");
}

// ---------------------------------------------------------------------------------------
// Resuming and checkpoints

#[test]
fn resuming_reproduces_the_loss_curve() {
    alone("resuming_reproduces_the_loss_curve", || {
        let tmp = TempRun::new("resume");
        let data = digits(64);
        let config = |steps| {
            run_config(
                tiny_glow([1, 8, 8]),
                TrainConfig {
                    steps,
                    eval_every: 10,
                    checkpoint_every: 5,
                    ..train_config(0)
                },
                "digits",
            )
        };
        let n = 30;
        let started = Instant::now();
        // A: straight through.
        let a = tmp.dir("a");
        let summary_a = train(config(n), &data, &a, false).unwrap();
        // B: stopped after 13 steps, then resumed.
        let b = tmp.dir("b");
        train(config(13), &data, &b, false).unwrap();
        assert_eq!(b.load_state().unwrap().step, 13);
        let summary_b = train(config(n), &data, &b, true).unwrap();
        // C: interrupted at step 17 (after its checkpoint at 15), then resumed.
        let c = tmp.dir("c");
        let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Run {
                config: config(n),
                data: &data,
                dir: c.clone(),
                draw_samples: None,
                stop: None,
                group: None,
                device: Device::flex(),
            }
            .train(false, &mut |e| {
                if let Event::Step { step: 17, .. } = e {
                    panic!("interrupted");
                }
            })
        }));
        assert!(interrupted.is_err());
        assert_eq!(c.load_state().unwrap().step, 15);
        assert_eq!(losses(&c).len(), 17);
        let summary_c = train(config(n), &data, &c, true).unwrap();
        eprintln!(
            "resume: 3 runs of {n} steps in {:.1} s; final test bits/dim {} / {} / {}",
            started.elapsed().as_secs_f64(),
            summary_a.test.bits_per_dim,
            summary_b.test.bits_per_dim,
            summary_c.test.bits_per_dim
        );

        let la = losses(&a);
        assert_eq!(la.len(), n);
        assert_eq!(
            la.iter().map(|p| p.0).collect::<Vec<_>>(),
            (1..=n as u64).collect::<Vec<_>>()
        );
        // Bit for bit: the same f32 losses, evaluations and weights.
        for (name, dir) in [("b", &b), ("c", &c)] {
            let l = losses(dir);
            assert_eq!(l.len(), n, "{name}");
            for (x, y) in la.iter().zip(&l) {
                assert_eq!(x, y, "run {name} left A's loss curve");
            }
        }
        assert_eq!(summary_a.test.bits_per_dim, summary_b.test.bits_per_dim);
        assert_eq!(summary_a.test.bits_per_dim, summary_c.test.bits_per_dim);
        // The evaluations A made are in B's and C's metrics (B has one more, at 13).
        let ea = evaluations(&a);
        assert_eq!(ea.iter().map(|e| e.0).collect::<Vec<_>>(), [10, 20, 30]);
        assert_eq!(evaluations(&c), ea);
        let eb = evaluations(&b);
        assert_eq!(eb.iter().map(|e| e.0).collect::<Vec<_>>(), [10, 13, 20, 30]);
        assert!(ea.iter().all(|e| eb.contains(e)));
        // And the final weights are the same.
        let cfg = config(n);
        let (wa, wb) = (
            evaluate_checkpoint(&cfg, &data, &a),
            evaluate_checkpoint(&cfg, &data, &b),
        );
        assert_eq!(wa, wb);
        let device = Device::flex();
        let weights = |dir: &RunDir| parameters(&dir.load_model(&cfg, &device).unwrap());
        assert_eq!(weights(&a), weights(&c));
        // Each stretch of training records where it ran: C started at 0 and resumed at 15.
        let starts: Vec<(u64, String, String)> = metrics(&c)
            .iter()
            .filter(|v| v.get("started").is_some())
            .map(|v| {
                let text = |k: &str| v[k].as_str().unwrap().to_string();
                (v["step"].as_u64().unwrap(), text("started"), text("device"))
            })
            .collect();
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!((starts[0].0, starts[0].1.as_str()), (0, "new"));
        assert_eq!((starts[1].0, starts[1].1.as_str()), (15, "resumed"));
        assert!(starts.iter().all(|s| s.2.starts_with("cpu")), "{starts:?}");
    });
}

#[test]
fn fresh_and_loaded_models_train_the_same_parameters_under_the_same_ids() {
    // What the optimizer sees of each float parameter: its id and whether it is trained.
    struct Seen(Vec<(u64, bool)>);
    impl burn::module::ModuleVisitor for Seen {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.push((param.id.val(), param.val().is_require_grad()));
        }
    }
    let seen = |model: &Model| {
        let mut s = Seen(Vec::new());
        model.visit(&mut s);
        s.0
    };
    let tmp = TempRun::new("ids");
    std::fs::create_dir_all(&tmp.0).unwrap();
    let device = Device::flex().autodiff();
    let images = digits(10);
    let moons = load("moons", None, 0, 16).unwrap();
    let configs = [
        (tiny_glow([1, 8, 8]), &images),
        (
            ModelConfig::Realnvp(RealNvpConfig {
                hidden: 8,
                blocks: 1,
                ..Default::default()
            }),
            &images,
        ),
        (
            ModelConfig::Nice(NiceConfig {
                hidden: 16,
                layers: 1,
                ..Default::default()
            }),
            &images,
        ),
        (tiny_vector(), &moons),
    ];
    for (config, data) in configs {
        let name = config.name();
        let built = seen(&config.init(&device).unwrap());
        let idx: Vec<usize> = (0..8).collect();
        let (x, _) = rows(&data.train, &idx, 0, &device);
        let fresh = for_training(
            config
                .init(&device)
                .unwrap()
                .data_init(x, None, None)
                .unwrap(),
        );
        let path = tmp.0.join(format!("{name}.safetensors"));
        crate::weights::save(&fresh, &path).unwrap();
        let loaded =
            for_training(crate::weights::load(config.init(&device).unwrap(), &path).unwrap());
        let (fresh, loaded) = (seen(&fresh), seen(&loaded));
        // Data-dependent initialisation leaves trained what a built model trains.
        let trained = |v: &[(u64, bool)]| v.iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!(trained(&fresh), trained(&built), "{name}");
        assert!(trained(&built).iter().filter(|t| **t).count() > 2, "{name}");
        // The loaded copy trains the same parameters under the same ids, so a saved optimizer
        // state applies to it. (Running statistics, which Adam never sees, keep their own.)
        assert_eq!(trained(&loaded), trained(&fresh), "{name}");
        let ids =
            |v: &[(u64, bool)]| -> Vec<u64> { v.iter().filter(|p| p.1).map(|p| p.0).collect() };
        assert_eq!(ids(&loaded), ids(&fresh), "{name}");
        let mut distinct = ids(&fresh);
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ids(&fresh).len(), "{name}: ids repeat");
    }
}

#[test]
fn a_run_directory_holds_a_complete_checkpoint() {
    alone("a_run_directory_holds_a_complete_checkpoint", || {
        let tmp = TempRun::new("files");
        let dir = tmp.dir("run");
        let data = digits(100);
        let config = run_config(
            tiny_glow([1, 8, 8]),
            TrainConfig {
                steps: 12,
                eval_every: 5,
                checkpoint_every: 4,
                ..train_config(0)
            },
            "digits",
        );
        let drawn = std::cell::RefCell::new(Vec::new());
        let hook = |model: &Model, step: usize| {
            assert!(!model.devices()[0].is_autodiff());
            drawn.borrow_mut().push(step);
            Ok(())
        };
        let mut events = Vec::new();
        let summary = Run {
            config: config.clone(),
            data: &data,
            dir: dir.clone(),
            draw_samples: Some(&hook),
            stop: None,
            group: None,
            device: Device::flex(),
        }
        .train(false, &mut |e| events.push(e))
        .unwrap();

        // The last checkpoint and the one before it; the pointer names the last.
        assert_eq!(
            names(&dir.root),
            [
                ".lock",
                "LATEST",
                "ckpt-000008",
                "ckpt-000012",
                "config.json",
                "metrics.jsonl"
            ]
        );
        assert_eq!(
            dir.current_checkpoint().unwrap(),
            dir.root.join("ckpt-000012")
        );
        assert_eq!(
            names(&dir.current_checkpoint().unwrap()),
            [
                "config.json",
                "model.safetensors",
                "optimizer.bin",
                "state.json"
            ]
        );
        assert_eq!(dir.read_config().unwrap(), config);
        let state = dir.load_state().unwrap();
        assert_eq!(state.step, 12);
        assert_eq!(state.test_bits_per_dim, Some(summary.test.bits_per_dim));
        assert_eq!(summary.steps, 12);
        assert_eq!(summary.test.per_sample.len(), 100);

        // Where training started, one line per step, and the evaluations at 5, 10 and 12.
        let lines = metrics(&dir);
        assert_eq!(lines.len(), 1 + 12 + 3);
        assert_eq!(lines[0]["started"], "new");
        assert_eq!(losses(&dir).len(), 12);
        let evals = evaluations(&dir);
        assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [5, 10, 12]);
        assert_eq!(evals[2].1, summary.test.bits_per_dim);
        for v in &lines {
            if v.get("loss").is_some() {
                for key in ["bits_per_dim", "lr", "seconds"] {
                    assert!(v[key].as_f64().is_some_and(f64::is_finite), "{v}");
                }
            }
        }
        // Warm-up of 5 steps to lr 1e-3.
        assert!((lines[1]["lr"].as_f64().unwrap() - 2e-4).abs() < 1e-12);
        assert_eq!(lines.last().unwrap()["step"], 12);

        assert_eq!(*drawn.borrow(), [5, 10, 12]);
        let checkpoints: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                Event::Checkpoint { step } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(checkpoints, [0, 4, 8, 12]);
        assert!(matches!(
            events[0],
            Event::Started {
                step: 0,
                steps: 12,
                resumed: false
            }
        ));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Step { .. }))
                .count(),
            12
        );

        // The saved weights evaluate to what training reported.
        let again = evaluate_checkpoint(&config, &data, &dir);
        eprintln!(
            "checkpoint: summary {} / reloaded {again}",
            summary.test.bits_per_dim
        );
        assert_eq!(again, summary.test.bits_per_dim);
    });
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_a_checkpoint_to_resume_from() {
    let tmp = TempRun::new("diverge");
    let data = digits(32);
    let config = |steps, lr| {
        run_config(
            tiny_glow([1, 8, 8]),
            TrainConfig {
                steps,
                lr,
                warmup: 1,
                grad_clip: 1e30,
                eval_every: 1000,
                checkpoint_every: 1,
                ..train_config(0)
            },
            "digits",
        )
    };
    // One step at lr 1e6 moves every weight by about 1e6, which overflows the next loss
    // (measured: always, whatever the seed). What is kept is the data-initialised model, from
    // which training resumes with a sane learning rate.
    let fresh = tmp.dir("fresh");
    let err = train(config(20, 1e6), &data, &fresh, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite at step 2; the last good checkpoint, of step 0, is kept"),
        "{err}"
    );
    assert_eq!(fresh.load_state().unwrap().step, 0);
    let summary = train(config(3, 1e-3), &data, &fresh, true).unwrap();
    assert!(summary.test.bits_per_dim.is_finite());
    let l = losses(&fresh);
    assert_eq!(l.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(l.iter().all(|p| p.1.is_finite()));

    // Three good steps, then the same learning rate from there.
    let dir = tmp.dir("run");
    train(config(3, 1e-3), &data, &dir, false).unwrap();
    let err = train(config(20, 1e6), &data, &dir, true).unwrap_err();
    let FlowError::Training(message) = &err else {
        panic!("expected a training error, got {err}")
    };
    eprintln!("diverged: {message}");
    assert!(message.contains("non-finite"), "{message}");
    assert!(
        message.contains(&format!(
            "the last good checkpoint, of step 3, is kept in {}",
            dir.root.join("ckpt-000003").display()
        )),
        "{message}"
    );
    assert!(
        message.contains("Try a lower --lr (now 1000000)"),
        "{message}"
    );
    let failed: usize = message
        .split("at step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {message}"));
    // Step 4's update (numbered as in metrics.jsonl) broke the weights; the loss of step 5,
    // computed with them, is the first non-finite one.
    assert_eq!(failed, 5);
    let state = dir.load_state().unwrap();
    assert!(
        state.step < failed,
        "checkpoint {} vs failure {failed}",
        state.step
    );
    assert_eq!(state.step, 3);
    let l = losses(&dir);
    assert_eq!(l.last().map(|p| p.0 as usize), Some(failed - 1));
    assert!(l.iter().all(|p| p.1.is_finite()));

    // The checkpoint is complete and good: it loads, evaluates to a finite number, and
    // training resumes from it with a lower learning rate.
    assert_eq!(
        names(&dir.root),
        [
            ".lock",
            "LATEST",
            "ckpt-000002",
            "ckpt-000003",
            "config.json",
            "metrics.jsonl"
        ]
    );
    assert_eq!(
        names(&dir.current_checkpoint().unwrap()),
        [
            "config.json",
            "model.safetensors",
            "optimizer.bin",
            "state.json"
        ]
    );
    let bits = evaluate_checkpoint(&config(20, 1e-3), &data, &dir);
    assert!(
        bits.is_finite() && bits < 20.0,
        "the checkpoint evaluates to {bits}"
    );
    let summary = train(config(8, 1e-3), &data, &dir, true).unwrap();
    assert!(summary.test.bits_per_dim.is_finite());
    assert_eq!(losses(&dir).len(), 8);
}

// ---------------------------------------------------------------------------------------
// Clear errors

#[test]
fn data_of_another_shape_is_rejected_naming_both_shapes() {
    let glow = tiny_glow([1, 8, 8]);
    let big = Data::Images(images(vec![0; 2 * 28 * 28], 28, 28));
    let err = check_data(&glow, &big, "training").unwrap_err().to_string();
    assert!(
        err.contains("8×8 images with 1 channel(s)")
            && err.contains("28×28 images with 1 channel(s)"),
        "{err}"
    );
    assert!(err.starts_with("training data:"), "{err}");

    let moons = load("moons", None, 0, 8).unwrap();
    let err = check_data(&glow, &moons.test, "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("8×8 images") && err.contains("vectors of 2 values"),
        "{err}"
    );
    let vector3 = ModelConfig::Vector(VectorFlowConfig {
        dims: 3,
        ..Default::default()
    });
    let err = check_data(&vector3, &moons.train, "training")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vectors of 3 values") && err.contains("vectors of 2 values"),
        "{err}"
    );
    let digits = digits(10);
    let err = check_data(&vector3, &digits.train, "training")
        .unwrap_err()
        .to_string();
    assert!(err.contains("8×8 images"), "{err}");
    assert!(check_data(&glow, &digits.train, "training").is_ok());
    assert!(check_data(&tiny_vector(), &moons.train, "training").is_ok());

    let empty = Data::Vectors(VectorSet {
        values: Vec::new(),
        dim: 2,
        labels: Vec::new(),
        class_names: Vec::new(),
        columns: Vec::new(),
        context: Vec::new(),
        context_columns: Vec::new(),
    });
    let err = check_data(&tiny_vector(), &empty, "test")
        .unwrap_err()
        .to_string();
    assert!(err.contains("test data") && err.contains("empty"), "{err}");

    // Training refuses before writing anything.
    let tmp = TempRun::new("shape");
    let dir = tmp.dir("run");
    let splits = Splits {
        train: big.clone(),
        test: big,
        name: "big".into(),
        description: String::new(),
    };
    let err = train(
        run_config(glow, train_config(3), "big"),
        &splits,
        &dir,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("28×28"), "{err}");
    assert!(!dir.root.exists());
}

#[test]
fn resuming_another_model_or_no_run_is_a_clear_error() {
    let tmp = TempRun::new("resume-errors");
    let dir = tmp.dir("run");
    let data = image_splits(4, 4, 8);
    let config = run_config(tiny_glow([1, 4, 4]), train_config(2), "synthetic");

    // Nothing there yet.
    let err = train(config.clone(), &data, &dir, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not a revflow run: no config.json"),
        "{err}"
    );

    train(config.clone(), &data, &dir, false).unwrap();
    let other = run_config(
        ModelConfig::Glow(GlowConfig {
            shape: [1, 4, 4],
            levels: 2,
            depth: 1,
            hidden: 16,
            ..Default::default()
        }),
        train_config(4),
        "synthetic",
    );
    let err = train(other, &data, &dir, true).unwrap_err();
    assert!(matches!(err, FlowError::Resume { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("model.hidden 16 contradicts the run's model.hidden 8; a resume may change only train.steps, train.lr"),
        "{err}"
    );
    // Fewer steps than already done.
    let err = train(
        run_config(config.model.clone(), train_config(1), "synthetic"),
        &data,
        &dir,
        true,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "train.steps must be an integer ≥ 2, found 1");
    // The run is untouched and still resumes with its own model.
    assert_eq!(dir.read_config().unwrap(), config);
    assert_eq!(losses(&dir).len(), 2);
    let more = run_config(config.model.clone(), train_config(4), "synthetic");
    assert_eq!(train(more, &data, &dir, true).unwrap().steps, 4);
    assert_eq!(losses(&dir).len(), 4);

    // A config without a checkpoint.
    let bare = tmp.dir("bare");
    bare.write_config(&config).unwrap();
    let err = train(config, &data, &bare, true).unwrap_err().to_string();
    assert!(err.contains("has no checkpoint yet"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Batches and the baseline

#[test]
fn every_epoch_visits_every_index_once_in_a_seeded_order() {
    let (n, batch) = (10, 3);
    let stream = |seed| -> Vec<usize> {
        (0..20)
            .flat_map(|step| batch_indices(n, batch, step, seed))
            .collect()
    };
    let a = stream(7);
    assert_eq!(a.len(), 60);
    for epoch in a.chunks(n) {
        let mut sorted = epoch.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "{epoch:?}");
    }
    // Epochs are shuffled differently, a step gives the same batch every time, and another
    // seed gives another order.
    assert_ne!(a[..n], a[n..2 * n]);
    assert_eq!(a, stream(7));
    assert_eq!(batch_indices(n, batch, 5, 7), a[15..18]);
    assert_ne!(a, stream(8));
    // A batch larger than the data set still covers whole epochs.
    let big = batch_indices(4, 8, 0, 1);
    let mut sorted = big.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 0, 1, 1, 2, 2, 3, 3]);
}

#[test]
fn per_pixel_baseline_is_zero_for_constant_and_eight_for_uniform_pixels() {
    // 4 pixels per image.
    let constant = images(vec![77; 100 * 4], 2, 2);
    let b = per_pixel_baseline(&constant, &constant, 8);
    eprintln!("constant pixels: {b} bits/dim");
    assert!((0.0..0.01).contains(&b), "{b}");

    // Every pixel position sees each of the 256 levels exactly k times.
    let uniform = |k: usize, offset: usize| {
        let n = 256 * k;
        let pixels = (0..n)
            .flat_map(|i| (0..4).map(move |p| ((i + offset + 37 * p) % 256) as u8))
            .collect();
        images(pixels, 2, 2)
    };
    let b = per_pixel_baseline(&uniform(3, 0), &uniform(1, 11), 8);
    eprintln!("uniform pixels: {b} bits/dim");
    assert!((b - 8.0).abs() < 1e-9, "{b}");
    // On a coarser grid, uniform over 32 levels is 5 bits.
    let b = per_pixel_baseline(&uniform(3, 0), &uniform(1, 5), 5);
    assert!((b - 5.0).abs() < 1e-9, "{b}");

    // Unseen values cost more than seen ones but stay finite (smoothing).
    let test = images(vec![78; 4], 2, 2);
    let b = per_pixel_baseline(&constant, &test, 8);
    assert!(b.is_finite() && b > 8.0, "{b}");
}

// ---------------------------------------------------------------------------------------
// Conditional densities

/// Points on rings whose radius is the context: `x = r·(cos θ, sin θ) + 0.05·ε`,
/// `r ~ U[1, 3]`.
fn rings_by_radius(n: usize, seed: u64) -> VectorSet {
    let mut rng = crate::rng::Rng::new(seed);
    let (mut values, mut context) = (Vec::with_capacity(2 * n), Vec::with_capacity(n));
    for _ in 0..n {
        let r = 1.0 + 2.0 * rng.uniform();
        let theta = std::f64::consts::TAU * rng.uniform();
        values.push((r * theta.cos() + 0.05 * rng.normal()) as f32);
        values.push((r * theta.sin() + 0.05 * rng.normal()) as f32);
        context.push(r as f32);
    }
    VectorSet {
        values,
        dim: 2,
        labels: Vec::new(),
        class_names: Vec::new(),
        columns: vec!["x".into(), "y".into()],
        context,
        context_columns: vec!["r".into()],
    }
}

#[test]
fn a_context_conditional_flow_learns_how_x_depends_on_the_context() {
    let tmp = TempRun::new("context-rings");
    let (train_set, test_set) = (rings_by_radius(4096, 1), rings_by_radius(512, 2));
    let context = crate::models::Context::fit(vec!["r".into()], &train_set.context).unwrap();
    let splits = |set: VectorSet| Splits {
        train: Data::Vectors(train_set.clone()),
        test: Data::Vectors(set),
        name: "rings".into(),
        description: String::new(),
    };
    let device = Device::flex();
    let mut mean_log_p = vec![];
    for (name, context) in [("conditional", Some(context)), ("unconditional", None)] {
        let model = ModelConfig::Vector(VectorFlowConfig {
            steps: 4,
            hidden: 32,
            context,
            ..VectorFlowConfig::autoregressive(crate::models::VectorFlow::Maf)
        });
        // The unconditional flow sees the same points without their radius.
        let data = match name {
            "conditional" => splits(test_set.clone()),
            _ => {
                let plain = |s: &VectorSet| VectorSet {
                    context: Vec::new(),
                    context_columns: Vec::new(),
                    ..s.clone()
                };
                Splits {
                    train: Data::Vectors(plain(&train_set)),
                    test: Data::Vectors(plain(&test_set)),
                    ..splits(test_set.clone())
                }
            }
        };
        let config = run_config(
            model,
            TrainConfig {
                steps: 1500,
                batch_size: 128,
                lr: 3e-3,
                warmup: 20,
                eval_every: 1500,
                checkpoint_every: 1500,
                ..train_config(0)
            },
            "rings",
        );
        let dir = tmp.dir(name);
        train(config.clone(), &data, &dir, false).unwrap();
        let model = dir.load_model(&config, &device).unwrap();
        let idx: Vec<usize> = (0..test_set.len()).collect();
        let (x, c) = rows(&data.test, &idx, 0, &device);
        let (log_p, _) = model.log_prob(x, c.as_ref(), None).unwrap();
        let log_p = to_f64(&log_p);
        mean_log_p.push(log_p.iter().sum::<f64>() / log_p.len() as f64);
        if name == "conditional" {
            // Samples follow the radius they are given.
            for r in [1.5f32, 2.5] {
                let c = Tensor::<2>::from_floats([[r]], &device).expand([2000, 1]);
                let s = model
                    .sample(4, &crate::noise::indices(0, 2000), 1.0, Some(&c), &device)
                    .unwrap();
                let s = to_f64(&s);
                let radii: Vec<f64> = s.chunks(2).map(|p| p[0].hypot(p[1])).collect();
                let mean = radii.iter().sum::<f64>() / radii.len() as f64;
                let inside = radii.iter().filter(|q| (*q - r as f64).abs() < 0.3).count();
                eprintln!(
                    "context r = {r}: samples' mean radius {mean:.3}, {inside}/2000 within 0.3"
                );
                assert!(
                    (mean - r as f64).abs() < 0.15,
                    "r = {r}: mean radius {mean}"
                );
                // A flow blind to r would put about 30 % there (0.6 of the 2 units of radii).
                assert!(inside > 1400, "r = {r}: only {inside}/2000 within 0.3");
            }
        }
    }
    let (conditional, unconditional) = (mean_log_p[0], mean_log_p[1]);
    eprintln!(
        "held-out mean log p: conditional {conditional:.3}, unconditional {unconditional:.3} nats"
    );
    // Knowing the radius removes the radial spread (uniform over 2 units against ±0.05).
    assert!(
        conditional > unconditional + 1.0,
        "conditional {conditional} vs unconditional {unconditional}"
    );
}
