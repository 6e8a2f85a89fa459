//! Timing the hot paths — a training step, likelihood evaluation, sampling — of Glow at the
//! sizes people use, and exporting a model with a batch for an independent implementation to
//! check (see `bench/` at the repository root).

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::device::Backend;
use crate::error::{FlowError, Result};
use crate::files::write_atomic;
use crate::models::{GlowConfig, Model, ModelConfig};
use crate::rng::Rng;
use crate::weights;

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

/// Variants of the mnist preset for a table of how the cost grows: image size, depth and
/// batch size, one at a time.
pub fn scaling() -> Vec<BenchConfig> {
    let base = presets()
        .into_iter()
        .find(|p| p.name == "mnist")
        .expect("mnist preset");
    let with = |name, shape, depth, batch| BenchConfig {
        name,
        glow: GlowConfig {
            shape,
            depth,
            ..base.glow.clone()
        },
        batch,
    };
    vec![
        with("size 16", [1, 16, 16], 8, 32),
        with("size 28", [1, 28, 28], 8, 32),
        with("size 32", [1, 32, 32], 8, 32),
        with("size 48", [1, 48, 48], 8, 32),
        with("depth 4", [1, 28, 28], 4, 32),
        with("depth 16", [1, 28, 28], 16, 32),
        with("batch 8", [1, 28, 28], 8, 8),
        with("batch 16", [1, 28, 28], 8, 16),
        with("batch 64", [1, 28, 28], 8, 64),
    ]
}

/// Floating-point operations (2 per multiply-add) of one forward pass of `glow` on `batch`
/// images: the coupling networks' convolutions, the 1×1 mixes and the split priors. The
/// element-wise work (a few operations per value) is left out, so this slightly undercounts.
pub fn forward_flops(glow: &GlowConfig, batch: usize) -> f64 {
    let [mut c, mut h, mut w] = glow.shape;
    let hidden = glow.hidden as f64;
    let mut macs = 0.0;
    for l in 0..glow.levels {
        (c, h, w) = (c * 4, h / 2, w / 2);
        let (channels, half, pixels) = (c as f64, (c / 2) as f64, (h * w) as f64);
        let out = if glow.affine { channels } else { half };
        // Per pixel: mixing (c²), conv3×3 c/2 → hidden, conv1×1 hidden → hidden,
        // zero conv3×3 hidden → shift (and scale).
        let step = channels * channels + 9.0 * half * hidden + hidden * hidden + 9.0 * hidden * out;
        macs += glow.depth as f64 * step * pixels;
        if l + 1 < glow.levels {
            macs += 9.0 * half * channels * pixels; // the split's prior, a zero conv3×3
            c /= 2;
        }
    }
    2.0 * macs * batch as f64
}

/// What one large matrix product reaches on this machine (GFLOP/s, f32, n×n by n×n): the
/// practical peak a training step's FLOP/s is compared with.
pub fn gemm_gflops(n: usize, iters: usize) -> Result<f64> {
    let device = Device::flex();
    let a = pixels(n, n, 1, &device) / 255.0;
    let b = pixels(n, n, 2, &device) / 255.0;
    let ms = time(iters, || {
        let _ = a.clone().matmul(b.clone()).into_data();
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9)
}

/// Median milliseconds per operation, and the process's peak resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub config: String,
    pub batch: usize,
    pub train_ms: f64,
    pub eval_ms: f64,
    pub sample_ms: f64,
    /// FLOP/s of the training step, counting it as 3 forward passes (forward + backward).
    pub train_gflops: f64,
    pub peak_rss_mb: f64,
    /// Trained parameters: a data-parallel step all-reduces 4 bytes of gradient for each.
    pub trained_parameters: usize,
    /// On a GPU: the largest relative difference of its log p from the CPU backend's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logp_vs_cpu: Option<f64>,
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
        .data_init(x.clone(), None, None)?
        .train();
    // Noise of a fixed size would blow wide coupling networks up (log p ~ -1e6 on the CIFAR
    // shape): scale it with the width.
    let std = 0.02 * (64.0 / config.glow.hidden as f64).sqrt();
    Ok((jitter(model, std, 11), x))
}

