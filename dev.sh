#!/usr/bin/env bash
# The project's front door on a fresh machine.
#   bash dev.sh bench [ARGS]   set up, then run `adaptim bench` (default tasks unless ARGS say otherwise)
#   bash dev.sh test [ARGS]    set up, then run the test suite (pytest ARGS)
#   bash dev.sh setup          only set up: .venv with torch==2.13.0 (CPU build) and adaptim[bench,test]
# Set-up is idempotent; it is skipped when .venv is up to date with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY=${PYTHON:-python3}

setup() {
  if [[ ! -x $VENV/bin/python ]]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp=$VENV/.adaptim-setup
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: an unpinned torch pulls several GB of CUDA packages on these machines.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[bench,test]"
    touch "$stamp"
  fi
}

bench_data() {
  # Real data for the bench, installed offline from Debian's packages; tasks without data are skipped.
  local need=()
  [[ -d /usr/share/datasets/fashion-mnist ]] || need+=(dataset-fashion-mnist)
  command -v bible >/dev/null 2>&1 || need+=(bible-kjv)
  if ((${#need[@]})) && command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo -n"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"; } \
      >/dev/null 2>&1 || echo "note: could not install ${need[*]}; tasks that need them will be skipped" >&2
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  bench) setup; bench_data; exec "$VENV/bin/adaptim" bench "$@" ;;
  # one worker per core, a test file per worker at a time (a file's tests share their compiled
  # graphs through the one Inductor cache, and the Ray and multi-process tests stay in sequence);
  # `-n 0` after it runs everything in this process
  test) setup; exec "$VENV/bin/python" -m pytest -n auto --dist loadfile "$@" ;;
  *) echo "usage: bash dev.sh {bench|test|setup} [ARGS]" >&2; exit 2 ;;
esac
