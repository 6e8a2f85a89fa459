//! Parameters on disk as safetensors, named by their path in the module tree
//! (`layers.3.ActNorm.log_scale`), so a PyTorch user can open them. Files are written
//! atomically ([`crate::files::write_atomic`]), so a crash never leaves a half-written file.

use std::path::Path;

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, SafetensorsStore};
use safetensors::SafeTensors;

use crate::error::{FlowError, Result};
use crate::files::write_atomic;
use crate::validate::non_finite;

/// Writes every parameter of `module` (including ActNorm's initialised flag, permutations and
/// running statistics) to `path`, atomically.
pub fn save<M: Module>(module: &M, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes(module, path)?)
}

/// The safetensors bytes of `module` (`path` names the file in errors).
pub fn to_bytes<M: Module>(module: &M, path: &Path) -> Result<Vec<u8>> {
    let weights_error = |problem: String| FlowError::Weights {
        path: path.to_path_buf(),
        problem,
    };
    let mut store = SafetensorsStore::from_bytes(None);
    module
        .save_into(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    store.get_bytes().map_err(|e| weights_error(e.to_string()))
}

/// Loads `path` into `module`, which must have exactly the same structure and shapes, and
/// finite values: a diverged model would otherwise report NaN likelihoods as results.
pub fn load<M: Module>(mut module: M, path: &Path) -> Result<M> {
    let weights_error = |problem: String| FlowError::Weights {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|source| FlowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The first tensor (by name) holding a NaN or ±∞; a file that does not parse is
    // reported by the loader below.
    if let Ok(file) = SafeTensors::deserialize(&bytes) {
        let mut names = file.names();
        names.sort_unstable();
        let bad = |name: &&str| {
            file.tensor(name)
                .is_ok_and(|t| non_finite(t.dtype(), t.data()))
        };
        if let Some(name) = names.into_iter().find(bad) {
            return Err(weights_error(format!(
                "{name} holds NaN or infinite values; this checkpoint cannot be used (did training diverge?)"
            )));
        }
    }
    // Collect every problem rather than stopping at burn's first, then report them in one line.
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .validate(false)
        .allow_partial(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    let problems: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{path} has shape {:?} in the file but {:?} in the model",
                found.as_slice(),
                expected.as_slice()
            ),
            other => other.to_string(),
        })
        .chain(
            result
                .missing
                .iter()
                .map(|(p, _)| format!("{p} is missing")),
        )
        .chain(
            result
                .unused
                .iter()
                .map(|p| format!("{p} is not in the model")),
        )
        .collect();
    if let Some(first) = problems.first() {
        let more = match problems.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        return Err(weights_error(format!(
            "does not match the model: {first}{more}; was it saved with other options?"
        )));
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributions::{BaseDistribution, Gaussian, GaussianConfig};
    use crate::flow::{Flow, Sequential};
    use crate::layers::tests::image_flow;
    use crate::layers::{Layer, Split, SplitConfig};
    use crate::nets::ConvNet;
    use crate::testing::*;
    use burn::tensor::{Device, Tensor};

    #[derive(Module, Debug)]
    struct Tiny {
        flow: Sequential<Layer<ConvNet>>,
        split: Split,
        prior: Gaussian,
    }

    fn tiny(device: &Device, seed: u64) -> Tiny {
        Tiny {
            flow: image_flow(device, seed),
            split: SplitConfig::new(4, true).init(device).unwrap(),
            prior: GaussianConfig::standard(&[2, 4, 4])
                .with_learn_top(true)
                .with_classes(3)
                .init(device),
        }
    }

    fn outputs(m: &Tiny, x: &Tensor<4>, dev: &Device) -> Vec<Vec<f32>> {
        let y = one_hot(&[1, 2], 3, dev);
        let (h, logdet) = m.flow.forward(x.clone(), None).unwrap();
        let (kept, z, log_pz) = m.split.forward(h.clone()).unwrap();
        let log_p = m.prior.log_prob(kept.clone(), Some(&y)).unwrap();
        let back = m.flow.inverse(h, None).unwrap();
        [
            h_of(kept),
            h_of(z),
            h_of(logdet),
            h_of(log_pz),
            h_of(log_p),
            h_of(back),
        ]
        .to_vec()
    }

    fn h_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        to_vec(t)
    }

    #[test]
    fn save_then_load_gives_the_same_outputs_bit_for_bit() {
        let dev = device();
        dev.seed(3);
        let x = randn([2, 4, 4, 4], &dev);
        // Train-like state: ActNorm initialised, running statistics moved, all weights perturbed.
        let (flow, _) = image_flow(&dev.clone().autodiff(), 5)
            .data_init(x.clone().autodiff(), None)
            .unwrap();
        let _ = flow.forward(x.clone().autodiff() * 2.0, None).unwrap(); // batch-norm update
        let model = perturb(
            Tiny {
                flow,
                ..tiny(&dev.clone().autodiff(), 5)
            },
            0.05,
            1,
        )
        .valid();

        let dir = std::env::temp_dir().join(format!("revflow-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        save(&model, &path).unwrap();
        // A fresh model with other seeds, loaded from the file.
        let loaded = load(tiny(&dev, 99), &path).unwrap();
        assert_eq!(outputs(&model, &x, &dev), outputs(&loaded, &x, &dev));
        let Layer::ActNorm(actnorm) = &loaded.flow.layers[0] else {
            panic!()
        };
        assert!(actnorm.is_initialized());
        let Layer::BatchNorm(bn) = &loaded.flow.layers[6] else {
            panic!()
        };
        assert!(to_vec(bn.running_mean.value()).iter().any(|m| *m != 0.0));
        // Names a person can read.
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let text = String::from_utf8_lossy(&bytes[8..8 + header_len]);
        assert!(text.contains("flow.layers.0.ActNorm.initialized"), "{text}");
        assert!(text.contains("flow.layers.3.Permute.perm"), "{text}");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatched_corrupt_and_missing_files_are_clear_errors() {
        let dev = device();
        let dir = std::env::temp_dir().join(format!("revflow-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        save(&tiny(&dev, 1), &path).unwrap();

        let other = Tiny {
            split: SplitConfig::new(6, true).init(&dev).unwrap(),
            ..tiny(&dev, 1)
        };
        let err = load(other, &path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("does not match"),
            "{err}"
        );

        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = load(tiny(&dev, 1), &path).unwrap_err().to_string();
        assert!(
            err.starts_with("weights file") && err.contains("model.safetensors"),
            "{err}"
        );

        // NaN weights (a diverged model saved by another program, a corrupted file).
        save(&tiny(&dev, 1), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        let poisoned = "flow.layers.0.ActNorm.log_scale";
        for (name, _, _, data) in &mut tensors {
            if name == poisoned {
                data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
        let views = tensors.iter().map(|(n, d, s, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data).unwrap(),
            )
        });
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let err = load(tiny(&dev, 1), &path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors")
                && err.contains(&format!("{poisoned} holds NaN or infinite values")),
            "{err}"
        );

        let err = load(tiny(&dev, 1), &dir.join("absent.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("absent.safetensors") && err.contains("No such file"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
