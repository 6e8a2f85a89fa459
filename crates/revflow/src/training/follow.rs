//! Following a run while it trains (a web page's live curves): the new complete lines of
//! `metrics.jsonl`, the newest sample picture and the current checkpoint's step, read without
//! disturbing the writer and consistent with its protocol (see [`super::checkpoint`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::RunDir;
use crate::error::Result;
use crate::files::io;

/// Where the last read of a run's `metrics.jsonl` ended.
///
/// Training appends whole lines; a line is read only once its newline is there. A resumed run
/// rewrites the file (truncated to the step it resumes from) through a rename, so a file
/// other than the one being followed — or a shorter one — starts again from its top.
#[derive(Debug, Default, Clone)]
pub struct MetricsTail {
    offset: u64,
    file: Option<FileId>,
    /// Whether a file was read before.
    started: bool,
}

/// What identifies a file across renames: its inode (or, elsewhere, nothing).
type FileId = (u64, u64);

fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// New lines of `metrics.jsonl`.
#[derive(Debug, Default)]
pub struct NewMetrics {
    /// The file was replaced since the last read: forget what was read before; `lines`
    /// start from its top.
    pub reset: bool,
    /// The new complete lines, in order (lines that are not JSON are skipped).
    pub lines: Vec<serde_json::Value>,
}

impl MetricsTail {
    /// The complete lines added to `dir`'s `metrics.jsonl` since the last call (all of them
    /// the first time); none while the file does not exist.
    pub fn read(&mut self, dir: &RunDir) -> Result<NewMetrics> {
        let path = dir.metrics();
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NewMetrics::default()),
            Err(e) => return Err(io(&path)(e)),
        };
        let meta = file.metadata().map_err(io(&path))?;
        let id = file_id(&meta);
        let reset = self.started && (id != self.file || meta.len() < self.offset);
        if reset || !self.started {
            self.offset = 0;
            self.file = id;
            self.started = true;
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;
        // Up to the last newline: a line being written waits for the next read.
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        let lines = String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Ok(NewMetrics { reset, lines })
    }
}

impl RunDir {
    /// The step of the current checkpoint, `None` before the first one.
    pub fn current_step(&self) -> Option<usize> {
        let dir = self.current_checkpoint().ok()?;
        super::checkpoint::checkpoint_step(&dir.file_name()?.to_string_lossy())
    }

    /// The newest sample picture (`samples/step-N.png`) and its step.
    pub fn latest_samples(&self) -> Option<(usize, PathBuf)> {
        let entries = std::fs::read_dir(self.samples()).ok()?;
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name
                    .strip_prefix("step-")?
                    .strip_suffix(".png")?
                    .parse()
                    .ok()?;
                Some((step, e.path()))
            })
            .max_by_key(|(step, _)| *step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> RunDir {
        let root =
            std::env::temp_dir().join(format!("revflow-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        RunDir::new(&root)
    }

    fn steps(new: &NewMetrics) -> Vec<u64> {
        new.lines
            .iter()
            .map(|l| l["step"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn complete_lines_are_read_once_and_a_rewritten_file_starts_again() {
        let run = dir("tail");
        let mut tail = MetricsTail::default();
        assert!(tail.read(&run).unwrap().lines.is_empty(), "no file yet");
        let mut file = File::create(run.metrics()).unwrap();
        write!(file, "{{\"step\":1}}\n{{\"step\":2}}\n{{\"st").unwrap();
        file.flush().unwrap();
        assert_eq!(steps(&tail.read(&run).unwrap()), [1, 2]);
        // The half-written line is read once complete, and nothing twice.
        writeln!(file, "ep\":3}}").unwrap();
        file.flush().unwrap();
        let new = tail.read(&run).unwrap();
        assert_eq!((new.reset, steps(&new)), (false, vec![3]));
        assert!(tail.read(&run).unwrap().lines.is_empty());
        // A resume rewrites the file through a rename: everything again, flagged.
        let rewritten = run.root.join("metrics.new");
        std::fs::write(
            &rewritten,
            "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}\n",
        )
        .unwrap();
        std::fs::rename(&rewritten, run.metrics()).unwrap();
        let new = tail.read(&run).unwrap();
        assert_eq!((new.reset, steps(&new)), (true, vec![1, 2, 3, 4]));
        // A shorter file in place (truncated) also starts again.
        std::fs::write(run.metrics(), "{\"step\":1}\n").unwrap();
        let new = tail.read(&run).unwrap();
        assert_eq!((new.reset, steps(&new)), (true, vec![1]));
        std::fs::remove_dir_all(&run.root).unwrap();
    }

    #[test]
    fn the_newest_sample_picture_is_found_by_its_step() {
        let run = dir("samples");
        assert!(run.latest_samples().is_none());
        std::fs::create_dir_all(run.samples()).unwrap();
        for name in [
            "step-000200.png",
            "step-001000.png",
            "step-000900.png",
            "notes.txt",
        ] {
            std::fs::write(run.samples().join(name), b"").unwrap();
        }
        let (step, path) = run.latest_samples().unwrap();
        assert_eq!(step, 1000);
        assert!(path.ends_with("step-001000.png"));
        assert_eq!(run.current_step(), None, "no checkpoint yet");
        std::fs::remove_dir_all(&run.root).unwrap();
    }
}
