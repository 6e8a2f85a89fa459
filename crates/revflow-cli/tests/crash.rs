//! Crashes, full disks, signals and two processes on one run: the checkpoint protocol keeps a
//! complete checkpoint at every moment, and training resumes on the same loss curve.
//!
//! `REVFLOW_CRASH_AT=N` kills the process (SIGKILL, no cleanup) at the N-th file operation of
//! revflow's write protocols, `REVFLOW_FAIL_AT=N` makes it fail like a full disk (see
//! `revflow::files`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn revflow(args: &[&str], cwd: &Path, env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("revflow runs")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("revflow-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Training a 2-D flow small enough that a step takes milliseconds.
fn train_args(out: &str, steps: usize, checkpoint_every: usize) -> Vec<String> {
    let (steps, every) = (steps.to_string(), checkpoint_every.to_string());
    [
        "train",
        "--data",
        "moons",
        "--samples",
        "256",
        "--flow-steps",
        "2",
        "--hidden",
        "8",
        "--batch-size",
        "32",
        "--steps",
        &steps,
        "--checkpoint-every",
        &every,
        "--eval-every",
        "1000000",
        "--out",
        out,
    ]
    .map(String::from)
    .to_vec()
}

/// A whole run of 4 steps, checkpoints at 0, 2 and 4.
fn short_run(out: &str, resume: bool) -> Vec<String> {
    let mut args = train_args(out, 4, 2);
    if resume {
        args.push("--resume".into());
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

/// The files of a run, its samples folder included, sorted.
fn names(run: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in ["", "samples"] {
        for entry in std::fs::read_dir(run.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            names.push(format!("{sub}/{name}"));
        }
    }
    names.sort();
    names
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(unix)]
fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9)
}

/// Whether `eval` finds a complete checkpoint in the run.
fn evaluates(run: &str, cwd: &Path) -> bool {
    let out = revflow(&["eval", run], cwd, &[]);
    let err = stderr(&out);
    assert!(
        out.status.success()
            || out.status.code() == Some(2)
                && (err.contains("no checkpoint yet") || err.contains("no config.json")),
        "eval {run}: {err}"
    );
    out.status.success()
}

/// Continues an interrupted run: resumes it if it has a checkpoint, else starts it again.
fn recover(run: &str, cwd: &Path, env: &[(&str, String)]) -> Output {
    let resume = evaluates(run, cwd);
    revflow(&strs(&short_run(run, resume)), cwd, env)
}

fn train(run: &str, cwd: &Path, env: &[(&str, String)]) -> Output {
    revflow(&strs(&short_run(run, false)), cwd, env)
}

