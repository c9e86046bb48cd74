"""A run is bound to the record key of the spend directory it was partitioned under (issue 30 row 4):
every later stage under another spend directory is refused, since its records' fingerprints would
never meet that directory's and its spend would compose with nothing. A seeded run keys its shards
from the seed, so it gives the same shards, votes and labels under any spend directory."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pate.run import spend_log
from pate.cli import main
from pate.errors import PateError
from pate.stages import aggregate as stage
from pate.run.artifacts import load_partition

from .test_aggregate import make_run


def use(monkeypatch, folder):
    monkeypatch.setenv("PATE_SPEND_DIR", str(folder))
    return folder


def test_a_run_is_refused_under_another_spend_directory_and_accepted_under_its_own(tmp_path, monkeypatch):
    x = use(monkeypatch, tmp_path / "x")
    ctx, _ = make_run(tmp_path, seed=None)  # partitioned (and voted) under x
    y = use(monkeypatch, tmp_path / "y")
    with pytest.raises(PateError, match=f"another spend directory.*this one, {y}, has no key yet") as refused:
        stage.run(ctx)
    assert "\n" not in str(refused.value) and not y.exists()  # the check made no spend directory
    spend_log.record_key()  # y now has a key of its own
    with pytest.raises(PateError, match=f"this one is {y} \\(key id {spend_log.key_id()}\\)"):
        stage.run(ctx)
    assert not ctx.run.file("ledger.jsonl").exists() and spend_log.entries() == []
    use(monkeypatch, x)
    stage.run(ctx)  # under its own spend directory: accepted
    assert ctx.run.file("labels.npz").exists() and len(spend_log.entries()) == 1


def test_a_run_partitioned_without_a_key_id_needs_a_new_run_directory(tmp_path, monkeypatch):
    use(monkeypatch, tmp_path / "spend")
    ctx, _ = make_run(tmp_path, seed=None)
    parts = dict(ctx.run.load_npz("partition.npz"))
    del parts["key_id"]  # as an earlier pate wrote it
    np.savez(ctx.run.file("partition.npz"), **parts)
    ctx.run.finish("partition", ["partition.npz"])
    with pytest.raises(PateError, match="earlier version of pate.*start a new run directory"):
        load_partition(ctx)
    with pytest.raises(PateError, match="start a new run directory"):
        stage.run(ctx)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused_in_one_line(result, *words):
    assert result.exit_code == 2 and all(w in result.output for w in words), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_seeded_run_is_the_same_under_any_spend_directory(tmp_path, monkeypatch, tiny_pipeline, fake_data_root):
    """Under spend directory x, stage by stage (vote and aggregate tried under y first, refused);
    under y in one go: the same shards, votes and labels, from fingerprints that differ."""
    common = ["--data-root", fake_data_root, "-q"]
    x, y = tmp_path / "x", tmp_path / "y"
    run_x, run_y = tmp_path / "run-x", tmp_path / "run-y"
    use(monkeypatch, x)
    assert cli("run", tiny_pipeline, "--run-dir", run_x, "--until", "train-teachers", *common).exit_code == 0
    use(monkeypatch, y)
    refused_in_one_line(cli("vote", tiny_pipeline, "--run-dir", run_x, *common), "another spend directory", str(y))
    assert not y.exists()
    use(monkeypatch, x)
    assert cli("vote", tiny_pipeline, "--run-dir", run_x, *common).exit_code == 0
    use(monkeypatch, y)
    refused_in_one_line(cli("aggregate", tiny_pipeline, "--run-dir", run_x, *common), "PATE_SPEND_DIR", str(y))
    use(monkeypatch, x)
    assert cli("aggregate", tiny_pipeline, "--run-dir", run_x, *common).exit_code == 0
    use(monkeypatch, y)
    result = cli("run", tiny_pipeline, "--run-dir", run_y, "--until", "aggregate", *common)
    assert result.exit_code == 0, result.output

    def read(run, name, *keys):
        with np.load(run / name) as data:
            return [data[k].copy() for k in keys]

    (tx, dx, fx, kx), (ty, dy, fy, ky) = (read(r, "partition.npz", "teacher_of", "shard_digest",
                                                "record_fingerprint", "key_id") for r in (run_x, run_y))
    assert np.array_equal(tx, ty) and np.array_equal(dx, dy)  # the shards: from the seed alone
    assert not np.array_equal(fx, fy) and str(kx) != str(ky)  # the fingerprints: each directory's own key
    assert np.array_equal(*(read(r, "votes.npz", "votes")[0] for r in (run_x, run_y)))
    for key in ("query_index", "label"):
        assert np.array_equal(*(read(r, "labels.npz", key)[0] for r in (run_x, run_y)))
