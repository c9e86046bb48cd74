"""Your own images as .npz arrays: classes and channels from the config or the public files only, and
every hostile file one line and exit 2, checked from its headers before anything is allocated."""
from __future__ import annotations

import io
import json
import textwrap
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate import data
from pate.cli import main

from ..conftest import TINY_PIPELINE, edit_pipeline
from .conftest import blob

ARRAYS_PIPELINE = edit_pipeline(
    textwrap.dedent(TINY_PIPELINE), ('name = "tiny"', 'name = "arrays"'),
    ('dataset = "mnist"\nprivate_size = 600\nstudent_pool = 300\ntest_size = 100',
     'source = "arrays"\nprivate_file = "private.npz"\npublic_file = "public.npz"\ntest_file = "test.npz"'))


def write(tmp_path, extra: str = "", **overrides) -> "Path":
    """private.npz (600 labelled), public.npz (300), test.npz (100 labelled) and a pipeline on them;
    ``overrides[name]`` replaces a file's arrays (bytes: the file's content)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    arrays = {"private": {"images": np.stack([blob(y, rng) for y in labels]), "labels": labels},
              "public": {"images": np.stack([blob(y, rng) for y in rng.integers(0, 10, 300)])},
              "test": {"images": np.stack([blob(y, rng) for y in np.arange(100) % 10]), "labels": np.arange(100) % 10}}
    for name, content in arrays.items():
        content = overrides.get(name, content)
        if isinstance(content, bytes):
            (tmp_path / f"{name}.npz").write_bytes(content)
        else:
            np.savez(tmp_path / f"{name}.npz", **content)
    pipeline = tmp_path / "arrays.toml"
    pipeline.write_text(ARRAYS_PIPELINE.replace('source = "arrays"', f'source = "arrays"\n{extra}'))
    return pipeline


def load(pipeline):
    return data.load(config_mod.load(pipeline).data)


def refused(pipeline, tmp_path, match: str, command: str = "partition") -> str:
    before = {p: p.read_bytes() for p in tmp_path.glob("*.npz")}
    result = CliRunner().invoke(main, [command, str(pipeline), "--run-dir", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and match in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    assert {p: p.read_bytes() for p in tmp_path.glob("*.npz")} == before  # nothing overwritten
    return result.output


def npz_with_header(images_header: dict, payload: bytes, labels: np.ndarray | None = None) -> bytes:
    """An .npz whose images.npy has the given header (shape, dtype) and only ``payload`` after it."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": images_header.get("descr", "|u1"),
                                                  "fortran_order": False, "shape": images_header["shape"]})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("images.npy", member.getvalue() + payload)
        if labels is not None:
            buffer = io.BytesIO()
            np.save(buffer, labels)
            zf.writestr("labels.npy", buffer.getvalue())
    return out.getvalue()


# ----------------------------------------------------------------------------- what is published


def test_classes_and_channels_come_from_the_public_files(tmp_path):
    ds = load(write(tmp_path))
    assert ds.classes == tuple(str(c) for c in range(10)) and ds.spec.channels == 1
    # configured classes name the labels
    names = [f"kind {c}" for c in range(12)]
    ds = load(write(tmp_path, "classes = " + json.dumps(names)))
    assert ds.classes == tuple(names) and ds.num_classes == 12


def test_private_labels_outside_the_public_classes_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    images = np.stack([blob(0, rng) for _ in range(600)])
    # the test labels name classes 0..4: a private label 7 is not among them (and is not named)
    five = {"images": np.stack([blob(y, rng) for y in np.arange(100) % 5]), "labels": np.arange(100) % 5}
    out = refused(write(tmp_path, test=five), tmp_path, "private_file: the labels must lie in 0..4")
    assert "found a label outside them" in out
    # with [data] classes, the configured count is the bound
    refused(write(tmp_path, 'classes = ["a", "b", "c", "d", "e"]', test=five), tmp_path,
            "private_file: the labels must lie in 0..4 (the 5 classes of [data] classes)")
    # without [data] classes and without any public labels there is nothing to take them from
    pipeline = write(tmp_path, private={"images": images, "labels": np.arange(600) % 2})
    pipeline.write_text(pipeline.read_text().replace('test_file = "test.npz"\n', ""))
    refused(pipeline, tmp_path, "set [data] classes")


def test_private_colour_with_greyscale_public_images_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    colour = {"images": rng.integers(0, 255, (600, 28, 28, 3)).astype(np.uint8), "labels": np.arange(600) % 10}
    refused(write(tmp_path, private=colour), tmp_path, "private_file: colour images, but the public images are grey")
    # channels = 3 keeps colour: the public images join as three equal channels
    ds = load(write(tmp_path, "channels = 3", private=colour))
    assert ds.private_x.shape[1:] == (3, 28, 28) and ds.public_x.shape[1] == 3
    assert (ds.public_x[:, 0] == ds.public_x[:, 2]).all()
    # colour public images make the input colour, the greyscale private ones joining them
    public = {"images": rng.integers(0, 255, (300, 28, 28, 3)).astype(np.uint8)}
    assert load(write(tmp_path, public=public)).private_x.shape[1] == 3
    refused(write(tmp_path, "channels = 1", public=public), tmp_path, "public_file: colour images, but [data] channels = 1")


def test_a_configured_image_size_must_be_the_files(tmp_path):
    refused(write(tmp_path, "image_size = 32"), tmp_path, "[data] image_size = 32, but the public images have 28")


