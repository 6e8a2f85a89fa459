//! Data-parallel training over MPI: `mpirun -n 2 revflow train` follows one process with the
//! same global batch. Needs the `mpi` feature and Open MPI's `mpirun`; `.ci/run` sets
//! `REVFLOW_TEST_MPI=1` and runs `cargo test -p revflow-cli --features mpi --test mpi`, where
//! these tests fail (never skip) if either is missing. Without the variable they return at once,
//! so a plain `cargo test --workspace` needs no MPI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn enabled() -> bool {
    let on = std::env::var_os("REVFLOW_TEST_MPI").is_some();
    #[cfg(not(feature = "mpi"))]
    if on {
        panic!("REVFLOW_TEST_MPI is set but the binary was built without the mpi feature");
    }
    on
}

fn revflow(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("revflow runs")
}

fn mpirun(ranks: usize, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let n = ranks.to_string();
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-q", "-n", &n]);
    // Variables for every rank go before the program.
    for (k, v) in env {
        cmd.args(["-x", &format!("{k}={v}")]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("mpirun runs (Open MPI: .ci/install-deps.sh)")
}

fn ok(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `(step, value)` of `key` in a run's metrics.jsonl.
fn metric(run: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_u64()?, v[key].as_f64()?))
        })
        .collect()
}

/// Every value of `key` in `a` and `b` agrees to 1e-4 relative, step for step.
fn same_curve(a: &Path, b: &Path, key: &str) {
    let (x, y) = (metric(a, key), metric(b, key));
    assert!(!x.is_empty() && x.len() == y.len(), "{key}: {x:?} vs {y:?}");
    for ((s, u), (t, v)) in x.iter().zip(&y) {
        assert_eq!(s, t);
        let rel = (u - v).abs() / u.abs().max(1e-12);
        assert!(
            rel <= 1e-4,
            "{key} at step {s}: {u} vs {v} ({rel:e} relative)"
        );
    }
}

const GLOW: &[&str] = &[
    "--levels",
    "2",
    "--depth",
    "2",
    "--hidden",
    "16",
    "--batch-size",
    "16",
    "--eval-every",
    "12",
    "--checkpoint-every",
    "8",
    "--steps",
    "24",
];

#[test]
fn two_ranks_train_glow_and_a_vector_flow_like_one_process() {
    if !enabled() {
        return;
    }
    let dir = temp("curves");
    let vector = [
        "--data",
        "moons",
        "--samples",
        "600",
        "--flow-steps",
        "3",
        "--hidden",
        "16",
        "--batch-size",
        "32",
        "--eval-every",
        "10",
        "--steps",
        "20",
    ];
    for (name, args) in [("glow", GLOW), ("vector", &vector[..])] {
        let one = format!("{name}-one");
        let two = format!("{name}-two");
        ok(
            revflow(&[&["train", "--out", &one], args].concat(), &dir, &[]),
            "one process",
        );
        let stderr = ok(
            mpirun(2, &[&["train", "--out", &two], args].concat(), &dir, &[]),
            "two ranks",
        );
        // Rank 0 alone reports.
        assert_eq!(stderr.matches("revflow: training").count(), 1, "{stderr}");
        assert!(stderr.contains("on 2 ranks"), "{stderr}");
        same_curve(&dir.join(&one), &dir.join(&two), "loss");
        same_curve(&dir.join(&one), &dir.join(&two), "test_bits_per_dim");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_two_rank_run_resumes_with_one_rank_on_the_same_curve() {
    if !enabled() {
        return;
    }
    let dir = temp("resume");
    let short: Vec<&str> = GLOW
        .iter()
        .map(|a| if *a == "24" { "16" } else { a })
        .collect();
    ok(
        mpirun(
            2,
            &[&["train", "--out", "run"], &short[..]].concat(),
            &dir,
            &[],
        ),
        "two ranks",
    );
    ok(
        revflow(
            &[&["train", "--resume", "--out", "run"], GLOW].concat(),
            &dir,
            &[],
        ),
        "resume with one",
    );
    ok(
        revflow(&[&["train", "--out", "one"], GLOW].concat(), &dir, &[]),
        "one process",
    );
    same_curve(&dir.join("one"), &dir.join("run"), "loss");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_error_on_one_rank_ends_every_rank_with_one_line_and_a_resumable_run() {
    if !enabled() {
        return;
    }
    let dir = temp("abort");
    let out = mpirun(
        2,
        &[&["train", "--out", "run"], GLOW].concat(),
        &dir,
        &[("REVFLOW_FAIL_STEP", "1:13")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("revflow: rank"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("revflow: rank 1 of 2: failure injected at step 13"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The checkpoint of step 8 is intact: the run resumes and finishes.
    ok(
        revflow(
            &[&["train", "--resume", "--out", "run"], GLOW].concat(),
            &dir,
            &[],
        ),
        "resume",
    );
    let steps = metric(&dir.join("run"), "loss");
    assert_eq!(steps.last().map(|s| s.0), Some(24));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_cannot_run_on_several_ranks_is_refused_in_one_line() {
    if !enabled() {
        return;
    }
    let dir = temp("refused");
    for (args, needle) in [
        (
            vec!["train", "--model", "realnvp", "--steps", "2", "--out", "r"],
            "RealNVP's batch-normalisation layers",
        ),
        (
            vec!["train", "--batch-size", "1", "--steps", "2", "--out", "b"],
            "--batch-size 1 is smaller than the 2 ranks",
        ),
        (vec!["layers"], "`revflow layers` runs in one process"),
    ] {
        let out = mpirun(2, &args, &dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn score_and_eval_on_two_ranks_write_what_one_process_writes_byte_for_byte() {
    if !enabled() {
        return;
    }
    let dir = temp("score");
    let short: Vec<&str> = GLOW
        .iter()
        .map(|a| if *a == "24" { "10" } else { a })
        .collect();
    ok(
        revflow(
            &[&["train", "--out", "run"], &short[..]].concat(),
            &dir,
            &[],
        ),
        "train",
    );
    // Batches of 7: shards of 4 and 3, and a last batch shorter than the ranks are many.
    let score = |out: &'static str| {
        vec![
            "score",
            "run",
            "test",
            "--batch-size",
            "7",
            "--out",
            out,
            "--against",
            "invert:test:0..50",
        ]
    };
    ok(revflow(&score("one"), &dir, &[]), "score alone");
    ok(mpirun(2, &score("two"), &dir, &[]), "score on two ranks");
    for file in ["scores.csv", "against.csv", "comparison.png"] {
        let (a, b) = (dir.join("one").join(file), dir.join("two").join(file));
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{file}"
        );
    }
    let eval = |csv: &'static str| vec!["eval", "run", "--batch-size", "5", "--per-sample", csv];
    ok(revflow(&eval("one.csv"), &dir, &[]), "eval alone");
    ok(mpirun(2, &eval("two.csv"), &dir, &[]), "eval on two ranks");
    assert_eq!(
        std::fs::read(dir.join("one.csv")).unwrap(),
        std::fs::read(dir.join("two.csv")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
