//! What the server's tests share: small trained runs and a plain HTTP client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use revflow::burn::tensor::Device;
use revflow::data::{self, Data};
use revflow::models::{GlowConfig, ModelConfig, VectorFlowConfig};
use revflow::pictures::save_png;
use revflow::trained::sample_picture;
use revflow::training::{Run, RunConfig, RunDir, TrainConfig};
use revflow_serve::{ServeConfig, Server};

/// A fresh folder for one test.
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn train(root: &Path, name: &str, data: &str, model: ModelConfig, steps: usize) {
    let train = TrainConfig {
        steps,
        batch_size: 32,
        eval_every: steps,
        checkpoint_every: steps,
        ..TrainConfig::default()
    };
    train_run(root, name, data, model, train, false, &|_| {});
}

/// Trains `model` on `data` into `root/name` (or resumes it to `train.steps`), drawing a
/// sample picture at each evaluation, after which it calls `after_samples` with the step.
pub fn train_run(
    root: &Path,
    name: &str,
    data: &str,
    model: ModelConfig,
    train: TrainConfig,
    resume: bool,
    after_samples: &dyn Fn(usize),
) {
    let splits = data::load(data, None, 0, 2000).unwrap();
    let config = RunConfig {
        model,
        train,
        data: data.to_string(),
        data_dir: None,
        data_samples: 2000,
        data_resize: None,
        class_names: splits.train.class_names().to_vec(),
    };
    let dir = RunDir::new(&root.join(name));
    let device = Device::default();
    let draw = |model: &revflow::models::Model, step: usize| -> revflow::Result<()> {
        let picture = sample_picture(model, &config, &splits.test, 0.7, &device)?;
        save_png(picture, &dir.samples().join(format!("step-{step:06}.png")))?;
        after_samples(step);
        Ok(())
    };
    let run = Run {
        config: config.clone(),
        data: &splits,
        dir: dir.clone(),
        draw_samples: Some(&draw),
        stop: None,
        group: None,
        device: device.clone(),
    };
    run.train(resume, &mut |_| {}).unwrap();
}

/// A folder with two small trained runs: `digits` (a Glow of 8×8 digits, 8 bits) and `moons`
/// (a 2-D flow).
pub fn runs(name: &str) -> PathBuf {
    let root = temp(name);
    let glow = GlowConfig {
        levels: 2,
        depth: 2,
        hidden: 16,
        n_bits: 8,
        ..GlowConfig::default()
    };
    train(&root, "digits", "digits", ModelConfig::Glow(glow), 60);
    let flow = VectorFlowConfig {
        dims: 2,
        steps: 4,
        hidden: 16,
        ..Default::default()
    };
    train(&root, "moons", "moons", ModelConfig::Vector(flow), 100);
    root
}

/// A server on a free loopback port over `root`.
pub fn serve(root: &Path, configure: impl FnOnce(ServeConfig) -> ServeConfig) -> SocketAddr {
    let config = configure(ServeConfig {
        port: 0,
        ..ServeConfig::new(root, Device::default())
    });
    Server::bind(config).unwrap().spawn()
}

/// The pixels of a PNG data URL, as 8-bit grey values.
pub fn data_url_pixels(url: &str) -> (u32, u32, Vec<u8>) {
    use base64::Engine;
    let payload = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    let image = image::load_from_memory(&bytes).unwrap().to_luma8();
    (image.width(), image.height(), image.into_raw())
}

/// A test digit of the embedded data as a PNG file's bytes.
pub fn digit_png(k: usize) -> Vec<u8> {
    let splits = data::load("digits", None, 0, 0).unwrap();
    let Data::Images(test) = &splits.test else {
        panic!("digits are images")
    };
    let image = image::GrayImage::from_raw(8, 8, test.image(k).to_vec()).unwrap();
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

pub fn data_url(png: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
