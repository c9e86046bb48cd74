"""The run directory: the frozen config, a manifest of each stage's status and outputs, a lock.

The manifest records each output's sha256 when its stage finishes, so a later stage can tell a
damaged artifact from a good one before trusting it, and the resolved config the run was started
with, so any difference can be named. One process at a time works in a run directory: an OS file
lock (released by the kernel when the process dies, so kill -9 leaves no stale lock). RunDir
knows nothing about what the stages do: the stage registry (``pate.stages``) gives it the stage
names, in order, and decides which config changes a run may accept.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .. import config as config_mod
from ..errors import PateError
from ..io import InputError, atomic_write_json, atomic_write_text, private_mkdir, read_json_limited, sha256_file

MANIFEST, CONFIG, LOCK = "manifest.json", "config.toml", ".lock"
STATUSES = ("pending", "partial", "done")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few KiB; its run's attempts and outputs keep it far below
MAX_JSON_BYTES = 1 << 30  # the JSON artifacts (data listing of a million files) stay well below


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
    def open(cls, path: str | Path, config: config_mod.PipelineConfig, stages: Sequence[str],
             accept_change: Optional[Callable[["RunDir", list[str], list[str]], None]] = None) -> "RunDir":
        """Create the run directory, or reopen it if it was started with this same config.

        A different config is refused, naming every setting that differs, unless
        ``accept_change(run, changed sections, differences)`` accepts it (it raises otherwise);
        the run then continues with the new config.
        """
        run = cls(path, config)
        manifest_path = run.path / MANIFEST
        if manifest_path.exists():
            manifest = run.manifest()
            if manifest.get("config_sha256") != config.fingerprint():
                run._change_config(manifest, accept_change)
            return run
        check_can_hold_a_run(run.path)
        make_run_directory(run.path)  # the run directory is private as a whole
        atomic_write_text(run.path / CONFIG, config_mod.to_toml(config))
        atomic_write_json(manifest_path, {
            "config_sha256": config.fingerprint(),
            "upstream_sha256": config.upstream_fingerprint(),
            "config": config.canonical_dict(),
            "run_id": secrets.token_hex(16),
            "pipeline": config.name,
            "created": now(),
            "stages": {s: {"status": "pending"} for s in stages},
        })
        return run

    def _change_config(self, manifest: dict, accept_change) -> None:
        started = manifest.get("config")
        if not isinstance(started, dict):
            raise RunError(f"{self.path} was started with a different config (see {self.path / CONFIG}); use another "
                           "--run-dir, or the config the run was started with")
        new = json.loads(json.dumps(self.config.canonical_dict()))  # as the manifest holds it (tuples are lists)
        diffs = config_mod.differences(started, new)
        changed = sorted({k for k in set(started) | set(new) if started.get(k) != new.get(k)})
        if accept_change is None:
            raise RunError(f"{self.path} was started with another config; these settings differ from it: "
                           f"{'; '.join(diffs) or 'none visible (config.toml edited?)'}")
        accept_change(self, changed, diffs)
        atomic_write_text(self.path / CONFIG, config_mod.to_toml(self.config))
        manifest = self.manifest()
        manifest.update(config_sha256=self.config.fingerprint(), upstream_sha256=self.config.upstream_fingerprint(),
                        config=new)
        atomic_write_json(self.path / MANIFEST, manifest)

    @classmethod
    def existing(cls, path: str | Path, stages: Sequence[str]) -> "RunDir":
        """Reopen a run directory from its own frozen config (for status, audit, report); a
        config.toml edited since is refused, naming what differs from the config the run started with."""
        path = Path(path)
        if not (path / MANIFEST).exists() or not (path / CONFIG).exists():
            raise RunError(f"{path} is not a pate run directory (no {MANIFEST} / {CONFIG})")
        cls(path, None).manifest()  # a damaged manifest says so itself, not "config.toml was edited"
        try:
            return cls.open(path, config_mod.load(path / CONFIG), stages)
        except RunError as exc:
            raise RunError(f"{path / CONFIG} was edited: {exc}") from None

    # ---- manifest ------------------------------------------------------------------------
    def manifest(self) -> dict:
        path = self.path / MANIFEST
        try:
            manifest = read_json_limited(path, MAX_MANIFEST_BYTES, "run manifest")
        except InputError as exc:
            raise RunError(f"{path} is unreadable ({exc.why}); it cannot be trusted") from None
        except OSError as exc:
            raise RunError(f"{path} is unreadable: {exc.strerror or exc}") from None
        if not _valid_manifest(manifest):
            raise RunError(f"{path} is not a valid pate manifest (damaged or edited); it cannot be trusted")
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

    def outputs(self, stage: str) -> list[str]:
        return sorted(self.record(stage).get("outputs") or {})

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
            raise RunError(f"{path} is missing (an output of the finished stage '{stage}'): restore it from a backup. "
                           "The student's outputs are remade at no privacy cost by `pate run` (or `pate "
                           "train-student`); anything earlier needs a new run directory, whose aggregation spends "
                           "privacy again (the spend log counts it)")
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
            obj = read_json_limited(path, MAX_JSON_BYTES, f"run's {name}")
        except InputError as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"{path} is unreadable: {exc.strerror or exc}") from None
        if not isinstance(obj, dict):
            raise RunError(f"{path} does not hold a JSON object")
        return obj


def _valid_manifest(manifest) -> bool:
    """The manifest's shape: a dict of stages, each with a known status and outputs mapping names to hashes."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
        return False
    if not isinstance(manifest.get("config_sha256", ""), str):
        return False
    for record in manifest["stages"].values():
        if not isinstance(record, dict) or record.get("status", "pending") not in STATUSES:
            return False
        outputs = record.get("outputs", {})
        if not isinstance(outputs, dict) or not all(isinstance(k, str) and isinstance(v, (str, type(None)))
                                                     for k, v in outputs.items()):
            return False
    return True


def check_can_hold_a_run(path: Path) -> None:
    """Refuse a directory that holds something else than a pate run (nothing is written into it).

    config.toml is written before manifest.json: a directory holding only it (and hidden files) is
    a creation a crash cut short, and may be created again.
    """
    if path.exists() and not (path / MANIFEST).exists():
        if not path.is_dir():
            raise RunError(f"{path} exists and is not a directory")
        leftovers = [p.name for p in path.iterdir() if not p.name.startswith(".")]
        if leftovers and leftovers != [CONFIG]:
            raise RunError(f"{path} exists and is not a pate run directory (no {MANIFEST})")


def run_directory_holding(path: str | Path) -> Path | None:
    """The pate run directory that ``path`` is, or is inside (symbolic links resolved), or None."""
    real = Path(path).resolve()
    for folder in (real, *real.parents):
        if (folder / MANIFEST).is_file() and (folder / CONFIG).is_file():
            return folder
    return None


def make_run_directory(path: Path) -> None:
    """Create the run directory 0700 whatever the umask (its parents, e.g. ``runs/``, as usual).
    Every file pate writes in it is 0600 (``pate.io`` writes private files by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private_mkdir(path)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the run directory's lock (creating the directory, private, if needed); a second process
    is refused with who holds it. The kernel releases the lock when the holder dies."""
    path = Path(path)
    check_can_hold_a_run(path)
    make_run_directory(path)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(50):  # the holder writes who it is just after taking the lock: give it 0.5 s
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            holder = holder or "another process"
            raise RunError(f"{path} is in use by {holder}; wait for it to finish (or stop it), then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} (`{' '.join(['pate', *sys.argv[1:]])[:200]}`, "
                       f"since {now()})").encode(), 0)
        yield
    finally:
        os.close(fd)