/// Times a training step, likelihood evaluation and sampling of `config` on `backend`.
pub fn run(config: &BenchConfig, iters: usize, backend: Backend) -> Result<Timings> {
    let plain = backend.device()?;
    let device = plain.clone().autodiff();
    device.seed(3);
    let (mut model, x) = setup(config, &device)?;
    let trained_parameters = crate::parallel::gradient_values(&model);
    let dims = config.glow.shape.iter().product::<usize>() as f64;
    let mut optimizer = AdamConfig::new().init();
    let keys = crate::noise::indices(0, config.batch);
    let u = crate::noise::uniform(
        3,
        crate::noise::Purpose::Train,
        &keys,
        0,
        x.dims()[1],
        &device,
    );
    // Sampling is timed on the model before the training steps, at T = 0.7 (`revflow
    // sample`'s default): on this jittered, untrained model a few Adam steps on random pixels,
    // or T = 1 on the CIFAR shape, make some samples overflow, which sampling refuses. The
    // time does not depend on the weights.
    let untrained = model.valid();
    let train_ms = time(iters, || {
        let (log_p, _) = model.log_prob(x.clone(), None, Some(&u))?;
        let loss = log_p.neg().mean() / (dims * std::f64::consts::LN_2);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-3, model.clone(), grads);
        // A GPU queues work: wait for the step to finish inside its own timing.
        plain
            .sync()
            .map_err(|e| FlowError::Training(format!("device: {e:?}")))?;
        Ok(())
    })?;
    let inference = model.valid();
    let x = x.inner();
    let eval_ms = time(iters, || {
        let (log_p, _) = inference.log_prob(x.clone(), None, None)?;
        let _ = log_p.into_data(); // wait for the result
        Ok(())
    })?;
    let sample_ms = time(iters, || {
        let _ = untrained.sample(3, &keys, 0.7, None, &plain)?.into_data();
        Ok(())
    })?;
    let logp_vs_cpu = match backend {
        Backend::Cpu => None,
        _ => Some(difference_from_cpu(&inference, x)?),
    };
    Ok(Timings {
        config: config.name.to_string(),
        batch: config.batch,
        train_ms,
        eval_ms,
        sample_ms,
        train_gflops: 3.0 * forward_flops(&config.glow, config.batch) / (train_ms * 1e-3) / 1e9,
        peak_rss_mb: peak_rss_mb(),
        trained_parameters,
        logp_vs_cpu,
    })
}

/// Largest relative difference between `model`'s log p of `x` on its device and on the CPU
/// backend, with the same weights: a GPU timing is only worth reading if this is small.
fn difference_from_cpu(model: &Model, x: Tensor<2>) -> Result<f64> {
    let cpu = Device::flex();
    let values = |t: Tensor<1>| -> Result<Vec<f64>> {
        let v = t
            .into_data()
            .try_to_vec_as::<f32>()
            .map_err(|e| FlowError::Value {
                layer: "bench",
                problem: format!("reading log p back from the device: {e:?}"),
            })?;
        Ok(v.into_iter().map(f64::from).collect())
    };
    let here = values(model.log_prob(x.clone(), None, None)?.0)?;
    let there = model
        .clone()
        .to_device(&cpu)
        .log_prob(x.to_device(&cpu), None, None)?;
    let there = values(there.0)?;
    Ok(here
        .iter()
        .zip(&there)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1e-12))
        .fold(0.0, f64::max))
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
    let (log_p, _) = model.log_prob(x, None, None)?;
    let log_p = log_p.into_data().try_to_vec_as::<f64>().expect("floats");
    let text = serde_json::to_string(&serde_json::json!({"log_p": log_p})).expect("serialisable");
    write_atomic(&dir.join("expected.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Layer;

    /// The FLOP count against the convolutions of the model actually built: every weight
    /// entry is one multiply-add per output position.
    #[test]
    fn forward_flops_count_every_convolution_of_the_model() {
        for affine in [true, false] {
            let glow = GlowConfig {
                shape: [3, 8, 8],
                levels: 2,
                depth: 2,
                hidden: 16,
                affine,
                ..GlowConfig::default()
            };
            let Model::Glow(model) = ModelConfig::Glow(glow.clone())
                .init(&Device::flex())
                .unwrap()
            else {
                unreachable!("a Glow config builds Glow")
            };
            let numel = |w: &Param<Tensor<4>>| w.shape().num_elements() as f64;
            let (mut macs, mut side) = (0.0, 8);
            for level in &model.levels {
                side /= 2;
                let positions = (side * side) as f64;
                for layer in &level.after.layers {
                    macs += positions
                        * match layer {
                            Layer::InvConvLu(l) => l.lower.shape().num_elements() as f64,
                            Layer::Coupling(c) => {
                                numel(&c.net.conv1.weight)
                                    + numel(&c.net.conv2.weight)
                                    + numel(&c.net.out.conv.weight)
                            }
                            _ => 0.0,
                        };
                }
                if let Some(prior) = level.split.as_ref().and_then(|s| s.prior.as_ref()) {
                    macs += positions * numel(&prior.conv.weight);
                }
            }
            let batch = 5;
            let counted = forward_flops(&glow, batch);
            assert_eq!(counted, 2.0 * macs * batch as f64, "affine {affine}");
        }
    }
}
