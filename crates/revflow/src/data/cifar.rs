//! CIFAR-10, binary version: each record is one label byte then 3×32×32 pixel bytes
//! (all red, then green, then blue; rows top to bottom), which is already our C×H×W order.

use std::path::{Path, PathBuf};

use super::{Data, ImageSet, Splits};
use crate::{FlowError, Result};

pub(super) const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The sub-folder the official archive unpacks to.
pub(super) const SUBDIR: &str = "cifar-10-batches-bin";
pub(super) const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub(super) const TEST_FILE: &str = "test_batch.bin";
const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;

/// Loads the five training batches and the test batch from `dir` or `dir/cifar-10-batches-bin`.
pub(super) fn load(dir: &Path) -> Result<Splits> {
    let base = batches_dir(dir);
    let train = read_batches(&base, &TRAIN_FILES)?;
    let test = read_batches(&base, &[TEST_FILE])?;
    let description = format!(
        "cifar10: {} train / {} test 32×32 colour images, 10 classes, from {}",
        train.len(),
        test.len(),
        base.display()
    );
    Ok(Splits {
        train: Data::Images(train),
        test: Data::Images(test),
        name: "cifar10".to_string(),
        description,
    })
}

/// `dir/cifar-10-batches-bin` when it exists (the unpacked archive), else `dir`.
pub(super) fn batches_dir(dir: &Path) -> PathBuf {
    let sub = dir.join(SUBDIR);
    if sub.is_dir() {
        sub
    } else {
        dir.to_path_buf()
    }
}

fn read_batches(base: &Path, files: &[&str]) -> Result<ImageSet> {
    let mut set = ImageSet {
        pixels: Vec::new(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        labels: Vec::new(),
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    // The files' bytes and their pixels, before reading any.
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(base.join(f)).ok())
        .map(|m| m.len())
        .sum();
    crate::limits::check(
        format!("the CIFAR-10 batches in {}", base.display()),
        2.0 * total as f64,
    )?;
    for file in files {
        let path = base.join(file);
        if !path.is_file() {
            return Err(FlowError::data(
                path.display(),
                format!(
                    "not found; CIFAR-10 needs {} and {TEST_FILE} (the binary version) in {}; \
                     run `revflow data fetch cifar10 --dir DIR` to download them",
                    TRAIN_FILES.join(", "),
                    base.display()
                ),
            ));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(FlowError::data(
                path.display(),
                format!(
                    "{} bytes is not a positive multiple of {RECORD} (1 label byte + 3×32×32 pixels); \
                     the file is truncated or not a CIFAR-10 binary batch",
                    bytes.len()
                ),
            ));
        }
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            let label = record[0] as usize;
            if label >= CLASSES.len() {
                return Err(FlowError::data(
                    path.display(),
                    format!("record {i} has label {label}, expected 0..9; not a CIFAR-10 batch?"),
                ));
            }
            set.labels.push(label);
            set.pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` records; record i has label i % 10 and pixels (i + j) % 256.
    fn batch(n: usize, offset: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(n * RECORD);
        for i in offset..offset + n {
            b.push((i % 10) as u8);
            b.extend((0..PIXELS).map(|j| ((i + j) % 256) as u8));
        }
        b
    }

    fn fixture(tag: &str, nested: bool) -> crate::data::tests_support::TempDir {
        let dir = crate::data::tests_support::temp_dir(tag);
        let base = if nested {
            dir.join(SUBDIR)
        } else {
            dir.to_path_buf()
        };
        std::fs::create_dir_all(&base).unwrap();
        for (k, f) in TRAIN_FILES.iter().enumerate() {
            std::fs::write(base.join(f), batch(2, 2 * k)).unwrap();
        }
        std::fs::write(base.join(TEST_FILE), batch(3, 100)).unwrap();
        dir
    }

    #[test]
    fn reads_batches_flat_or_nested() {
        for nested in [false, true] {
            let dir = fixture(&format!("cifar_ok_{nested}"), nested);
            let s = load(&dir).unwrap();
            let (Data::Images(train), Data::Images(test)) = (&s.train, &s.test) else {
                panic!("images expected")
            };
            assert_eq!(
                (train.len(), train.channels, train.height, train.width),
                (10, 3, 32, 32)
            );
            assert_eq!(test.len(), 3);
            assert_eq!(train.labels, (0..10).collect::<Vec<_>>());
            assert_eq!(test.labels, vec![0, 1, 2]);
            // Record 3 of the training set, pixel j = (3 + j) % 256, channel-major.
            assert!(train
                .image(3)
                .iter()
                .enumerate()
                .all(|(j, &p)| p as usize == (3 + j) % 256));
            assert_eq!(train.class_names[9], "truck");
        }
    }

    #[test]
    fn missing_batch_is_named() {
        let dir = fixture("cifar_missing", true);
        std::fs::remove_file(dir.join(SUBDIR).join("data_batch_4.bin")).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("data_batch_4.bin: not found"), "{e}");
        assert!(e.contains("revflow data fetch cifar10"), "{e}");
    }

    #[test]
    fn bad_length_and_label() {
        let dir = fixture("cifar_len", false);
        std::fs::write(dir.join(TEST_FILE), &batch(2, 0)[..RECORD + 5]).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("test_batch.bin: 3078 bytes is not a positive multiple of 3073"),
            "{e}"
        );

        let mut b = batch(2, 0);
        b[RECORD] = 11;
        std::fs::write(dir.join(TEST_FILE), b).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin: record 1 has label 11"), "{e}");
    }
}
