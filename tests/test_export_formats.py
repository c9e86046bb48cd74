"""The exported student in every format gives the trained student's answers: ONNX in onnxruntime
(and `pate predict student.onnx` with torch unimportable), the torch.export program, the
safetensors weights rebuilt, and TorchScript only when asked for (`--torchscript`)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import pate
from pate.export import formats
from pate.cli import main
from pate.data import load as load_data
from pate.nets.models import build_model

from .conftest import TINY_PIPELINE

ATOL = 1e-4  # float32 rounding between runtimes
BLOCK_TORCH = '''
import os
import sys

class _Blocked:
    """torch and torchvision are not installed, as on a deployment box; every try is logged."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            with open(os.environ["PATE_TEST_ATTEMPTS"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
'''


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    """A finished tiny run, its default export, an export with TorchScript, and images of the
    public set (real MNIST-like pixels) as arrays and as PNG files."""
    root = tmp_path_factory.mktemp("formats")
    (root / "tiny.toml").write_text(textwrap.dedent(TINY_PIPELINE))
    result = CliRunner().invoke(main, ["run", str(root / "tiny.toml"), "--run-dir", str(root / "run"), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    with_ts = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(root / "with-ts"), "--torchscript"])
    assert with_ts.exit_code == 0, with_ts.output
    run = pate.load_run(root / "run")
    images = load_data(run.config.data, fake_data_root, quiet=True).public_x[:37]
    (root / "images").mkdir()
    for i, image in enumerate(images[:10]):
        Image.fromarray(image[0]).save(root / "images" / f"{i}.png")
    return root, images


def reference_logits(root: Path, images: np.ndarray) -> np.ndarray:
    """The trained student of the run directory (torch, its normalisation in front)."""
    return pate.load_student(root / "run").logits(images)


def test_onnx_runs_alone_in_onnxruntime_with_the_students_answers(finished):
    root, images = finished
    expected = reference_logits(root, images)
    path = root / "run-release" / "student.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (given,), (answer,) = session.get_inputs(), session.get_outputs()
    assert given.name == "images" and given.type == "tensor(float)" and given.shape[1:] == [1, 28, 28]
    assert isinstance(given.shape[0], str) and answer.name == "logits"  # any batch size
    x = images.astype(np.float32) / 255.0  # [0, 1] pixels: the normalisation is in the graph
    for batch in (1, 5, len(x)):
        logits = np.concatenate([session.run(None, {"images": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)
        assert (logits.argmax(1) == expected.argmax(1)).all()
    # pate's description travels inside the file, the same as student.json beside it.
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads((root / "run-release" / "student.json").read_text())
    assert json.loads(props["pate.json"]) == meta and meta["format"] == formats.FORMAT
    assert props["pate.format"] == formats.FORMAT and json.loads(props["pate.classes"]) == [str(d) for d in range(10)]
    assert (props["pate.channels"], props["pate.image_size"]) == ("1", "28")


def test_program_and_safetensors_reload_to_the_students_answers(finished):
    root, images = finished
    expected = reference_logits(root, images)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    out = root / "run-release"
    extra = {"pate.json": ""}
    program = torch.export.load(str(out / "student.pt2"), extra_files=extra).module()
    assert json.loads(extra["pate.json"]) == json.loads((out / "student.json").read_text())
    with torch.no_grad():
        np.testing.assert_allclose(program(x).numpy(), expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(program(x[:1]).numpy(), expected[:1], atol=ATOL, rtol=0)  # any batch size
    with safe_open(str(out / "student.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["pate.json"])
    model = build_model(meta["arch"], meta["channels"], len(meta["classes"]), meta["image_size"]).eval()
    model.load_state_dict(load_file(out / "student.safetensors"))
    mean, std = (torch.tensor(meta[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        np.testing.assert_allclose(model((x - mean) / std).numpy(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["student.onnx", "student.pt2", "student.safetensors", "student.ts", "."])
def test_load_student_takes_every_format(name, finished):
    root, images = finished
    expected = reference_logits(root, images)
    student = pate.load_student(root / "with-ts" / name)
    assert student.backend == ("onnxruntime" if name in ("student.onnx", ".") else "torch")  # a folder: ONNX first
    np.testing.assert_allclose(student.logits(images), expected, atol=ATOL, rtol=0)
    labels, confidence = student.predict(images)
    assert labels.tolist() == expected.argmax(1).tolist()
    assert np.allclose(confidence, np.exp(expected.max(1)) / np.exp(expected).sum(1), atol=ATOL)
    assert student.predict(torch.from_numpy(images))[0].tolist() == labels.tolist()  # tensors too


def test_torchscript_only_when_asked_for(finished, tmp_path):
    root, images = finished
    assert not (root / "run-release" / "student.ts").exists()
    assert "student.ts" in json.loads((root / "with-ts" / "statement.json").read_text())["files"]
    with pytest.warns(FutureWarning, match="torch.jit.load"):  # asked for by name: PyTorch's warning is expected
        module = torch.jit.load(str(root / "with-ts" / "student.ts"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    np.testing.assert_allclose(module(x).detach().numpy(), reference_logits(root, images), atol=ATOL, rtol=0)
    # A later export without --torchscript (and an earlier pate's student.pt) leave no stale student behind.
    out = tmp_path / "again"
    assert CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(out), "--torchscript"]).exit_code == 0
    (out / "student.pt").write_bytes(b"an earlier export's state dict")
    assert CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(out)]).exit_code == 0
    assert not (out / "student.ts").exists() and not (out / "student.pt").exists()
    assert (out / "student.onnx").is_file()


def test_export_writes_no_deprecation_warning(finished, tmp_path):
    root, _ = finished
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        result = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(tmp_path / "pub")])
    assert result.exit_code == 0, result.output


def test_export_without_the_export_tools_is_one_line_and_writes_nothing(finished, tmp_path, monkeypatch):
    root, _ = finished
    real = formats._importable
    monkeypatch.setattr(formats, "_importable", lambda name: name != "onnxscript" and real(name))
    result = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(tmp_path / "pub")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "needs onnxscript: pip install pate" in result.output
    assert not (tmp_path / "pub").exists()


def rows(output: str) -> dict[str, tuple[int, float]]:
    lines = [line for line in output.splitlines() if "," in line]
    return {Path(r["path"]).name: (int(r["label"]), float(r["confidence"])) for r in csv.DictReader(lines)}


@pytest.mark.parametrize("model", ["student.onnx", "."])
def test_predict_with_onnx_needs_no_torch(model, finished, tmp_path):
    """`pate predict student.onnx` (or the export folder) where torch and torchvision cannot be
    imported, as on a box with onnxruntime, numpy and Pillow only: the same labels as torch's."""
    root, _ = finished
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    attempts = tmp_path / "attempts.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATE_TEST_ATTEMPTS": str(attempts)}
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr  # the guard works
    attempts.unlink()
    target = root / "run-release" / model
    result = subprocess.run([sys.executable, "-m", "pate", "predict", str(target), str(root / "images"), "-q"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not attempts.exists(), attempts.read_text()  # not even tried
    with_torch = CliRunner().invoke(main, ["predict", str(root / "run-release" / "student.pt2"), str(root / "images"),
                                           "-q"])
    assert with_torch.exit_code == 0, with_torch.output
    onnx_rows, torch_rows = rows(result.stdout), rows(with_torch.output)
    assert len(onnx_rows) == 10 and set(onnx_rows) == set(torch_rows)
    assert {k: v[0] for k, v in onnx_rows.items()} == {k: v[0] for k, v in torch_rows.items()}
    assert all(abs(onnx_rows[k][1] - torch_rows[k][1]) <= 1e-4 for k in onnx_rows)  # printed to 4 places
