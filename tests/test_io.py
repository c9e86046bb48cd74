"""Durable files: atomic writes leave old or new, appends are whole and synced, checkpoints refuse
damage and other runs with one clear error."""
import os
import stat

import numpy as np
import pytest
import torch

from pate import io


def test_append_is_durable_and_empty_appends_write_nothing(tmp_path, monkeypatch):
    path = tmp_path / "log"
    io.create_exclusive(path, b"head\n")
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    io.append_durable(path, b"")  # nothing to write: no syscall
    assert not calls
    io.append_durable(path, b"one\n")
    assert calls and path.read_bytes() == b"head\none\n"  # fsynced before returning


def test_failed_append_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    path = tmp_path / "log"
    io.create_exclusive(path, b"head\n")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:3]))
    with pytest.raises(io.ShortWrite):
        io.append_durable(path, b"record\n")
    monkeypatch.undo()
    assert path.read_bytes() == b"head\n"


def test_private_files_are_0600(tmp_path):
    io.atomic_write_text(tmp_path / "a", "x", private=True)
    io.create_exclusive(tmp_path / "b", b"x")
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


def test_checkpoint_round_trip_damage_and_mismatch(tmp_path):
    path = tmp_path / "c.pt"
    io.save_checkpoint(path, {"format": "pate.test/1", "fingerprint": "f", "settings": {"lr": 0.1},
                              "w": torch.arange(3)})
    ckpt = io.load_checkpoint(path, "pate.test/1")
    assert torch.equal(ckpt["w"], torch.arange(3))
    io.check_resumable(ckpt, path, fingerprint="f", settings={"lr": 0.1})
    with pytest.raises(io.CheckpointMismatch, match="different configuration"):
        io.check_resumable(ckpt, path, fingerprint="g", settings={"lr": 0.1})
    with pytest.raises(io.CheckpointMismatch, match="lr"):
        io.check_resumable(ckpt, path, fingerprint="f", settings={"lr": 0.2})
    with pytest.raises(io.CheckpointMismatch, match="not a pate.other/1"):
        io.load_checkpoint(path, "pate.other/1")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(io.CheckpointError, match="damaged"):
        io.load_checkpoint(path)


def test_checkpoint_on_a_full_disk_is_an_oserror(tmp_path, monkeypatch):
    real = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        io.save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(10)})
    monkeypatch.setattr(os, "fsync", real)
    assert not list(tmp_path.iterdir())  # the temporary file is gone, the target never appeared


def test_checkpoint_write_killed_before_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    io.save_checkpoint(path, {"step": 1})
    old = path.read_bytes()

    def no_rename(src, dst):
        raise OSError("killed before rename")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        io.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["ck.pt"]
    io.save_checkpoint(path, {"step": 4})
    assert io.load_checkpoint(path) == {"step": 4}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_io_writers_are_private_by_default(umask, tmp_path):
    before = os.umask(umask)
    try:
        io.atomic_write_json(tmp_path / "new" / "deeper" / "a.json", {"a": 1})
        io.atomic_write_text(tmp_path / "b.txt", "b")
        io.atomic_save_npz(tmp_path / "c.npz", x=np.zeros(2))
        io.save_checkpoint(tmp_path / "d.pt", {"x": torch.zeros(2)})
        io.create_exclusive(tmp_path / "e.log", b"header\n")
        io.append_durable(tmp_path / "e.log", b"line\n")
        io.atomic_write_text(tmp_path / "public.txt", "shared", private=False)
    finally:
        os.umask(before)
    for name in ("new/deeper/a.json", "b.txt", "c.npz", "d.pt", "e.log"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    for name in ("new", "new/deeper"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name
    assert stat.S_IMODE((tmp_path / "public.txt").stat().st_mode) == 0o666 & ~io._UMASK
