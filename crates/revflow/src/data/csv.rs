//! Numeric vectors from a comma-separated file, whole or a batch of rows at a time.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::VectorSet;
use crate::{FlowError, Result};

/// Reads a CSV of numbers, one vector per line (see [`CsvReader`] for the format). A
/// categorical label column's values become classes sorted by name (numerically when they
/// are all integers).
pub(super) fn load(path: &Path) -> Result<VectorSet> {
    // The text's worth of numbers, at most one f32 per two bytes of it (a digit and a comma),
    // twice (the set and its split), and the labels.
    let len = std::fs::metadata(path)
        .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?
        .len();
    crate::limits::check(format!("reading {}", path.display()), len as f64 * 5.0)?;
    let mut reader = CsvReader::open(path)?;
    let (mut values, mut raw_labels) = (Vec::new(), Vec::new());
    while let Some(rows) = reader.read(usize::MAX)? {
        values.extend(rows.values);
        raw_labels.extend(rows.labels);
    }
    let (labels, class_names) = if reader.has_labels() {
        classes(raw_labels)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(VectorSet {
        values,
        dim: reader.dim(),
        labels,
        class_names,
        columns: reader.columns,
        context: Vec::new(),
        context_columns: Vec::new(),
    })
}

/// Rows of a CSV file as read: values row after row, and the raw label and line number of
/// each row.
#[derive(Debug, Default)]
pub struct CsvRows {
    pub values: Vec<f32>,
    /// Empty without a label column.
    pub labels: Vec<String>,
    pub lines: Vec<usize>,
}

/// A CSV of numbers read a batch of rows at a time, one vector per line.
///
/// The first line is a header when any of its cells is not a number; its names become
/// `columns` (else they are `x0`, `x1`, …). A header column named `label` or `class` (any
/// case) is a categorical label, not a feature. Blank lines are skipped; cells may be
/// quoted. Every problem names the file, the line and the column.
pub struct CsvReader {
    path: PathBuf,
    lines: std::iter::Enumerate<std::io::Lines<BufReader<File>>>,
    /// The first line, when it is data rather than a header.
    pending: Option<(usize, String)>,
    first_no: usize,
    names: Vec<String>,
    label_col: Option<usize>,
    /// Feature names.
    pub columns: Vec<String>,
    rows: usize,
}

impl CsvReader {
    /// Opens `path` and reads its first non-blank line (the header, if it is one).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?;
        let mut reader = CsvReader {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines().enumerate(),
            pending: None,
            first_no: 0,
            names: Vec::new(),
            label_col: None,
            columns: Vec::new(),
            rows: 0,
        };
        let Some((first_no, first)) = reader.next_line()? else {
            return Err(FlowError::data(
                path.display(),
                "is empty; expected rows of comma-separated numbers",
            ));
        };
        let first_cells = cells(&first);
        let has_header = first_cells.iter().any(|c| c.parse::<f32>().is_err());
        if has_header {
            let label_cols: Vec<usize> = (0..first_cells.len())
                .filter(|&i| {
                    matches!(
                        first_cells[i].to_ascii_lowercase().as_str(),
                        "label" | "class"
                    )
                })
                .collect();
            if label_cols.len() > 1 {
                return Err(reader.at(
                    first_no,
                    "the header has more than one label/class column; keep one".to_string(),
                ));
            }
            reader.names = first_cells.iter().map(|c| c.to_string()).collect();
            reader.label_col = label_cols.first().copied();
        } else {
            reader.names = (0..first_cells.len()).map(|i| format!("x{i}")).collect();
            reader.pending = Some((first_no, first.clone()));
        }
        reader.first_no = first_no;
        reader.columns = (0..reader.names.len())
            .filter(|&i| Some(i) != reader.label_col)
            .map(|i| reader.names[i].clone())
            .collect();
        if reader.columns.is_empty() {
            return Err(reader.at(
                first_no,
                "has no feature columns besides the label".to_string(),
            ));
        }
        Ok(reader)
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.columns.len()
    }

    /// Whether the file has a label column.
    pub fn has_labels(&self) -> bool {
        self.label_col.is_some()
    }

    /// The next `max` rows (fewer at the end); `None` after the last. A file with a header
    /// and no rows is an error.
    pub fn read(&mut self, max: usize) -> Result<Option<CsvRows>> {
        let mut out = CsvRows::default();
        while out.lines.len() < max.max(1) {
            let next = match self.pending.take() {
                Some(line) => Some(line),
                None => self.next_line()?,
            };
            let Some((no, line)) = next else { break };
            self.parse(no, &line, &mut out)?;
        }
        self.rows += out.lines.len();
        if out.lines.is_empty() {
            if self.rows == 0 {
                return Err(FlowError::data(
                    self.path.display(),
                    "has a header but no data rows",
                ));
            }
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// The next non-blank line and its number (from 1).
    fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        for (i, line) in self.lines.by_ref() {
            let line = line.map_err(|e| {
                FlowError::data(
                    format!("{}:{}", self.path.display(), i + 1),
                    format!("cannot read: {e}"),
                )
            })?;
            if !line.trim().is_empty() {
                return Ok(Some((i + 1, line)));
            }
        }
        Ok(None)
    }

    fn parse(&self, no: usize, line: &str, out: &mut CsvRows) -> Result<()> {
        let row = cells(line);
        let width = self.names.len();
        if row.len() != width {
            return Err(self.at(
                no,
                format!(
                    "has {} fields, expected {width} (as in line {})",
                    row.len(),
                    self.first_no
                ),
            ));
        }
        for (i, cell) in row.iter().enumerate() {
            if Some(i) == self.label_col {
                if cell.is_empty() {
                    return Err(self.at(
                        no,
                        format!("column {} ({}): empty label", i + 1, self.names[i]),
                    ));
                }
                out.labels.push(cell.to_string());
                continue;
            }
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => out.values.push(v),
                _ => {
                    return Err(self.at(
                        no,
                        format!(
                            "column {} ({}): '{cell}' is not a finite number",
                            i + 1,
                            self.names[i]
                        ),
                    ))
                }
            }
        }
        out.lines.push(no);
        Ok(())
    }

    /// An error at line `line` of the file.
    fn at(&self, line: usize, problem: String) -> FlowError {
        FlowError::data(format!("{}:{line}", self.path.display()), problem)
    }
}

