//! Scores written as they come: a CSV of one line per input, which appears at its path only
//! once complete.

use std::path::Path;

use crate::error::Result;
use crate::files::AtomicFile;

use super::Scored;

/// The header of a scores file.
pub const HEADER: &str = "input,label,nats,bits_per_dim";

/// A CSV of scores, `input,label,nats,bits_per_dim` (nats: −log p(x)), written a line at a
/// time and committed atomically.
pub struct ScoreCsv {
    file: AtomicFile,
    line: String,
}

impl ScoreCsv {
    pub fn create(path: &Path) -> Result<Self> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(format!("{HEADER}\n").as_bytes())?;
        Ok(Self {
            file,
            line: String::new(),
        })
    }

    /// Appends one input's line.
    pub fn write(&mut self, scored: &Scored) -> Result<()> {
        use std::fmt::Write;
        self.line.clear();
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.line,
            "{},{},{},{}",
            field(scored.id),
            field(scored.label.unwrap_or_default()),
            -scored.log_p,
            scored.bits_per_dim
        );
        self.file.write_all(self.line.as_bytes())
    }

    /// Makes the file appear at its path, complete.
    pub fn commit(self) -> Result<()> {
        self.file.commit()
    }
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
fn field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_appear_only_on_commit_and_odd_names_are_quoted() {
        let dir = std::env::temp_dir().join(format!("revflow-scorecsv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scores.csv");
        let mut csv = ScoreCsv::create(&path).unwrap();
        let row = |id, label| Scored {
            id,
            label,
            log_p: -69.3,
            bits_per_dim: 1.5,
            values: &[],
        };
        csv.write(&row("a,b.png", Some("cat"))).unwrap();
        csv.write(&row("say \"hi\".png", None)).unwrap();
        assert!(!path.exists());
        csv.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "input,label,nats,bits_per_dim\n\"a,b.png\",cat,69.3,1.5\n\"say \"\"hi\"\".png\",,69.3,1.5\n"
        );
        // Dropped without a commit: nothing, not even a temporary file.
        let mut csv = ScoreCsv::create(&dir.join("other.csv")).unwrap();
        csv.write(&row("x", None)).unwrap();
        drop(csv);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
