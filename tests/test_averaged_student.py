"""``[student] members`` and ``flip_average``: the student evaluated and exported is the mean of the
logits of several students trained on the same targets (and of each image's mirror), checked against
that mean recomputed by hand from each member's own training checkpoint, in every exported format, on
raw images."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pate
from pate.cli import main
from pate.data import load as load_data
from pate.export import student as exported
from pate.export.formats import FORMAT
from pate.errors import PateError
from pate.io import load_checkpoint
from pate.nets.models import MAX_MEMBERS, averaged, build_model, build_student

from .conftest import TINY_PIPELINE, benchmark_script, edit_pipeline

ATOL = 1e-4


def test_averaged_logits_are_the_mean_over_members_and_mirrors():
    torch.manual_seed(0)
    networks = [build_model("cnn-small", 1, 4, 28).eval() for _ in range(3)]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        by_hand = [n(x) for n in networks]
        mirrored = [n(torch.from_numpy(x.numpy()[..., ::-1].copy())) for n in networks]
        torch.testing.assert_close(averaged(networks)(x), sum(by_hand) / 3)
        torch.testing.assert_close(averaged(networks, flip_average=True)(x), (sum(by_hand) + sum(mirrored)) / 6)
        torch.testing.assert_close(averaged(networks[:1], flip_average=True)(x), (by_hand[0] + mirrored[0]) / 2)
    assert averaged(networks[:1]) is networks[0]  # one network, no mirror: the bare network itself
    lone = build_student("cnn-small", 1, 4, 28)
    assert list(lone.state_dict()) == list(build_model("cnn-small", 1, 4, 28).state_dict())  # earlier names
    pair = build_student("cnn-small", 1, 4, 28, members=2)
    assert {k.split(".")[1] for k in pair.state_dict()} == {"0", "1"}
    for bad in (0, MAX_MEMBERS + 1, 1.5, "2"):
        with pytest.raises(ValueError, match="members"):
            build_student("cnn-small", 1, 4, 28, members=bad)


AVERAGED = edit_pipeline(TINY_PIPELINE, ("steps = 20\n", "steps = 20\nmembers = 2\nflip_average = true\nhflip = true\n"))


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("averaged")
    (root / "tiny.toml").write_text(textwrap.dedent(AVERAGED))
    result = CliRunner().invoke(main, ["run", str(root / "tiny.toml"), "--run-dir", str(root / "run"), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    run = pate.load_run(root / "run")
    images = load_data(run.config.data, fake_data_root, quiet=True).public_x[:23]
    return root, run, images


def test_the_runs_student_averages_its_members_checkpoints(averaged_run):
    root, run, images = averaged_run
    spec = json.loads((root / "run" / "data.json").read_text())["spec"]
    mean, std = (np.asarray(spec[k], np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    x = torch.from_numpy((images.astype(np.float32) / 255.0 - mean) / std)
    logits = []
    for name in ("checkpoint.pt", "checkpoint-1.pt"):  # each member's EMA weights, as its training left them
        state = load_checkpoint(root / "run" / "student" / name)
        assert state["settings"]["seed"] == {"checkpoint.pt": 0, "checkpoint-1.pt": 1}[name]
        network = build_model("cnn-small", 1, 10, 28).eval()
        network.load_state_dict(state["ema"])
        with torch.no_grad():
            logits += [network(x), network(torch.flip(x, dims=[3]))]
    by_hand = (sum(logits) / 4).numpy()
    np.testing.assert_allclose(pate.load_student(root / "run").logits(images), by_hand, atol=ATOL, rtol=0)
    history = json.loads((root / "run" / "student" / "history.json").read_text())
    assert len(history["later_members"]) == 1 and history["step"][-1] == 20


@pytest.mark.parametrize("name", ["student.onnx", "student.pt2", "student.safetensors"])
def test_every_exported_format_is_the_averaged_student_on_raw_images(averaged_run, name):
    root, _, images = averaged_run
    expected = pate.load_student(root / "run").logits(images)
    release = root / "run-release"
    meta = json.loads((release / "student.json").read_text())
    assert (meta["members"], meta["flip_average"]) == (2, True) and "build_student" in meta["rebuild"]
    student = pate.load_student(release / name)
    np.testing.assert_allclose(student.logits(images), expected, atol=ATOL, rtol=0)  # uint8 pixels in


@pytest.mark.parametrize("key, value", [("members", 0), ("members", MAX_MEMBERS + 1), ("members", "2"),
                                        ("members", True), ("flip_average", "yes"), ("flip_average", 1)])
def test_a_file_claiming_a_bad_average_is_refused(tmp_path, key, value):
    meta = {"format": FORMAT, "arch": "cnn-small", "classes": ["a", "b"], "channels": 1, "image_size": 28, key: value}
    with pytest.raises(PateError, match=key):
        exported.checked_meta(json.dumps(meta), tmp_path / "student.safetensors", "a safetensors file")


@pytest.mark.parametrize("line, message", [("members = 0", "members"), ("members = 17", "members"),
                                           ("members = 1.5", "members"), ('flip_average = "yes"', "flip_average")])
def test_bad_settings_are_one_line_exit_2(tmp_path, fake_data_root, line, message):
    pipeline = tmp_path / "bad.toml"
    pipeline.write_text(textwrap.dedent(edit_pipeline(TINY_PIPELINE, ("steps = 20\n", f"steps = 20\n{line}\n"))))
    result = CliRunner().invoke(main, ["plan", str(pipeline)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_the_release_says_what_the_student_averages(averaged_run):
    root, _, _ = averaged_run
    release = root / "run-release"
    statement = json.loads((release / "statement.json").read_text())
    assert (statement["student"]["members"], statement["student"]["flip_average"]) == (2, True)
    card = (release / "model-card.md").read_text()
    assert "mean of the logits of 2 cnn-small networks" in card and "left-right mirror" in card


class _Stop(Exception):
    """A crash in the middle of the second student's training."""


