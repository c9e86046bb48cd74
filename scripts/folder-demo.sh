#!/usr/bin/env bash
# Your own images, the worked example: write Fashion-MNIST as PNG folders (private train split by
# class, 9 000 unlabelled public images, 1 000 labelled test images), then run the whole pipeline
# on them with [data] source = "folders". Offline; needs Debian's Fashion-MNIST package
# (sudo apt-get install dataset-fashion-mnist).
#
# How long, on a 2-core CPU (after scripts/setup.sh's one-time install of .venv):
#   bash scripts/folder-demo.sh          about 5 min: Private-kNN on scattering features, nothing
#                                        trained but the student (pipelines/fashion-mnist-folders-quick.toml);
#                                        student about 84%, epsilon 2 per record
#   bash scripts/folder-demo.sh --full   about 25 min: 250 CNN teachers x 15 epochs, then the same
#                                        student (pipelines/fashion-mnist-folders.toml); about 79%, epsilon 3.3
#
# --dicom: the same folders as DICOM files (.dcm, with made-up patient names), run with
# pipelines/fashion-mnist-dicom-quick.toml (with --full: pipelines/fashion-mnist-dicom.toml);
# afterwards the run directory, its release folder and the decode cache are searched for those
# names (none may be there). Writing the DICOM folders adds about a minute.
#
# Usage: bash scripts/folder-demo.sh [--full] [--dicom] [--dry-run] [pate run options, e.g. --run-dir DIR]
# --dry-run prints the pipeline, folders and run directory it would use, and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
dicom=0
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full=1 ;;
    --dicom) dicom=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) break ;;  # the rest goes to `pate run`
  esac
  shift
done
if [ "$full" = 1 ]; then
  echo "folder demo, full size: 250 CNN teachers, about 25 min on a 2-core CPU (the quick one, without --full: about 5 min)"
else
  echo "folder demo, quick: Private-kNN on scattering features, about 5 min on a 2-core CPU (--full: 250 CNN teachers, about 25 min)"
fi
kind=folders
[ "$dicom" = 1 ] && kind=dicom
pipeline=pipelines/fashion-mnist-$kind.toml
[ "$full" = 1 ] || pipeline=pipelines/fashion-mnist-$kind-quick.toml
folders=data/fashion-mnist-$kind
run_dir=runs/$(sed -n 's/^name = "\(.*\)"$/\1/p' "$pipeline")
data_root=data
for arg in "$@"; do  # --run-dir DIR / --run-dir=DIR, --data-root DIR (where the decode cache goes)
  case "${prev:-}" in --run-dir) run_dir=$arg ;; --data-root) data_root=$arg ;; esac
  case "$arg" in --run-dir=*) run_dir=${arg#--run-dir=} ;; --data-root=*) data_root=${arg#--data-root=} ;; esac
  prev=$arg
done
if [ "$dry" = 1 ]; then
  echo "pipeline: $pipeline"
  echo "folders: $folders"
  echo "run directory: $run_dir"
  echo "decode cache: $data_root/cache"
  echo "pate run options: $*"
  exit 0
fi
bash scripts/setup.sh
.venv/bin/pate data prepare fashion-mnist
if [ "$dicom" = 0 ]; then
  .venv/bin/python scripts/write_image_folders.py fashion-mnist "$folders"
  exec .venv/bin/pate run "$pipeline" "$@"
fi
.venv/bin/python scripts/write_image_folders.py fashion-mnist "$folders" --dicom
.venv/bin/pate run "$pipeline" "$@"
if [ -d "$run_dir" ]; then
  leaked=$(grep -rlaF -e "Demo^" -e "DEMO-" "$run_dir" "$run_dir-release" "$data_root/cache" 2>/dev/null || true)
  if [ -n "$leaked" ]; then
    echo "patient identifiers found in: $leaked" >&2
    exit 1
  fi
  echo "no patient identifier in $run_dir, $run_dir-release or $data_root/cache"
fi
