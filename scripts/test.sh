#!/usr/bin/env bash
# Set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Passing tests' temporary folders are removed (pyproject.toml); the suite holds about 0.5 GiB there at a
# time (data copies, weights files). Only a warning: a df that cannot read the folder skips it.
tmp="${TMPDIR:-/tmp}"
free_kb=$(df -Pk "$tmp" 2>/dev/null | awk 'NR == 2 {print $4}') || free_kb=""
if [ -n "$free_kb" ] && [ "$free_kb" -lt $(( 2 * 1024 * 1024 )) ]; then
  echo "warning: only $(( free_kb / 1024 )) MiB free under $tmp; the tests hold about 0.5 GiB there at a time" >&2
fi
# One worker per CPU this process may use (at most 8; PATE_TEST_WORKERS=0 runs them in this process):
# the tests are mostly single-threaded stage runs, so two cores halve the time.
cpus=$(nproc)
exec .venv/bin/python -m pytest -q -n "${PATE_TEST_WORKERS:-$(( cpus < 8 ? cpus : 8 ))}" "$@"
