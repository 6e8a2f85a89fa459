//! Random and mutated bytes fed to every loader: each must return a typed error or succeed,
//! never panic, with memory bounded by a small `REVFLOW_MEMORY_LIMIT` (a header that promises
//! gigabytes is refused, not allocated). Each loader gets a fraction of a second, so the
//! whole file runs in a few seconds; `arbtest` prints the seed of any failure.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Once;

use arbtest::arbitrary::{Result as Arb, Unstructured};
use revflow::burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, OptimizerRecord};
use revflow::burn::tensor::{Bytes, Device, Tensor};
use revflow::models::{Model, ModelConfig, VectorFlowConfig};
use revflow::training::{RunConfig, RunDir, TrainConfig, TrainState};

/// Milliseconds of random inputs per loader.
const BUDGET_MS: u64 = 400;

/// 64 MiB for every test of this file (set once, before any loader reads it).
fn bounded_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var(revflow::limits::ENV, "64M"));
}

/// A fresh folder for one loader's files.
fn folder(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random bytes, or `seed` with a few random edits: bytes replaced, inserted, cut, or a
/// big-endian 32-bit word (a header field) overwritten.
fn mutate(u: &mut Unstructured, seed: &[u8]) -> Arb<Vec<u8>> {
    if u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let mut bytes = seed.to_vec();
    for _ in 0..u.int_in_range(1..=6)? {
        let at = u.int_in_range(0..=bytes.len())?;
        match u.int_in_range(0..=3)? {
            0 if at < bytes.len() => bytes[at] = u.arbitrary()?,
            1 => bytes.insert(at, u.arbitrary()?),
            2 => bytes.truncate(at),
            _ if at + 4 <= bytes.len() => {
                let word: u32 = u.arbitrary()?;
                bytes[at..at + 4].copy_from_slice(&word.to_be_bytes());
            }
            _ => {}
        }
    }
    Ok(bytes)
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Runs `property` on random inputs for [`BUDGET_MS`].
fn fuzz(property: impl FnMut(&mut Unstructured) -> Arb<()>) {
    bounded_memory();
    arbtest::arbtest(property).budget_ms(BUDGET_MS);
}

fn idx(magic: u32, dims: &[u32], data: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut b: Vec<u8> = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

#[test]
fn idx_files_raw_and_gzipped() {
    let dir = folder("idx");
    let seeds = [
        (
            "train-images-idx3-ubyte",
            idx(0x803, &[5, 3, 2], (0..30).map(|i| i * 7)),
        ),
        ("train-labels-idx1-ubyte", idx(0x801, &[5], 0..5)),
        ("t10k-images-idx3-ubyte", idx(0x803, &[2, 3, 2], 0..12)),
        ("t10k-labels-idx1-ubyte", idx(0x801, &[2], 0..2)),
    ];
    fuzz(|u| {
        for (name, seed) in &seeds {
            for stale in [name.to_string(), format!("{name}.gz")] {
                let _ = std::fs::remove_file(dir.join(stale));
            }
            let bytes = match u.ratio(1, 3)? {
                true => mutate(u, seed)?,
                false => seed.clone(),
            };
            match u.arbitrary()? {
                true => std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap(),
                false => std::fs::write(dir.join(name), bytes).unwrap(),
            }
        }
        // A gzip stream itself corrupted.
        if u.ratio(1, 4)? {
            let path = dir.join("t10k-images-idx3-ubyte.gz");
            let bytes = mutate(u, &gz(&seeds[2].1))?;
            let _ = std::fs::remove_file(dir.join("t10k-images-idx3-ubyte"));
            std::fs::write(path, bytes).unwrap();
        }
        let _ = revflow::data::load("mnist", Some(&dir), 0, 0);
        // The same files read a few images at a time (as `revflow score` reads them).
        if let Ok(mut stream) = revflow::data::IdxImages::open_part("mnist", &dir, "t10k") {
            let batch = u.int_in_range(1..=3)?;
            while let Ok(Some(_)) = stream.read(batch) {}
        }
        Ok(())
    });
}

#[test]
fn cifar_batches() {
    let dir = folder("cifar");
    let record: Vec<u8> = std::iter::once(3)
        .chain((0..3072).map(|i| i as u8))
        .collect();
    let files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    fuzz(|u| {
        for f in files {
            std::fs::write(dir.join(f), &record).unwrap();
        }
        let victim = files[u.choose_index(files.len())?];
        std::fs::write(dir.join(victim), mutate(u, &record)?).unwrap();
        let _ = revflow::data::load("cifar10", Some(&dir), 0, 0);
        if let Ok(mut stream) = revflow::data::CifarReader::open_part(&dir, "train") {
            let batch = u.int_in_range(1..=3)?;
            while let Ok(Some(_)) = stream.read(batch) {}
        }
        Ok(())
    });
}

#[test]
fn csv_files() {
    let dir = folder("csv");
    let path = dir.join("v.csv");
    let seed = b"x,y,label\n1,2.5,a\n-3,4e2,b\n\"5\",6,a\n7,8,c\n";
    let name = format!("csv:{}", path.display());
    fuzz(|u| {
        std::fs::write(&path, mutate(u, seed)?).unwrap();
        let _ = revflow::data::load(&name, None, 0, 0);
        if let Ok(mut stream) = revflow::data::CsvReader::open(&path) {
            let batch = u.int_in_range(1..=3)?;
            while let Ok(Some(_)) = stream.read(batch) {}
        }
        Ok(())
    });
}

#[test]
fn image_folders() {
    let dir = folder("png");
    let png = |w, h, colour: bool| {
        let mut bytes = Vec::new();
        let img: image::DynamicImage = match colour {
            true => {
                image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 40, y as u8, 7])).into()
            }
            false => image::GrayImage::from_fn(w, h, |x, _| image::Luma([x as u8 * 50])).into(),
        };
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let seeds = [png(4, 4, true), png(4, 4, false), png(3, 5, true)];
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
    }
    let name = format!("images:{}", dir.display());
    fuzz(|u| {
        for (i, class) in ["a", "a", "b"].iter().enumerate() {
            let seed = &seeds[u.choose_index(seeds.len())?];
            let bytes = match u.ratio(1, 2)? {
                true => mutate(u, seed)?,
                false => seed.clone(),
            };
            std::fs::write(dir.join(class).join(format!("{i}.png")), bytes).unwrap();
        }
        let resize = u
            .arbitrary::<Option<(u8, u8)>>()?
            .map(|(w, h)| (w as u32 % 9 + 1, h as u32 % 9 + 1));
        let _ = revflow::data::load_resized(&name, None, 0, 0, resize);
        Ok(())
    });
}

