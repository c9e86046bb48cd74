#!/usr/bin/env bash
# Create .venv and install pate with everything the quick start and the tests need.
# Idempotent: skips the install when setup.cfg has not changed since the last one.
# PATE_TORCH overrides the torch/torchvision pins (e.g. PATE_TORCH="torch torchvision" for the newest).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${PATE_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
stamp=.venv/.pate-setup
want="$(cat setup.cfg scripts/setup.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setting up .venv (torch: $TORCH_SPEC) ..." >&2
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
log=.venv/setup.log
# pip's and setuptools' chatter (the editable-install banner) goes to the log, shown only on failure.
# shellcheck disable=SC2086
if ! { .venv/bin/python -m pip install -q $TORCH_SPEC && .venv/bin/python -m pip install -q -e ".[dev,offline,plot,tracking,onnx,dicom,baselines,dpsgd,propagation]"; } \
    > "$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2
fi
.venv/bin/python -c "import torch, torchvision, pate" || { echo "setup failed (see $log)" >&2; exit 1; }
echo "$want" > "$stamp"