# ----------------------------------------------------------------------------- hostile files


def test_a_npy_file_is_refused(tmp_path):
    pipeline = write(tmp_path)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((600, 28, 28), np.uint8))
    (tmp_path / "private.npz").write_bytes(buffer.getvalue())
    refused(pipeline, tmp_path, "is not an .npz file (it is a .npy file")
    refused(write(tmp_path, private=b"images,labels\n1,2\n"), tmp_path, "private_file")


@pytest.mark.parametrize("case", ["text", "truncated zip", "truncated member", "bad crc", "pickled labels"])
def test_a_damaged_npz_is_refused(tmp_path, case):
    good = io.BytesIO()
    np.savez(good, images=np.zeros((300, 28, 28), np.uint8))
    content = {"text": b"not an archive at all",
               "truncated zip": good.getvalue()[:-200],
               "truncated member": npz_with_header({"shape": (300, 28, 28)}, b"\0" * 1000),
               "bad crc": good.getvalue().replace(b"\0" * 4096, b"\1" * 4096, 1),
               "pickled labels": None}[case]
    if case == "pickled labels":
        pipeline = write(tmp_path)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, array in (("images", np.zeros((600, 28, 28), np.uint8)),
                                ("labels", np.array(["a"] * 600, dtype=object))):
                member = io.BytesIO()
                np.save(member, array, allow_pickle=True)
                zf.writestr(f"{name}.npy", member.getvalue())
        (tmp_path / "private.npz").write_bytes(buffer.getvalue())
        refused(pipeline, tmp_path, "private_file: 'labels' must be integers")
        return
    refused(write(tmp_path, public=content), tmp_path, "[data] public_file")


def test_a_header_claiming_too_many_pixels_is_refused_before_allocating(tmp_path):
    huge = npz_with_header({"shape": (10**6, 1000, 1000)}, b"\0" * 64, labels=np.zeros(10**6 // 1000, np.int64))
    refused(write(tmp_path, public=huge), tmp_path, "'images' claims 1000000000000 values")
    # one below the bound, but the archive holds far fewer bytes than the header claims
    lying = npz_with_header({"shape": (2000, 1000, 1000)}, b"\0" * 64)
    refused(write(tmp_path, public=lying), tmp_path, "'images' is damaged: its header claims 2000000000 bytes")


def private_with_ids(ids_header: dict, payload: bytes) -> bytes:
    """The usual private arrays (600 labelled images) and an ``ids.npy`` with the given header and
    only ``payload`` after it."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, array in (("images", np.stack([blob(y, rng) for y in labels])), ("labels", labels)):
            member = io.BytesIO()
            np.save(member, array)
            zf.writestr(f"{name}.npy", member.getvalue())
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": ids_header.get("descr", "<i8"), "fortran_order": False,
                                                      "shape": ids_header["shape"]})
        zf.writestr("ids.npy", member.getvalue() + payload)
    return out.getvalue()


@pytest.mark.parametrize("header, payload, match", [
    ({"shape": (10**12,)}, b"\0" * 64, "'ids' must be integers or strings of shape (600,), one per image; found "
                                        "int64 (1000000000000,)"),
    ({"shape": (600,), "descr": "<U100000000"}, b"\0" * 64, "'ids' claims 240000000000 bytes"),
    ({"shape": (600,)}, b"\0" * 64, "'ids' is damaged: its header claims 4800 bytes of int64 but the file holds 64"),
    ({"shape": (600,), "descr": "<f8"}, b"\0" * 4800, "'ids' must be integers or strings"),
], ids=["10**12 values", "huge strings", "truncated", "floats"])
def test_the_private_ids_header_is_checked_before_any_run_directory(tmp_path, header, payload, match):
    # the partition reads the ids after the run directory exists: their header is checked with the images'
    refused(write(tmp_path, private=private_with_ids(header, payload)), tmp_path, f"[data] private_file: {match}")


def test_good_private_ids_pass_the_header_checks(tmp_path):
    ids = np.array([f"patient-{i:04d}" for i in range(600)])
    member = io.BytesIO()
    np.save(member, ids)
    header_end = len(member.getvalue()) - ids.nbytes
    content = private_with_ids({"shape": (600,), "descr": ids.dtype.str}, member.getvalue()[header_end:])
    assert len(load(write(tmp_path, private=content)).private_y) == 600


@pytest.mark.parametrize("labels, match", [
    (np.full(600, 2**64 - 5, dtype=np.uint64), "private_file: the labels must lie in 0..9"),
    (np.r_[np.zeros(599, np.int64), -1], "private_file: 'labels' must be non-negative"),
    (np.zeros(600, np.float64), "private_file: 'labels' must be integers"),
    (np.zeros(600, bool), "private_file: 'labels' must be integers"),
    (np.zeros((600, 1), np.int64), "private_file: 'labels' must be integers of shape (600,)"),
])
def test_bad_private_labels_are_refused(tmp_path, labels, match):
    rng = np.random.default_rng(0)
    private = {"images": np.stack([blob(0, rng) for _ in range(600)]), "labels": labels}
    out = refused(write(tmp_path, private=private), tmp_path, match)
    assert "18446744073709551611" not in out  # a private label's value is not printed


def test_huge_public_labels_are_refused(tmp_path):
    test = {"images": np.zeros((100, 28, 28), np.uint8) + 7, "labels": np.full(100, 2**64 - 5, np.uint64)}
    refused(write(tmp_path, test=test), tmp_path, "[data] the public labels must lie in 0..9999")
