"""scripts/folder-demo.sh, the worked example: quick by default (Private-kNN on scattering features,
nothing trained but the student), the 250-CNN pipelines with --full, DICOM with --dicom; its pipeline
files load, and its options pick the right one (checked with --dry-run, which runs nothing)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pate import config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "folder-demo.sh"
PIPELINES = ROOT / "pipelines"
QUICK = {"folders": PIPELINES / "fashion-mnist-folders-quick.toml", "dicom": PIPELINES / "fashion-mnist-dicom-quick.toml"}
FULL = {"folders": PIPELINES / "fashion-mnist-folders.toml", "dicom": PIPELINES / "fashion-mnist-dicom.toml"}


@pytest.mark.parametrize("kind", ["folders", "dicom"])
def test_the_quick_pipeline_is_private_knn_on_the_full_ones_folders(kind):
    quick, full = config.load(QUICK[kind]), config.load(FULL[kind])
    assert quick.name == f"fashion-mnist-{kind}-quick"
    assert quick.data == full.data  # the same folders, written by the same script
    assert Path(quick.data.private_dir) == ROOT / "data" / f"fashion-mnist-{kind}" / "private"
    # Nothing to train but the student: a fixed transform and a neighbour search.
    assert quick.teachers.features == "scattering"
    assert quick.aggregator.mechanism == "private-knn"
    assert full.teachers.features == "none" and full.teachers.count == 250  # --full: the CNN teachers


@pytest.mark.parametrize("kind", ["folders", "dicom"])
def test_the_quick_pipeline_has_fashion_mnist_knn_settings(kind):
    # The noise rule of fashion-mnist-knn.toml was worked out for these sizes (60 000 private,
    # 9 000 pool, 2 000 queries, k 10): the quick demo keeps it, only the input differs.
    quick, knn = config.load(QUICK[kind]), config.load(PIPELINES / "fashion-mnist-knn.toml")
    assert (quick.teachers, quick.aggregator, quick.privacy, quick.student) == \
        (knn.teachers, knn.aggregator, knn.privacy, knn.student)


def _demo(*args: str) -> list[str]:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _plan(lines: list[str]) -> dict[str, str]:
    return dict(ln.split(": ", 1) for ln in lines[1:])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("args, pipeline, folders", [
    ([], "fashion-mnist-folders-quick", "fashion-mnist-folders"),
    (["--full"], "fashion-mnist-folders", "fashion-mnist-folders"),
    (["--dicom"], "fashion-mnist-dicom-quick", "fashion-mnist-dicom"),
    (["--dicom", "--full"], "fashion-mnist-dicom", "fashion-mnist-dicom"),
    (["--full", "--dicom"], "fashion-mnist-dicom", "fashion-mnist-dicom"),
])
def test_the_options_pick_the_pipeline(args, pipeline, folders):
    plan = _plan(_demo("--dry-run", *args))
    assert plan["pipeline"] == f"pipelines/{pipeline}.toml"
    assert plan["folders"] == f"data/{folders}"
    assert plan["run directory"] == f"runs/{pipeline}"  # the pipeline's name: where the leak check looks
    assert config.load(ROOT / plan["pipeline"]).name == pipeline


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("rest", [["--run-dir", "/tmp/x", "-q", "--data-root", "/tmp/d"],
                                  ["--run-dir=/tmp/x", "-q", "--data-root=/tmp/d"]])
def test_the_rest_goes_to_pate_run_and_the_leak_check_follows_it(rest):
    plan = _plan(_demo("--dicom", "--dry-run", *rest))
    assert plan["run directory"] == "/tmp/x"
    assert plan["decode cache"] == "/tmp/d/cache"
    assert plan["pate run options"] == " ".join(rest)
    assert _plan(_demo("--dry-run"))["decode cache"] == "data/cache"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_it_says_first_how_long_each_takes():
    for args in ([], ["--full"]):
        first = _demo("--dry-run", *args)[0]
        assert len(re.findall(r"about \d+ min", first)) == 2 and "2-core CPU" in first, first
    header = _demo("--help")
    assert any("--full" in ln and re.search(r"about \d+ min", ln) for ln in header), header
    assert any("--dicom" in ln for ln in header)
