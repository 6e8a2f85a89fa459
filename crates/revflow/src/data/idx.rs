//! MNIST and Fashion-MNIST in LeCun's IDX format: big-endian header (magic, dimensions),
//! then unsigned bytes. Files may be raw or gzipped, with or without a `.gz` suffix.
//!
//! [`IdxReader`] reads a file a batch of items at a time (a `.gz` decompressed as a stream),
//! after checking its header; the whole-file loader is the same reader asked for everything.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{Data, ImageSet, Splits};
use crate::{FlowError, Result};

/// IDX magic for unsigned-byte data with 3 dimensions (N, rows, cols).
pub(crate) const IMAGES_MAGIC: u32 = 0x0803;
/// IDX magic for unsigned-byte data with 1 dimension (N).
pub(crate) const LABELS_MAGIC: u32 = 0x0801;

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
    let part = |prefix: &str| -> Result<ImageSet> {
        let (images, labels) = IdxImages::part_files(name, dir, prefix)?;
        let mut stream = IdxImages::open(&images)?;
        stream.check_whole()?;
        // The images to their end, then the labels, each file checked whole before the next.
        let (pixels, _) = stream.read(stream.len())?.unwrap_or_default();
        stream.read(1)?;
        stream.attach_labels(&labels, class_names(name).len())?;
        stream.done = 0;
        let labels = stream.read_labels(stream.len())?;
        stream.read(1)?;
        Ok(ImageSet {
            pixels,
            channels: 1,
            height: stream.height,
            width: stream.width,
            labels,
            class_names: class_names(name),
        })
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

/// An IDX file of unsigned bytes, read a batch of items at a time.
///
/// Opening checks the magic and the header, and for a raw file that it holds the data the
/// header promises; a `.gz` is decompressed as it is read, so a short or long stream is
/// found when its end is reached (and reported naming the file). An item is one entry of the
/// first dimension (an image, a label).
pub struct IdxReader {
    path: PathBuf,
    input: Box<dyn Read>,
    gz: bool,
    dims: Vec<usize>,
    shape: String,
    /// Bytes per item.
    item: usize,
    /// Items not read yet.
    left: usize,
    /// Data bytes read so far.
    read: u64,
}

impl IdxReader {
    /// Opens an IDX file, raw or gzipped (whatever its name), whose magic must be `magic`
    /// (`what` names the kind for messages: "images", "labels").
    pub fn open(path: &Path, magic: u32, what: &str) -> Result<Self> {
        let cannot =
            |e: std::io::Error| FlowError::data(path.display(), format!("cannot read: {e}"));
        let file = File::open(path).map_err(cannot)?;
        let file_len = file.metadata().map_err(cannot)?.len();
        let mut reader = BufReader::new(file);
        let gz = reader
            .fill_buf()
            .map_err(cannot)?
            .starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn Read> = match gz {
            true => Box::new(GzDecoder::new(reader)),
            false => Box::new(reader),
        };
        let mut idx = IdxReader {
            path: path.to_path_buf(),
            input,
            gz,
            dims: Vec::new(),
            shape: String::new(),
            item: 0,
            left: 0,
            read: 0,
        };
        let ndim = (magic & 0xff) as usize;
        let head = 4 * (1 + ndim);
        let mut bytes = Vec::with_capacity(head);
        idx.read_up_to(head as u64, &mut bytes)?;
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
        idx.dims = (1..=ndim).map(|i| word(i).unwrap_or(0) as usize).collect();
        idx.shape = idx
            .dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        // Checked: a corrupt header must not overflow.
        let Some(expected) = idx.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
            return Err(idx.mismatch(
                "corrupt header",
                "more than can be addressed".into(),
                "a file that cannot hold it".into(),
            ));
        };
        idx.item = idx.dims[1..].iter().product();
        idx.left = idx.dims[0];
        let raw_left = file_len.saturating_sub(head as u64);
        if !gz && (expected as u64) > raw_left {
            return Err(idx.mismatch("truncated", expected.to_string(), raw_left.to_string()));
        }
        Ok(idx)
    }

    /// The dimensions the header declares, items first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Items in the file (the first dimension).
    pub fn len(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Data bytes the header promises (checked not to overflow on opening).
    pub fn data_bytes(&self) -> usize {
        self.len() * self.item
    }

    /// The next `max` items (fewer at the end), their bytes one item after another; `None`
    /// once every item was read, after checking that nothing follows them. The buffer grows
    /// with what arrives, so a short stream allocates no more than it holds.
    pub fn read(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.left == 0 {
            self.check_end()?;
            return Ok(None);
        }
        let n = max.clamp(1, self.left);
        let want = (n * self.item) as u64;
        let mut data = Vec::new();
        self.read_up_to(want, &mut data)?;
        self.read += data.len() as u64;
        if (data.len() as u64) < want {
            return Err(self.mismatch(
                "truncated",
                self.data_bytes().to_string(),
                self.read.to_string(),
            ));
        }
        self.left -= n;
        Ok(Some(data))
    }

    /// After the last item: the file must end there.
    fn check_end(&mut self) -> Result<()> {
        let extra =
            std::io::copy(&mut self.input, &mut std::io::sink()).map_err(|e| self.read_error(e))?;
        if extra > 0 {
            let found = self.read.saturating_add(extra);
            return Err(self.mismatch(
                "too long",
                self.data_bytes().to_string(),
                found.to_string(),
            ));
        }
        Ok(())
    }

    fn read_up_to(&mut self, n: u64, buf: &mut Vec<u8>) -> Result<()> {
        match (&mut self.input).take(n).read_to_end(buf) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.read_error(e)),
        }
    }

    fn read_error(&self, e: std::io::Error) -> FlowError {
        match self.gz {
            true => FlowError::data(
                self.path.display(),
                format!("is not a valid gzip file ({e}); download it again"),
            ),
            false => FlowError::data(self.path.display(), format!("cannot read: {e}")),
        }
    }

    fn mismatch(&self, problem: &str, promised: String, found: String) -> FlowError {
        FlowError::data(
            self.path.display(),
            format!(
                "{problem}: the header promises {promised} data bytes ({}), found {found}; \
                 download the file again",
                self.shape
            ),
        )
    }
}