/// Killed at every file operation, then killed again at the same operation of the resumed run:
/// whenever a checkpoint had been completed, `eval` finds one; a third run finishes on exactly
/// the loss curve of an uninterrupted run, with nothing left over.
#[cfg(unix)]
#[test]
fn a_run_killed_twice_at_any_file_operation_resumes_on_the_same_curve() {
    let dir = temp("kill");
    let out = train("reference", &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = losses(&dir.join("reference"));
    assert_eq!(reference.len(), 4);
    let finished = names(&dir.join("reference"));

    let mut had_checkpoint = false;
    let mut points = 0;
    for k in 1.. {
        let run = format!("run-{k}");
        let crash = [("REVFLOW_CRASH_AT", k.to_string())];
        let first = train(&run, &dir, &crash);
        if first.status.success() {
            break; // k is past the last operation of a whole run
        }
        assert!(killed(&first), "point {k}: {}", stderr(&first));
        points = k;
        // Once a checkpoint was complete at an earlier point, one is found at every later one.
        let found = evaluates(&run, &dir);
        assert!(
            found || !had_checkpoint,
            "point {k}: the checkpoint was lost"
        );
        had_checkpoint |= found;

        let second = recover(&run, &dir, &crash);
        if !second.status.success() {
            assert!(killed(&second), "point {k}, again: {}", stderr(&second));
            assert!(
                evaluates(&run, &dir) || !found,
                "point {k}, again: the checkpoint was lost"
            );
        }
        let last = recover(&run, &dir, &[]);
        assert!(last.status.success(), "point {k}: {}", stderr(&last));
        assert_eq!(losses(&dir.join(&run)), reference, "point {k}");
        assert_eq!(names(&dir.join(&run)), finished, "point {k}: debris left");
        std::fs::remove_dir_all(dir.join(&run)).unwrap();
    }
    // Config, metrics, three checkpoints, the pointer and a sample picture: dozens of points.
    assert!(points > 40, "only {points} file operations were tried");
    eprintln!("killed twice at each of {points} file operations");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A write that fails (here: like a full disk) at any file operation ends in one line and exit
/// code 2, keeps the previous checkpoint, and leaves nothing that stops the next run.
#[test]
fn a_failed_write_at_any_point_keeps_the_last_checkpoint_and_no_debris() {
    let dir = temp("enospc");
    let out = train("reference", &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = losses(&dir.join("reference"));
    let finished = names(&dir.join("reference"));
    let mut points = 0;
    for k in 1.. {
        let run = format!("run-{k}");
        let first = train(&run, &dir, &[("REVFLOW_FAIL_AT", k.to_string())]);
        if first.status.success() {
            break;
        }
        points = k;
        let err = stderr(&first);
        assert_eq!(first.status.code(), Some(2), "point {k}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
        let line = err.lines().last().unwrap_or_default();
        assert!(line.contains("No space left on device"), "point {k}: {err}");
        let last = recover(&run, &dir, &[]);
        assert!(last.status.success(), "point {k}: {}", stderr(&last));
        assert_eq!(losses(&dir.join(&run)), reference, "point {k}");
        assert_eq!(names(&dir.join(&run)), finished, "point {k}: debris left");
        std::fs::remove_dir_all(dir.join(&run)).unwrap();
    }
    assert!(points > 40, "only {points} file operations were tried");
    eprintln!("a write failed at each of {points} file operations");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn spawn(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_revflow"))
        .args(args)
        .current_dir(cwd)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("revflow starts")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "waited for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// While one process trains a run: a second training of it is refused naming the first,
/// readers always find a complete checkpoint, and SIGTERM stops the training at a checkpoint
/// from which it resumes.
#[cfg(unix)]
#[test]
fn one_writer_consistent_readers_and_a_clean_stop_on_sigterm() {
    let dir = temp("writer");
    let long = train_args("run", 1_000_000, 1);
    let long = strs(&long);
    let child = spawn(&long, &dir);
    let pid = child.id();
    wait_for("the first checkpoint", || {
        revflow(&["eval", "run"], &dir, &[]).status.success()
    });

    let second = revflow(&long, &dir, &[]);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds a run"), "{err}");
    let mut resume = long.to_vec();
    resume.push("--resume");
    let second = revflow(&resume, &dir, &[]);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "being trained by another revflow process (pid {pid})"
        )),
        "{err}"
    );

    // A checkpoint is swapped at every step; every read finds a complete one.
    for _ in 0..20 {
        let out = revflow(&["eval", "run", "--json"], &dir, &[]);
        assert!(
            out.status.success(),
            "eval while training: {}",
            stderr(&out)
        );
    }

    // SAFETY: sends a signal to our own child process, which is still running.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(line.contains("interrupted at step"), "{line}");
    assert!(line.contains("--resume --out run"), "{line}");
    let step: usize = line
        .split("interrupted at step ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in {line:?}"));
    // The checkpoint is of the step it reports, and the run continues from there.
    let losses_before = losses(&dir.join("run"));
    assert_eq!(losses_before.len(), step);
    let more = train_args("run", step + 3, 1);
    let mut more = strs(&more);
    more.push("--resume");
    let out = revflow(&more, &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("resuming at step {step}")));
    assert_eq!(losses(&dir.join("run")).len(), step + 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --out` never writes into a folder that is not a run.
#[test]
fn an_ordinary_folder_is_not_overwritten() {
    let dir = temp("ordinary");
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/config.txt"), "keep").unwrap();
    let out = train("mine", &dir, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a revflow run (it holds config.txt)"),
        "{err}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.join("mine")).unwrap().collect();
    assert_eq!(names.len(), 1, "the folder was written to");
    // A file named config.json does not make a folder a run: it has to read as a run's.
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(dir.join("app/config.json"), r#"{"theme": "dark"}"#).unwrap();
    let out = train("app", &dir, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not a revflow run (it holds config.json)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("app/config.json")).unwrap(),
        r#"{"theme": "dark"}"#
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An option given with its default value on a resume still counts as given.
#[test]
fn a_resume_given_the_default_data_of_another_run_is_refused() {
    let dir = temp("default");
    let out = train("run", &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (option, value, saved) in [("--data", "digits", "moons"), ("--seed", "0", "")] {
        let args = ["train", "--resume", "--out", "run", option, value];
        let out = revflow(&args, &dir, &[]);
        let err = stderr(&out);
        if saved.is_empty() {
            assert!(out.status.success(), "{err}"); // the run's own seed
        } else {
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.contains(&format!(
                    "{option} {value} contradicts the run's data {saved}"
                )),
                "{err}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
