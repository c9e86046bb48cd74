"""Pretrained public features: a frozen torchvision/timm backbone, weights from a file the test
writes (no hub is reachable here) or the library's own cache, one head per teacher."""
import json
import os
import stat
import textwrap
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from pate.cli import main
from pate.features import pretrained

from ..conftest import TINY_PIPELINE

BACKBONE = "mobilenet_v3_small"  # small enough to write and run in a test


@pytest.fixture(autouse=True)
def _fresh_cache():
    pretrained._cached.cache_clear()
    yield
    pretrained._cached.cache_clear()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mobilenet weights é.pt"  # spaces and non-ASCII must work
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    return path


def _images(n, channels=1, size=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def test_weights_from_a_file_give_frozen_headless_features(weights_file):
    backbone = pretrained.load(BACKBONE, str(weights_file), 32)
    assert backbone.size == 32 and backbone.dim == 1024  # the last linear layer (1024 -> 1000) is cut off
    assert backbone.weights_id.startswith("sha256:") and not any(p.requires_grad for p in backbone.module.parameters())
    x = _images(5)
    f = pretrained.embed(backbone, x, batch_size=2)
    assert f.shape == (5, 1024) and torch.isfinite(f).all()
    # Batching does not change a row; the model is the file's (not the library's random init).
    torch.testing.assert_close(f[3:], pretrained.embed(backbone, x[3:]), rtol=1e-5, atol=1e-5)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    reference.load_state_dict(torch.load(weights_file, weights_only=True))
    reference.classifier[3] = torch.nn.Identity()
    with torch.no_grad():
        expected = reference.eval()(pretrained.prepare(torch.from_numpy(x), backbone))
    torch.testing.assert_close(f, expected, rtol=1e-5, atol=1e-5)


def test_prepare_makes_three_normalised_channels_at_the_backbone_size(weights_file):
    backbone = pretrained.load(BACKBONE, str(weights_file), 32)
    gray = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    x = pretrained.prepare(gray, backbone)
    assert x.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)  # white in every channel
    torch.testing.assert_close(x[0, :, 5, 5], expected)


def test_a_checkpoint_with_another_head_or_prefix_fits(tmp_path):
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=7)  # fine-tuned on 7 classes
    path = tmp_path / "finetuned.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert pretrained.load(BACKBONE, str(path), 32).dim == 1024


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), p),
     "do not fit backbone 'resnet18': "),
    (lambda p: p.write_text("not a weights file"), "not a readable weights file"),
    (lambda p: torch.save({"a": 1}, p), "holds no state dict"),
    (lambda p: None, "no such file"),
])
def test_bad_weights_are_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "w.pt"
    make(path)
    with pytest.raises(pretrained.WeightsError) as info:
        pretrained.load("resnet18", str(path), 32)
    text = str(info.value)
    assert message in text and "\n" not in text and (str(path) in text or "fit" in text)


def test_unknown_backbone_and_weight_names_are_refused():
    with pytest.raises(pretrained.WeightsError, match="not a torchvision classification model"):
        pretrained.load("resnet-eighteen", "DEFAULT")
    with pytest.raises(pretrained.WeightsError, match="IMAGENET1K_V1"):
        pretrained.load("resnet18", "IMAGENET9K_V9")


def test_default_weights_come_from_the_library_cache(tmp_path, monkeypatch, weights_file):
    """`weights = "DEFAULT"` goes through torchvision's own loader: with the file in $TORCH_HOME's
    cache it loads offline, as it would after a download; without it, a download is attempted and
    its failure is one line telling what to do offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(pretrained.WeightsError, match="offline, set \\[teachers\\] weights to a local"):
        pretrained.load(BACKBONE, "DEFAULT", 32)
    url = torchvision.models.get_model_weights(BACKBONE).DEFAULT.url
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / os.path.basename(url)).write_bytes(weights_file.read_bytes())
    pretrained._cached.cache_clear()
    backbone = pretrained.load(BACKBONE, "DEFAULT", 32)
    assert backbone.weights_id == "DEFAULT"
    from_file = pretrained.load(BACKBONE, str(weights_file), 32)
    x = _images(3)
    torch.testing.assert_close(pretrained.embed(backbone, x), pretrained.embed(from_file, x))


def test_a_backbone_too_big_for_the_input_is_one_line(tmp_path):
    torch.save(torchvision.models.vit_b_16(weights=None).state_dict(), tmp_path / "vit.pt")
    with pytest.raises(pretrained.WeightsError, match="backbone_size"):
        pretrained.load("vit_b_16", str(tmp_path / "vit.pt"), 32)  # ViT-B/16 takes 224x224 only


def test_timm_backbones(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "r10.pt")
    backbone = pretrained.load("timm:resnet10t", str(tmp_path / "r10.pt"), 32)
    assert pretrained.embed(backbone, _images(2, channels=3)).shape == (2, backbone.dim)


def _pipeline(tmp_path, weights: str) -> str:
    return textwrap.dedent(TINY_PIPELINE).replace('name = "tiny"', 'name = "tiny-pretrained"').replace(
        "batch_size = 16\n\n[aggregator]",
        f'batch_size = 16\nfeatures = "pretrained"\nbackbone = "{BACKBONE}"\nweights = "{weights}"\n'
        "backbone_size = 32\n\n[aggregator]")


def test_pipeline_with_pretrained_features(tmp_path, fake_data_root, weights_file):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "backbone.pt").write_bytes(weights_file.read_bytes())
    pipeline = tmp_path / "pretrained.toml"
    pipeline.write_text(_pipeline(tmp_path, "models/backbone.pt"))  # relative to the pipeline file
    run_dir = tmp_path / "run"
    args = ["run", str(pipeline), "--run-dir", str(run_dir), "--data-root", str(fake_data_root), "-q",
            "--until", "vote"]  # random weights on noise: the teachers agree too rarely to answer
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    teachers = run_dir / "teachers"
    private_cache = teachers / "private-features-0-of-1.pt"
    assert stat.S_IMODE(private_cache.stat().st_mode) == 0o600  # features of private images are private
    assert stat.S_IMODE((teachers / "heads-0-of-1.pt").stat().st_mode) == 0o600
    public = torch.load(teachers / "public-features-0-of-1.pt", weights_only=True)
    assert public["features"].shape == (400, 1024) and public["pool_rows"] == 300  # pool + test split
    with np.load(run_dir / "votes.npz") as v:
        assert v["votes"].shape == (40, 10) and (v["votes"].sum(1) == 6).all()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "teachers/public-features-0-of-1.pt" in manifest["stages"]["train-teachers"]["outputs"]
    extractor = torch.load(teachers / "extractor.pt", weights_only=True)["extractor"]
    assert extractor["weights"].startswith("sha256:") and extractor["kind"] == "pretrained"
    # Standardised on the public pool only (the first 300 rows), never the test split.
    torch.testing.assert_close(extractor["mean"], public["features"][:300].mean(0))


def test_pipeline_refuses_weights_that_do_not_fit_before_writing(tmp_path, fake_data_root):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pt")
    pipeline = tmp_path / "pretrained.toml"
    pipeline.write_text(_pipeline(tmp_path, "resnet.pt"))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(run_dir),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 2, result.output
    assert "resnet.pt do not fit backbone 'mobilenet_v3_small'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not run_dir.exists()
