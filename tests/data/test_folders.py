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


def data_table(cfg) -> dict:
    """``cfg``'s [data] section as a TOML table would give it (lists, not tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict()["data"].items()}


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
    assert statement["classes"][0] == "classe 0 é" and statement["dataset"] == "folders"
    # no public output names the private data's place: not its folder, not the folders above it
    for path in (tmp_path / "run-release").iterdir():
        content = path.read_bytes()
        assert b"images/private" not in content and str(tmp_path).encode() not in content, path.name
    rows = (tmp_path / "run-release" / "labels.csv").read_text().splitlines()
    assert rows[1].split(",")[1].startswith("lot ")  # public files relative to public_dir


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
    "test classes unknown": (lambda r: (r / "test" / "classe 0 é").rename(r / "test" / "unknown"),
                             "the class folder 'classe 0 é' is not one of the 10 classes of the test_dir"),
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
                                                          "public_dir": str(root / "public"), "classes": ["c0", "c1"]}})
    with pytest.raises(data.DataError, match="too small for the networks"):
        data.load(cfg.data, tmp_path / "data-root")
    bigger = config_mod.from_dict({"name": "small", "data": {**data_table(cfg), "image_size": 8}})
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
    ten = config_mod.from_dict({"name": "arrays", "data": {**data_table(cfg),
                                                           "classes": [str(c) for c in range(10)]}})
    with pytest.raises(data.DataError, match=r"public_file: the labels must lie in 0..9 .*; found label 19"):
        data.load(ten.data)


# ----------------------------------------------------------------------------- nothing published from private images


def _pipeline(tmp_path, extra: str = "", test_dir: bool = True) -> "Path":
    text = FOLDERS_PIPELINE if test_dir else FOLDERS_PIPELINE.replace('test_dir = "images/test"\n', "")
    pipeline = tmp_path / "folders.toml"
    pipeline.write_text(text.replace('source = "folders"', f'source = "folders"\n{extra}'))
    return pipeline


def _refused(pipeline, tmp_path, match, command="run"):
    result = invoke(command, pipeline, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "data-root", "-q")
    assert result.exit_code == 2 and match in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    return result.output


def test_size_and_channels_come_from_the_public_images_only(tmp_path):
    """Colour 40x40 private images do not make the published input colour or 40 pixels: the public
    images (grey, 28x28) decide, and the private ones are converted to them."""
    write_folders(tmp_path / "images", private=60, public=30, test=20, classes=2)
    rng = np.random.default_rng(3)
    for i, folder in enumerate(sorted((tmp_path / "images" / "private").iterdir())):
        for k in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3)).astype(np.uint8)).save(folder / f"colour-{i}-{k}.png")
    ds = load(_pipeline(tmp_path), tmp_path)
    assert ds.private_x.shape[1:] == (1, 28, 28) and ds.public_x.shape[1:] == (1, 28, 28)
    assert ds.spec.channels == 1 and ds.spec.image_size == 28 and ds.files["converted"] > 0
    # and the other way round: colour public images make the input colour, whatever the private set is
    Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "images" / "public" / "lot 1" / "colour.png")
    assert load(_pipeline(tmp_path), tmp_path).private_x.shape[1] == 3


def test_classes_come_from_the_config_or_the_public_test_folders(tmp_path):
    write_folders(tmp_path / "images", private=60, public=30, test=40, classes=3)
    # without a test_dir and without [data] classes there is nothing public to take them from
    _refused(_pipeline(tmp_path, test_dir=False), tmp_path, "set [data] classes")
    # the configured order is the label order, whatever the folders' sorted order
    names = [f"classe {k} é" for k in reversed(range(3))]
    listed = "classes = [" + ", ".join(json.dumps(n) for n in names) + "]"
    ds = load(_pipeline(tmp_path, listed, test_dir=False), tmp_path)
    assert ds.classes == tuple(names) and ds.num_classes == 3
    name, _ = ds.files["private"][0]
    assert names[ds.private_y[0]] in name
    # a configured class without private images is fine; a private class folder outside them is not
    wider = "classes = [" + ", ".join(json.dumps(n) for n in [*names, "spare"]) + "]"
    assert load(_pipeline(tmp_path, wider), tmp_path).num_classes == 4
    _refused(_pipeline(tmp_path, 'classes = ["classe 0 é", "classe 1 é"]', test_dir=False), tmp_path,
             "[data] private_dir: the class folder 'classe 2 é' is not one of the 2 classes of [data] classes")


def test_class_names_match_whatever_the_unicode_normalisation(tmp_path):
    import unicodedata

    write_folders(tmp_path / "images", private=60, public=30, test=20, classes=2)
    for split in ("private", "test"):
        for folder in (tmp_path / "images" / split).iterdir():
            folder.rename(folder.with_name(unicodedata.normalize("NFD", folder.name)))  # as macOS writes them
    ds = load(_pipeline(tmp_path, 'classes = ["classe 0 é", "classe 1 é"]'), tmp_path)
    assert ds.classes == ("classe 0 é", "classe 1 é") and set(ds.private_y.tolist()) == {0, 1}


def _png_header(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (the few data bytes would not fill it)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("split", ["private", "public"])
@pytest.mark.parametrize("side", [100_000, 10_000], ids=["bomb-error", "bomb-warning"])
def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, split, side):
    """Over twice PIL's pixel limit PIL raises, between one and two times it only warns: both refused
    before any pixel is decoded, naming the file."""
    write_folders(tmp_path / "images", private=60, public=30, test=20, classes=2)
    folder = next(p for p in sorted((tmp_path / "images" / split).iterdir()) if p.is_dir())
    bomb = folder / "bomb.png"
    _png_header(bomb, side, side)
    output = _refused(_pipeline(tmp_path), tmp_path, "decompression bomb", command="partition")
    assert str(bomb) in output


def test_a_decompression_bomb_is_refused_by_the_decoder_too(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 10_000, 10_000)
    with pytest.raises(data.DataError, match="decompression bomb"):
        data.images.decode([bomb], 1, 28, workers=1)
    with pytest.raises(data.DataError, match="decompression bomb"):
        data.images.image_sizes([bomb])
