"""Smoke test of benchmarks/dpsgd_baseline.py (the Opacus DP-SGD baseline) at a tiny size: the
pipeline's data and held-out split are read as pate reads them, a few hundred fake images are
scattered, each model trains for a couple of epochs, and the result has an accuracy and an ε that
Opacus's accountant reports within the target. Skipped without opacus (the ``baselines`` extra)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pate import config as config_mod, data as data_mod
from pate.data.partition import split_public
from .conftest import TINY_PIPELINE, edit_pipeline

pytest.importorskip("opacus")

ROOT = Path(__file__).resolve().parent.parent


def _benchmark():
    spec = importlib.util.spec_from_file_location("dpsgd_baseline", ROOT / "benchmarks" / "dpsgd_baseline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dpsgd_baseline", module)
    spec.loader.exec_module(module)
    return module


def test_dpsgd_baseline_tiny(fake_data_root, tmp_path):
    bench = _benchmark()
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(edit_pipeline(TINY_PIPELINE, ("private_size = 600\n", ""), ("delta = 1e-4", "delta = 1e-5")))

    split = bench.load_split(pipeline, split_seed=3, data_root=fake_data_root)
    assert len(split["train_y"]) == 60000 and len(split["test_y"]) == 100  # the whole private set; test_size
    assert split["split_seed"] == 3
    expected = split_public(num_public=10000, student_pool=300, test_size=100, num_queries=40, seed=3)["test_index"]
    dataset = data_mod.load(config_mod.load(pipeline).data, fake_data_root)
    assert np.array_equal(split["test_x"], dataset.public_x[expected])

    rows = bench.main(["--pipeline", str(pipeline), "--data-root", str(fake_data_root), "--split-seed", "seed",
                       "--models", "linear", "cnn", "--epsilons", "2", "--seeds", "1", "--epochs", "2",
                       "--batch-size", "64", "--max-private", "320", "--threads", "2",
                       "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert [r["model"] for r in rows] == ["linear", "cnn"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["test_images"] == 100 and r["split_seed"] == 1
        assert 0.0 < r["epsilon"] <= 2.0 + 1e-9 and r["sigma"] > 0 and r["steps"] == 2 * 5
    assert rows[0]["accuracy"] > 0.5  # one bright square per class: the linear model learns it even with noise
    assert len(json.loads((tmp_path / "out" / "tiny.json").read_text())["runs"]) == 2
    assert list((tmp_path / "cache").glob("scattering-*.pt"))  # features computed once and kept

    again = bench.main(["--pipeline", str(pipeline), "--data-root", str(fake_data_root), "--split-seed", "seed",
                        "--models", "linear", "--epsilons", "2", "--seeds", "1", "--epochs", "2",
                        "--batch-size", "64", "--max-private", "320",
                        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert again[0] == rows[0]  # a finished run is read back, not rerun
