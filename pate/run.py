"""The run directory: frozen config, manifest of stage status and output hashes, atomic writes.

A crash at any instant must leave either the old or the new version of every artifact, so all
writes go to a temporary file in the same directory, are fsynced, then renamed over the target.
The manifest records each output's sha256 so a later stage can tell a damaged artifact from a
good one before trusting it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from . import config as config_mod

_UMASK = os.umask(0o022)
os.umask(_UMASK)
STAGES = ("partition", "train-teachers", "vote", "aggregate", "train-student", "evaluate")


class RunError(Exception):
    """A problem with the run directory a user can fix (wrong directory, stage order, damage)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; artifacts follow the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunDir:
    """One run's directory and its manifest; every stage goes through it."""

    def __init__(self, path: str | Path, config: config_mod.PipelineConfig):
        self.path = Path(path)
        self.config = config

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, config: config_mod.PipelineConfig) -> "RunDir":
        """Create the run directory, or reopen it if it was started with this same config."""
        run = cls(path, config)
        manifest_path = run.path / "manifest.json"
        if manifest_path.exists():
            manifest = run.manifest()
            if manifest.get("config_sha256") != config.fingerprint():
                raise RunError(
                    f"{run.path} was started with a different config (see {run.path / 'config.toml'}); "
                    "use another --run-dir, or the config the run was started with")
            return run
        # config.toml is written before manifest.json: a directory holding only it (and temporary
        # files) is a creation a crash cut short, and is created again.
        leftovers = [p.name for p in run.path.iterdir() if not p.name.startswith(".")] if run.path.exists() else []
        if leftovers and leftovers != ["config.toml"]:
            raise RunError(f"{run.path} exists and is not a pate run directory (no manifest.json)")
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.path / "config.toml", config_mod.to_toml(config))
        atomic_write_json(manifest_path, {
            "config_sha256": config.fingerprint(),
            "pipeline": config.name,
            "created": _now(),
            "stages": {s: {"status": "pending"} for s in STAGES},
        })
        return run

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        """Reopen a run directory from its own frozen config (for status, audit, report)."""
        path = Path(path)
        if not (path / "manifest.json").exists() or not (path / "config.toml").exists():
            raise RunError(f"{path} is not a pate run directory (no manifest.json / config.toml)")
        config = config_mod.load(path / "config.toml")
        return cls.open(path, config)

    # ---- manifest ------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.path / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise RunError(f"{path} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise RunError(f"{path} is not a pate manifest")
        return manifest

    def update(self, stage: str, **fields: object) -> None:
        manifest = self.manifest()
        manifest["stages"].setdefault(stage, {}).update(fields)
        atomic_write_json(self.path / "manifest.json", manifest)

    def status(self, stage: str) -> str:
        return self.manifest()["stages"].get(stage, {}).get("status", "pending")

    def is_done(self, stage: str) -> bool:
        return self.status(stage) == "done"

    def require(self, *stages: str) -> None:
        """Refuse to go on when an earlier stage has not finished."""
        for stage in stages:
            if not self.is_done(stage):
                raise RunError(f"stage '{stage}' has not finished in {self.path}; "
                               f"run `pate {stage} PIPELINE.toml --run-dir {self.path}` first")

    def begin(self, stage: str) -> None:
        record = self.manifest()["stages"].get(stage, {})
        if record.get("status") != "partial":
            self.update(stage, status="partial", started=_now(), progress="started")

    def progress(self, stage: str, text: str) -> None:
        self.update(stage, progress=text)

    def finish(self, stage: str, outputs: list[str], **extra: object) -> None:
        hashes = {name: sha256_file(self.path / name) for name in outputs}
        self.update(stage, status="done", finished=_now(), outputs=hashes, progress="done", **extra)

    def reset(self, stage: str) -> None:
        self.update(stage, status="pending", progress=None, outputs={})

    # ---- artifacts -----------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def verified(self, stage: str, name: str) -> Path:
        """Path of a finished stage's output, after checking it still has its recorded hash."""
        self.require(stage)
        path = self.path / name
        expected = self.manifest()["stages"][stage].get("outputs", {}).get(name)
        if not path.exists():
            raise RunError(f"{path} is missing; rerun `pate {stage}` after removing the run directory's "
                           f"'{stage}' outputs")
        if expected is not None and sha256_file(path) != expected:
            raise RunError(f"{path} does not match the hash recorded when '{stage}' finished "
                           "(damaged or edited); it cannot be trusted")
        return path

    def load_npz(self, stage: str, name: str) -> dict[str, np.ndarray]:
        path = self.verified(stage, name)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} is unreadable: {exc}") from None

    def stage_rows(self) -> Iterator[tuple[str, str, str]]:
        stages = self.manifest()["stages"]
        for stage in STAGES:
            record = stages.get(stage, {})
            yield stage, record.get("status", "pending"), record.get("progress") or ""
