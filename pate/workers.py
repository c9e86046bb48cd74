"""Worker processes that a Ctrl-C does not litter with tracebacks.

Image decoding and the students trained side by side run in pools of processes. A Ctrl-C reaches
every process of the terminal's group, so each worker ignores it and the parent alone handles it:
it stops the workers (``stop``) and raises one ``KeyboardInterrupt``, which the command line turns
into one line.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from concurrent.futures import ProcessPoolExecutor


@contextlib.contextmanager
def sigint_blocked():
    """SIGINT held back in this thread while worker processes are started (they inherit the mask
    and would otherwise die of a Ctrl-C, with a traceback, before they ignore it); a Ctrl-C
    meanwhile is delivered here after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_sigint() -> None:
    """In a worker, first thing: Ctrl-C is the parent's to handle (no traceback from here)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while it started us


def stop(pool: ProcessPoolExecutor) -> None:
    """The pool's waiting tasks cancelled and its workers ended now (a worker mid-task would
    otherwise be waited for)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)
