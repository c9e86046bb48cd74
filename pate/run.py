"""The run directory: the frozen config, and a manifest of each stage's status and outputs.

The manifest records each output's sha256 when its stage finishes, so a later stage can tell a
damaged artifact from a good one before trusting it. RunDir knows nothing about what the stages
do: the stage registry (``pate.stages``) gives it the stage names, in order.
"""
from __future__ import annotations

import datetime as _dt
import json
import secrets
from pathlib import Path
from typing import Sequence

import numpy as np

from . import config as config_mod
from .errors import PateError
from .io import atomic_write_json, atomic_write_text, sha256_file

MANIFEST, CONFIG = "manifest.json", "config.toml"


class RunError(PateError):
    """A problem with the run directory a user can fix (wrong directory, stage order, damage)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """One run's directory and its manifest; every stage goes through it."""

    def __init__(self, path: str | Path, config: config_mod.PipelineConfig):
        self.path = Path(path)
        self.config = config

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, config: config_mod.PipelineConfig, stages: Sequence[str]) -> "RunDir":
        """Create the run directory, or reopen it if it was started with this same config."""
        run = cls(path, config)
        manifest_path = run.path / MANIFEST
        if manifest_path.exists():
            manifest = run.manifest()
            if manifest.get("config_sha256") != config.fingerprint():
                raise RunError(
                    f"{run.path} was started with a different config (see {run.path / CONFIG}); "
                    "use another --run-dir, or the config the run was started with")
            return run
        # config.toml is written before manifest.json: a directory holding only it (and temporary
        # files) is a creation a crash cut short, and is created again.
        leftovers = [p.name for p in run.path.iterdir() if not p.name.startswith(".")] if run.path.exists() else []
        if leftovers and leftovers != [CONFIG]:
            raise RunError(f"{run.path} exists and is not a pate run directory (no {MANIFEST})")
        run.path.mkdir(parents=True, exist_ok=True, mode=0o700)  # the run directory is private as a whole
        atomic_write_text(run.path / CONFIG, config_mod.to_toml(config))
        atomic_write_json(manifest_path, {
            "config_sha256": config.fingerprint(),
            "run_id": secrets.token_hex(16),
            "pipeline": config.name,
            "created": now(),
            "stages": {s: {"status": "pending"} for s in stages},
        })
        return run

    @classmethod
    def existing(cls, path: str | Path, stages: Sequence[str]) -> "RunDir":
        """Reopen a run directory from its own frozen config (for status, audit, report)."""
        path = Path(path)
        if not (path / MANIFEST).exists() or not (path / CONFIG).exists():
            raise RunError(f"{path} is not a pate run directory (no {MANIFEST} / {CONFIG})")
        return cls.open(path, config_mod.load(path / CONFIG), stages)

    # ---- manifest ------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.path / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise RunError(f"{path} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
            raise RunError(f"{path} is not a pate manifest")
        return manifest

    @property
    def run_id(self) -> str:
        """A random id naming this run in the spend log (given to older runs on first use)."""
        manifest = self.manifest()
        if not manifest.get("run_id"):
            manifest["run_id"] = secrets.token_hex(16)
            atomic_write_json(self.path / MANIFEST, manifest)
        return manifest["run_id"]

    def record(self, stage: str) -> dict:
        return self.manifest()["stages"].get(stage, {})

    def update(self, stage: str, **fields: object) -> None:
        manifest = self.manifest()
        manifest["stages"].setdefault(stage, {}).update(fields)
        atomic_write_json(self.path / MANIFEST, manifest)

    def status(self, stage: str) -> str:
        return self.record(stage).get("status", "pending")

    def is_done(self, stage: str) -> bool:
        return self.status(stage) == "done"

    def require(self, *stages: str) -> None:
        """Refuse to go on when an earlier stage has not finished."""
        for stage in stages:
            if not self.is_done(stage):
                raise RunError(f"stage '{stage}' has not finished in {self.path}; "
                               f"run `pate {stage} PIPELINE.toml --run-dir {self.path}` first")

    def begin(self, stage: str) -> None:
        if self.record(stage).get("status") != "partial":
            self.update(stage, status="partial", started=now(), progress="started")

    def progress(self, stage: str, text: str) -> None:
        self.update(stage, progress=text)

    def finish(self, stage: str, outputs: Sequence[str], **extra: object) -> None:
        hashes = {name: sha256_file(self.path / name) for name in outputs}
        self.update(stage, status="done", finished=now(), outputs=hashes, progress="done", **extra)

    def reset(self, stage: str) -> None:
        """Mark ``stage`` pending again (its outputs are no longer recorded)."""
        self.update(stage, status="pending", progress=None, outputs={})

    # ---- artifacts -----------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def producer(self, name: str) -> str | None:
        """The finished stage that recorded ``name`` among its outputs, or None."""
        for stage, record in self.manifest()["stages"].items():
            if record.get("status") == "done" and name in (record.get("outputs") or {}):
                return stage
        return None

    def has(self, name: str) -> bool:
        """Whether a finished stage recorded ``name`` (the file itself is checked by ``verified``)."""
        return self.producer(name) is not None

    def recorded(self) -> list[str]:
        """Every output recorded by a finished stage."""
        return sorted(name for record in self.manifest()["stages"].values() if record.get("status") == "done"
                      for name in (record.get("outputs") or {}))

    def verified(self, name: str) -> Path:
        """Path of a finished stage's output, after checking it still has its recorded hash."""
        stage = self.producer(name)
        path = self.path / name
        if stage is None:
            raise RunError(f"{path} is not an output of any finished stage in {self.path}; run `pate status "
                           f"{self.path}` to see which stage is missing")
        expected = self.record(stage)["outputs"][name]
        if not path.exists():
            raise RunError(f"{path} is missing; rerun `pate {stage}` after removing the run directory's "
                           f"'{stage}' outputs")
        if expected is not None and sha256_file(path) != expected:
            raise RunError(f"{path} does not match the hash recorded when '{stage}' finished "
                           "(damaged or edited); it cannot be trusted")
        return path

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        path = self.verified(name)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} is unreadable: {exc}") from None

    def read_json(self, name: str) -> dict:
        path = self.verified(name)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{path} is unreadable: {exc}") from None
        if not isinstance(obj, dict):
            raise RunError(f"{path} does not hold a JSON object")
        return obj
