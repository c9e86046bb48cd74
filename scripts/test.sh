#!/usr/bin/env bash
# Set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests write about 3 GB under the temporary folder while they run (data copies, weights files).
tmp="${TMPDIR:-/tmp}"
free_kb=$(df -Pk "$tmp" | awk 'NR == 2 {print $4}')
if [ "${free_kb:-0}" -lt $(( 4 * 1024 * 1024 )) ]; then
  echo "warning: only $(( free_kb / 1024 )) MiB free under $tmp; the tests need about 3 GiB there" >&2
fi
# One worker per CPU this process may use (at most 8; PATE_TEST_WORKERS=0 runs them in this process):
# the tests are mostly single-threaded stage runs, so two cores halve the time.
cpus=$(nproc)
exec .venv/bin/python -m pytest -q -n "${PATE_TEST_WORKERS:-$(( cpus < 8 ? cpus : 8 ))}" "$@"
