//! Where inputs come from, read a batch at a time so that memory follows the batch.
//!
//! An input specification ([`Spec`]) is one of:
//!
//! - `test`, `train`: a whole split of the run's own data; `test:N`, `test:A..B` (A
//!   included, B not), `train:N`, `train:A..B`: rows of it;
//! - `mnist:test`, `fashion-mnist:train`, `cifar10:test` (the split named explicitly): the
//!   files of a public set in the data folder (`revflow data fetch` puts them there);
//! - `idx:<file>`: an IDX images file (raw or `.gz`), unlabelled;
//! - `images:<folder>`, or a path to a folder: its PNG/JPEG images (sub-folders are classes);
//! - a path to one PNG/JPEG image;
//! - `csv:<file>`: numeric vectors, one per line (header and `label` column optional);
//! - `invert:<spec>`: the images of another specification with every value v as 255 − v.
//!
//! Images are converted (resized, to grey, to colour) only as [`Convert`] says; an input whose
//! shape does not fit the run is an error naming the file, what it is and what the run
//! models — found when the source is opened wherever its header tells (IDX, CIFAR-10, CSV,
//! every image file of a folder), so a long run does not fail at its end.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::data::{
    class_names_of, image_header, CifarReader, Convert, CsvReader, Data, FolderReader, IdxImages,
    Splits,
};
use crate::error::{FlowError, Result};
use crate::training::RunConfig;

/// A part of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl Part {
    fn parse(text: &str) -> Option<Part> {
        match text {
            "train" => Some(Part::Train),
            "test" => Some(Part::Test),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
}

/// The public sets whose files `Spec::Set` reads.
const FILE_SETS: [&str; 3] = ["mnist", "fashion-mnist", "cifar10"];

/// An input specification (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// Rows of the run's own data; `range` as written after the colon (checked on opening,
    /// against the split's length).
    Split {
        part: Part,
        range: Option<String>,
    },
    /// A split of a public set's files in the data folder.
    Set {
        name: String,
        part: Part,
    },
    Idx(PathBuf),
    Folder(PathBuf),
    Image(PathBuf),
    Csv(PathBuf),
    Invert(Box<Spec>),
}

/// What an input source holds, or what a run models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 8-bit images `[C, H, W]`.
    Images([usize; 3]),
    /// Real vectors of this many values.
    Vectors(usize),
}

impl Kind {
    /// What `run` models.
    pub fn of(run: &crate::models::ModelConfig) -> Kind {
        match run.image_shape() {
            Some(shape) => Kind::Images(shape),
            None => Kind::Vectors(run.dims()),
        }
    }

    /// Values per input.
    pub fn dims(self) -> usize {
        match self {
            Kind::Images(s) => s.iter().product(),
            Kind::Vectors(d) => d,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Kind::Images([c, h, w]) => write!(f, "{w}×{h} with {c} channel(s)"),
            Kind::Vectors(d) => write!(f, "vectors of {d} values"),
        }
    }
}

impl Spec {
    /// Reads a specification; a bare path is a folder if it is one, else an image file.
    pub fn parse(text: &str) -> Result<Spec> {
        let path = |p: &str| -> Result<PathBuf> {
            match p.is_empty() {
                true => Err(FlowError::Config(format!(
                    "{text}: a path is missing after the colon"
                ))),
                false => Ok(PathBuf::from(p)),
            }
        };
        if let Some(part) = Part::parse(text) {
            return Ok(Spec::Split { part, range: None });
        }
        let Some((head, rest)) = text.split_once(':') else {
            if FILE_SETS.contains(&text) && !Path::new(text).exists() {
                return Err(FlowError::Config(format!(
                    "{text}: name the split: {text}:test or {text}:train"
                )));
            }
            let p = path(text)?;
            return Ok(match p.is_dir() {
                true => Spec::Folder(p),
                false => Spec::Image(p),
            });
        };
        if let Some(part) = Part::parse(head) {
            return Ok(Spec::Split {
                part,
                range: Some(rest.to_string()),
            });
        }
        match head {
            "images" => Ok(Spec::Folder(path(rest)?)),
            "idx" => Ok(Spec::Idx(path(rest)?)),
            "csv" => Ok(Spec::Csv(path(rest)?)),
            "invert" => Ok(Spec::Invert(Box::new(Spec::parse(rest)?))),
            set if FILE_SETS.contains(&set) => match Part::parse(rest) {
                Some(part) => Ok(Spec::Set {
                    name: set.to_string(),
                    part,
                }),
                None => Err(FlowError::Config(format!(
                    "{text}: name the split: {set}:test or {set}:train"
                ))),
            },
            // A path with a colon in it (`./a:b.png`) is still a path.
            _ if Path::new(text).exists() => Spec::parse(&format!("./{text}")),
            _ => Err(FlowError::Config(format!(
                "{text}: unknown input; expected an image file or folder, images:<folder>, \
                 test, test:N, test:A..B (or train…), mnist:test, fashion-mnist:test, \
                 cifar10:test (or :train, with --data-dir), idx:<file>, csv:<file> or invert:<input>"
            ))),
        }
    }
}

