"""Your own images: folders and arrays in, every bad input one line and exit 2 with nothing written."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pate import config as config_mod
from pate import data
from pate.cli import main

from .conftest import FOLDERS_PIPELINE, blob, write_folders


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def load(pipeline, tmp_path):
    cfg = config_mod.load(pipeline)
    return data.load(cfg.data, tmp_path / "data-root")


def test_folders_load_as_a_dataset(folders, tmp_path):
    ds = load(folders, tmp_path)
    assert ds.private_x.shape == (600, 1, 28, 28) and ds.private_x.dtype == np.uint8
    assert ds.classes == tuple(f"classe {k} é" for k in range(10))
    assert ds.num_pool == 300 and len(ds.public_y) == 400 and (ds.public_y[:300] == -1).all()
    assert (ds.public_y[300:] >= 0).all() and not ds.shared_split
    # the images are what was written, label by folder
    first = tmp_path / "images" / "private"
    name, digest = ds.files["private"][0]
    assert name.startswith(str(first)) and len(digest) == 64
    image = np.asarray(Image.open(name))
    np.testing.assert_array_equal(ds.private_x[0, 0], image)
    assert ds.classes[ds.private_y[0]] in name
    assert len(ds.mean) == len(ds.std) == 1 and 0 < ds.mean[0] < 1


def test_decode_once_then_the_cache(folders, tmp_path, monkeypatch):
    load(folders, tmp_path)
    calls = []
    real = data.images.decode
    monkeypatch.setattr(data.images, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load(folders, tmp_path)
    assert not calls  # reloaded from the cache
    # a changed file is detected (its hash changes), and decoded afresh
    path = tmp_path / "images" / "public" / "lot 0" / "img_0.png"
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = load(folders, tmp_path)
    assert calls and not np.array_equal(changed.public_x, again.public_x)


def test_a_run_refuses_to_continue_on_changed_data(folders, tmp_path, fake_data_root):
    run_dir = tmp_path / "run"
    args = ["--run-dir", run_dir, "--data-root", tmp_path / "data-root", "-q"]
    assert invoke("partition", folders, *args).exit_code == 0
    recorded = json.loads((run_dir / "data.json").read_text())
    assert len(recorded["files"]["private"]) == 600 and recorded["spec"]["num_classes"] == 10
    extra = tmp_path / "images" / "public" / "lot 0" / "new.png"
    Image.fromarray(blob(3, np.random.default_rng(9))).save(extra)
    result = invoke("train-teachers", folders, *args)
    assert result.exit_code == 2 and f"{extra} was added" in result.output


def test_the_whole_pipeline_on_folders(folders, tmp_path):
    result = invoke("run", folders, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["label_accuracy"] is None  # the public pool has no labels
    assert metrics["student_accuracy"] > 0.3 and metrics["test_size"] == 100
    statement = json.loads((tmp_path / "run-release" / "statement.json").read_text())
    assert statement["classes"][0] == "classe 0 é" and statement["dataset"] == "folders:images/private"


def mutate(tmp_path, change):
    write_folders(tmp_path / "images")
    change(tmp_path / "images")
    pipeline = tmp_path / "folders.toml"
    pipeline.write_text(FOLDERS_PIPELINE)
    return pipeline


def _one_class(private):
    """Every private image moved into the first class folder."""
    keep = private / "classe 0 é"
    for folder in sorted(private.iterdir()):
        if folder != keep:
            for path in folder.iterdir():
                path.rename(keep / f"{folder.name}-{path.name}")
            folder.rmdir()


def _truncate(path):
    path.write_bytes(path.read_bytes()[:40])


BAD = {
    "missing private folder": (lambda r: os.rename(r / "private", r / "elsewhere"), "private_dir"),
    "empty public folder": (lambda r: [p.unlink() for p in (r / "public").rglob("*.png")], "public_dir"),
    "class folder without images": (lambda r: (r / "private" / "empty class").mkdir(), "empty class"),
    "single class": (lambda r: _one_class(r / "private"), "one class"),
    "truncated image": (lambda r: _truncate(next((r / "public").rglob("*.png"))), "not a readable image"),
    "test classes unknown": (lambda r: (r / "test" / "classe 0 é").rename(r / "test" / "unknown"), "unknown"),
    "private image made public": (lambda r: (r / "public" / "copy.png").write_bytes(
        next((r / "private").rglob("*.png")).read_bytes()), "same image as the private"),
    "symlink loop": (lambda r: (r / "public" / "lot 0" / "loop").symlink_to(r / "public"), "symbolic-link loop"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folders_are_one_line_and_nothing_written(case, tmp_path):
    change, match = BAD[case]
    pipeline = mutate(tmp_path, change)
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")
    assert result.exit_code == 2 and match in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_non_images_are_skipped_and_colour_is_converted(tmp_path):
    pipeline = mutate(tmp_path, lambda r: (
        (r / "public" / "notes.txt").write_text("not an image"),
        Image.new("RGB", (40, 40), (200, 10, 10)).save(r / "public" / "lot 1" / "colour.jpg")))
    cfg = config_mod.load(pipeline)
    ds = data.load(cfg.data, tmp_path / "data-root")
    assert ds.files["skipped"] == 1 and ds.public_x.shape[1] == 3 and ds.files["converted"] > 0
    assert ds.public_x.shape[2:] == (28, 28)  # the median size, not the one 40x40 image


def test_images_too_small_for_the_network(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for split, classes in (("private", 2), ("public", 1)):
        for i in range(8):
            folder = root / split / (f"c{i % classes}" if split == "private" else "all")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (5, 5)).astype(np.uint8)).save(folder / f"{i}.png")
    cfg = config_mod.from_dict({"name": "small", "data": {"source": "folders", "private_dir": str(root / "private"),
                                                          "public_dir": str(root / "public")}})
    with pytest.raises(data.DataError, match="too small for the networks"):
        data.load(cfg.data, tmp_path / "data-root")
    bigger = config_mod.from_dict({"name": "small", "data": {**cfg.to_dict()["data"], "image_size": 8}})
    assert data.load(bigger.data, tmp_path / "data-root").private_x.shape == (8, 1, 8, 8)


# ----------------------------------------------------------------------------- arrays


def write_arrays(tmp_path, **overrides):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    arrays = {"private": {"images": np.stack([blob(y, rng) for y in labels]), "labels": labels},
              "public": {"images": np.stack([blob(y, rng) for y in rng.integers(0, 10, 300)])},
              "test": {"images": np.stack([blob(y, rng) for y in labels[:100]]), "labels": labels[:100]}}
    for name, content in arrays.items():
        np.savez(tmp_path / f"{name}.npz", **overrides.get(name, content))
    cfg = {"name": "arrays", "data": {"source": "arrays", "private_file": str(tmp_path / "private.npz"),
                                      "public_file": str(tmp_path / "public.npz"),
                                      "test_file": str(tmp_path / "test.npz")}}
    return config_mod.from_dict(cfg)


def test_arrays_load(tmp_path):
    ds = data.load(write_arrays(tmp_path).data)
    assert ds.private_x.shape == (600, 1, 28, 28) and ds.num_pool == 300 and len(ds.public_y) == 400
    assert ds.num_classes == 10 and ds.files["private"][0][1]


@pytest.mark.parametrize("override, match", [
    ({"private": {"pixels": np.zeros((3, 28, 28), np.uint8), "labels": np.zeros(3, int)}}, "must hold 'images'"),
    ({"private": {"images": np.zeros((3, 28, 28), np.float32), "labels": np.zeros(3, int)}}, "must be uint8"),
    ({"private": {"images": np.zeros((3, 28, 20), np.uint8), "labels": np.zeros(3, int)}}, "must be square"),
    ({"private": {"images": np.zeros((3, 28, 28), np.uint8), "labels": np.zeros(4, int)}}, "'labels' must be"),
    ({"public": {"images": np.zeros((3, 32, 32), np.uint8)}}, "one size"),
])
def test_bad_arrays(tmp_path, override, match):
    cfg = write_arrays(tmp_path, **override)
    with pytest.raises(data.DataError, match=match):
        data.load(cfg.data)


def test_a_private_array_image_in_the_public_file_is_refused(tmp_path):
    cfg = write_arrays(tmp_path)
    private = np.load(tmp_path / "private.npz")
    np.savez(tmp_path / "public.npz", images=private["images"][:5])
    with pytest.raises(data.DataError, match="also among the public images"):
        data.load(cfg.data)


def test_public_array_labels_serve_evaluation_only(tmp_path):
    cfg = write_arrays(tmp_path)
    public = np.load(tmp_path / "public.npz")
    labels = np.arange(len(public["images"])) % 10
    np.savez(tmp_path / "public.npz", images=public["images"], labels=labels)
    ds = data.load(cfg.data)
    assert np.array_equal(ds.public_y[:ds.num_pool], labels)  # read by vote/evaluate for accuracy only
    np.savez(tmp_path / "public.npz", images=public["images"], labels=labels + 10)
    with pytest.raises(data.DataError, match="public_file: label 19 names a class the private labels lack"):
        data.load(cfg.data)