def test_a_crash_in_the_second_student_resumes_to_the_same_weights(averaged_run, tmp_path, fake_data_root,
                                                                   monkeypatch):
    """Killed at step 7 of member 1 (its checkpoint from step 4 on disk), `pate run` again finishes
    from the checkpoints: member 0 is not trained again, and the student is bit for bit the
    uninterrupted run's. Here on one thread, so the members train one after the other in this
    process; the uninterrupted run trained them side by side, one thread each (on a machine with
    more than one thread, ``pate.student.members``): the same weights either way."""
    import pate.stages.train_student as stage

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _crash_then_resume(stage, averaged_run, tmp_path, fake_data_root, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _crash_then_resume(stage, averaged_run, tmp_path, fake_data_root, monkeypatch):

    root, _, _ = averaged_run
    (tmp_path / "tiny.toml").write_text(textwrap.dedent(AVERAGED))
    args = ["run", str(tmp_path / "tiny.toml"), "--run-dir", str(tmp_path / "run"), "--data-root", str(fake_data_root),
            "-q"]
    real, calls = stage.train_student, []

    def crashing(*a, **kw):
        calls.append(kw["seed"])
        report = kw["progress"]

        def progress(step, steps, loss, info):
            report(step, steps, loss, info)
            if kw["seed"] == 1 and step == 7:
                raise _Stop
        return real(*a, **{**kw, "progress": progress})

    monkeypatch.setattr(stage, "train_student", crashing)
    crashed = CliRunner().invoke(main, args)
    assert isinstance(crashed.exception, _Stop) and calls == [0, 1]
    assert (tmp_path / "run" / "student" / "checkpoint-1.pt").exists()
    assert load_checkpoint(tmp_path / "run" / "student" / "checkpoint-1.pt")["step"] == 4
    steps = {0: [], 1: []}

    def counting(*a, **kw):
        report = kw["progress"]
        return real(*a, **{**kw, "progress": lambda step, *rest: (steps[kw["seed"]].append(step), report(step, *rest))})

    monkeypatch.setattr(stage, "train_student", counting)
    resumed = CliRunner().invoke(main, args)
    assert resumed.exit_code == 0, resumed.output
    assert steps == {0: [], 1: list(range(5, 21))}  # member 0 reloads its finished checkpoint; member 1 goes on
    mine = load_checkpoint(tmp_path / "run" / "student" / "model.pt")
    theirs = load_checkpoint(root / "run" / "student" / "model.pt")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_torchscript_takes_the_averaged_student_too(averaged_run):
    root, _, images = averaged_run
    result = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(root / "with-ts"), "--torchscript"])
    assert result.exit_code == 0, result.output
    expected = pate.load_student(root / "run").logits(images)
    np.testing.assert_allclose(pate.load_student(root / "with-ts" / "student.ts").logits(images), expected,
                               atol=ATOL, rtol=0)