/// Trimmed cells of one line, surrounding double quotes removed.
fn cells(line: &str) -> Vec<&str> {
    line.split(',')
        .map(|c| {
            let c = c.trim();
            c.strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(c)
        })
        .collect()
}

/// Maps label strings to indices of their sorted distinct values.
fn classes(raw: Vec<String>) -> (Vec<usize>, Vec<String>) {
    let mut names: Vec<String> = raw
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or_default());
    }
    let labels = raw
        .iter()
        .map(|r| names.iter().position(|n| n == r).unwrap_or_default())
        .collect();
    (labels, names)
}

/// `set` as CSV text: a header of its column names (and `label` when labelled), one row each;
/// what [`load`] reads back. Values are written in full precision (Rust's shortest exact form).
pub fn to_csv(set: &VectorSet) -> String {
    let labelled = !set.labels.is_empty();
    let mut header: Vec<String> = match set.columns.len() == set.dim {
        true => set.columns.clone(),
        false => (0..set.dim).map(|i| format!("x{i}")).collect(),
    };
    if labelled {
        header.push("label".into());
    }
    let mut text = header.join(",") + "\n";
    for i in 0..set.len() {
        let mut cells: Vec<String> = set.row(i).iter().map(|v| v.to_string()).collect();
        if labelled {
            cells.push(set.class_names[set.labels[i]].clone());
        }
        text += &(cells.join(",") + "\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tag: &str, text: &str) -> crate::data::tests_support::TempDir {
        let path = crate::data::tests_support::temp_dir(tag).at("data.csv");
        std::fs::write(&*path, text).unwrap();
        path
    }

    #[test]
    fn header_and_label_column() {
        let p = write(
            "csv_label",
            "x, Class ,y\n1,dog,2\n\n3.5,cat,-4\n5,dog,6e1\n",
        );
        let s = load(&p).unwrap();
        assert_eq!((s.len(), s.dim), (3, 2));
        assert_eq!(s.columns, vec!["x", "y"]);
        assert_eq!(s.values, vec![1., 2., 3.5, -4., 5., 60.]);
        assert_eq!(s.class_names, vec!["cat", "dog"]);
        assert_eq!(s.labels, vec![1, 0, 1]);
    }

    #[test]
    fn no_header_and_numeric_labels() {
        let s = load(&write("csv_plain", "1,2,3\n4,5,6\n")).unwrap();
        assert_eq!((s.len(), s.dim), (2, 3));
        assert_eq!(s.columns, vec!["x0", "x1", "x2"]);
        assert!(s.labels.is_empty() && s.class_names.is_empty());

        let s = load(&write("csv_numlabel", "a,label\n0.5,10\n1,9\n2,10\n")).unwrap();
        assert_eq!(s.class_names, vec!["9", "10"]);
        assert_eq!(s.labels, vec![1, 0, 1]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let p = write("csv_bad", "x,y\n1,2\n3,abc\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("data.csv:3: column 2 (y): 'abc' is not a finite number"),
            "{e}"
        );

        let p = write("csv_nan", "1,2\nNaN,2\n");
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("data.csv:2: column 1 (x0): 'NaN'"));

        let p = write("csv_ragged", "x,y\n1,2\n3\n");
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("data.csv:3: has 1 fields, expected 2 (as in line 1)"),
            "{e}"
        );

        let e = load(&write("csv_empty", "\n\n")).unwrap_err().to_string();
        assert!(e.contains("data.csv: is empty"), "{e}");
        let e = load(&write("csv_headonly", "x,y\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = load(&write("csv_onlylabel", "label\na\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no feature columns"), "{e}");
        let e = load(Path::new("/nonexistent/x.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/x.csv: cannot read"), "{e}");
    }

    #[test]
    fn exported_sets_read_back_exactly() {
        let splits = crate::data::load("checkerboard", None, 5, 300).unwrap();
        let crate::data::Data::Vectors(set) = &splits.train else {
            panic!("a 2-D set")
        };
        let back = load(&write("csv_export", &to_csv(set))).unwrap();
        assert_eq!((back.dim, back.len()), (2, 300));
        assert_eq!(back.values, set.values, "values change through the CSV");
        let labelled = VectorSet {
            labels: vec![1, 0, 1],
            class_names: vec!["a".into(), "b".into()],
            ..set.subset(&[0, 1, 2])
        };
        let back = load(&write("csv_export_labels", &to_csv(&labelled))).unwrap();
        let names: Vec<&str> = back
            .labels
            .iter()
            .map(|&l| back.class_names[l].as_str())
            .collect();
        assert_eq!(names, ["b", "a", "b"]);
    }

    #[test]
    fn load_splits_a_csv() {
        let text: String = (0..20).map(|i| format!("{i},{}\n", i * 2)).collect();
        let file = write("csv_split", &text);
        let name = format!("csv:{}", file.display());
        let a = crate::data::load(&name, None, 3, 0).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (18, 2));
        assert!(
            a.description.contains("18 train / 2 test"),
            "{}",
            a.description
        );
    }

    #[test]
    fn the_stream_gives_the_rows_labels_and_lines_of_the_file() {
        let p = write("csv_stream", "x,label,y\n1,b,2\n\n3,a,4\n5,b,6\n7,c,8\n");
        let whole = load(&p).unwrap();
        let mut reader = CsvReader::open(&p).unwrap();
        assert_eq!((reader.dim(), reader.has_labels()), (2, true));
        let (mut values, mut labels, mut lines) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(rows) = reader.read(3).unwrap() {
            assert!(rows.lines.len() <= 3);
            values.extend(rows.values);
            labels.extend(rows.labels);
            lines.extend(rows.lines);
        }
        assert_eq!(values, whole.values);
        assert_eq!(labels, vec!["b", "a", "b", "c"]);
        assert_eq!(lines, vec![2, 4, 5, 6]);
        // Without a header the first line is a row.
        let p = write("csv_stream_plain", "1,2\n3,4\n");
        let mut reader = CsvReader::open(&p).unwrap();
        assert_eq!(reader.read(1).unwrap().unwrap().lines, vec![1]);
        assert_eq!(reader.read(5).unwrap().unwrap().values, vec![3.0, 4.0]);
        assert!(reader.read(5).unwrap().is_none());
    }
}
