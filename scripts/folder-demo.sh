#!/usr/bin/env bash
# Your own images, the worked example: write Fashion-MNIST as PNG folders (private train split by
# class, 9 000 unlabelled public images, 1 000 labelled test images), then run the whole pipeline
# on them with [data] source = "folders". Offline; needs Debian's Fashion-MNIST package
# (sudo apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pate data prepare fashion-mnist
.venv/bin/python scripts/write_image_folders.py fashion-mnist data/fashion-mnist-folders
exec .venv/bin/pate run pipelines/fashion-mnist-folders.toml "$@"
