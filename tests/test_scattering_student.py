"""Students on the scattering transform (Tramèr & Boneh 2021) and the wider pixel CNN: the layer
in real arithmetic is the same transform as the FFT one, the architectures are students only, and a
run with a ScatterNet student exports files that take raw images (`pate predict`, onnxruntime,
torch.export) with the student's answers."""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import pate
from pate.cli import main
from pate.config import load as load_config
from pate.data import load as load_data
from pate.errors import PateError
from pate.nets.models import TEACHER_ARCHITECTURES, build_model, layer_plan
from pate.nets.scattering import Scattering
from pate.nets.wavelets import scatter

from .conftest import TINY_PIPELINE, edit_pipeline

ATOL = 1e-4


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 16)])
def test_real_arithmetic_equals_the_fft_transform(channels, size):
    """Every coefficient, grey and colour: the exported path computes the teachers' features."""
    images = torch.rand(5, channels, size, size, generator=torch.Generator().manual_seed(size))
    layer = Scattering(channels, size)
    expected = scatter(images)
    got = layer.real_arithmetic(images)
    assert got.shape == expected.shape == (5, channels * 81, size // 4, size // 4)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(layer(images), expected)  # eager: the FFT path itself


def test_order_zero_is_the_low_pass_average():
    """Independent of both implementations: a constant image's only non-zero coefficients are order 0
    (the wavelets have no DC response), each the constant times the low-pass filter's sum."""
    out = Scattering(1, 28).real_arithmetic(torch.full((1, 1, 28, 28), 0.5))
    assert torch.allclose(out[0, 0], out[0, 0, 0, 0].expand(7, 7), atol=1e-6)
    assert out[0, 1:].abs().max() < 1e-5
    phi_sum = 1.0  # Kymatio's Gaussian is normalised to unit mass, so phi's DC gain is 1
    assert out[0, 0, 0, 0].item() == pytest.approx(0.5 * phi_sum, rel=1e-3)


@pytest.mark.parametrize("arch,params", [("scatter-linear", 81 * 49 * 10 + 10), ("scatter-cnn", None),
                                         ("cnn-wide", None)])
def test_student_architectures_build_and_learn_nothing_in_the_transform(arch, params):
    model = build_model(arch, 1, 10, 28)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params  # the transform has no weights
    if arch.startswith("scatter"):
        assert isinstance(model[0], Scattering) and not list(model[0].parameters())


def test_scattering_students_need_a_size_four_divides_and_are_not_teachers(tmp_path):
    with pytest.raises(ValueError, match="needs an image size that 4 divides, not 30"):
        layer_plan("scatter-cnn", 1, 10, 30)
    assert "scatter-cnn" not in TEACHER_ARCHITECTURES and "cnn-wide" in TEACHER_ARCHITECTURES
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent(TINY_PIPELINE).replace('arch = "cnn-small"', 'arch = "scatter-cnn"'))
    with pytest.raises(PateError, match=r"\[teachers\] arch.*features = \"scattering\""):
        load_config(path)


@pytest.fixture(scope="module")
def scatter_run(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("scatter-student")
    text = edit_pipeline(textwrap.dedent(TINY_PIPELINE), ('method = "supervised"',
                                                          'arch = "scatter-cnn"\nmethod = "supervised"'))
    (root / "tiny.toml").write_text(text)
    result = CliRunner().invoke(main, ["run", str(root / "tiny.toml"), "--run-dir", str(root / "run"), "--data-root",
                                       str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    run = pate.load_run(root / "run")
    images = load_data(run.config.data, fake_data_root, quiet=True).public_x[:12]
    (root / "images").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(root / "images" / f"{i}.png")
    return root, images


def test_exported_scattering_student_takes_raw_images(scatter_run):
    root, images = scatter_run
    expected = pate.load_student(root / "run").logits(images)
    assert np.isfinite(expected).all()
    out = root / "run-release"
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) / 255.0
    for batch in (1, len(x)):  # any batch size: the transform is in the graph
        logits = np.concatenate([session.run(None, {"images": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
        np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)
    for name in ("student.pt2", "student.safetensors"):
        np.testing.assert_allclose(pate.load_student(out / name).logits(images), expected, atol=ATOL, rtol=0)
    result = CliRunner().invoke(main, ["predict", str(out / "student.onnx"), str(root / "images"), "-q"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "," in line]
    labels = {Path(r["path"]).name: int(r["label"]) for r in csv.DictReader(lines)}
    assert labels == {f"{i}.png": int(expected[i].argmax()) for i in range(len(images))}


def test_torchscript_is_refused_for_a_scattering_student(scatter_run, tmp_path):
    root, _ = scatter_run
    result = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(tmp_path / "ts"), "--torchscript"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "TorchScript is not offered for the scatter-cnn student" in result.output
    assert not (tmp_path / "ts").exists()