/// Inputs read from sources: rows of values and, for each, an id and its label.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Row after row, `dims` values each (pixels 0‥255 as floats, or vector values).
    pub values: Vec<f32>,
    pub dims: usize,
    /// Each row's name: its file, `test:17`, `mnist:test#17`, `data.csv:12`.
    pub ids: Vec<String>,
    /// Each row's class name, where the source has labels.
    pub labels: Vec<Option<String>>,
    /// Each row's label as a class of the run (`None` where unlabelled, or not a class of it).
    pub classes: Vec<Option<usize>>,
    /// Each row's raw context values, one after another, for a run conditioned on a context
    /// (empty otherwise).
    pub context: Vec<f32>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row `i`. Panics if `i >= len()`, like slice indexing.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dims..(i + 1) * self.dims]
    }

    fn extend(&mut self, more: Rows) {
        self.values.extend(more.values);
        self.ids.extend(more.ids);
        self.labels.extend(more.labels);
        self.classes.extend(more.classes);
        self.context.extend(more.context);
    }
}

/// What sources are opened against: the run (its model's shape, its classes, its own data)
/// and the user's options.
pub struct Context<'a> {
    run: &'a RunConfig,
    data_dir: Option<PathBuf>,
    convert: Convert,
    /// Whether the command offers `--resize`, `--grayscale` and `--rgb`.
    offers_convert: bool,
    splits: OnceLock<Splits>,
    /// The run's data, loaded at most once by the caller and shared between contexts (a
    /// server's requests); `None`: this context's own.
    shared: Option<&'a OnceLock<Splits>>,
}

impl<'a> Context<'a> {
    pub fn new(run: &'a RunConfig) -> Self {
        Context {
            run,
            data_dir: None,
            convert: Convert::default(),
            offers_convert: false,
            splits: OnceLock::new(),
            shared: None,
        }
    }

    /// Loads the run's data into `cell` (once, if a test or training input needs it) rather
    /// than into this context, so that later contexts reuse it.
    pub fn shared_splits(mut self, cell: &'a OnceLock<Splits>) -> Self {
        self.shared = Some(cell);
        self
    }

    /// The folder of `mnist:…`, `fashion-mnist:…` and `cifar10:…` inputs.
    pub fn data_dir(mut self, dir: Option<&Path>) -> Self {
        self.data_dir = dir.map(Path::to_path_buf);
        self
    }

    /// Converts every image as `convert` says; a shape that does not fit then names the
    /// options that would make it fit.
    pub fn convert(mut self, convert: Convert) -> Self {
        self.convert = convert;
        self.offers_convert = true;
        self
    }

    /// The run's data, loaded and split as in training, once.
    pub fn splits(&self) -> Result<&Splits> {
        let cell = self.shared.unwrap_or(&self.splits);
        if let Some(splits) = cell.get() {
            return Ok(splits);
        }
        let splits = self.run.load_data()?;
        Ok(cell.get_or_init(|| splits))
    }

    /// Opens every specification (so that each is checked before any input is read).
    pub fn open_all(&self, specs: &[String]) -> Result<Inputs<'_>> {
        let sources = specs
            .iter()
            .map(|s| self.open(s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Inputs {
            sources,
            current: 0,
        })
    }

    /// Every input of `specs` at once (for commands that use a few inputs), refused above
    /// the memory limit as it grows.
    pub fn read_all(&self, specs: &[String]) -> Result<Rows> {
        let mut inputs = self.open_all(specs)?;
        let mut all = Rows {
            dims: Kind::of(&self.run.model).dims(),
            ..Rows::default()
        };
        while let Some(rows) = inputs.read(crate::training::EVAL_BATCH)? {
            all.extend(rows);
            crate::limits::check(
                format!("{} inputs", all.len()),
                crate::limits::f32s(all.values.len() as f64) * 2.0,
            )?;
        }
        Ok(all)
    }

