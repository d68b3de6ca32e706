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
# torch first and alone, so that the resolver never swaps it for another build.
# --no-compile + one compileall over all cores afterwards: pip compiles the bytecode of every
# installed file on one core, ~50 of the ~95 s of a fresh set-up on 2 cores.
pip_install --no-compile "$TORCH_SPEC"
pip_install --no-compile -e ".[test]"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# like pip, skip files that do not compile (a few packages ship Python-2 test data)
"$VENV/bin/python" -m compileall -q -j 0 "$SITE" >>"$LOG" 2>&1 || true
echo "$want" > "$STAMP"
echo "[setup] done" >&2
