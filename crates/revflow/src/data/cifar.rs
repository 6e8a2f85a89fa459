//! CIFAR-10, binary version: each record is one label byte then 3×32×32 pixel bytes
//! (all red, then green, then blue; rows top to bottom), which is already our C×H×W order.
//! [`CifarReader`] reads the records a batch at a time; the whole-set loader reads them all.

use std::fs::File;
use std::io::{BufReader, Read};
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
    let mut stream = CifarReader::open(base, files)?;
    // The files' pixels and labels, before reading any.
    crate::limits::check(
        format!("the CIFAR-10 batches in {}", base.display()),
        2.0 * (stream.len() * RECORD) as f64,
    )?;
    let (pixels, labels) = stream.read(stream.len())?.unwrap_or_default();
    Ok(ImageSet {
        pixels,
        channels: 3,
        height: SIDE,
        width: SIDE,
        labels,
        class_names: CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

/// CIFAR-10 binary batches read a batch of records at a time, file after file.
pub struct CifarReader {
    /// Each file and its records, in order.
    files: Vec<(PathBuf, usize)>,
    /// The file being read, and the records read from it.
    current: Option<(usize, BufReader<File>, usize)>,
    next_file: usize,
    total: usize,
}

impl CifarReader {
    /// The `part` (`train`: the five training batches, `test`: the test batch) of the
    /// CIFAR-10 binary version in `dir` or `dir/cifar-10-batches-bin`.
    pub fn open_part(dir: &Path, part: &str) -> Result<Self> {
        let base = batches_dir(dir);
        match part {
            "train" => Self::open(&base, &TRAIN_FILES),
            _ => Self::open(&base, &[TEST_FILE]),
        }
    }

    /// Checks that each file exists and holds whole records, before reading any.
    fn open(base: &Path, files: &[&str]) -> Result<Self> {
        let mut sized = Vec::new();
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
            let len = std::fs::metadata(&path)
                .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?
                .len();
            if len == 0 || len % RECORD as u64 != 0 {
                return Err(FlowError::data(
                    path.display(),
                    format!(
                        "{len} bytes is not a positive multiple of {RECORD} (1 label byte + 3×32×32 pixels); \
                         the file is truncated or not a CIFAR-10 binary batch"
                    ),
                ));
            }
            sized.push((path, (len / RECORD as u64) as usize));
        }
        let total = sized.iter().map(|(_, n)| n).sum();
        Ok(Self {
            files: sized,
            current: None,
            next_file: 0,
            total,
        })
    }

    /// Records in all the files.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The first file (for messages about the set).
    pub fn path(&self) -> &Path {
        self.files.first().map_or(Path::new(""), |(p, _)| p)
    }

    /// The next `max` images (3×32×32 bytes each, channel-major) and their labels; `None`
    /// after the last. A record with a label beyond 9, or a file that changed size since it
    /// was opened, is an error naming the file.
    pub fn read(&mut self, max: usize) -> Result<Option<(Vec<u8>, Vec<usize>)>> {
        let max = max.max(1);
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let mut record = vec![0u8; RECORD];
        while labels.len() < max {
            let (k, reader, done) = match &mut self.current {
                Some((k, reader, done)) if *done < self.files[*k].1 => (*k, reader, done),
                _ => {
                    let Some((path, _)) = self.files.get(self.next_file) else {
                        break;
                    };
                    let file = File::open(path).map_err(|e| {
                        FlowError::data(path.display(), format!("cannot read: {e}"))
                    })?;
                    self.current = Some((self.next_file, BufReader::new(file), 0));
                    self.next_file += 1;
                    continue;
                }
            };
            let path = &self.files[k].0;
            reader.read_exact(&mut record).map_err(|e| {
                FlowError::data(path.display(), format!("cannot read record {}: {e}", *done))
            })?;
            let label = record[0] as usize;
            if label >= CLASSES.len() {
                return Err(FlowError::data(
                    path.display(),
                    format!(
                        "record {} has label {label}, expected 0..9; not a CIFAR-10 batch?",
                        *done
                    ),
                ));
            }
            *done += 1;
            labels.push(label);
            pixels.extend_from_slice(&record[1..]);
        }
        Ok((!labels.is_empty()).then_some((pixels, labels)))
    }
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

    #[test]
    fn the_stream_gives_what_the_whole_loader_gives_across_files() {
        let dir = fixture("cifar_stream", true);
        let s = load(&dir).unwrap();
        let Data::Images(train) = &s.train else {
            panic!("images expected")
        };
        for batch in [1, 3, 4, 64] {
            let mut stream = CifarReader::open_part(&dir, "train").unwrap();
            assert_eq!(stream.len(), 10);
            let (mut pixels, mut labels) = (Vec::new(), Vec::new());
            while let Some((p, l)) = stream.read(batch).unwrap() {
                assert!(l.len() <= batch && p.len() == l.len() * PIXELS);
                pixels.extend(p);
                labels.extend(l);
            }
            assert_eq!(
                (pixels, labels),
                (train.pixels.clone(), train.labels.clone())
            );
        }
        // A bad label is named with its file and record when its batch is read.
        let mut b = batch(3, 100);
        b[2 * RECORD] = 10;
        std::fs::write(dir.join(SUBDIR).join(TEST_FILE), b).unwrap();
        let mut stream = CifarReader::open_part(&dir, "test").unwrap();
        assert!(stream.read(2).is_ok());
        let e = stream.read(2).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin: record 2 has label 10"), "{e}");
    }
}