    /// Opens one specification.
    pub fn open(&self, spec: &str) -> Result<Source<'_>> {
        self.open_spec(spec, &Spec::parse(spec)?, false)
    }

    fn open_spec(&self, text: &str, spec: &Spec, invert: bool) -> Result<Source<'_>> {
        let expected = Kind::of(&self.run.model);
        let mut source = Source {
            name: text.to_string(),
            reader: Reader::Image(None),
            len: None,
            class_names: Vec::new(),
            invert,
            expected,
            convert: self.convert,
            offers_convert: self.offers_convert,
            run_classes: &self.run.class_names,
            context_columns: self.run.model.context().map_or(&[], |c| &c.columns),
            context_at: Vec::new(),
            read: 0,
        };
        let fixed =
            |source: &Source, what: &dyn std::fmt::Display, found: Kind| source.fit(what, found);
        match spec {
            Spec::Invert(inner) => {
                if let Kind::Vectors(_) = expected {
                    return Err(FlowError::Config(format!(
                        "{text}: invert: needs images; the run models vectors"
                    )));
                }
                let inner_text = text.strip_prefix("invert:").unwrap_or(text);
                let mut source = self.open_spec(inner_text, inner, !invert)?;
                source.name = text.to_string();
                return Ok(source);
            }
            Spec::Split { part, range } => {
                let splits = self.splits()?;
                let data = match part {
                    Part::Test => &splits.test,
                    Part::Train => &splits.train,
                };
                let (start, end) = split_range(text, *part, range.as_deref(), data.len())?;
                source.class_names = data.class_names().to_vec();
                source.len = Some(end - start);
                source.reader = Reader::Memory {
                    data,
                    part: *part,
                    next: start,
                    end,
                };
                let found = match data {
                    Data::Images(s) => Kind::Images([s.channels, s.height, s.width]),
                    Data::Vectors(s) => Kind::Vectors(s.dim),
                };
                fixed(&source, &text, found)?;
            }
            Spec::Set { name, part } => {
                let dir = self.data_dir.as_deref().ok_or_else(|| {
                    FlowError::data(
                        text,
                        format!(
                            "needs the folder holding the {name} files: pass --data-dir DIR \
                             (`revflow data fetch {name} --dir DIR` downloads them)"
                        ),
                    )
                })?;
                source.class_names = class_names_of(name);
                if name == "cifar10" {
                    let stream = CifarReader::open_part(dir, part.name())?;
                    source.len = Some(stream.len());
                    fixed(&source, &stream.path().display(), Kind::Images([3, 32, 32]))?;
                    source.reader = Reader::Cifar(stream);
                } else {
                    let prefix = match part {
                        Part::Train => "train",
                        Part::Test => "t10k",
                    };
                    let stream = IdxImages::open_part(name, dir, prefix)?;
                    source.len = Some(stream.len());
                    let found = Kind::Images([1, stream.height, stream.width]);
                    fixed(&source, &stream.path().display(), found)?;
                    source.reader = Reader::Idx(stream);
                }
            }
            Spec::Idx(path) => {
                let stream = IdxImages::open(path)?;
                source.len = Some(stream.len());
                let found = Kind::Images([1, stream.height, stream.width]);
                fixed(&source, &path.display(), found)?;
                source.reader = Reader::Idx(stream);
            }
            Spec::Folder(path) => {
                let reader = FolderReader::open(path)?;
                // Every file's header, before any is decoded.
                for (_, file) in &reader.files {
                    fixed(
                        &source,
                        &file.display(),
                        Kind::Images(image_header(file)?.0),
                    )?;
                }
                source.len = Some(reader.len());
                source.class_names = reader.class_names.clone();
                source.reader = Reader::Folder(reader);
            }
            Spec::Image(path) => {
                fixed(
                    &source,
                    &path.display(),
                    Kind::Images(image_header(path)?.0),
                )?;
                source.len = Some(1);
                source.reader = Reader::Image(Some(path.clone()));
            }
            Spec::Csv(path) => {
                let reader = CsvReader::open(path)?;
                // A conditional run's context columns come out of the CSV's columns.
                for name in source.context_columns {
                    let at = reader.columns.iter().position(|c| c == name);
                    source.context_at.push(at.ok_or_else(|| {
                        FlowError::data(
                            path.display(),
                            format!(
                                "has no column '{name}', which the model is conditioned on (its columns: {})",
                                reader.columns.join(", ")
                            ),
                        )
                    })?);
                }
                let dims = reader.dim() - source.context_at.len();
                fixed(&source, &path.display(), Kind::Vectors(dims))?;
                source.reader = Reader::Csv(reader);
            }
        }
        Ok(source)
    }
}

