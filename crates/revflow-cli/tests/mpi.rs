//! Data-parallel training over MPI: `mpirun -n 2 revflow train` follows one process with the
//! same global batch. Needs the `mpi` feature and Open MPI's `mpirun`; `.ci/run` sets
//! `REVFLOW_TEST_MPI=1` and runs `cargo test -p revflow-cli --features mpi --test mpi`, where
//! these tests fail (never skip) if either is missing. Without the variable they return at once,
//! so a plain `cargo test --workspace` needs no MPI.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ok, temp, tiny_glow_with};

fn enabled() -> bool {
    let on = std::env::var_os("REVFLOW_TEST_MPI").is_some();
    #[cfg(not(feature = "mpi"))]
    if on {
        panic!("REVFLOW_TEST_MPI is set but the binary was built without the mpi feature");
    }
    on
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

/// `mpirun -n ranks revflow args…` succeeded; its stderr.
fn ok_on(ranks: usize, args: &[&str], cwd: &Path) -> String {
    let out = mpirun(ranks, args, cwd, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "mpirun -n {ranks} revflow {args:?} failed: {stderr}"
    );
    stderr
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

/// A tiny Glow for `steps` steps, evaluated at step 12 and checkpointed every 8.
fn glow<'a>(out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let options = [
        "--batch-size",
        "16",
        "--eval-every",
        "12",
        "--checkpoint-every",
        "8",
        "--steps",
        steps,
        "--n-bits",
        "4",
    ];
    [&["train", "--out", out][..], &tiny_glow_with(&options)].concat()
}

#[test]
fn two_ranks_train_glow_and_a_vector_flow_like_one_process() {
    if !enabled() {
        return;
    }
    let dir = temp("mpi-curves");
    let vector = |out: &'static str| {
        vec![
            "train",
            "--out",
            out,
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
        ]
    };
    for (one, two) in [
        (glow("glow-one", "24"), glow("glow-two", "24")),
        (vector("vector-one"), vector("vector-two")),
    ] {
        ok(&one, &dir);
        let stderr = ok_on(2, &two, &dir);
        // Rank 0 alone reports.
        assert_eq!(stderr.matches("revflow: training").count(), 1, "{stderr}");
        assert!(stderr.contains("on 2 ranks"), "{stderr}");
        let (a, b) = (dir.join(one[2]), dir.join(two[2]));
        same_curve(&a, &b, "loss");
        same_curve(&a, &b, "test_bits_per_dim");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_two_rank_run_resumes_with_one_rank_on_the_same_curve() {
    if !enabled() {
        return;
    }
    let dir = temp("mpi-resume");
    ok_on(2, &glow("run", "16"), &dir);
    let mut resume = glow("run", "24");
    resume.insert(1, "--resume");
    ok(&resume, &dir);
    ok(&glow("one", "24"), &dir);
    same_curve(&dir.join("one"), &dir.join("run"), "loss");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_error_on_one_rank_ends_every_rank_with_one_line_and_a_resumable_run() {
    if !enabled() {
        return;
    }
    let dir = temp("mpi-abort");
    let out = mpirun(
        2,
        &glow("run", "24"),
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
    let mut resume = glow("run", "24");
    resume.insert(1, "--resume");
    ok(&resume, &dir);
    let steps = metric(&dir.join("run"), "loss");
    assert_eq!(steps.last().map(|s| s.0), Some(24));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_cannot_run_on_several_ranks_is_refused_in_one_line() {
    if !enabled() {
        return;
    }
    let dir = temp("mpi-refused");
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
    let dir = temp("mpi-score");
    ok(&glow("run", "10"), &dir);
    // Batches of 7: shards of 4 and 3, and a last batch of fewer inputs than ranks.
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
    ok(&score("one"), &dir);
    ok_on(2, &score("two"), &dir);
    for file in ["scores.csv", "against.csv", "comparison.png"] {
        let (a, b) = (dir.join("one").join(file), dir.join("two").join(file));
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{file}"
        );
    }
    let eval = |csv: &'static str| vec!["eval", "run", "--batch-size", "5", "--per-sample", csv];
    ok(&eval("one.csv"), &dir);
    ok_on(2, &eval("two.csv"), &dir);
    assert_eq!(
        std::fs::read(dir.join("one.csv")).unwrap(),
        std::fs::read(dir.join("two.csv")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The process of `rank` in the job whose ranks carry `tag` in their environment.
fn rank_pid(tag: &str, rank: usize) -> Option<i32> {
    let want = [tag.to_string(), format!("OMPI_COMM_WORLD_RANK={rank}")];
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(entry.path().join("environ")).ok()?;
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            want.iter()
                .all(|w| vars.contains(&w.as_bytes()))
                .then_some(pid)
        })
}

#[test]
fn a_killed_rank_ends_the_job_and_the_last_checkpoint_resumes() {
    if !enabled() {
        return;
    }
    let dir = temp("mpi-kill");
    let tag = format!("REVFLOW_TEST_TAG={}", std::process::id());
    let (key, value) = tag.split_once('=').unwrap();
    let mut job = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-q", "-n", "2"])
        .args(["-x", &format!("{key}={value}")])
        .arg(env!("CARGO_BIN_EXE_revflow"))
        .args(glow("run", "100000"))
        .current_dir(&dir)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("mpirun starts");
    // Wait for two checkpoints (every 8 steps), then kill rank 1 as the OOM killer would.
    let started = std::time::Instant::now();
    while !dir.join("run/ckpt-000016").exists() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        assert!(
            started.elapsed().as_secs() < 120,
            "no checkpoint of step 16"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = rank_pid(&tag, 1).expect("rank 1 found");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = job.wait().unwrap();
    assert!(!status.success(), "mpirun must fail when a rank dies");
    // The run resumes from its last complete checkpoint, in one process.
    let latest = std::fs::read_to_string(dir.join("run/LATEST")).unwrap();
    let state = std::fs::read_to_string(dir.join("run").join(latest.trim()).join("state.json"));
    let state: serde_json::Value = serde_json::from_str(&state.unwrap()).unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!(step >= 16, "{state}");
    let target = (step + 3).to_string();
    let mut resume = glow("run", &target);
    resume.push("--resume");
    ok(&resume, &dir);
    assert_eq!(
        metric(&dir.join("run"), "loss").last().map(|s| s.0),
        Some(step + 3)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
