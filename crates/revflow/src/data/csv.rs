//! Numeric vectors from a comma-separated file.

use std::collections::BTreeSet;
use std::path::Path;

use super::VectorSet;
use crate::{FlowError, Result};

/// Reads a CSV of numbers, one vector per line.
///
/// The first line is a header when any of its cells is not a number; its names become
/// `columns` (else they are `x0`, `x1`, …). A header column named `label` or `class` (any
/// case) is a categorical label, not a feature: its values become classes sorted by name
/// (numerically when they are all integers). Blank lines are skipped; cells may be quoted.
pub(super) fn load(path: &Path) -> Result<VectorSet> {
    // The text, then at most one f32 per two bytes of it (a digit and a comma), twice (the
    // set and its split).
    let bytes = crate::limits::read(path, 5.0)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| FlowError::data(path.display(), format!("cannot read: {e}")))?;
    let err = |line: usize, problem: String| {
        FlowError::data(format!("{}:{line}", path.display()), problem)
    };

    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let Some(&(first_no, first)) = lines.peek() else {
        return Err(FlowError::data(
            path.display(),
            "is empty; expected rows of comma-separated numbers",
        ));
    };
    let first_cells = cells(first);
    let has_header = first_cells.iter().any(|c| c.parse::<f32>().is_err());
    let (names, label_col) = if has_header {
        lines.next();
        let label_cols: Vec<usize> = (0..first_cells.len())
            .filter(|&i| {
                matches!(
                    first_cells[i].to_ascii_lowercase().as_str(),
                    "label" | "class"
                )
            })
            .collect();
        if label_cols.len() > 1 {
            return Err(err(
                first_no,
                "the header has more than one label/class column; keep one".to_string(),
            ));
        }
        let names: Vec<String> = first_cells.iter().map(|c| c.to_string()).collect();
        (names, label_cols.first().copied())
    } else {
        (
            (0..first_cells.len()).map(|i| format!("x{i}")).collect(),
            None,
        )
    };
    let width = names.len();
    let columns: Vec<String> = (0..width)
        .filter(|&i| Some(i) != label_col)
        .map(|i| names[i].clone())
        .collect();
    if columns.is_empty() {
        return Err(err(
            first_no,
            "has no feature columns besides the label".to_string(),
        ));
    }

    let mut values = Vec::new();
    let mut raw_labels = Vec::new();
    for (no, line) in lines {
        let row = cells(line);
        if row.len() != width {
            return Err(err(
                no,
                format!(
                    "has {} fields, expected {width} (as in line {first_no})",
                    row.len()
                ),
            ));
        }
        for (i, cell) in row.iter().enumerate() {
            if Some(i) == label_col {
                if cell.is_empty() {
                    return Err(err(
                        no,
                        format!("column {} ({}): empty label", i + 1, names[i]),
                    ));
                }
                raw_labels.push(cell.to_string());
                continue;
            }
            match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => values.push(v),
                _ => {
                    return Err(err(
                        no,
                        format!(
                            "column {} ({}): '{cell}' is not a finite number",
                            i + 1,
                            names[i]
                        ),
                    ))
                }
            }
        }
    }
    if values.is_empty() {
        return Err(FlowError::data(
            path.display(),
            "has a header but no data rows",
        ));
    }

    let (labels, class_names) = if label_col.is_some() {
        classes(raw_labels)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(VectorSet {
        values,
        dim: columns.len(),
        labels,
        class_names,
        columns,
    })
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
}
