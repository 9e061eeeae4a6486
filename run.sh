#!/usr/bin/env bash
# ichkit entry point. Sets up .venv on first use (and again whenever requirements.txt changes), then:
#   bash run.sh                 the main job (python -m ichkit all)
#   bash run.sh test [ARGS]     the test suite (pytest ARGS)
#   bash run.sh bench NAME      a benchmark in bench/ (e.g. bench prepare)
#   bash run.sh STAGE [ARGS]    one stage: python -m ichkit STAGE ARGS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256

if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[run.sh] installing requirements into $VENV (first run takes about a minute)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$want" > "$STAMP"
fi

export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
case "${1:-all}" in
  test)  shift; exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) shift; name=${1:?bench needs a name, e.g. prepare}; shift; exec "$VENV/bin/python" "bench/$name.py" "$@" ;;
  *)     [ $# -gt 0 ] || set -- all; exec "$VENV/bin/python" -m ichkit "$@" ;;
esac
