"""``[student] members`` trained side by side on a CPU, one process each (``pate.student.members``):
the same weights as training them one after the other on one thread, every step reported to the
parent, a member's error raised in the parent, a killed worker or a Ctrl-C leaving no process
behind and checkpoints from which a rerun finishes with the uninterrupted weights."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pate.io import CheckpointMismatch, load_checkpoint
from pate.run.directory import RunError
from pate.student.members import SCRATCH, side_by_side, train_side_by_side
from pate.student.training import train_student

from .conftest import TINY_PIPELINE, edit_pipeline

STEPS = 12


def blobs(n: int = 48, classes: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    x[:, 0, 0, :] += y[:, None].float()
    return x, y


def member_settings(tmp_path, members: int = 2, fingerprint: str = "side-by-side") -> list[dict]:
    return [dict(arch="cnn-small", num_classes=4, method="fixmatch", steps=STEPS, batch_size=8, unlabeled_ratio=2,
                 lr=0.05, seed=10 + m, checkpoint_path=tmp_path / f"member-{m}.pt", checkpoint_every=4,
                 fingerprint=fingerprint) for m in range(members)]


def data():
    x, y = blobs()
    return x[:24], y[:24], x[24:]


def weights(path) -> dict:
    return load_checkpoint(path)["ema"]


@pytest.fixture(scope="module")
def one_after_the_other(tmp_path_factory):
    """The members trained in this process, one thread, one after the other: the reference."""
    folder = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for settings in member_settings(folder):
            train_student(*data(), **settings)
    finally:
        torch.set_num_threads(threads)
    return [weights(folder / f"member-{m}.pt") for m in range(2)]


def assert_same(mine: dict, theirs: dict) -> None:
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def nothing_left(folder) -> None:
    """No worker process and no data file of theirs (``members.SCRATCH``) outlives the call."""
    assert not list(folder.glob(f"{SCRATCH}*"))
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("members, device, threads, plan", [
    (2, "cpu", 2, (2, 1)), (3, "cpu", 2, (2, 1)), (2, "cpu", 16, (2, 8)), (4, "cpu", 6, (4, 1)),
    (1, "cpu", 16, None), (2, "cpu", 1, None), (2, "cuda", 16, None), (2, "meta", 16, None)])
def test_the_plan_shares_the_threads_between_the_members_on_a_cpu_only(members, device, threads, plan):
    assert side_by_side(members, torch.device(device), threads) == plan


def test_side_by_side_gives_the_weights_of_one_after_the_other_on_one_thread(tmp_path, one_after_the_other):
    reports = []
    train_side_by_side(data(), member_settings(tmp_path), 2, 1, progress=lambda *r: reports.append(r))
    for member in range(2):
        assert_same(weights(tmp_path / f"member-{member}.pt"), one_after_the_other[member])
        steps = [step for m, step, loss in reports if m == member]
        assert steps == list(range(1, STEPS + 1))  # every step, in order, relayed to the parent
    assert all(isinstance(loss, float) for *_, loss in reports)
    nothing_left(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the parent reloads them on its own thread count, as train-student does
    try:
        for settings in member_settings(tmp_path):
            train_student(*data(), **settings, progress=lambda *a: pytest.fail("a finished member trained again"))
    finally:
        torch.set_num_threads(threads)


def test_more_members_than_processes_take_turns(tmp_path):
    (tmp_path / f"{SCRATCH}killed").mkdir()  # a killed run's data files: removed, the run directory being locked
    (tmp_path / f"{SCRATCH}killed" / "data-0.npy").write_bytes(b"x")
    train_side_by_side(data(), member_settings(tmp_path, members=3), 2, 1)
    assert [load_checkpoint(tmp_path / f"member-{m}.pt")["step"] for m in range(3)] == [STEPS] * 3
    nothing_left(tmp_path)


def test_a_members_error_is_raised_here_and_stops_the_others(tmp_path):
    settings = member_settings(tmp_path)
    train_student(*data(), **{**member_settings(tmp_path, fingerprint="another run")[1], "steps": STEPS})
    with pytest.raises(CheckpointMismatch):  # member 1 finds another run's checkpoint
        train_side_by_side(data(), settings, 2, 1)
    nothing_left(tmp_path)


def test_every_member_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_path"):
        train_side_by_side(data(), [{**member_settings(tmp_path)[0], "checkpoint_path": None}], 1, 1)


def test_a_killed_worker_is_one_line_and_a_rerun_finishes_the_same(tmp_path, one_after_the_other):
    killed = []

    def kill_one(member, step, loss):
        if step == 6 and not killed:
            victim = multiprocessing.active_children()[0]
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    with pytest.raises(RunError, match="stopped unexpectedly.*rerun the same command") as err:
        train_side_by_side(data(), member_settings(tmp_path), 2, 1, progress=kill_one)
    assert "\n" not in str(err.value)
    nothing_left(tmp_path)
    train_side_by_side(data(), member_settings(tmp_path), 2, 1)  # from the checkpoints
    for member in range(2):
        assert_same(weights(tmp_path / f"member-{member}.pt"), one_after_the_other[member])


def test_an_interrupt_stops_every_worker_and_a_rerun_resumes_to_the_same_weights(tmp_path, one_after_the_other):
    def interrupt(member, step, loss):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_side_by_side(data(), member_settings(tmp_path), 2, 1, progress=interrupt)
    nothing_left(tmp_path)
    saved = {m: load_checkpoint(tmp_path / f"member-{m}.pt")["step"] for m in range(2)
             if (tmp_path / f"member-{m}.pt").exists()}
    assert saved and all(step < STEPS for step in saved.values())  # stopped mid-way, checkpoints kept
    resumed = {0: [], 1: []}
    train_side_by_side(data(), member_settings(tmp_path), 2, 1,
                       progress=lambda m, step, loss: resumed[m].append(step))
    for member in range(2):  # each went on from its checkpoint (a member that saved none, from step 1)
        assert resumed[member] == list(range(saved.get(member, 0) + 1, STEPS + 1))
    for member in range(2):
        assert_same(weights(tmp_path / f"member-{member}.pt"), one_after_the_other[member])


MEMBERS = edit_pipeline(TINY_PIPELINE, ("steps = 20\n", "steps = 200\nmembers = 2\n"))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def group_ends(group: int, seconds: float = 10) -> bool:
    """Whether every process of ``group`` is gone within ``seconds`` (multiprocessing's resource
    tracker ends just after the parent that started it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT as a terminal sends it")
def test_ctrl_c_in_a_real_run_is_one_line_and_leaves_no_process(tmp_path, fake_data_root):
    """`pate run` training two students side by side, Ctrl-C from the terminal (the whole process
    group): exit 2, one line, no worker's traceback, no process left; the rerun finishes."""
    (tmp_path / "tiny.toml").write_text(textwrap.dedent(MEMBERS))
    args = [sys.executable, "-m", "pate", "run", str(tmp_path / "tiny.toml"), "--run-dir", str(tmp_path / "run"),
            "--data-root", str(fake_data_root), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # two threads: side by side, one each
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not any((tmp_path / "run" / "student").glob("checkpoint*.pt")):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 2, (out, err)
    assert err.strip() == "Error: interrupted; rerun the same command to resume", err
    assert group_ends(process.pid), "a worker outlived the interrupted run"
    assert not list((tmp_path / "run" / "student").glob(f"{SCRATCH}*"))
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert [load_checkpoint(tmp_path / "run" / "student" / name)["step"]
            for name in ("checkpoint.pt", "checkpoint-1.pt")] == [200, 200]
