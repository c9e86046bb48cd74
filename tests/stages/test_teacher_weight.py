"""``[student] teacher_weight``: the student evaluated and exported adds that weight times the DP-SGD
teacher's logits to the students' averaged logits. The teacher is the one the aggregation released
(its linear layer on the public grid 2^-16, after the spend log was charged), checked here against
the private model it was rounded from, against the teacher's own probabilities on scattering
features, and in every exported format on raw images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pate
from pate.aggregation.reverse_votes import WEIGHT_GRID
from pate.data import load as load_data
from pate.errors import PateError
from pate.export import student as exported
from pate.export.formats import FORMAT
from pate.nets.models import MAX_TEACHER_WEIGHT, averaged, build_model, build_student, dpsgd_teacher
from pate.run.directory import RunError
from pate.stages.train_student import released_teacher
from pate.teachers import dpsgd

from ..conftest import benchmark_script, edit_pipeline
from .test_reverse_knn import DPSGD_PIPELINE, _arrays, invoke

ATOL = 1e-4
WEIGHTED = edit_pipeline(DPSGD_PIPELINE, ("knn_k = 5", "knn_k = 0"), ("soft_labels = true", ""),
                         ("steps = 20\n", "steps = 20\nteacher_weight = 0.5\n"))


def test_the_teachers_logits_are_added_at_their_weight():
    torch.manual_seed(0)
    networks = [build_model("cnn-small", 1, 4, 28).eval() for _ in range(2)]
    teacher = dpsgd_teacher(1, 4, 28, [0.3], [0.2]).eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        students = [n(v) for n in networks for v in (x, x.flip(-1))]
        on_unit_images = teacher.network(x * 0.2 + 0.3)  # the teacher sees the [0, 1] image under the normalisation
        torch.testing.assert_close(averaged(networks, True, teacher, 0.25)(x), sum(students) / 4 + 0.25 * on_unit_images)
        torch.testing.assert_close(averaged(networks[:1], False, teacher, 2.0)(x), networks[0](x) + 2 * on_unit_images)
    assert averaged(networks[:1], False, teacher, 0.0) is networks[0]  # weight 0: the teacher is left out
    names = set(build_student("cnn-small", 1, 4, 28, teacher_weight=1.0).state_dict())
    assert {"teachers.0.mean", "teachers.0.std", "teachers.0.network.3.weight"} <= names


def test_the_teacher_module_is_the_dpsgd_model_on_raw_images():
    """The DP-SGD model as pate.teachers.dpsgd trains it (GroupNorm + linear on scattering features of
    [0, 1] images) and the module the student carries (scattering inside, on normalised images) give
    the same probabilities."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=generator).numpy()
    model = dpsgd.linear_model(81, 7, 10, generator=generator).eval()
    mean, std = [0.2860], [0.3530]
    module = dpsgd_teacher(1, 10, 28, mean, std, model[2].weight.detach().numpy(), model[2].bias.detach().numpy())
    x = (torch.from_numpy(images).float() / 255 - mean[0]) / std[0]
    with torch.no_grad():
        mine = module(x).double().softmax(1).numpy()
    np.testing.assert_allclose(mine, dpsgd.predict_proba(model, dpsgd.scattering_features(images)), atol=1e-5)


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher-weight")
    _arrays(root)
    (root / "rknn.toml").write_text(WEIGHTED)
    result = invoke("run", root / "rknn.toml", "--run-dir", root / "run", "-q")
    assert result.exit_code == 0, result.output
    return root


def test_the_released_teacher_is_the_private_one_on_a_public_grid(weighted_run):
    private = np.load(weighted_run / "run" / "teachers" / "dpsgd-pool.npz")
    released = np.load(weighted_run / "run" / "labels.npz")
    for key in ("weight", "bias"):
        mine, raw = released[f"dpsgd_{key}"].astype(np.float64), private[key].astype(np.float64)
        assert np.array_equal(mine / WEIGHT_GRID, np.round(mine / WEIGHT_GRID))  # on the grid, exactly
        assert np.abs(mine - raw).max() <= WEIGHT_GRID / 2 and not np.array_equal(mine, raw)
    state = torch.load(weighted_run / "run" / "student" / "model.pt", weights_only=True)
    assert np.array_equal(state["teachers.0.network.3.weight"].numpy(), released["dpsgd_weight"])


def test_the_runs_student_adds_the_released_teacher(weighted_run):
    run = pate.load_run(weighted_run / "run")
    dataset = load_data(run.config.data, quiet=True)
    images = dataset.public_x[:17]
    released = np.load(weighted_run / "run" / "labels.npz")
    teacher = dpsgd.linear_model(81, 7, 10).eval()
    with torch.no_grad():
        teacher[2].weight.copy_(torch.from_numpy(released["dpsgd_weight"]))
        teacher[2].bias.copy_(torch.from_numpy(released["dpsgd_bias"]))
        teacher_logits = teacher(dpsgd.scattering_features(images)).numpy()
    network = build_model(run.config.student.arch, 1, 10, 28).eval()
    network.load_state_dict(torch.load(weighted_run / "run" / "student" / "checkpoint.pt", weights_only=False)["ema"])
    x = torch.from_numpy(((images / 255.0 - np.float32(dataset.mean[0])) / np.float32(dataset.std[0])).astype(np.float32))
    with torch.no_grad():
        by_hand = network(x).numpy() + 0.5 * teacher_logits
    np.testing.assert_allclose(pate.load_student(weighted_run / "run").logits(images), by_hand, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["student.onnx", "student.pt2", "student.safetensors"])
