#!/usr/bin/env bash
# Sets everything up on a fresh machine, then runs one job:
#   ./run.sh demo [ARGS]   -> prunewise demo ARGS   (the main job, on the embedded digits data)
#   ./run.sh test [ARGS]   -> pytest ARGS           (the test suite)
#   ./run.sh prunewise ... -> any prunewise command
# The virtualenv (.venv, or $PRUNEWISE_VENV) is created and filled on first use; torch is pinned
# to 2.13.0 (the CPU wheel) so that nothing pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
venv=${PRUNEWISE_VENV:-.venv}
stamp="$venv/.prunewise-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "setting up $venv (first run only) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet torch==2.13.0
  "$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[test,hf]"
  touch "$stamp"
fi
job=${1:-demo}
shift || true
case "$job" in
  demo) exec "$venv/bin/prunewise" demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
  prunewise) exec "$venv/bin/prunewise" "$@" ;;
  *) echo "usage: ./run.sh demo|test|prunewise [ARGS]" >&2; exit 2 ;;
esac
