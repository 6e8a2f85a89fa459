//! In-memory data sets with train/test splits.
//!
//! Images are kept as 8-bit pixels (the models quantise and dequantise them themselves, see
//! DESIGN.md), vectors as `f32`. [`load`] turns a data-set name into [`Splits`]:
//!
//! - `digits` (default): the 8×8 UCI handwritten digits embedded in the binary (via smartcore).
//! - `mnist`, `fashion-mnist`: IDX files in a folder ([`fetch`] downloads them).
//! - `cifar10`: the CIFAR-10 binary batches in a folder ([`fetch`] downloads them).
//! - `images:<folder>`: PNG/JPEG files, one sub-folder per class ([`load_image_folder`]).
//! - `csv:<file>`: numeric vectors, optional header and `label`/`class` column.
//! - generated 2-D sets: `moons`, `circles`, `8gaussians`, `checkerboard`, `pinwheel`,
//!   `2spirals`, `rings`, `swissroll`.
//!
//! Every problem with a file or name is a [`FlowError::Data`](crate::FlowError::Data) naming
//! the file and what was expected; nothing here panics on bad input.
//!
//! The file formats can also be read a batch at a time, so that memory follows the batch and
//! not the file ([`IdxImages`], [`CifarReader`], [`CsvReader`], [`FolderReader`]); the
//! whole-set loaders are these readers asked for everything, with the same checks.
//! [`Convert`] resizes images or changes their channels where a user asks for it.

mod cifar;
mod convert;
mod csv;
mod digits;
mod fetch;
mod folder;
mod idx;
mod toy;

use std::path::Path;

use crate::rng::Rng;
use crate::{FlowError, Result};

pub use cifar::CifarReader;
pub use convert::Convert;
pub use csv::{to_csv, CsvReader, CsvRows};
pub use fetch::fetch;
pub use folder::{
    decode as decode_image, header as image_header, load_image_folder, FolderImage, FolderReader,
};
pub use idx::{IdxImages, IdxReader};

/// 8-bit images, row-major N×C×H×W.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Empty if unlabelled, else one label (an index into `class_names`) per image.
    pub labels: Vec<usize>,
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self.sample_dims() {
            0 => 0,
            d => self.pixels.len() / d,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per image, C·H·W.
    pub fn sample_dims(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (C×H×W). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let d = self.sample_dims();
        &self.pixels[i * d..(i + 1) * d]
    }

    /// The images at `idx`, in that order (indices may repeat).
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        ImageSet {
            pixels: idx.iter().flat_map(|&i| self.image(i)).copied().collect(),
            labels: pick_labels(&self.labels, idx),
            class_names: self.class_names.clone(),
            ..*self
        }
    }
}

/// Real vectors, row-major N×D.
#[derive(Debug, Clone)]
pub struct VectorSet {
    pub values: Vec<f32>,
    pub dim: usize,
    /// Empty if unlabelled, else one label (an index into `class_names`) per row.
    pub labels: Vec<usize>,
    pub class_names: Vec<String>,
    /// One name per dimension.
    pub columns: Vec<String>,
    /// Context rows `N × context_columns.len()` for a conditional model (see
    /// [`with_context`](Self::with_context)); empty without.
    pub context: Vec<f32>,
    pub context_columns: Vec<String>,
}

impl VectorSet {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self.dim {
            0 => 0,
            d => self.values.len() / d,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`. Panics if `i >= len()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `idx`, in that order (indices may repeat).
    pub fn subset(&self, idx: &[usize]) -> VectorSet {
        VectorSet {
            values: idx.iter().flat_map(|&i| self.row(i)).copied().collect(),
            dim: self.dim,
            labels: pick_labels(&self.labels, idx),
            class_names: self.class_names.clone(),
            columns: self.columns.clone(),
            context: idx
                .iter()
                .flat_map(|&i| self.context_row(i))
                .copied()
                .collect(),
            context_columns: self.context_columns.clone(),
        }
    }

