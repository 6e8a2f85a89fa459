//! Latent files: every level of an encoding, as safetensors (`z0` the finest level … `zK` the
//! top), so that `decode` can reproduce the input exactly. Written atomically.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{FlowError, Result};
use crate::files::write_atomic;
use crate::flow::{in_chunks, Cond};
use crate::models::Model;

/// Writes the latents of a batch, one `(N, dᵢ)` tensor per level, with `metadata`.
pub fn save(path: &Path, levels: &[Tensor<2>], metadata: HashMap<String, String>) -> Result<()> {
    let named: Vec<(String, Tensor<2>)> = levels
        .iter()
        .enumerate()
        .map(|(i, z)| (format!("z{i}"), z.clone()))
        .collect();
    save_named(path, &named, metadata)
}

/// Writes named f32 matrices as safetensors, atomically.
pub fn save_named<S: AsRef<str>>(
    path: &Path,
    tensors: &[(S, Tensor<2>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, z)| {
            let values = z.to_data().try_to_vec_as::<f32>().expect("float tensor");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_ref().to_string(), bytes, z.dims().to_vec())
        })
        .collect();
    let views = data.iter().map(|(name, bytes, shape)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view");
        (name.clone(), view)
    });
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| FlowError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &bytes)
}

/// Reads a latent file: its levels in order, and its metadata.
pub fn load(path: &Path, device: &Device) -> Result<(Vec<Tensor<2>>, HashMap<String, String>)> {
    let bad = |problem: String| FlowError::data(path.display(), problem);
    // The file, then its values as tensors.
    let bytes = crate::limits::read(path, 2.0)?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a latent file ({e})")))?;
    let file =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a latent file ({e})")))?;
    let mut levels = Vec::new();
    for i in 0.. {
        let Ok(view) = file.tensor(&format!("z{i}")) else {
            break;
        };
        if view.dtype() != Dtype::F32 || view.shape().len() != 2 {
            return Err(bad(format!("z{i} must be a 2-D f32 tensor")));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let shape = [view.shape()[0], view.shape()[1]];
        let rows = levels.first().map_or(shape[0], |z: &Tensor<2>| z.dims()[0]);
        if shape[0] == 0 {
            return Err(bad(format!("z{i} has no rows: the file holds no inputs")));
        }
        if shape[0] != rows {
            return Err(bad(format!(
                "z{i} has {} rows but z0 has {rows}; every level holds one row per input",
                shape[0]
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("z{i} holds NaN or infinite values")));
        }
        levels.push(Tensor::from_data(TensorData::new(values, shape), device));
    }
    if levels.is_empty() {
        return Err(bad("holds no latent levels (z0, z1, …)".into()));
    }
    Ok((levels, meta.metadata().clone().unwrap_or_default()))
}

/// Inputs per batch when encoding or decoding many: memory follows the batch, not the count.
pub const BATCH: usize = 256;

/// [`Model::encode`] in batches of [`BATCH`], each level's rows in input order.
pub fn encode(model: &Model, x: Tensor<2>, cond: Cond) -> Result<Vec<Tensor<2>>> {
    if x.dims()[0] <= BATCH {
        return model.encode(x, cond);
    }
    let parts = in_chunks(&x, cond, BATCH, |x, cond| model.encode(x, cond))?;
    let levels = parts.first().map_or(0, Vec::len);
    Ok((0..levels)
        .map(|l| Tensor::cat(parts.iter().map(|p| p[l].clone()).collect(), 0))
        .collect())
}

/// [`Model::decode`] in batches of [`BATCH`]; every level must have one row per input.
pub fn decode(model: &Model, zs: &[Tensor<2>], cond: Cond) -> Result<Tensor<2>> {
    let n = zs.first().map_or(0, |z| z.dims()[0]);
    if let Some(z) = zs.iter().find(|z| z.dims()[0] != n) {
        return Err(FlowError::shape(
            "decode",
            format!("{n} rows in every latent level"),
            z.dims(),
        ));
    }
    if n <= BATCH {
        return model.decode(zs, cond);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(BATCH));
    for start in (0..n).step_by(BATCH) {
        let len = BATCH.min(n - start);
        let z: Vec<Tensor<2>> = zs.iter().map(|z| z.clone().narrow(0, start, len)).collect();
        let part_cond = cond.map(|c| c.clone().narrow(0, start, len));
        parts.push(model.decode(&z, part_cond.as_ref())?);
    }
    Ok(Tensor::cat(parts, 0))
}

/// Mean latent (every level) of a group of inputs, encoded in batches of 256; `cond` holds
/// their one-hot labels for class-conditional models.
pub fn mean(model: &Model, x: Tensor<2>, cond: Option<&Tensor<2>>) -> Result<Vec<Tensor<2>>> {
    let n = x.dims()[0];
    if n == 0 {
        return Err(FlowError::Config(
            "a mean latent needs at least one input".into(),
        ));
    }
    let mut sum: Option<Vec<Tensor<2>>> = None;
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let part_cond = cond.map(|c| c.clone().narrow(0, start, len));
        let zs = model.encode(x.clone().narrow(0, start, len), part_cond.as_ref())?;
        let part: Vec<Tensor<2>> = zs.into_iter().map(|z| z.sum_dim(0)).collect();
        sum = Some(match sum {
            None => part,
            Some(acc) => acc.into_iter().zip(part).map(|(a, b)| a + b).collect(),
        });
    }
    Ok(sum
        .expect("n > 0")
        .into_iter()
        .map(|s| s / n as f64)
        .collect())
}

/// Decodes `zs + t·dir` for every `t` (one input's latents, every level): interpolation when
/// `dir` is the difference to a second input's latents, manipulation when it is an attribute
/// direction. Rows in the order of `ts`.
pub fn walk(
    model: &Model,
    zs: &[Tensor<2>],
    dir: &[Tensor<2>],
    ts: &[f64],
    cond: Cond,
) -> Result<Tensor<2>> {
    if ts.is_empty() {
        return Err(FlowError::Config(
            "a latent walk needs at least one step".into(),
        ));
    }
    let mut rows = Vec::with_capacity(ts.len());
    for &t in ts {
        let z: Vec<Tensor<2>> = zs
            .iter()
            .zip(dir)
            .map(|(z, d)| z.clone() + d.clone() * t)
            .collect();
        rows.push(model.decode(&z, cond)?);
    }
    Ok(Tensor::cat(rows, 0))
}

/// Decoded images `(N, C·H·W)` as 8-bit pixels, one vector per image.
pub fn pixels(x: Tensor<2>) -> Vec<Vec<u8>> {
    let d = x.dims()[1];
    let v = x.into_data().try_to_vec_as::<f32>().expect("f32 values");
    v.chunks(d.max(1))
        .map(|row| {
            row.iter()
                .map(|p| p.round().clamp(0.0, 255.0) as u8)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    #[test]
    fn many_inputs_are_encoded_and_decoded_in_batches() {
        let dev = device();
        let config = crate::models::ModelConfig::Glow(crate::models::GlowConfig {
            shape: [1, 4, 4],
            levels: 2,
            depth: 1,
            hidden: 8,
            ..Default::default()
        });
        let model = perturb(config.init(&dev).unwrap(), 0.05, 1);
        let x = Tensor::<2>::random(
            [BATCH + 44, 16],
            burn::tensor::Distribution::Uniform(0.0, 256.0),
            &dev,
        )
        .floor();
        let zs = encode(&model, x.clone(), None).unwrap();
        let whole = model.encode(x.clone(), None).unwrap();
        for (a, b) in zs.iter().zip(&whole) {
            assert!(max_abs_diff(a, b) < 1e-4);
        }
        assert_eq!(to_vec(decode(&model, &zs, None).unwrap()), to_vec(x));
        let short = vec![zs[0].clone(), zs[1].clone().narrow(0, 0, 3)];
        let err = decode(&model, &short, None).unwrap_err().to_string();
        assert!(err.contains("300 rows in every latent level"), "{err}");
    }

    #[test]
    fn latents_round_trip_bit_for_bit() {
        let dev = device();
        let levels = vec![randn([2, 8], &dev), randn([2, 3], &dev)];
        let path = std::env::temp_dir().join(format!(
            "revflow-latents-{}.safetensors",
            std::process::id()
        ));
        let meta = HashMap::from([("model".to_string(), "glow".to_string())]);
        save(&path, &levels, meta.clone()).unwrap();
        let (back, m) = load(&path, &dev).unwrap();
        assert_eq!(m.get("model"), meta.get("model"));
        assert_eq!(back.len(), 2);
        for (a, b) in levels.iter().zip(&back) {
            assert_eq!(to_vec(a.clone()), to_vec(b.clone()));
        }
        for (levels, problem) in [
            (vec![randn([0, 8], &dev)], "z0 has no rows"),
            (
                vec![randn([2, 8], &dev), randn([3, 3], &dev)],
                "z1 has 3 rows but z0 has 2",
            ),
            (
                vec![randn([2, 8], &dev) / 0.0],
                "z0 holds NaN or infinite values",
            ),
        ] {
            save(&path, &levels, HashMap::new()).unwrap();
            let err = load(&path, &dev).unwrap_err().to_string();
            assert!(err.contains(problem), "{err}");
        }
        std::fs::write(&path, b"junk").unwrap();
        let err = load(&path, &dev).unwrap_err().to_string();
        assert!(err.contains("not a latent file"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
