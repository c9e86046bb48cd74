import json
import os
import stat

import numpy as np
import pytest

from pate import config as config_mod
from pate import io as run_mod
from pate.run.directory import RunError, locked, run_directory_holding
from pate.stages import NAMES, open_run


def cfg(**aggregator):
    return config_mod.from_dict({"name": "t", "aggregator": aggregator})


def test_new_run_writes_frozen_config_and_manifest(tmp_path):
    run = open_run(tmp_path / "r", cfg())
    manifest = run.manifest()
    assert manifest["config_sha256"] == cfg().fingerprint()
    assert all(s["status"] == "pending" for s in manifest["stages"].values())
    assert set(manifest["stages"]) == set(NAMES)
    assert config_mod.load(run.file("config.toml")) == cfg()


def test_reopen_with_same_config_and_refuse_another(tmp_path):
    open_run(tmp_path / "r", cfg())
    open_run(tmp_path / "r", cfg())
    with pytest.raises(RunError, match=r"differ from it: \[aggregator\] sigma2: 40.0 -> 39.0. Only \[student\]"):
        open_run(tmp_path / "r", cfg(sigma2=39.0))


def test_refuse_non_run_directory(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "stuff").write_text("x")
    with pytest.raises(RunError, match="not a pate run directory"):
        open_run(tmp_path / "r", cfg())


def test_stage_lifecycle_and_hash_check(tmp_path):
    run = open_run(tmp_path / "r", cfg())
    with pytest.raises(RunError, match="run `pate partition"):
        run.require("partition")
    run.begin("partition")
    assert run.status("partition") == "partial"
    run_mod.atomic_save_npz(run.file("partition.npz"), a=np.arange(3))
    run.finish("partition", ["partition.npz"])
    assert run.load_npz("partition.npz")["a"].tolist() == [0, 1, 2]
    with open(run.file("partition.npz"), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RunError, match="does not match the hash"):
        run.load_npz("partition.npz")


def test_manifest_survives_crash_mid_write(tmp_path, monkeypatch):
    run = open_run(tmp_path / "r", cfg())
    before = run.file("manifest.json").read_text()

    def crash(fd):
        raise OSError("simulated power loss during fsync")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        run.begin("partition")
    monkeypatch.undo()
    assert run.file("manifest.json").read_text() == before  # old version intact
    assert json.loads(before)["stages"]["partition"]["status"] == "pending"
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no litter


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    run_mod.atomic_write_json(target, {"v": 1})
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run_mod.atomic_write_json(target, {"v": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(target.read_text()) == {"v": 1}


def test_creation_cut_short_by_a_crash_is_redone(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text("half")  # killed before manifest.json was written
    run = open_run(tmp_path / "r", cfg())
    assert config_mod.load(run.file("config.toml")) == cfg() and run.status("partition") == "pending"


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_a_new_run_directory_is_private_whatever_the_umask(umask, tmp_path):
    before = os.umask(umask)
    try:
        with locked(tmp_path / "runs" / "r"):
            run = open_run(tmp_path / "runs" / "r", cfg())
            run.update("partition", status="partial")  # a manifest rewrite keeps the mode
    finally:
        os.umask(before)
    assert stat.S_IMODE(run.path.stat().st_mode) == 0o700
    for name in ("config.toml", "manifest.json", ".lock"):
        assert stat.S_IMODE(run.file(name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o777 & ~umask  # its parent: as usual


def test_run_directory_holding_finds_the_run_above_a_path(tmp_path):
    run = open_run(tmp_path / "r", cfg())
    assert run_directory_holding(run.path) == run.path.resolve()
    assert run_directory_holding(run.path / "student" / "x.csv") == run.path.resolve()
    assert run_directory_holding(tmp_path / "elsewhere") is None
    os.symlink(run.path, tmp_path / "link")
    assert run_directory_holding(tmp_path / "link" / "labels.npz") == run.path.resolve()


def test_json_nested_too_deep_is_one_line_where_pate_reads_it(tmp_path):
    """Python's JSON parser recurses: a manifest (or a spend-log line) nested 100 000 deep is a
    damaged file, named in one line, never a RecursionError."""
    from click.testing import CliRunner

    from pate.cli import main
    from pate.privacy import chain

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "manifest.json").write_text(deep)
    (tmp_path / "config.toml").write_text("")
    result = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "manifest.json is unreadable (nested too deeply)" in result.output and "edited" not in result.output
    with pytest.raises(chain.ChainError, match="line 1 .*nested too deeply"):
        chain.verify([deep], b"k" * 32)


def test_a_manifest_that_is_a_fifo_or_too_large_is_refused_without_blocking(tmp_path, monkeypatch):
    from pate.run.directory import RunDir

    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(RunError, match="unreadable .a FIFO, not a regular file"):
        RunDir(tmp_path, None).manifest()
    os.unlink(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {}, "pad": "x" * 100}))
    monkeypatch.setattr("pate.run.directory.MAX_MANIFEST_BYTES", 64)
    with pytest.raises(RunError, match="larger than 64 bytes"):
        RunDir(tmp_path, None).manifest()