/// `(start, end)` of `test`, `test:N` or `test:A..B` in a split of `len` rows.
fn split_range(text: &str, part: Part, range: Option<&str>, len: usize) -> Result<(usize, usize)> {
    let part = part.name();
    let bad = || {
        FlowError::Config(format!(
            "{text}: expected {part}:N or {part}:A..B with indices below {len}"
        ))
    };
    let Some(range) = range else {
        return Ok((0, len));
    };
    let (a, b) = match range.split_once("..") {
        Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        None => {
            let i: usize = range.parse().map_err(|_| bad())?;
            (i, i.checked_add(1).ok_or_else(bad)?)
        }
    };
    if a >= b || b > len {
        return Err(bad());
    }
    Ok((a, b))
}

/// One opened input specification.
pub struct Source<'a> {
    name: String,
    reader: Reader<'a>,
    len: Option<usize>,
    class_names: Vec<String>,
    invert: bool,
    expected: Kind,
    convert: Convert,
    offers_convert: bool,
    run_classes: &'a [String],
    /// The context columns each input must come with (a run conditioned on a context).
    context_columns: &'a [String],
    /// Where those columns are in a CSV source's columns.
    context_at: Vec<usize>,
    read: usize,
}

enum Reader<'a> {
    Memory {
        data: &'a Data,
        part: Part,
        next: usize,
        end: usize,
    },
    Idx(IdxImages),
    Cifar(CifarReader),
    Folder(FolderReader),
    Image(Option<PathBuf>),
    Csv(CsvReader),
}

/// One input as read, before conversion.
struct Item {
    id: String,
    label: Option<usize>,
    /// A label that is only a name (a CSV's label column).
    label_name: Option<String>,
    values: Values,
    /// Raw context values, where the source has them.
    context: Vec<f32>,
}

enum Values {
    Pixels([usize; 3], Vec<u8>),
    Vector(Vec<f32>),
}

