#!/usr/bin/env bash
# Your own images, the worked example: write Fashion-MNIST as PNG folders (private train split by
# class, 9 000 unlabelled public images, 1 000 labelled test images), then run the whole pipeline
# on them with [data] source = "folders". Offline; needs Debian's Fashion-MNIST package
# (sudo apt-get install dataset-fashion-mnist).
#
# --dicom (first argument): the same folders as DICOM files (.dcm, with made-up patient names),
# run with pipelines/fashion-mnist-dicom.toml; afterwards the run directory, its release folder and
# the decode cache are searched for those names (none may be there).
set -euo pipefail
cd "$(dirname "$0")/.."
dicom=0
if [ "${1:-}" = "--dicom" ]; then
  dicom=1
  shift
fi
bash scripts/setup.sh
.venv/bin/pate data prepare fashion-mnist
if [ "$dicom" = 0 ]; then
  .venv/bin/python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-folders
  exec .venv/bin/pate run pipelines/fashion-mnist-folders.toml "$@"
fi
.venv/bin/python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-dicom --dicom
.venv/bin/pate run pipelines/fashion-mnist-dicom.toml "$@"
run_dir=runs/fashion-mnist-dicom
for arg in "$@"; do  # --run-dir DIR / --run-dir=DIR
  case "${prev:-}" in --run-dir) run_dir=$arg ;; esac
  case "$arg" in --run-dir=*) run_dir=${arg#--run-dir=} ;; esac
  prev=$arg
done
if [ -d "$run_dir" ]; then
  leaked=$(grep -rlaF -e "Demo^" -e "DEMO-" "$run_dir" "$run_dir-release" data/cache 2>/dev/null || true)
  if [ -n "$leaked" ]; then
    echo "patient identifiers found in: $leaked" >&2
    exit 1
  fi
  echo "no patient identifier in $run_dir, $run_dir-release or data/cache"
fi
