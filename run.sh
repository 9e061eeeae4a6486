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

# apt_install PKG WHY: a Debian package, installed quietly as root or with password-less sudo (the package
# lists are refreshed only when the first try fails); returns non-zero when it cannot be installed.
apt_install() {
  local pkg=$1 why=$2 sudo=""
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$(id -u)" != 0 ]; then
    { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; } || return 1
    sudo="sudo -n"
  fi
  echo "[run.sh] installing $pkg $why" >&2
  { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" \
      || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg"; }; } >/dev/null 2>&1
}

# The report's browser test (tests/test_report.py) renders the page in headless chromium (Debian package
# `chromium`); CI must not skip it, so `test` installs it when it is missing and apt-get can run.
ensure_browser() {
  local b
  for b in chromium chromium-browser google-chrome; do command -v "$b" >/dev/null 2>&1 && return 0; done
  apt_install chromium "for the report's browser test (apt-get, about a minute)" \
    || echo "[run.sh] could not install chromium (apt-get as root or password-less sudo): tests/test_report.py will fail" >&2
}

# TensorFlow on the CPU frees and re-allocates its large tensors every training step, and the tf.data
# generator op behind Keras' PyDataset sets glibc's M_TRIM_THRESHOLD to 128 KB for the whole process
# (it logs "Memory patch applied"): glibc then hands the memory back to the kernel and faults it in again
# page by page, 40-50 % of the CPU in kernel time on this KVM machine (measured: Xception fold 524 s
# with glibc, 296 s with tcmalloc, the same predictions). So every command runs with gperftools' tcmalloc
# preloaded (Debian package libtcmalloc-minimal4, installed when missing and apt-get can run);
# ICHKIT_MALLOC=system opts out.
# awk reads to the end: quitting at the first match would SIGPIPE ldconfig, and pipefail + set -e then kill run.sh
tcmalloc_path() { ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found=1}'; }
ensure_tcmalloc() {
  [ "${ICHKIT_MALLOC:-tcmalloc}" = system ] && return 0
  local lib; lib=$(tcmalloc_path)
  if [ -z "$lib" ] && apt_install libtcmalloc-minimal4 "(tcmalloc) for TensorFlow's CPU training speed (apt-get)"; then
    lib=$(tcmalloc_path)
  fi
  if [ -z "$lib" ]; then
    echo "[run.sh] tcmalloc is not available: CNN and U-Net training on the CPU will be about 2x slower" >&2
    return 0
  fi
  case ":${LD_PRELOAD:-}:" in
    *":$lib:"*) ;;   # already preloaded (run.sh called from a run.sh command)
    *) export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}" ;;
  esac
}

export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
ensure_tcmalloc
case "${1:-all}" in
  test)  shift; ensure_browser; exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) shift; name=${1:?bench needs a name, e.g. prepare}; shift; exec "$VENV/bin/python" "bench/$name.py" "$@" ;;
  *)     [ $# -gt 0 ] || set -- all; exec "$VENV/bin/python" -m ichkit "$@" ;;
esac
