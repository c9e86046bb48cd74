"""``[student] precision = "bf16"``: the students' forward passes run in bfloat16 (their convolutions'
outputs are bfloat16 while training), their weights, optimiser and EMA stay float32, the setting is
part of the checkpoint, the model exported is float32 and takes raw images; a bad value is one line;
a device without native bfloat16 gets a warning."""
from __future__ import annotations

import textwrap

import pytest
import torch
from click.testing import CliRunner

import pate
from pate.cli import main
from pate.io import CheckpointMismatch, load_checkpoint
from pate.student import training
from pate.student.training import native_bf16, train_student

from .conftest import TINY_PIPELINE, edit_pipeline


def blobs(n: int = 64, classes: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    for k in range(classes):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 2.0
    return x, y


def train(precision: str, **kw):
    x, y = blobs()
    args = dict(arch="cnn-small", num_classes=4, method="fixmatch", steps=40, batch_size=16, unlabeled_ratio=2,
                lr=0.05, threshold=0.5, seed=3, precision=precision)
    return train_student(x[:32], y[:32], x[32:], **{**args, **kw}), (x, y)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_convolutions_compute_in_the_precision_asked_and_the_weights_stay_float32(precision, dtype, monkeypatch):
    seen = set()
    real = torch.nn.Conv2d.forward

    def recording(self, x):
        out = real(self, x)
        seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording)
    (model, history), (x, y) = train(precision)
    assert seen == {dtype}  # the labelled batch and FixMatch's pseudo-labelling pass alike
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    assert history["loss"][-1] < history["loss"][0]  # it learns
    assert (training.predict(model, x) == y).float().mean() > 0.8


def test_bf16_is_part_of_the_checkpoint_and_a_float32_one_does_not_resume_in_it(tmp_path):
    ck = tmp_path / "student.pt"
    (fp32, _), _ = train("fp32", checkpoint_path=ck)
    assert "precision" not in load_checkpoint(ck)["settings"]  # older checkpoints still resume
    with pytest.raises(CheckpointMismatch, match="precision"):
        train("bf16", checkpoint_path=ck)
    (bf16, _), _ = train("bf16", checkpoint_path=tmp_path / "bf16.pt")
    assert load_checkpoint(tmp_path / "bf16.pt")["settings"]["precision"] == "bf16"
    assert any(not torch.equal(a, b) for a, b in zip(fp32.state_dict().values(), bf16.state_dict().values()))


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        train("fp16")


def test_native_bf16_says_no_for_devices_without_it():
    assert native_bf16("meta") is False
    assert isinstance(native_bf16("cpu"), bool)


BF16 = edit_pipeline(TINY_PIPELINE, ("steps = 20\n", 'steps = 20\nprecision = "bf16"\n'))


def test_a_bf16_run_exports_a_float32_student_that_takes_raw_images(tmp_path, fake_data_root, monkeypatch):
    import pate.stages.train_student as stage
    monkeypatch.setattr(stage, "native_bf16", lambda device: False)  # as on a CPU without it
    (tmp_path / "tiny.toml").write_text(textwrap.dedent(BF16))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "tiny.toml"), "--run-dir", str(tmp_path / "run"),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    assert 'has no native bfloat16 arithmetic, so [student] precision = "bf16" trains slower' in result.output
    assert load_checkpoint(tmp_path / "run" / "student" / "checkpoint.pt")["settings"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "run" / "student" / "model.pt").values()
               if v.is_floating_point())
    raw = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8).numpy()
    logits = pate.load_student(tmp_path / "run-release" / "student.onnx").logits(raw)
    assert logits.shape == (5, 10) and logits.dtype.name == "float32"


@pytest.mark.parametrize("value", ['"fp16"', '"BF16"', "16", "true"])
def test_a_bad_precision_is_one_line_and_writes_nothing(tmp_path, fake_data_root, value):
    (tmp_path / "tiny.toml").write_text(textwrap.dedent(BF16.replace('precision = "bf16"', f"precision = {value}")))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "tiny.toml"), "--run-dir", str(tmp_path / "run"),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 2 and "precision" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
