"""`pate export` (and its earlier name `pate release`): the public folder holds exactly what may
be shared, and nothing else; the exported student runs with onnxruntime, plain torch (torch.export),
`pate predict` and the Python API; TorchScript only when asked for."""
from __future__ import annotations

import csv
import json
import textwrap

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from pate.cli import main
from pate.nets.models import build_model

from ..conftest import TINY_PIPELINE, run_tiny_pipeline

PRIVATE_KEYS = ("epsilon_expected", "epsilon_classic", "smooth_sensitivity", "noise_std", "sha256", "teacher_accuracy",
                "private_data", "ledger", "votes", "config_sha256", "run_id", "warnings")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("release")
    result = run_tiny_pipeline(root, fake_data_root)
    assert f"public release (labels, student, privacy statement): {root / 'run-release'}" in result.output
    return root


def test_the_release_holds_the_statement_labels_and_student(finished):
    out = finished / "run-release"
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "labels.npz", "model-card.md", "statement.json",
                                                     "statement.txt", "student.json", "student.onnx", "student.pt2",
                                                     "student.safetensors"]
    doc = json.loads((out / "statement.json").read_text())
    privacy = json.loads((finished / "run" / "privacy.json").read_text())
    assert doc["privacy"] == privacy["public"]  # the public section, and only it
    # what earlier releases spent on these records depends on which records are in the data: PRIVATE
    assert "spent_on_this_private_data" not in doc and doc["spend_log"]["total_budget"] is None
    assert "release(s)" not in (out / "statement.txt").read_text() + (out / "model-card.md").read_text()
    text = (out / "statement.json").read_text()
    for key in PRIVATE_KEYS:
        assert f'"{key}"' not in text, key
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == privacy["public"]["queries_answered"]
    assert list(rows[0]) == ["public_index", "public_file", "label", "class"]
    assert all(r["class"] == r["label"] and r["public_file"] == "" for r in rows)  # MNIST classes are the digits
    model = build_model("cnn-small", 1, 10, 28)
    model.load_state_dict(load_file(out / "student.safetensors"))
    human = (out / "statement.txt").read_text()
    assert f"({privacy['public']['guarantee']['epsilon']:.3f}, 0.0001)-differential privacy" in human
    assert "SEEDED" in human


def test_release_command_and_its_refusals(finished, tmp_path, fake_data_root):
    result = CliRunner().invoke(main, ["export", str(finished / "run"), "--out", str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output
    assert "Guarantee:" in result.output
    assert (tmp_path / "pub" / "statement.json").exists()
    assert "student.onnx" in result.output and "student.ts" not in result.output
    old_name = CliRunner().invoke(main, ["release", str(finished / "run"), "--out", str(tmp_path / "pub2")])
    assert old_name.exit_code == 0 and (tmp_path / "pub2" / "student.onnx").exists()
    assert not (tmp_path / "pub2" / "student.ts").exists()  # TorchScript only when asked for
    inside = CliRunner().invoke(main, ["release", str(finished / "run"), "--out", str(finished / "run" / "pub")])
    assert inside.exit_code == 2 and "inside the private run directory" in inside.output
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    partial = tmp_path / "partial"
    assert CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(partial), "--data-root",
                                     str(fake_data_root), "--until", "vote", "-q"]).exit_code == 0
    unfinished = CliRunner().invoke(main, ["release", str(partial)])
    assert unfinished.exit_code == 2 and "stage 'aggregate' has not finished" in unfinished.output


def test_exported_program_runs_with_plain_torch(finished):
    out = finished / "run-release"
    extra = {"pate.json": ""}
    module = torch.export.load(str(out / "student.pt2"), extra_files=extra).module()
    meta = json.loads(extra["pate.json"])
    assert meta["classes"] == [str(d) for d in range(10)] and meta["image_size"] == 28 and meta["channels"] == 1
    assert json.loads((out / "student.json").read_text()) == meta
    # Equal to the plain weights behind the normalisation the student was trained with.
    model = build_model("cnn-small", 1, 10, 28)
    model.load_state_dict(load_file(out / "student.safetensors"))
    x = torch.rand(7, 1, 28, 28)
    expected = model.eval()((x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1))
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    card = (out / "model-card.md").read_text()
    assert "student.onnx" in card and "student.ts" not in card and "student.pt`" not in card
    guarantee = json.loads((out / "statement.json").read_text())["privacy"]["guarantee"]
    assert f"({guarantee['epsilon']:.3f}, 0.0001)-differential privacy" in card and "SEEDED" in card
    assert "6 disjoint shards" in card and "600" not in card  # the private set's size is not published


