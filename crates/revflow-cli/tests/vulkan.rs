//! The GPU path (feature `wgpu`) against the CPU backend on a Vulkan device: Mesa's software
//! driver (lavapipe) in CI, a real GPU elsewhere. It runs `bench/vulkan-check.sh` (a CPU-trained
//! checkpoint's test bits/dim on both devices within 1e-4 relative, encode on one device and
//! decode on the other, samples of one seed, five training steps, the device recorded in the
//! run, one line for a missing adapter or index) on this build's binary.
//!
//! Needs a Vulkan driver, so it runs only where `REVFLOW_TEST_VULKAN` is set (`.ci/run` sets
//! it and installs mesa-vulkan-drivers): there it fails, never skips.
//! `REVFLOW_TEST_VULKAN=1 cargo test -p revflow-cli --features wgpu --test vulkan`

use std::path::Path;
use std::process::Command;

#[test]
fn the_wgpu_path_agrees_with_the_cpu_on_vulkan() {
    if std::env::var_os("REVFLOW_TEST_VULKAN").is_none() {
        return;
    }
    if !cfg!(feature = "wgpu") {
        panic!(
            "REVFLOW_TEST_VULKAN is set but this build lacks the wgpu feature: run \
             `cargo test -p revflow-cli --features wgpu --test vulkan`"
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/vulkan-check.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("REVFLOW", env!("CARGO_BIN_EXE_revflow"))
        // burn's autotune times candidate kernels on first use; on a software rasteriser
        // that is most of the check's time, and the answers do not depend on the choice.
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .output()
        .expect("bash runs bench/vulkan-check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS"),
        "vulkan-check failed:\n{stdout}\n{stderr}"
    );
    // Seven checks, each reported as passed.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 7);
}
