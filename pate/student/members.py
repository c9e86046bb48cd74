"""Several students (``[student] members``) trained side by side on a CPU, one process each.

A student's step on a batch of small images cannot keep several cores busy: on 2 cores one
cnn-deep step (batch 32) took 50.5 ms on both threads and 76.7 ms on one, and two one-thread
processes side by side 82-84 ms a step each. In the whole training loop the gain is smaller:
``benchmarks/members.py`` measured 1.05 times the throughput in bfloat16 over 1 000 steps. So on
a CPU with more threads than one, the members train in a pool of processes, the threads shared out
between them. Each member writes its own checkpoint exactly as
when trained in the parent (``train_student``'s ``checkpoint_path``), so an interrupted run resumes
member by member, and the parent afterwards loads each finished member from its checkpoint.

Processes are spawned, not forked: a fork of a process whose OpenMP threads have run can hang. The
training data reach them as files beside the checkpoints that each maps copy-on-write: one copy on
disk and its pages shared, where pickled tensors would need a copy per process or room in
``/dev/shm`` (64 MB in a default Docker container).
"""
from __future__ import annotations

import multiprocessing
import queue as queues
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor, wait, FIRST_EXCEPTION
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..run.directory import RunError
from ..workers import ignore_sigint, sigint_blocked, stop
from .training import train_student

_REPORTS = None  # a worker's queue of progress reports to the parent
SCRATCH = ".side-by-side-"  # the folder of the data files the workers map, beside the checkpoints


def side_by_side(members: int, device: torch.device, threads: int | None = None) -> tuple[int, int] | None:
    """``(processes, threads each)`` for training ``members`` students side by side, or None where
    they train one after the other in this process: on a GPU, for one member, or with one thread
    (``torch.get_num_threads()``, which honours ``OMP_NUM_THREADS``)."""
    threads = torch.get_num_threads() if threads is None else threads
    if torch.device(device).type != "cpu" or members < 2 or threads < 2:
        return None
    processes = min(members, threads)
    return processes, threads // processes


def train_side_by_side(data: tuple, settings: list[dict], processes: int, threads: int,
                       progress: Callable[[int, int, float], None] | None = None) -> None:
    """Train ``train_student(*data, **settings[m])`` for every member m in ``processes`` worker
    processes of ``threads`` threads each, every member to its ``checkpoint_path`` (required).
    ``progress(member, step, loss)`` runs here, in the parent, as the workers report steps.
    A member whose training fails raises its error here, after the other workers are stopped."""
    if any(s.get("checkpoint_path") is None for s in settings):
        raise ValueError("every member needs a checkpoint_path: the parent loads the members from them")
    folder = Path(settings[0]["checkpoint_path"]).parent
    for stale in folder.glob(f"{SCRATCH}*"):  # a killed run's (the run directory is locked: none is in use)
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH, dir=folder))
    try:
        _train_all(_files(data, scratch), settings, processes, threads, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_all(files: tuple, settings: list[dict], processes: int, threads: int, progress) -> None:
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_worker_init, initargs=(reports, threads))
    try:
        with sigint_blocked():  # workers start without Ctrl-C, then ignore it
            futures = [pool.submit(_train_member, member, files, member_settings)
                       for member, member_settings in enumerate(settings)]
        pending = set(futures)
        while pending:
            _relay(reports, progress, timeout=0.2)
            done, pending = wait(pending, timeout=0, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # the member's own error, raised here
        _relay(reports, progress, timeout=0)
    except BrokenProcessPool:
        stop(pool)
        raise RunError("a student's training process stopped unexpectedly (killed, perhaps out of memory); rerun "
                       "the same command to resume each student from its checkpoint") from None
    except BaseException:  # Ctrl-C, or a member's error: the others are not waited for
        stop(pool)
        raise
    pool.shutdown(wait=True)
    reports.close()


def _relay(reports, progress, timeout: float) -> None:
    """Pass the workers' waiting reports to ``progress``: wait ``timeout`` for the first, then take
    whatever else is there."""
    try:
        report = reports.get(timeout=timeout) if timeout else reports.get_nowait()
        while True:
            if progress is not None:
                progress(*report)
            report = reports.get_nowait()
    except queues.Empty:
        return


def _worker_init(reports, threads: int) -> None:
    global _REPORTS
    ignore_sigint()
    torch.set_num_threads(threads)
    _REPORTS = reports


def _files(data: tuple, folder: Path) -> tuple:
    """Each tensor of ``data`` (None stays None) saved in ``folder`` as a ``.npy`` file; their paths."""
    paths = []
    for i, tensor in enumerate(data):
        if tensor is not None:
            np.save(folder / f"data-{i}.npy", tensor.detach().cpu().numpy())
        paths.append(None if tensor is None else str(folder / f"data-{i}.npy"))
    return tuple(paths)


def _mapped(files: tuple) -> tuple:
    """The tensors of ``_files``, mapped copy-on-write (writable, nothing read until used)."""
    return tuple(None if path is None else torch.from_numpy(np.load(path, mmap_mode="c")) for path in files)


def _train_member(member: int, files: tuple, settings: dict) -> None:
    train_student(*_mapped(files), **settings,
                  progress=lambda step, steps, loss, info: _REPORTS.put((member, step, loss)))
