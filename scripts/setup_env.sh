#!/usr/bin/env bash
# Create .venv/ at the repository root and install xec into it. Idempotent: a second call
# returns in about a second unless pyproject.toml or this script changed.
# XEC_TORCH overrides the torch requirement (e.g. XEC_TORCH="torch==2.5.1" on a cluster);
# the default pin resolves to the CPU build on the development machines and to the
# CUDA build from PyPI on Linux GPU nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${XEC_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${XEC_TORCH:-torch==2.13.0}
STAMP="$VENV/.xec-installed"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)-$TORCH_SPEC
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "xec needs Python >= 3.10" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "[setup] installing xec into $VENV (torch: $TORCH_SPEC)" >&2
LOG="$VENV/setup.log"
pip_install() {
  "$VENV/bin/python" -m pip install -q "$@" >>"$LOG" 2>&1 || { tail -n 30 "$LOG" >&2; echo "[setup] pip install $* failed; full log: $LOG" >&2; exit 1; }
}
: > "$LOG"
# uv (from PyPI, into the venv) installs xec's ~100 dependencies in parallel from its cache: ~5 s
# where they were installed before, against ~35 s for pip (docs/performance.md, "Default
# pipeline", session 32). It reads no pip configuration, so pip's find-links (the CPU torch
# build of a machine that provides one) are handed over. pip stays the fallback (XEC_INSTALLER=pip forces it) whenever uv
# cannot be installed or fails (e.g. a cluster reachable only through pip's own index setting).
INSTALLER=${XEC_INSTALLER:-uv}
if [ "$INSTALLER" = uv ] && ! "$VENV/bin/python" -m pip install -q --no-compile "uv>=0.5" >>"$LOG" 2>&1; then
  echo "[setup] could not install uv (see $LOG); installing with pip" >&2
  INSTALLER=pip
fi
if [ "$INSTALLER" = uv ]; then
  links=${UV_FIND_LINKS:-${PIP_FIND_LINKS:-$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)}}
  uv_install() {
    env ${links:+UV_FIND_LINKS="$links"} "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" "$@" >>"$LOG" 2>&1
  }
  # torch first and alone, so that the resolver never swaps it for another build
  if ! { uv_install "$TORCH_SPEC" && uv_install -e ".[test]"; }; then
    echo "[setup] uv failed (see $LOG); installing with pip" >&2
    INSTALLER=pip
  fi
fi
if [ "$INSTALLER" = pip ]; then
  # A current pip first: the venv's bundled one (23.x with Python 3.11) spends ~40 s resolving and
  # unpacking xec's ~100 dependencies, pip >= 25 ~25 s. Not fatal: a mirror without it leaves
  # the bundled pip, which works, slower.
  "$VENV/bin/python" -m pip install -q --no-compile -U "pip>=25.1" >>"$LOG" 2>&1 ||
    echo "[setup] could not upgrade pip (see $LOG); going on with the venv's own" >&2
  pip_install --no-compile "$TORCH_SPEC"
  pip_install --no-compile -e ".[test]"
fi
# No bytecode from pip (it compiles every installed file on one core) nor a compileall over
# site-packages (16,700 files, ~30 s on 2 cores): the ~4,300 modules the commands import are
# compiled by importing them, in two processes side by side (~18 s); anything else compiles on
# first import.
warm() { "$VENV/bin/python" -c "import $1" >>"$LOG" 2>&1 || true; }
warm "torch, torch.onnx, onnxscript, onnx, onnxruntime" &
warm "numpy, scipy.optimize, scipy.stats, pandas, pyarrow.parquet, uproot, awkward, matplotlib.pyplot, mlflow.tracking, snakemake.cli, jsonschema, yaml, tqdm" &
wait
echo "$want" > "$STAMP"
echo "[setup] done" >&2