def test_predict_files_and_folders(finished, tmp_path, fake_data_root):
    from PIL import Image

    import pate

    run = pate.load_run(finished / "run")
    assert run.status["evaluate"] == "done" and run.guarantee["delta"] == 1e-4
    assert set(run.labels) == {"public_index", "label"} and run.classes == [str(d) for d in range(10)]
    dataset = __import__("pate.data", fromlist=["load"]).load(run.config.data, fake_data_root, quiet=True)
    folder = tmp_path / "to label é"
    (folder / "nested").mkdir(parents=True)
    index = run.labels["public_index"][:5]
    for i in index:
        Image.fromarray(dataset.public_x[i, 0]).save(folder / "nested" / f"img {i}.png")
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "one.png"
    Image.fromarray(dataset.public_x[index[0], 0]).save(single)
    result = CliRunner().invoke(main, ["predict", str(finished / "run-release" / "student.onnx"), str(folder),
                                       str(single), "-q"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "," in line]
    rows = list(csv.DictReader(lines))
    assert len(rows) == 6 and set(rows[0]) == {"path", "label", "class", "confidence"}
    # The same answers as the run's student on the same pixels, through every way of loading it.
    labels, _ = run.student().predict(dataset.public_x[index])
    by_path = {r["path"]: int(r["label"]) for r in rows}
    assert [by_path[str(folder / "nested" / f"img {i}.png")] for i in index] == labels.tolist()
    assert all(0 <= float(r["confidence"]) <= 1 for r in rows)
    again = pate.load_student(finished / "run-release").predict(dataset.public_x[index])[0]
    assert again.tolist() == labels.tolist()
    csv_out = tmp_path / "labels.csv"
    written = CliRunner().invoke(main, ["predict", str(finished / "run"), str(folder), "--out", str(csv_out), "-q"])
    assert written.exit_code == 0 and len(csv_out.read_text().splitlines()) == 6


def test_predict_refusals(finished, tmp_path):
    none = CliRunner().invoke(main, ["predict", str(finished / "run-release"), str(tmp_path / "missing.png")])
    assert none.exit_code == 2 and "missing.png: no such file or folder" in none.output
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    bad = CliRunner().invoke(main, ["predict", str(tmp_path / "fake.onnx"), str(tmp_path)])
    assert bad.exit_code == 2 and "is not an ONNX student exported by pate" in bad.output
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    broken = CliRunner().invoke(main, ["predict", str(finished / "run-release"), str(tmp_path / "broken.png")])
    assert broken.exit_code == 2 and "broken.png is not a readable image" in broken.output


def test_the_model_card_opens_with_hugging_face_metadata_of_public_fields_only(finished):
    import numpy as np

    yaml = pytest.importorskip("yaml")  # PyYAML comes with the tracking extra (MLflow)
    card = (finished / "run-release" / "model-card.md").read_text()
    assert card.startswith("---\n")
    block, body = card[4:].split("\n---\n", 1)
    meta = yaml.safe_load(block)
    doc = json.loads((finished / "run-release" / "statement.json").read_text())
    assert meta["license"] == "other"  # pate cannot know it: never invented
    assert {"differential-privacy", "pate", "image-classification"} <= set(meta["tags"])
    assert meta["datasets"] == ["mnist"] and meta["metrics"] == ["accuracy"]
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["type"] == "mnist"
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(doc["student"]["accuracy"], abs=1e-4)
    assert body.lstrip().startswith("# Model card: tiny student") and "## Privacy" in body
    run = finished / "run"
    private = json.loads((run / "privacy.json").read_text())["private"]
    teachers = json.loads((run / "teachers_eval.json").read_text())
    with np.load(run / "partition.npz") as parts:
        num_private = len(parts["teacher_of"])
    for key in (*PRIVATE_KEYS, "label_accuracy", "ensemble_accuracy", "num_private", "epsilon:"):
        assert key not in block, key
    for figure in (private["epsilon"], private["epsilon_expected"], teachers["teacher_accuracy_mean"]):
        assert f"{figure:.3f}" not in block
    assert str(num_private) not in block and str(run) not in block