#[test]
fn latent_files() {
    let dir = folder("latents");
    let path = dir.join("z.safetensors");
    let device = Device::flex();
    let levels = vec![
        Tensor::<2>::ones([2, 6], &device),
        Tensor::<2>::zeros([2, 2], &device),
    ];
    let meta = HashMap::from([("labels".to_string(), "0,1".to_string())]);
    revflow::latents::save(&path, &levels, meta).unwrap();
    let seed = std::fs::read(&path).unwrap();
    fuzz(|u| {
        std::fs::write(&path, mutate(u, &seed)?).unwrap();
        let _ = revflow::latents::load(&path, &device);
        Ok(())
    });
}

fn run_config() -> RunConfig {
    RunConfig {
        model: ModelConfig::Vector(VectorFlowConfig {
            dims: 2,
            steps: 2,
            hidden: 8,
            ..Default::default()
        }),
        train: TrainConfig::default(),
        data: "moons".into(),
        data_dir: None,
        data_samples: 100,
        data_resize: None,
        class_names: vec![],
    }
}

#[test]
fn run_config_and_state_json() {
    let config = serde_json::to_vec(&run_config()).unwrap();
    let state = serde_json::to_vec(&TrainState {
        step: 3,
        test_bits_per_dim: Some(1.5),
    })
    .unwrap();
    fuzz(|u| {
        if let Ok(config) = serde_json::from_slice::<RunConfig>(&mutate(u, &config)?) {
            // What every command does next with a configuration: size it.
            let _ = revflow::limits::check(
                "a fuzzed model",
                revflow::limits::parameters(&config.model),
            );
        }
        let _ = serde_json::from_slice::<TrainState>(&mutate(u, &state)?);
        Ok(())
    });
}

#[test]
fn weights_files() {
    let dir = folder("weights");
    let path = dir.join("model.safetensors");
    let device = Device::flex();
    let model = run_config().model.init(&device).unwrap();
    revflow::weights::save(&model, &path).unwrap();
    let seed = std::fs::read(&path).unwrap();
    fuzz(|u| {
        std::fs::write(&path, mutate(u, &seed)?).unwrap();
        let fresh = run_config().model.init(&device).unwrap();
        let _ = revflow::weights::load(fresh, &path);
        Ok(())
    });
}

/// A small model after one Adam step, and the optimizer, as training holds them.
fn trained() -> (Model, ModuleOptimizer) {
    let device = Device::flex().autodiff();
    let model = run_config().model.init(&device).unwrap();
    let x = Tensor::<2>::ones([4, 2], &device);
    let (log_p, _) = model.log_prob(x, None, None).unwrap();
    let grads = GradientsParams::from_grads(log_p.mean().backward(), &model);
    let mut optimizer = AdamConfig::new().init();
    let model = optimizer.step(1e-3, model, grads);
    (model, optimizer)
}

#[test]
fn optimizer_state_bytes_parse() {
    let seed = trained().1.into_bytes().unwrap().to_vec();
    fuzz(|u| {
        let bytes = mutate(u, &seed)?;
        let _ = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes));
        Ok(())
    });
}

/// A checkpoint's files garbled one at a time, read back by the run directory's own loaders
/// (burn itself panics on some optimizer states; `load_optimizer` checks them first).
#[test]
fn checkpoint_files() {
    let dir = folder("checkpoint");
    let run = RunDir::new(&dir);
    let config = run_config();
    let (model, optimizer) = trained();
    run.write_config(&config).unwrap();
    {
        let _lock = run.lock().unwrap();
        let state = TrainState {
            step: 1,
            test_bits_per_dim: Some(2.5),
        };
        run.save(&model, &optimizer, &state, &config).unwrap();
    }
    let ckpt = run.current_checkpoint().unwrap();
    let files = [
        ckpt.join("optimizer.bin"),
        ckpt.join("state.json"),
        ckpt.join("config.json"),
        ckpt.join("model.safetensors"),
        run.config(),
    ];
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let device = Device::flex();
    fuzz(|u| {
        let i = u.choose_index(files.len())?;
        std::fs::write(&files[i], mutate(u, &seeds[i])?).unwrap();
        let _ = run.load_optimizer(AdamConfig::new().init(), &model);
        let _ = run.load_state();
        if let Ok(config) = run.read_config() {
            let _ = run.load_model(&config, &device);
        }
        std::fs::write(&files[i], &seeds[i]).unwrap();
        Ok(())
    });
}
