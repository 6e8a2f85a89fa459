//! Helpers shared by the command-line tests: running the binary, checking its one-line
//! errors, fresh folders, and the embedded digits written as MNIST-format files.
#![allow(dead_code)] // each test file uses some of them

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn revflow(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("revflow runs")
}

pub fn ok(args: &[&str], cwd: &Path) -> String {
    let out = revflow(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "revflow {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code 2 and one clear line containing `needle`, never a panic.
pub fn fails(args: &[&str], cwd: &Path, needle: &str) -> String {
    let out = revflow(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "revflow {args:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(needle), "expected {needle:?} in {last:?}");
    last.to_string()
}

pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.lines().last().unwrap()).expect("one JSON object")
}

/// Exit code 2 and exactly one line on stderr, containing `needle`: no panic, no "internal
/// error", no progress lines before it.
pub fn refused(args: &[&str], cwd: &Path, needle: &str) {
    let out = revflow(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "revflow {args:?}: {stderr}");
    assert!(
        !stderr.contains("internal error") && !stderr.contains("panicked"),
        "revflow {args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "revflow {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "revflow {args:?}: expected {needle:?} in {stderr:?}"
    );
}

/// Writes the embedded digits as MNIST-format IDX files (the standard names) into `dir`.
pub fn digits_as_idx(dir: &Path) {
    let splits = revflow::data::load("digits", None, 0, 0).unwrap();
    for (data, prefix) in [(&splits.train, "train"), (&splits.test, "t10k")] {
        let revflow::data::Data::Images(set) = data else {
            panic!()
        };
        let n = set.len() as u32;
        let mut images = vec![0, 0, 8, 3];
        for v in [n, 8, 8] {
            images.extend(v.to_be_bytes());
        }
        images.extend(&set.pixels);
        let mut labels = vec![0, 0, 8, 1];
        labels.extend(n.to_be_bytes());
        labels.extend(set.labels.iter().map(|&l| l as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// A Glow small enough to train in seconds on the digits.
pub const TINY_GLOW: &[&str] = &[
    "--levels",
    "2",
    "--depth",
    "2",
    "--hidden",
    "16",
    "--batch-size",
    "32",
    "--n-bits",
    "8",
];

/// [`TINY_GLOW`] with `extra` options, which replace its own of the same name.
pub fn tiny_glow_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let given = |key: &str| extra.iter().any(|e| e.split('=').next() == Some(key));
    TINY_GLOW
        .chunks(2)
        .filter(|pair| !given(pair[0]))
        .flatten()
        .chain(extra)
        .copied()
        .collect()
}
