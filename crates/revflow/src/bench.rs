//! Timing the hot paths — a training step, likelihood evaluation, sampling — of Glow at the
//! sizes people use, and exporting a model with a batch for an independent implementation to
//! check (see `bench/` at the repository root).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::error::{FlowError, Result};
use crate::models::{GlowConfig, Model, ModelConfig};
use crate::rng::Rng;
use crate::weights::{self, write_atomic};

/// A benchmark configuration: a Glow and the batch size it is timed at.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub name: &'static str,
    pub glow: GlowConfig,
    pub batch: usize,
}

/// Glow on the digits' 8×8×1, MNIST's 28×28×1 and CIFAR-10's 32×32×3, at widths and depths
/// that fit a 2-core machine.
pub fn presets() -> Vec<BenchConfig> {
    let glow = |shape, levels, depth, hidden| GlowConfig {
        shape,
        levels,
        depth,
        hidden,
        ..GlowConfig::default()
    };
    vec![
        BenchConfig {
            name: "digits",
            glow: glow([1, 8, 8], 2, 8, 64),
            batch: 64,
        },
        BenchConfig {
            name: "mnist",
            glow: glow([1, 28, 28], 2, 8, 128),
            batch: 32,
        },
        BenchConfig {
            name: "cifar",
            glow: glow([3, 32, 32], 3, 8, 256),
            batch: 16,
        },
    ]
}

/// Median milliseconds per operation, and the process's peak resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub config: String,
    pub batch: usize,
    pub train_ms: f64,
    pub eval_ms: f64,
    pub sample_ms: f64,
    pub peak_rss_mb: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?; // warm-up: allocations, caches
    }
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ms))
}

/// Peak resident set size of this process (Linux), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Random 8-bit images, seeded.
pub fn pixels(n: usize, dims: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..n * dims)
        .map(|_| (rng.next_u64() % 256) as f32)
        .collect();
    Tensor::from_data(TensorData::new(v, [n, dims]), device)
}

/// Adds seeded N(0, std²) noise to every trainable parameter, so that a numerical check
/// exercises every layer (zero-initialised layers would hide most of the model).
pub fn jitter<M: Module>(module: M, std: f64, seed: u64) -> M {
    struct Noise(Rng, f64);
    impl ModuleMapper for Noise {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (rng, std) = (&mut self.0, self.1);
            param.map(|t| {
                if !t.is_require_grad() {
                    return t;
                }
                let noise: Vec<f32> = (0..t.shape().num_elements())
                    .map(|_| (rng.normal() * std) as f32)
                    .collect();
                let noise = Tensor::<D>::from_data(TensorData::new(noise, t.dims()), &t.device());
                (t.detach() + noise).detach().require_grad()
            })
        }
    }
    module.map(&mut Noise(Rng::new(seed), std))
}

/// A data-initialised, jittered Glow on the autodiff device, and its batch.
fn setup(config: &BenchConfig, device: &Device) -> Result<(Model, Tensor<2>)> {
    let model_config = ModelConfig::Glow(config.glow.clone());
    let x = pixels(config.batch, model_config.dims(), 7, device);
    let model = model_config
        .init(device)?
        .data_init(x.clone(), None)?
        .train();
    // Noise of a fixed size would blow wide coupling networks up (log p ~ -1e6 on the CIFAR
    // shape): scale it with the width.
    let std = 0.02 * (64.0 / config.glow.hidden as f64).sqrt();
    Ok((jitter(model, std, 11), x))
}

/// Times a training step, likelihood evaluation and sampling of `config`.
pub fn run(config: &BenchConfig, iters: usize) -> Result<Timings> {
    let device = Device::flex().autodiff();
    device.seed(3);
    let (mut model, x) = setup(config, &device)?;
    let dims = config.glow.shape.iter().product::<usize>() as f64;
    let mut optimizer = AdamConfig::new().init();
    let train_ms = time(iters, || {
        let (log_p, _) = model.log_prob(x.clone(), None, true)?;
        let loss = log_p.neg().mean() / (dims * std::f64::consts::LN_2);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-3, model.clone(), grads);
        Ok(())
    })?;
    let inference = model.valid();
    let plain = Device::flex();
    let x = x.inner();
    let eval_ms = time(iters, || {
        let (log_p, _) = inference.log_prob(x.clone(), None, false)?;
        let _ = log_p.into_data(); // wait for the result
        Ok(())
    })?;
    let sample_ms = time(iters, || {
        let _ = inference
            .sample(config.batch, 1.0, None, &plain)?
            .into_data();
        Ok(())
    })?;
    Ok(Timings {
        config: config.name.to_string(),
        batch: config.batch,
        train_ms,
        eval_ms,
        sample_ms,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Writes `config.json`, `model.safetensors` (data-initialised, jittered weights),
/// `batch.safetensors` (tensor `pixels`) and `expected.json` (noise-free log p per sample in
/// nats) into `dir`, for an independent implementation to reproduce.
pub fn export(config: &BenchConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| FlowError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let device = Device::flex().autodiff();
    device.seed(3);
    let (model, x) = setup(config, &device)?;
    let model = model.valid();
    let x = x.inner();
    let model_config = ModelConfig::Glow(config.glow.clone());
    let text = serde_json::to_string_pretty(
        &serde_json::json!({"model": model_config, "batch": config.batch}),
    )
    .expect("serialisable");
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    weights::save(&model, &dir.join("model.safetensors"))?;
    crate::latents::save_named(
        &dir.join("batch.safetensors"),
        &[("pixels", x.clone())],
        Default::default(),
    )?;
    let (log_p, _) = model.log_prob(x, None, false)?;
    let log_p = log_p.into_data().try_to_vec_as::<f64>().expect("floats");
    let text = serde_json::to_string(&serde_json::json!({"log_p": log_p})).expect("serialisable");
    write_atomic(&dir.join("expected.json"), text.as_bytes())
}