/// The classes of `mnist` (the digits) or `fashion-mnist`.
pub(crate) fn class_names(name: &str) -> Vec<String> {
    if name == "fashion-mnist" {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    }
}

/// IDX images (and their labels, if a labels file is given), read a batch at a time.
pub struct IdxImages {
    images: IdxReader,
    labels: Option<IdxReader>,
    classes: usize,
    /// Items read so far (for messages about a label).
    done: usize,
    pub height: usize,
    pub width: usize,
}

impl IdxImages {
    /// An images file, unlabelled until [`with_labels`](Self::with_labels).
    pub fn open(images: &Path) -> Result<Self> {
        let images = IdxReader::open(images, IMAGES_MAGIC, "images")?;
        let (height, width) = (images.dims[1], images.dims[2]);
        if height == 0 || width == 0 {
            return Err(FlowError::data(
                images.path.display(),
                format!("images of {height}×{width} pixels: expected at least 1×1"),
            ));
        }
        Ok(Self {
            images,
            labels: None,
            classes: 0,
            done: 0,
            height,
            width,
        })
    }

    /// The labels of these images (each below `classes`) from `labels`, whose header must
    /// count as many items.
    pub fn with_labels(mut self, labels: &Path, classes: usize) -> Result<Self> {
        self.attach_labels(labels, classes)?;
        Ok(self)
    }

    fn attach_labels(&mut self, labels: &Path, classes: usize) -> Result<()> {
        let l = IdxReader::open(labels, LABELS_MAGIC, "labels")?;
        if l.len() != self.images.len() {
            return Err(FlowError::data(
                l.path.display(),
                format!(
                    "has {} labels but {} has {} images; the two files must come from the same set",
                    l.len(),
                    self.images.path.display(),
                    self.images.len()
                ),
            ));
        }
        self.labels = Some(l);
        self.classes = classes;
        Ok(())
    }

    /// Refuses reading every image at once when it would exceed the memory limit.
    fn check_whole(&self) -> Result<()> {
        crate::limits::check(
            format!(
                "{} ({} bytes)",
                self.images.path.display(),
                self.images.shape
            ),
            self.images.data_bytes() as f64,
        )
    }

    /// The paths of the `prefix` part (`train` or `t10k`) of `mnist` or `fashion-mnist` in
    /// `dir`: (images, labels), with their standard names, raw or `.gz`.
    fn part_files(name: &str, dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf)> {
        Ok((
            find(name, dir, &format!("{prefix}-images-idx3-ubyte"))?,
            find(name, dir, &format!("{prefix}-labels-idx1-ubyte"))?,
        ))
    }

    /// The `prefix` part (`train` or `t10k`) of `mnist` or `fashion-mnist` in `dir`, with
    /// its standard file names, raw or `.gz`.
    pub fn open_part(name: &str, dir: &Path, prefix: &str) -> Result<Self> {
        let (images, labels) = Self::part_files(name, dir, prefix)?;
        Self::open(&images)?.with_labels(&labels, class_names(name).len())
    }