def test_every_exported_format_carries_the_teacher(weighted_run, name):
    run = pate.load_run(weighted_run / "run")
    images = load_data(run.config.data, quiet=True).public_x[:9]
    expected = pate.load_student(weighted_run / "run").logits(images)
    release = weighted_run / "run-release"
    meta = json.loads((release / "student.json").read_text())
    assert meta["teacher_weight"] == 0.5 and "teacher_weight" in meta["rebuild"]
    np.testing.assert_allclose(pate.load_student(release / name).logits(images), expected, atol=ATOL, rtol=0)


def test_the_release_says_the_teacher_is_inside(weighted_run):
    release = weighted_run / "run-release"
    assert json.loads((release / "statement.json").read_text())["student"]["teacher_weight"] == 0.5
    card = (release / "model-card.md").read_text()
    assert "plus 0.5 times the logits of the DP-SGD teacher" in card


def test_a_release_without_the_teacher_is_refused_in_one_line():
    with pytest.raises(RunError, match="teacher_weight needs the DP-SGD teacher itself") as refused:
        released_teacher({"label": np.zeros(3)}, None)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("old, new", [
    ("teacher_weight = 0.5", "teacher_weight = -1"),
    ("teacher_weight = 0.5", f"teacher_weight = {MAX_TEACHER_WEIGHT + 1}"),
    ("teacher_weight = 0.5", 'teacher_weight = "x"'),
    ("dpsgd_noise = 1.5", "dpsgd_noise = 0"),  # no DP-SGD teacher to weigh in
])
def test_bad_settings_are_one_line_exit_2(tmp_path, old, new):
    _arrays(tmp_path)
    pipeline = tmp_path / "rknn.toml"
    pipeline.write_text(edit_pipeline(WEIGHTED, (old, new)))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "-q")
    assert result.exit_code == 2 and "teacher_weight" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [-0.5, MAX_TEACHER_WEIGHT * 2, "1", True, None])
def test_a_file_claiming_a_bad_teacher_weight_is_refused(tmp_path, value):
    meta = {"format": FORMAT, "arch": "cnn-small", "classes": ["a", "b"], "channels": 1, "image_size": 28,
            "teacher_weight": value}
    with pytest.raises(PateError, match="teacher_weight"):
        exported.checked_meta(json.dumps(meta), tmp_path / "student.safetensors", "a safetensors file")


def test_student_split_scores_each_teacher_weight(weighted_run, capsys, monkeypatch):
    """`benchmarks/student_split.py RUN --teacher-weight 0,1`: each student scored with the released
    teacher's logits left out and weighted in, on the held-out pool images."""
    import sys

    module = benchmark_script("student_split")
    monkeypatch.setattr(sys, "argv", ["student_split.py", str(weighted_run / "run"), "--keep-widest", "1",
                                      "--validate", "50", "--steps", "3", "--teacher-weight", "0,1"])
    module.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if "held-out pool images right" in line]
    assert [line.split("mixup 0, ")[1].split(":")[0] for line in lines] == ["teacher weight 0", "teacher weight 1"]


def test_torchscript_is_refused_in_one_line_before_anything_is_written(weighted_run):
    out = weighted_run / "with-ts"
    result = invoke("export", weighted_run / "run", "--out", out, "--torchscript")
    assert result.exit_code != 0 and "carries the DP-SGD teacher" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output and not out.exists()


def test_evaluate_reports_the_students_alone_beside(weighted_run):
    """metrics.json: the student's accuracy with the teacher, and beside it the member network's alone."""
    run = pate.load_run(weighted_run / "run")
    dataset = load_data(run.config.data, quiet=True)
    test = np.load(weighted_run / "run" / "partition.npz")["test_index"]
    network = build_model(run.config.student.arch, 1, 10, 28).eval()
    network.load_state_dict(torch.load(weighted_run / "run" / "student" / "checkpoint.pt", weights_only=False)["ema"])
    x = torch.from_numpy(((dataset.public_x[test] / 255.0 - np.float32(dataset.mean[0]))
                          / np.float32(dataset.std[0])).astype(np.float32))
    with torch.no_grad():
        alone = float((network(x).argmax(1).numpy() == dataset.public_y[test]).mean())
        together = float((pate.load_student(weighted_run / "run").logits(dataset.public_x[test]).argmax(1)
                          == dataset.public_y[test]).mean())
    metrics = json.loads((weighted_run / "run" / "metrics.json").read_text())
    assert metrics["students_alone_accuracy"] == pytest.approx(alone)
    assert metrics["student_accuracy"] == pytest.approx(together)