impl<'a> Source<'a> {
    /// The rows of a data set in memory (a split of a run's data, `part` naming it) for a
    /// run that models `expected`; no conversion.
    pub fn of_data(data: &'a Data, part: Part, expected: Kind) -> Result<Source<'a>> {
        let source = Source {
            name: part.name().to_string(),
            reader: Reader::Memory {
                data,
                part,
                next: 0,
                end: data.len(),
            },
            len: Some(data.len()),
            class_names: data.class_names().to_vec(),
            invert: false,
            expected,
            convert: Convert::default(),
            offers_convert: false,
            run_classes: data.class_names(),
            context_columns: match data {
                Data::Vectors(s) => &s.context_columns,
                Data::Images(_) => &[],
            },
            context_at: Vec::new(),
            read: 0,
        };
        let found = match data {
            Data::Images(s) => Kind::Images([s.channels, s.height, s.width]),
            Data::Vectors(s) => Kind::Vectors(s.dim),
        };
        source.fit(&part.name(), found)?;
        Ok(source)
    }

    /// The specification as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Inputs in the source, when known before reading (all but CSV files).
    pub fn len(&self) -> Option<usize> {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// Whether the inputs of this source fit the run once converted; otherwise an error
    /// naming `what` (the file) with both shapes, and the options that would make it fit.
    fn fit(&self, what: &dyn std::fmt::Display, found: Kind) -> Result<()> {
        let converted = match found {
            Kind::Images(shape) => Kind::Images(self.convert.shape(shape)),
            vectors => vectors,
        };
        if converted == self.expected {
            return Ok(());
        }
        let hint = match (found, self.expected) {
            (Kind::Images([c, h, w]), Kind::Images([ec, eh, ew])) if self.offers_convert => {
                let needed = Convert {
                    resize: ((h, w) != (eh, ew)).then_some((ew as u32, eh as u32)),
                    channels: (c != ec).then_some(ec),
                };
                match needed.is_none() {
                    true => format!("; it fits as it is: leave out {}", self.convert.options()),
                    false => format!("; pass {}", needed.options()),
                }
            }
            _ => String::new(),
        };
        let is = match (found, converted) {
            (Kind::Images(_), c) if c != found => format!("is {found} ({c} once converted)"),
            (Kind::Images(_), _) => format!("is {found}"),
            (Kind::Vectors(d), _) => format!("holds vectors of {d} values"),
        };
        Err(FlowError::data(
            what,
            format!("{is}, the model expects {}{hint}", self.expected),
        ))
    }

    /// The next `max` inputs (fewer at the end), converted and checked; `None` after the last.
    pub fn read(&mut self, max: usize) -> Result<Option<Rows>> {
        let items = self.next_items(max.max(1))?;
        if items.is_empty() {
            return Ok(None);
        }
        let dims = self.expected.dims();
        let mut rows = Rows {
            values: Vec::with_capacity(items.len() * dims),
            dims,
            ..Rows::default()
        };
        for item in items {
            match item.values {
                Values::Pixels(shape, pixels) => {
                    self.fit(&item.id, Kind::Images(shape))?;
                    let pixels = self.convert.apply(pixels, shape);
                    let invert = self.invert;
                    rows.values.extend(
                        pixels
                            .iter()
                            .map(|&p| if invert { 255 - p } else { p } as f32),
                    );
                }
                Values::Vector(values) => {
                    self.fit(&item.id, Kind::Vectors(values.len()))?;
                    rows.values.extend(values);
                }
            }
            let name = item
                .label_name
                .or_else(|| item.label.and_then(|l| self.class_names.get(l).cloned()));
            let class = match (&self.reader, item.label) {
                // The run's own rows: their label is the run's class.
                (Reader::Memory { .. }, Some(l)) => Some(l),
                _ => name
                    .as_ref()
                    .and_then(|n| self.run_classes.iter().position(|c| c == n)),
            };
            if item.context.len() != self.context_columns.len() {
                return Err(FlowError::data(
                    &item.id,
                    format!(
                        "comes without the context ({}) the model is conditioned on; score a CSV with those columns",
                        self.context_columns.join(", ")
                    ),
                ));
            }
            rows.context.extend(item.context);
            rows.ids.push(item.id);
            rows.labels.push(name);
            rows.classes.push(class);
        }
        self.read += rows.len();
        Ok(Some(rows))
    }

    fn next_items(&mut self, max: usize) -> Result<Vec<Item>> {
        let invert = if self.invert { "invert:" } else { "" };
        let first = self.read;
        // `name` is the specification as given, `invert:` included.
        let numbered = |name: &str, i: usize| format!("{name}#{}", first + i);
        let mut items = Vec::new();
        match &mut self.reader {
            Reader::Memory {
                data,
                part,
                next,
                end,
            } => {
                let stop = (*next + max).min(*end);
                for i in *next..stop {
                    let (values, label, context) = match data {
                        Data::Images(s) => (
                            Values::Pixels([s.channels, s.height, s.width], s.image(i).to_vec()),
                            s.labels.get(i).copied(),
                            Vec::new(),
                        ),
                        Data::Vectors(s) => (
                            Values::Vector(s.row(i).to_vec()),
                            s.labels.get(i).copied(),
                            s.context_row(i).to_vec(),
                        ),
                    };
                    items.push(Item {
                        id: format!("{invert}{}:{i}", part.name()),
                        label,
                        label_name: None,
                        values,
                        context,
                    });
                }
                *next = stop;
            }
            Reader::Idx(stream) => {
                if let Some((pixels, labels)) = stream.read(max)? {
                    let shape = [1, stream.height, stream.width];
                    let d = stream.height * stream.width;
                    for (i, image) in pixels.chunks_exact(d).enumerate() {
                        items.push(Item {
                            id: numbered(&self.name, i),
                            label: labels.get(i).copied(),
                            label_name: None,
                            values: Values::Pixels(shape, image.to_vec()),
                            context: Vec::new(),
                        });
                    }
                }
            }
            Reader::Cifar(stream) => {
                if let Some((pixels, labels)) = stream.read(max)? {
                    for (i, image) in pixels.chunks_exact(3 * 32 * 32).enumerate() {
                        items.push(Item {
                            id: numbered(&self.name, i),
                            label: labels.get(i).copied(),
                            label_name: None,
                            values: Values::Pixels([3, 32, 32], image.to_vec()),
                            context: Vec::new(),
                        });
                    }
                }
            }
            Reader::Folder(reader) => {
                while items.len() < max {
                    let Some(image) = reader.next()? else { break };
                    items.push(Item {
                        id: format!("{invert}{}", image.path.display()),
                        label: image.label,
                        label_name: None,
                        values: Values::Pixels(image.shape, image.pixels),
                        context: Vec::new(),
                    });
                }
            }
            Reader::Image(path) => {
                if let Some(path) = path.take() {
                    let (shape, pixels) = crate::data::decode_image(&path)?;
                    items.push(Item {
                        id: format!("{invert}{}", path.display()),
                        label: None,
                        label_name: None,
                        values: Values::Pixels(shape, pixels),
                        context: Vec::new(),
                    });
                }
            }
            Reader::Csv(reader) => {
                if let Some(rows) = reader.read(max)? {
                    let d = reader.dim();
                    let at = &self.context_at;
                    for (i, (row, line)) in rows.values.chunks_exact(d).zip(&rows.lines).enumerate()
                    {
                        let values = (0..d).filter(|j| !at.contains(j)).map(|j| row[j]);
                        items.push(Item {
                            id: format!("{}:{line}", self.name.trim_start_matches("csv:")),
                            label: None,
                            label_name: rows.labels.get(i).cloned(),
                            values: Values::Vector(values.collect()),
                            context: at.iter().map(|&j| row[j]).collect(),
                        });
                    }
                }
            }
        }
        Ok(items)
    }
}

/// Several sources read one after another.
pub struct Inputs<'a> {
    sources: Vec<Source<'a>>,
    current: usize,
}

impl<'a> Inputs<'a> {
    /// One source alone.
    pub fn one(source: Source<'a>) -> Self {
        Inputs {
            sources: vec![source],
            current: 0,
        }
    }

