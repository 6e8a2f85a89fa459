#!/usr/bin/env bash
# The README's screenshots of `revflow serve` (docs/serve/explore.png, vector.png, watch.png,
# playground.png),
# taken by the browser test (crates/revflow-serve/tests/browser.rs) in headless Chromium from
# runs trained as the README's first command trains (Glow on the digits, a flow on moons), and
# a small Glow it trains itself while the watch view follows it.
# Needs Debian's chromium and chromium-driver (.ci/install-deps.sh installs them). About five
# minutes on 2 cores after the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
cargo build --release -p revflow-cli
B=target/release/revflow
$B train --out "$runs/digits"
$B train --data moons --out "$runs/moons"
mkdir -p docs/serve
REVFLOW_TEST_BROWSER=1 REVFLOW_SCREENSHOT_RUNS="$runs" REVFLOW_SCREENSHOTS="$PWD/docs/serve" \
    cargo test -p revflow-serve --test browser
ls -l docs/serve
