//! MNIST and Fashion-MNIST in LeCun's IDX format: big-endian header (magic, dimensions),
//! then unsigned bytes. Files may be raw or gzipped, with or without a `.gz` suffix.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{Data, ImageSet, Splits};
use crate::{FlowError, Result};

/// IDX magic for unsigned-byte data with 3 dimensions (N, rows, cols).
const IMAGES_MAGIC: u32 = 0x0803;
/// IDX magic for unsigned-byte data with 1 dimension (N).
const LABELS_MAGIC: u32 = 0x0801;

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Loads `mnist` or `fashion-mnist` from `dir` with its standard train/test files.
pub(super) fn load(name: &str, dir: &Path) -> Result<Splits> {
    let class_names: Vec<String> = if name == "fashion-mnist" {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    let part = |prefix: &str| -> Result<ImageSet> {
        let images = find(name, dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = find(name, dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let mut set = read_images(&images)?;
        set.labels = read_labels(&labels, class_names.len())?;
        if set.labels.len() != set.len() {
            return Err(FlowError::data(
                labels.display(),
                format!(
                    "has {} labels but {} has {} images; the two files must come from the same set",
                    set.labels.len(),
                    images.display(),
                    set.len()
                ),
            ));
        }
        set.class_names = class_names.clone();
        Ok(set)
    };
    let (train, test) = (part("train")?, part("t10k")?);
    let description = format!(
        "{name}: {} train / {} test {}×{} grey images, 10 classes, from {}",
        train.len(),
        test.len(),
        train.height,
        train.width,
        dir.display()
    );
    Ok(Splits {
        train: Data::Images(train),
        test: Data::Images(test),
        name: name.to_string(),
        description,
    })
}

/// `dir/stem`, or else `dir/stem.gz`.
fn find(name: &str, dir: &Path, stem: &str) -> Result<PathBuf> {
    let raw = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(FlowError::data(
            raw.display(),
            format!(
                "not found (nor {stem}.gz); put the {name} IDX files in {} \
                 or run `revflow data fetch {name} --dir {}`",
                dir.display(),
                dir.display()
            ),
        ))
    }
}

/// Reads an IDX file, raw or gzipped (whatever its name): checks the magic, then the size the
/// header promises against the memory limit and against what the file holds, and only then
/// reads exactly that many bytes, so that a small .gz cannot expand into memory unchecked.
/// Returns the dimensions and the data.
fn read_idx(path: &Path, magic: u32, what: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let cannot = |e: std::io::Error| FlowError::data(path.display(), format!("cannot read: {e}"));
    let file = File::open(path).map_err(cannot)?;
    let file_len = file.metadata().map_err(cannot)?.len();
    let mut reader = BufReader::new(file);
    let gz = reader
        .fill_buf()
        .map_err(cannot)?
        .starts_with(&[0x1f, 0x8b]);
    let read_err = |e: std::io::Error| match gz {
        true => FlowError::data(
            path.display(),
            format!("is not a valid gzip file ({e}); download it again"),
        ),
        false => cannot(e),
    };
    let mut input: Box<dyn Read> = match gz {
        true => Box::new(GzDecoder::new(reader)),
        false => Box::new(reader),
    };
    let mut read_up_to =
        |n: u64, buf: &mut Vec<u8>| (&mut input).take(n).read_to_end(buf).map_err(read_err);

    let ndim = (magic & 0xff) as usize;
    let head = 4 * (1 + ndim);
    let mut bytes = Vec::with_capacity(head);
    read_up_to(head as u64, &mut bytes)?;
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    // The magic first: a wrong file is better reported as wrong than as short.
    match word(0) {
        Some(m) if m == magic => {}
        found => {
            return Err(FlowError::data(
                path.display(),
                format!(
                    "wrong magic number: expected {magic} (IDX {what}), found {}; is this the right file?",
                    found.map_or("none (file under 4 bytes)".to_string(), |m| m.to_string())
                ),
            ));
        }
    }
    if bytes.len() < head {
        return Err(FlowError::data(
            path.display(),
            format!(
                "truncated: an IDX {what} file needs a {head}-byte header, found {} bytes",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (1..=ndim).map(|i| word(i).unwrap_or(0) as usize).collect();
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×");
    let mismatch = |problem: &str, promised: String, found: String| {
        FlowError::data(
            path.display(),
            format!(
                "{problem}: the header promises {promised} data bytes ({shape}), found {found}; \
                 download the file again"
            ),
        )
    };
    // Checked: a corrupt header must not overflow.
    let Some(expected) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return Err(mismatch(
            "corrupt header",
            "more than can be addressed".into(),
            "a file that cannot hold it".into(),
        ));
    };
    crate::limits::check(
        format!("{} ({shape} bytes)", path.display()),
        expected as f64,
    )?;
    let raw_left = file_len.saturating_sub(head as u64);
    if !gz && (expected as u64) > raw_left {
        return Err(mismatch(
            "truncated",
            expected.to_string(),
            raw_left.to_string(),
        ));
    }
    // Grows with what arrives, so a short stream allocates no more than it holds.
    let mut data = Vec::new();
    read_up_to(expected as u64, &mut data)?;
    if data.len() < expected {
        return Err(mismatch(
            "truncated",
            expected.to_string(),
            data.len().to_string(),
        ));
    }
    let extra = std::io::copy(&mut input, &mut std::io::sink()).map_err(read_err)?;
    if extra > 0 {
        let found = (expected as u64).saturating_add(extra);
        return Err(mismatch(
            "too long",
            expected.to_string(),
            found.to_string(),
        ));
    }
    Ok((dims, data))
}

fn read_images(path: &Path) -> Result<ImageSet> {
    let (dims, data) = read_idx(path, IMAGES_MAGIC, "images")?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(FlowError::data(
            path.display(),
            format!(
                "images of {}×{} pixels: expected at least 1×1",
                dims[1], dims[2]
            ),
        ));
    }
    Ok(ImageSet {
        pixels: data,
        channels: 1,
        height: dims[1],
        width: dims[2],
        labels: Vec::new(),
        class_names: Vec::new(),
    })
}

fn read_labels(path: &Path, classes: usize) -> Result<Vec<usize>> {
    let (_, data) = read_idx(path, LABELS_MAGIC, "labels")?;
    if let Some(i) = data.iter().position(|&l| l as usize >= classes) {
        return Err(FlowError::data(
            path.display(),
            format!(
                "label {} of item {i} is out of range 0..{}",
                data[i],
                classes - 1
            ),
        ));
    }
    Ok(data.iter().map(|&l| l as usize).collect())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    pub fn idx_images(n: usize, h: usize, w: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [IMAGES_MAGIC, n as u32, h as u32, w as u32] {
            b.extend(v.to_be_bytes());
        }
        b.extend((0..n * h * w).map(|i| (i * 7 % 256) as u8));
        b
    }

    pub fn idx_labels(n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [LABELS_MAGIC, n as u32] {
            b.extend(v.to_be_bytes());
        }
        b.extend((0..n).map(|i| (i % 10) as u8));
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A temp dir with a tiny MNIST: train raw (5 images of 3×2), test gzipped (2 images).
    fn fixture(tag: &str) -> crate::data::tests_support::TempDir {
        let dir = crate::data::tests_support::temp_dir(tag);
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(5, 3, 2)).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(5)).unwrap();
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte.gz"),
            gz(&idx_images(2, 3, 2)),
        )
        .unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz(&idx_labels(2))).unwrap();
        dir
    }

    fn err(name: &str, dir: &Path) -> String {
        load(name, dir).unwrap_err().to_string()
    }

    #[test]
    fn reads_raw_and_gzipped_files() {
        let dir = fixture("idx_ok");
        let s = load("fashion-mnist", &dir).unwrap();
        let (Data::Images(train), Data::Images(test)) = (&s.train, &s.test) else {
            panic!("images expected")
        };
        assert_eq!(
            (train.len(), train.channels, train.height, train.width),
            (5, 1, 3, 2)
        );
        assert_eq!(test.len(), 2);
        assert_eq!(train.pixels, idx_images(5, 3, 2)[16..]);
        assert_eq!(test.pixels, idx_images(2, 3, 2)[16..]);
        assert_eq!(train.labels, vec![0, 1, 2, 3, 4]);
        assert_eq!(train.class_names[9], "Ankle boot");
        let m = load("mnist", &dir).unwrap();
        assert_eq!(m.train.num_classes(), 10);
    }

    #[test]
    fn missing_file_names_it_and_suggests_fetch() {
        let dir = fixture("idx_missing");
        std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let e = err("mnist", &dir);
        assert!(
            e.contains("t10k-labels-idx1-ubyte") && e.contains("not found"),
            "{e}"
        );
        assert!(
            e.contains(&format!("revflow data fetch mnist --dir {}", dir.display())),
            "{e}"
        );
    }

    #[test]
    fn truncated_file_reports_expected_and_found_bytes() {
        let dir = fixture("idx_trunc");
        let bytes = idx_images(5, 3, 2);
        std::fs::write(
            dir.join("train-images-idx3-ubyte"),
            &bytes[..bytes.len() - 4],
        )
        .unwrap();
        let e = err("mnist", &dir);
        assert!(e.contains("train-images-idx3-ubyte: truncated"), "{e}");
        assert!(
            e.contains("promises 30 data bytes (5×3×2), found 26"),
            "{e}"
        );
        std::fs::write(dir.join("train-images-idx3-ubyte"), &bytes[..10]).unwrap();
        assert!(err("mnist", &dir).contains("16-byte header, found 10 bytes"));
    }

    #[test]
    fn wrong_magic_is_reported() {
        let dir = fixture("idx_magic");
        // A labels file where the images should be.
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx_labels(5)).unwrap();
        let e = err("mnist", &dir);
        assert!(
            e.contains("train-images-idx3-ubyte: wrong magic number: expected 2051"),
            "{e}"
        );
        assert!(e.contains("found 2049"), "{e}");
    }

    #[test]
    fn gzip_is_checked_against_its_header_before_it_is_expanded() {
        let dir = fixture("idx_bomb");
        // A header promising 2³⁰ images of 28×28 (842 GB), a few kilobytes on disk.
        let mut huge = Vec::new();
        for v in [IMAGES_MAGIC, 1 << 30, 28, 28] {
            huge.extend(v.to_be_bytes());
        }
        huge.extend(vec![0u8; 1 << 20]);
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz(&huge)).unwrap();
        let e = err("mnist", &dir);
        assert!(
            e.contains("t10k-images-idx3-ubyte.gz (1073741824×28×28 bytes) would need about")
                && e.contains("memory limit")
                && e.contains("REVFLOW_MEMORY_LIMIT"),
            "{e}"
        );
        // A header promising 30 bytes followed by 64 MiB of zeros: read 30, then refused.
        let mut long = idx_images(5, 3, 2);
        long.extend(vec![0u8; 64 << 20]);
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz(&long)).unwrap();
        let e = err("mnist", &dir);
        assert!(
            e.contains("too long: the header promises 30 data bytes (5×3×2), found 67108894"),
            "{e}"
        );
    }

    #[test]
    fn bad_gzip_and_label_problems() {
        let dir = fixture("idx_bad");
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(err("mnist", &dir).contains("t10k-images-idx3-ubyte.gz: is not a valid gzip file"));

        let dir = fixture("idx_count");
        std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(4)).unwrap();
        let e = err("mnist", &dir);
        assert!(
            e.contains("has 4 labels but") && e.contains("has 5 images"),
            "{e}"
        );

        let mut labels = idx_labels(5);
        labels[10] = 12;
        std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
        assert!(err("mnist", &dir).contains("label 12 of item 2 is out of range 0..9"));
    }
}
