#!/usr/bin/env bash
# A machine that only trains heads: a fresh virtual environment with `pip install .` and no extras
# (torch 2.13.0 first, the CPU wheel), a cache and a manifest copied without their media, then
# `clmer-fusion train`. Checks that no extra (transformers, decord, funasr) came along, that
# `clmer-fusion --help` answers, and that the head trained. The cache is written by this
# checkout's .venv (tests/_fusion_helpers.py). Usage: .ci/fresh_install.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
t0=$(date +%s)
"$PY" -m venv "$work/venv"
PIP=("$work/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
# a copy of the tracked files, so the build leaves nothing in this checkout
mkdir -p "$work/src"
git ls-files -co --exclude-standard | while read -r f; do [ -f "$f" ] && cp --parents "$f" "$work/src/"; done
"${PIP[@]}" "$work/src"
echo "fresh-install: venv ready in $(( $(date +%s) - t0 )) s"
for pkg in transformers decord funasr faster_whisper; do
  if "$work/venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
    echo "fresh-install: $pkg is installed without any extra" >&2; exit 1
  fi
done
"$repo/.venv/bin/python" - "$work/made" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from _fusion_helpers import write_synthetic_store
write_synthetic_store(Path(sys.argv[1]), n=300, media=True)
PY
mkdir -p "$work/copy"
cp -r "$work/made/cache" "$work/made/synth.csv" "$work/copy/"
"$work/venv/bin/clmer-fusion" --help >/dev/null
cd "$work"
"$work/venv/bin/clmer-fusion" train copy/synth.csv --cache copy/cache --features bert,wav,vis --head mlp \
    --lr 0.01 --out "$work/run" | tee "$work/train.log"
"$work/venv/bin/python" - "$work/run/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
war = m["splits"]["test"]["war"]
assert war > 0.6, f"the head trained on the copied cache scores WAR {war}"
print(f"fresh-install: trained on the copied cache without media: test WAR {war:.3f}")
PY
echo "fresh-install: ok in $(( $(date +%s) - t0 )) s"