    /// Row `i`'s context (empty without one).
    pub fn context_row(&self, i: usize) -> &[f32] {
        let k = self.context_columns.len();
        &self.context[i * k..(i + 1) * k]
    }

    /// The columns named in `names` moved out of the values into the context, in that order;
    /// the others stay the modelled vector `x`. `source` names the data in errors.
    pub fn with_context(self, names: &[String], source: &str) -> Result<VectorSet> {
        let mut picked = Vec::with_capacity(names.len());
        for name in names {
            let Some(j) = self.columns.iter().position(|c| c == name) else {
                return Err(FlowError::Config(format!(
                    "--context: {source} has no column '{name}'; its columns are {}",
                    self.columns.join(", ")
                )));
            };
            if picked.contains(&j) {
                return Err(FlowError::Config(format!(
                    "--context: column '{name}' is named twice"
                )));
            }
            picked.push(j);
        }
        let kept: Vec<usize> = (0..self.dim).filter(|j| !picked.contains(j)).collect();
        if kept.is_empty() {
            return Err(FlowError::Config(format!(
                "--context: every column of {source} would be context; leave at least one to model"
            )));
        }
        let n = self.len();
        // Columns already in the context stay first; the picked ones follow.
        let context = (0..n)
            .flat_map(|i| {
                let row = self.row(i);
                let picked = picked.iter().map(move |&j| row[j]);
                self.context_row(i).iter().copied().chain(picked)
            })
            .collect();
        let values = (0..n)
            .flat_map(|i| {
                let row = self.row(i);
                kept.iter().map(move |&j| row[j])
            })
            .collect();
        let names = |cols: &[usize]| -> Vec<String> {
            cols.iter().map(|&j| self.columns[j].clone()).collect()
        };
        let (columns, mut context_columns) = (names(&kept), self.context_columns.clone());
        context_columns.extend(names(&picked));
        Ok(VectorSet {
            values,
            dim: kept.len(),
            columns,
            context,
            context_columns,
            ..self
        })
    }
}

fn pick_labels(labels: &[usize], idx: &[usize]) -> Vec<usize> {
    if labels.is_empty() {
        Vec::new()
    } else {
        idx.iter().map(|&i| labels[i]).collect()
    }
}

/// A data set of either kind.
#[derive(Debug, Clone)]
pub enum Data {
    Images(ImageSet),
    Vectors(VectorSet),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Images(s) => s.len(),
            Data::Vectors(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of the classes; empty for unlabelled data.
    pub fn class_names(&self) -> &[String] {
        match self {
            Data::Images(s) => &s.class_names,
            Data::Vectors(s) => &s.class_names,
        }
    }

    /// Number of classes; 0 for unlabelled data.
    pub fn num_classes(&self) -> usize {
        self.class_names().len()
    }

    /// The items at `idx`, in that order (indices may repeat).
    pub fn subset(&self, idx: &[usize]) -> Data {
        match self {
            Data::Images(s) => Data::Images(s.subset(idx)),
            Data::Vectors(s) => Data::Vectors(s.subset(idx)),
        }
    }
}

/// A named data set split into training and test parts.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: Data,
    pub test: Data,
    pub name: String,
    /// One line for people: what the data is and how it was split.
    pub description: String,
}

impl Splits {
    /// Both parts with the columns `names` moved into the context
    /// ([`VectorSet::with_context`]); images have no columns to move.
    pub fn with_context(self, names: &[String]) -> Result<Splits> {
        let part = |data: Data| match data {
            Data::Vectors(set) => set.with_context(names, &self.name).map(Data::Vectors),
            Data::Images(_) => Err(FlowError::Config(format!(
                "--context takes columns of vector data (a CSV file); {} holds images",
                self.name
            ))),
        };
        Ok(Splits {
            train: part(self.train.clone())?,
            test: part(self.test.clone())?,
            ..self
        })
    }
}

/// The built-in generated 2-D sets, in catalogue order.
pub const TOY_SETS: [&str; 8] = [
    "moons",
    "circles",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "rings",
    "swissroll",
];

/// (name, one-line description) of every data set, for `revflow data list`.
pub fn catalogue() -> Vec<(&'static str, &'static str)> {
    let mut list = vec![
        (
            "digits",
            "1797 8×8 grey handwritten digits, 10 classes; embedded, the default",
        ),
        (
            "mnist",
            "70000 28×28 grey handwritten digits, 10 classes; IDX files in --data-dir (revflow data fetch mnist --dir DIR)",
        ),
        (
            "fashion-mnist",
            "70000 28×28 grey clothing images, 10 classes; IDX files in --data-dir (revflow data fetch fashion-mnist --dir DIR)",
        ),
        (
            "cifar10",
            "60000 32×32 colour images, 10 classes; binary batches in --data-dir (revflow data fetch cifar10 --dir DIR)",
        ),
        (
            "images:<folder>",
            "PNG/JPEG images of one size; sub-folders are classes; 90/10 split",
        ),
        (
            "csv:<file>",
            "numeric vectors, optional header and label/class column; 90/10 split",
        ),
    ];
    list.extend(TOY_SETS.iter().map(|&n| (n, toy::describe(n))));
    list
}

/// Loads the data set `name` (see [`catalogue`]).
///
/// `dir` is the folder of the file-based sets (`mnist`, `fashion-mnist`, `cifar10`); the
/// `images:` and `csv:` paths are used as given. `seed` drives the generated sets and the
/// seeded splits (the same seed gives the same split). `samples` is the number of training
/// points of a generated 2-D set; its test part has `samples / 4` (at least 1), generated
/// from a different seed.
pub fn load(name: &str, dir: Option<&Path>, seed: u64, samples: usize) -> Result<Splits> {
    load_resized(name, dir, seed, samples, None)
}

/// [`load`], with the images of an `images:` folder resized to `(width, height)`.
pub fn load_resized(
    name: &str,
    dir: Option<&Path>,
    seed: u64,
    samples: usize,
    resize: Option<(u32, u32)>,
) -> Result<Splits> {
    if let Some(path) = name.strip_prefix("images:") {
        let set = load_image_folder(Path::new(path), resize)?;
        let (h, w, c) = (set.height, set.width, set.channels);
        let classes = set.class_names.len();
        let splits = split(name, Data::Images(set), seed);
        let description = format!(
            "{} {w}×{h} images with {c} channel(s), {classes} class(es), from {path}; {}",
            splits.train.len() + splits.test.len(),
            split_summary(&splits, seed)
        );
        return Ok(Splits {
            description,
            ..splits
        });
    }
    if let Some(path) = name.strip_prefix("csv:") {
        let set = csv::load(Path::new(path))?;
        let dim = set.dim;
        let splits = split(name, Data::Vectors(set), seed);
        let description = format!(
            "{} {dim}-D vectors from {path}; {}",
            splits.train.len() + splits.test.len(),
            split_summary(&splits, seed)
        );
        return Ok(Splits {
            description,
            ..splits
        });
    }
    match name {
        "digits" => {
            let set = digits::load();
            let splits = split_n(name, Data::Images(set), digits::TEST_SIZE, seed);
            let description = format!(
                "UCI handwritten digits, 8×8 grey, 17 levels scaled to 0..255, 10 classes; {}",
                split_summary(&splits, seed)
            );
            Ok(Splits {
                description,
                ..splits
            })
        }
        "mnist" | "fashion-mnist" => idx::load(name, need_dir(name, dir)?),
        "cifar10" => cifar::load(need_dir(name, dir)?),
        _ if TOY_SETS.contains(&name) => toy::load(name, seed, samples),
        _ => Err(FlowError::data(
            name,
            format!("unknown data set; expected one of {}", names_list()),
        )),
    }
}

/// The classes of a file-based set: `mnist`, `fashion-mnist` or `cifar10` (empty for others).
pub fn class_names_of(name: &str) -> Vec<String> {
    match name {
        "mnist" | "fashion-mnist" => idx::class_names(name),
        "cifar10" => cifar::CLASSES.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn names_list() -> String {
    catalogue()
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn need_dir<'a>(name: &str, dir: Option<&'a Path>) -> Result<&'a Path> {
    dir.ok_or_else(|| {
        FlowError::data(
            name,
            format!(
                "needs the folder holding its files: pass --data-dir DIR \
                 (`revflow data fetch {name} --dir DIR` downloads them)"
            ),
        )
    })
}

/// Salt so that a split never reuses the stream a model initialised from the same seed sees.
const SPLIT_SALT: u64 = 0x5B1D_0DA7_A5E7_0001;

/// Seeded 90/10 split; at least one test item when there are two or more.
fn split(name: &str, data: Data, seed: u64) -> Splits {
    let n = data.len();
    let n_test = if n >= 2 {
        ((n as f64 * 0.1).round() as usize).max(1)
    } else {
        0
    };
    split_n(name, data, n_test, seed)
}

/// Seeded split with `n_test` test items; each part keeps the original order.
fn split_n(name: &str, data: Data, n_test: usize, seed: u64) -> Splits {
    let n = data.len();
    let n_test = n_test.min(n);
    let perm = Rng::new(seed ^ SPLIT_SALT).permutation(n);
    let (mut test, mut train) = (perm[..n_test].to_vec(), perm[n_test..].to_vec());
    test.sort_unstable();
    train.sort_unstable();
    Splits {
        train: data.subset(&train),
        test: data.subset(&test),
        name: name.to_string(),
        description: String::new(),
    }
}

fn split_summary(splits: &Splits, seed: u64) -> String {
    format!(
        "{} train / {} test (seeded split, seed {seed})",
        splits.train.len(),
        splits.test.len()
    )
}

#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::{Path, PathBuf};

    /// A fresh folder for one test's fixtures, removed when dropped. It stands for the
    /// folder itself, or for a file in it after [`TempDir::at`].
    pub struct TempDir {
        root: PathBuf,
        path: PathBuf,
    }

    /// Creates an empty folder unique to this test tag and process.
    pub fn temp_dir(tag: &str) -> TempDir {
        let root = std::env::temp_dir().join(format!("revflow-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        TempDir {
            path: root.clone(),
            root,
        }
    }

    impl TempDir {
        /// The same folder, standing for `name` inside it.
        pub fn at(mut self, name: &str) -> TempDir {
            self.path = self.root.join(name);
            self
        }
    }

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> ImageSet {
        ImageSet {
            pixels: (0..n * 2).map(|v| v as u8).collect(),
            channels: 1,
            height: 1,
            width: 2,
            labels: (0..n).map(|i| i % 3).collect(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[test]
    fn image_set_helpers() {
        let s = images(5);
        assert_eq!((s.len(), s.sample_dims(), s.is_empty()), (5, 2, false));
        assert_eq!(s.image(3), &[6, 7]);
        let sub = s.subset(&[4, 1, 1]);
        assert_eq!(sub.pixels, vec![8, 9, 2, 3, 2, 3]);
        assert_eq!(sub.labels, vec![1, 1, 1]);
        assert_eq!(Data::Images(sub).num_classes(), 3);
    }

    #[test]
    fn vector_set_helpers() {
        let s = VectorSet {
            values: vec![0., 1., 2., 3., 4., 5.],
            dim: 2,
            labels: vec![],
            class_names: vec![],
            columns: vec!["x".into(), "y".into()],
            context: Vec::new(),
            context_columns: Vec::new(),
        };
        assert_eq!(s.len(), 3);
        assert_eq!(s.row(1), &[2., 3.]);
        let sub = s.subset(&[2, 0]);
        assert_eq!(sub.values, vec![4., 5., 0., 1.]);
        assert!(sub.labels.is_empty());
        assert_eq!(Data::Vectors(sub).num_classes(), 0);
    }

    #[test]
    fn context_columns_move_out_of_the_values_in_the_order_named() {
        let s = VectorSet {
            values: (0..8).map(|v| v as f32).collect(),
            dim: 4,
            labels: vec![],
            class_names: vec![],
            columns: ["a", "b", "c", "d"].map(String::from).to_vec(),
            context: Vec::new(),
            context_columns: Vec::new(),
        };
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = s
            .clone()
            .with_context(&names(&["d", "b"]), "t.csv")
            .unwrap();
        assert_eq!((c.dim, c.columns.clone()), (2, names(&["a", "c"])));
        assert_eq!(c.values, vec![0., 2., 4., 6.]);
        assert_eq!(c.context_columns, names(&["d", "b"]));
        assert_eq!(c.context, vec![3., 1., 7., 5.]);
        assert_eq!(c.subset(&[1]).context_row(0), &[7., 5.]);
        // A second call appends to the context.
        let more = c.with_context(&names(&["c"]), "t.csv").unwrap();
        assert_eq!(more.context, vec![3., 1., 2., 7., 5., 6.]);
        assert_eq!(more.values, vec![0., 4.]);
        let err = |n: &[&str]| {
            s.clone()
                .with_context(&names(n), "t.csv")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["e"]).contains("t.csv has no column 'e'; its columns are a, b, c, d"));
        assert!(err(&["a", "a"]).contains("column 'a' is named twice"));
        assert!(err(&["a", "b", "c", "d"]).contains("every column of t.csv would be context"));
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let data = Data::Images(images(25));
        let a = split("t", data.clone(), 0);
        let b = split("t", data.clone(), 0);
        let c = split("t", data, 1);
        assert_eq!((a.train.len(), a.test.len()), (22, 3));
        let (Data::Images(at), Data::Images(bt), Data::Images(ct)) = (&a.test, &b.test, &c.test)
        else {
            panic!("image splits expected")
        };
        assert_eq!(at.pixels, bt.pixels);
        assert_ne!(at.pixels, ct.pixels);
        let Data::Images(atr) = &a.train else {
            unreachable!()
        };
        let mut all: Vec<u8> = atr.pixels.iter().chain(&at.pixels).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<u8>>());
        // Two items still give a test item; one gives none.
        let two = split("t", Data::Images(images(2)), 0);
        assert_eq!((two.train.len(), two.test.len()), (1, 1));
        let one = split("t", Data::Images(images(1)), 0);
        assert_eq!((one.train.len(), one.test.len()), (1, 0));
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let e = load("mnits", None, 0, 100).unwrap_err().to_string();
        assert!(e.starts_with("mnits: unknown data set"), "{e}");
        for n in [
            "digits",
            "mnist",
            "cifar10",
            "images:<folder>",
            "csv:<file>",
            "moons",
        ] {
            assert!(e.contains(n), "{e}");
        }
    }

    #[test]
    fn file_sets_need_a_dir() {
        let e = load("cifar10", None, 0, 0).unwrap_err().to_string();
        assert!(
            // `train` takes --data-dir; `data fetch` takes --dir.
            e.contains("pass --data-dir DIR") && e.contains("revflow data fetch cifar10 --dir DIR"),
            "{e}"
        );
    }

    #[test]
    fn digits_split_is_1497_300_and_seeded() {
        let a = load("digits", None, 0, 0).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (1497, 300));
        assert_eq!(a.train.num_classes(), 10);
        let b = load("digits", None, 0, 0).unwrap();
        let c = load("digits", None, 7, 0).unwrap();
        let pixels = |s: &Splits| match &s.test {
            Data::Images(i) => i.pixels.clone(),
            Data::Vectors(_) => unreachable!(),
        };
        assert_eq!(pixels(&a), pixels(&b));
        assert_ne!(pixels(&a), pixels(&c));
        assert!(
            a.description.contains("1497 train / 300 test"),
            "{}",
            a.description
        );
    }

    #[test]
    fn catalogue_names_load_or_need_files() {
        for (name, desc) in catalogue() {
            assert!(!desc.is_empty());
            if TOY_SETS.contains(&name) || name == "digits" {
                assert!(load(name, None, 0, 40).is_ok(), "{name}");
            }
        }
    }
}
