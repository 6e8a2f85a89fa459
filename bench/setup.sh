#!/usr/bin/env bash
# Creates bench/.venv with the pinned PyTorch of bench/requirements.txt (see the comment there for
# why --no-deps). Idempotent: does nothing when the venv already matches requirements.txt and
# imports; rebuilds it from scratch when requirements.txt changed or a previous run was cut short.
# Needs Linux x86_64 and Python >= 3.11 (set PYTHON to choose the interpreter); about 4.1 GB.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"
want="$(sha256sum "$req" | cut -d' ' -f1)"
check='import numpy, safetensors, torch, zuko; torch.ones(2).sum().item(); print("torch", torch.__version__)'

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && version="$("$venv/bin/python" -c "$check" 2>/dev/null)"; then
    echo "bench/.venv: up to date ($version)"
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bench/setup.sh: needs Python >= 3.11 (found $("$python" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi

echo "bench/.venv: creating with $("$python" --version 2>&1) and installing bench/requirements.txt (about 2.4 GB to download)"
start=$SECONDS
"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$req"
version="$("$venv/bin/python" -c "$check")"
echo "$want" > "$stamp"
echo "bench/.venv: ready in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1) ($version)"