    /// Inputs in all the sources, when known before reading.
    pub fn len(&self) -> Option<usize> {
        self.sources.iter().map(Source::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The specifications, as given, joined by spaces.
    pub fn names(&self) -> String {
        self.sources
            .iter()
            .map(Source::name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The next at most `max` inputs, from one source; `None` after the last of the last.
    pub fn read(&mut self, max: usize) -> Result<Option<Rows>> {
        while let Some(source) = self.sources.get_mut(self.current) {
            if let Some(rows) = source.read(max)? {
                return Ok(Some(rows));
            }
            self.current += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifications_parse_and_bad_ones_say_what_is_expected() {
        let split = |part, range: Option<&str>| Spec::Split {
            part,
            range: range.map(str::to_string),
        };
        assert_eq!(Spec::parse("test").unwrap(), split(Part::Test, None));
        assert_eq!(
            Spec::parse("train:3..9").unwrap(),
            split(Part::Train, Some("3..9"))
        );
        assert_eq!(
            Spec::parse("fashion-mnist:train").unwrap(),
            Spec::Set {
                name: "fashion-mnist".into(),
                part: Part::Train
            }
        );
        assert_eq!(Spec::parse("csv:a.csv").unwrap(), Spec::Csv("a.csv".into()));
        assert_eq!(Spec::parse("idx:a.gz").unwrap(), Spec::Idx("a.gz".into()));
        assert_eq!(
            Spec::parse("invert:images:x").unwrap(),
            Spec::Invert(Box::new(Spec::Folder("x".into())))
        );
        assert_eq!(Spec::parse("x.png").unwrap(), Spec::Image("x.png".into()));
        let dir = std::env::temp_dir();
        assert_eq!(
            Spec::parse(&dir.display().to_string()).unwrap(),
            Spec::Folder(dir)
        );
        let e = Spec::parse("mnist").unwrap_err().to_string();
        assert!(
            e.contains("mnist: name the split: mnist:test or mnist:train"),
            "{e}"
        );
        let e = Spec::parse("mnist:t10k").unwrap_err().to_string();
        assert!(
            e.contains("mnist:t10k: name the split: mnist:test or mnist:train"),
            "{e}"
        );
        let e = Spec::parse("csv:").unwrap_err().to_string();
        assert!(e.contains("a path is missing"), "{e}");
        let e = Spec::parse("svhn:test").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid configuration: svhn:test: unknown input"),
            "{e}"
        );
    }

    #[test]
    fn ranges_are_checked_against_the_split() {
        assert_eq!(split_range("test", Part::Test, None, 5).unwrap(), (0, 5));
        assert_eq!(split_range("t", Part::Test, Some("2"), 5).unwrap(), (2, 3));
        assert_eq!(
            split_range("t", Part::Test, Some("1..5"), 5).unwrap(),
            (1, 5)
        );
        for bad in ["5", "3..3", "4..6", "x", "18446744073709551615", "-1..2"] {
            let e = split_range("test:x", Part::Test, Some(bad), 5)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("expected test:N or test:A..B with indices below 5"),
                "{e}"
            );
        }
    }
}
