#!/usr/bin/env bash
# System packages the CI needs beyond a Rust toolchain: Open MPI and libclang for the `mpi`
# feature (rsmpi builds its bindings with bindgen); Mesa's software Vulkan driver and the
# Vulkan loader for the GPU path's check (tests/vulkan.rs), which also uses python3; Chromium
# and its WebDriver for the web page's browser test (crates/revflow-serve/tests/browser.rs).
# Idempotent; run as root (CI) or with sudo.
set -euo pipefail
packages=(libopenmpi-dev openmpi-bin libclang-dev mesa-vulkan-drivers libvulkan1 python3 chromium chromium-driver)
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