def test_student_split_scores_each_student_and_their_averages(averaged_run, fake_data_root, capsys, monkeypatch):
    """`benchmarks/student_split.py RUN --members 2`: each student alone and with mirrors, then the
    average of the two without and with mirrors, all on the held-out pool images."""
    import sys

    root, _, _ = averaged_run
    module = benchmark_script("student_split")
    monkeypatch.setattr(sys, "argv", ["student_split.py", str(root / "run"), "--keep-widest", "1", "--validate", "50",
                                      "--steps", "3", "--members", "2", "--data-root", str(fake_data_root)])
    module.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if "held-out pool images right" in line]
    whats = [line.split("mixup 0, ")[1].split(":")[0] for line in lines]
    assert whats == ["student 0", "mirrors averaged, student 0", "student 1", "mirrors averaged, student 1",
                     "average of students 0-1", "average of students 0-1, mirrors averaged"]
    assert all(" 3 steps fp32," in line for line in lines)  # the run's precision unless asked


def test_student_split_saves_each_student_in_the_precision_asked(averaged_run, fake_data_root, capsys, monkeypatch,
                                                                 tmp_path):
    """`--save DIR --precision bf16`: each student's weights in a new DIR, loadable into its architecture and
    giving the logits of the student scored; an existing DIR is refused before any training."""
    import sys

    root, _, _ = averaged_run
    module = benchmark_script("student_split")
    argv = ["student_split.py", str(root / "run"), "--keep-widest", "1", "--validate", "50", "--steps", "3",
            "--members", "2", "--precision", "bf16", "--data-root", str(fake_data_root), "--save", str(tmp_path / "w")]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if "held-out pool images right" in line]
    assert lines and all(" 3 steps bf16," in line for line in lines)
    saved = sorted((tmp_path / "w").glob("*.pt"))
    assert [p.name.rsplit("-", 1)[1] for p in saved] == ["member0.pt", "member1.pt"]
    nets = []
    for p in saved:
        net = build_model("cnn-small", 1, 10, 28)  # the averaged run's [student] arch
        net.load_state_dict(torch.load(p))
        nets.append(net.eval())
    x = torch.randn(4, 1, 28, 28)
    assert not torch.equal(nets[0](x), nets[1](x))  # two seeds, two students
    before = sorted((tmp_path / "w").iterdir())
    with pytest.raises(SystemExit) as refused:
        module.main()
    assert refused.value.code == 2 and sorted((tmp_path / "w").iterdir()) == before
    for folder, says in ((tmp_path / "nothing", "not a finished run"), (tmp_path / "partial", "aggregate stage first")):
        if says == "aggregate stage first":
            folder.mkdir()
            (folder / "config.toml").write_text((root / "run" / "config.toml").read_text())
        monkeypatch.setattr(sys, "argv", ["student_split.py", str(folder), "--save", str(tmp_path / "unused")])
        with pytest.raises(SystemExit, match=says):  # one line, no traceback, and no folder left behind
            module.main()
        assert not (tmp_path / "unused").exists()