    /// Images in the file.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images file.
    pub fn path(&self) -> &Path {
        &self.images.path
    }

    /// The next `max` images (H×W bytes each) and their labels (empty without a labels
    /// file); `None` after the last, once both files were checked to end there.
    pub fn read(&mut self, max: usize) -> Result<Option<(Vec<u8>, Vec<usize>)>> {
        let Some(pixels) = self.images.read(max)? else {
            if let Some(l) = &mut self.labels {
                l.check_end()?;
            }
            return Ok(None);
        };
        let n = pixels.len() / (self.height * self.width);
        let labels = match self.labels {
            Some(_) => self.read_labels(n)?,
            None => Vec::new(),
        };
        self.done += n;
        Ok(Some((pixels, labels)))
    }

    /// The next `n` labels (fewer at the end), each checked to be below the class count.
    fn read_labels(&mut self, n: usize) -> Result<Vec<usize>> {
        let Some(l) = &mut self.labels else {
            return Ok(Vec::new());
        };
        let bytes = l.read(n)?.unwrap_or_default();
        if let Some(i) = bytes.iter().position(|&b| b as usize >= self.classes) {
            return Err(FlowError::data(
                l.path.display(),
                format!(
                    "label {} of item {} is out of range 0..{}",
                    bytes[i],
                    self.done + i,
                    self.classes.saturating_sub(1)
                ),
            ));
        }
        Ok(bytes.into_iter().map(usize::from).collect())
    }
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

    /// Everything a stream gives in batches of `batch`.
    fn stream_all(mut s: IdxImages, batch: usize) -> Result<(Vec<u8>, Vec<usize>)> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        while let Some((p, l)) = s.read(batch)? {
            assert!(p.len() <= batch * 6 && !p.is_empty());
            pixels.extend(p);
            labels.extend(l);
        }
        Ok((pixels, labels))
    }

    #[test]
    fn streams_give_what_the_whole_file_loader_gives_in_any_batch_size() {
        let dir = fixture("idx_stream");
        let s = load("mnist", &dir).unwrap();
        let (Data::Images(train), Data::Images(test)) = (&s.train, &s.test) else {
            panic!("images expected")
        };
        for batch in [1, 2, 3, 100] {
            for (prefix, whole) in [("train", train), ("t10k", test)] {
                let stream = IdxImages::open_part("mnist", &dir, prefix).unwrap();
                assert_eq!(
                    (stream.len(), stream.height, stream.width),
                    (whole.len(), 3, 2)
                );
                let (pixels, labels) = stream_all(stream, batch).unwrap();
                assert_eq!((&pixels, &labels), (&whole.pixels, &whole.labels));
            }
        }
        // An images file alone: unlabelled.
        let alone = IdxImages::open(&dir.join("train-images-idx3-ubyte")).unwrap();
        let (pixels, labels) = stream_all(alone, 2).unwrap();
        assert_eq!(pixels, train.pixels);
        assert!(labels.is_empty());
    }

    #[test]
    fn a_gzip_stream_that_ends_early_or_late_is_found_when_its_end_is_reached() {
        let dir = fixture("idx_stream_bad");
        let path = dir.join("t10k-images-idx3-ubyte.gz");
        let bytes = idx_images(5, 3, 2);
        std::fs::write(&path, gz(&bytes[..bytes.len() - 4])).unwrap();
        let mut s = IdxImages::open(&path).unwrap();
        assert_eq!(s.read(2).unwrap().unwrap().0.len(), 12);
        let e = stream_all(s, 2).unwrap_err().to_string();
        assert!(
            e.contains("t10k-images-idx3-ubyte.gz: truncated: the header promises 30 data bytes (5×3×2), found 26"),
            "{e}"
        );
        let mut long = bytes.clone();
        long.extend([1, 2, 3]);
        std::fs::write(&path, gz(&long)).unwrap();
        let e = stream_all(IdxImages::open(&path).unwrap(), 4)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("too long: the header promises 30 data bytes (5×3×2), found 33"),
            "{e}"
        );
        // A label out of range is found in the batch that holds it, numbered in the file.
        let mut labels = idx_labels(5);
        labels[8 + 3] = 10;
        std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
        let mut s = IdxImages::open_part("mnist", &dir, "train").unwrap();
        assert!(s.read(2).is_ok());
        let e = s.read(2).unwrap_err().to_string();
        assert!(e.contains("label 10 of item 3 is out of range 0..9"), "{e}");
    }
}
