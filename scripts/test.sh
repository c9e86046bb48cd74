#!/usr/bin/env bash
# Set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One worker per CPU this process may use (at most 8; PATE_TEST_WORKERS=0 runs them in this process):
# the tests are mostly single-threaded stage runs, so two cores halve the time.
cpus=$(nproc)
exec .venv/bin/python -m pytest -q -n "${PATE_TEST_WORKERS:-$(( cpus < 8 ? cpus : 8 ))}" "$@"
