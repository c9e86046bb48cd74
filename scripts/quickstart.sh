#!/usr/bin/env bash
# The main job: set up, prepare MNIST (offline), run the quick MNIST pipeline end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pate data prepare mnist
exec .venv/bin/pate run pipelines/mnist-quick.toml "$@"
