"""`pate partition` on a dataset and on its neighbour (one record removed or added): every other
record keeps its teacher and its spend-log fingerprint, so exactly one teacher's shard differs, and
the spend log composes the two runs over the records they share."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pate.cli import main

from ..data.test_arrays import write


@pytest.fixture(autouse=True)
def own_spend_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))


def partition(tmp_path, name, keep, ids=False):
    """Partition the arrays dataset restricted to ``keep`` (indices of its 600 private records)."""
    folder = tmp_path / name
    folder.mkdir()
    pipeline = write(folder)
    with np.load(folder / "private.npz") as full:
        arrays = {"images": full["images"][keep], "labels": full["labels"][keep]}
    if ids:
        arrays["ids"] = np.array([f"rec-{i}" for i in keep])
    np.savez(folder / "private.npz", **arrays)
    result = CliRunner().invoke(main, ["partition", str(pipeline), "--run-dir", str(folder / "run"), "-q"])
    assert result.exit_code == 0, result.output
    with np.load(folder / "run" / "partition.npz") as parts:
        return parts["teacher_of"].copy(), parts["record_fingerprint"].copy()


@pytest.mark.parametrize("removed", [599, 0])
@pytest.mark.parametrize("ids", [False, True])
def test_removing_one_record_moves_no_other_record(tmp_path, removed, ids):
    every = np.arange(600)
    teacher, prints = partition(tmp_path, "full", every, ids)
    keep = every[every != removed]
    teacher_less, prints_less = partition(tmp_path, "less", keep, ids)
    assert np.array_equal(teacher_less, teacher[keep]) and np.array_equal(prints_less, prints[keep])
    shards = [set(prints[teacher == t]) for t in range(6)]
    shards_less = [set(prints_less[teacher_less == t]) for t in range(6)]
    assert sum(a != b for a, b in zip(shards, shards_less)) == 1


def test_adding_a_record_in_the_middle_moves_no_other_record(tmp_path):
    every = np.arange(600)
    teacher, prints = partition(tmp_path, "less", every[every != 311])
    teacher_more, prints_more = partition(tmp_path, "more", every)
    assert np.array_equal(np.delete(teacher_more, 311), teacher)
    assert np.array_equal(np.delete(prints_more, 311), prints)
