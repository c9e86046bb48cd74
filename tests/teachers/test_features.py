"""Public features: a contrastive extractor on public images, frozen; one logistic head per teacher."""
import dataclasses
import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pate import data as data_mod
from pate.nets.augment import contrastive_view
from pate.io import CheckpointMismatch
from pate.teachers import ensemble
from pate.nets import wavelets as scattering
from pate.features import extractors as features
from pate.cli import main

from ..conftest import TINY_PIPELINE


def _blobs(n, seed=0):
    """Tiny class-dependent images (1x28x28), like the fake MNIST cache."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, 1, 28, 28)).astype(np.float32)
    for i, c in enumerate(labels):
        r, col = 4 + 12 * (c // 2), 4 + 12 * (c % 2)
        x[i, 0, r:r + 6, col:col + 6] += 2.0
    return torch.from_numpy(x), torch.from_numpy(labels).long()


def test_extractor_trains_embeds_and_is_deterministic(tmp_path):
    x, _ = _blobs(32)
    kw = dict(dim=8, epochs=1, batch_size=16)
    a = features.train_extractor(x, seed=3, **kw)
    f = features.embed(a, x[:10])
    assert f.shape == (10, 8) and torch.isfinite(f).all()
    assert torch.equal(f, features.embed(features.train_extractor(x, seed=3, **kw), x[:10]))
    assert not torch.equal(f, features.embed(features.train_extractor(x, seed=4, **kw), x[:10]))
    # Standardised with the public images' own statistics.
    assert torch.allclose(features.embed(a, x).mean(0), torch.zeros(8), atol=1e-4)
    # A finished checkpoint is reused as is.
    path = tmp_path / "extractor.pt"
    features.train_extractor(x, seed=3, checkpoint_path=path, **kw)
    cached = features.train_extractor(x, seed=3, checkpoint_path=path, progress=lambda *_: 1 / 0, **kw)
    assert torch.equal(features.embed(cached, x[:10]), f)


def test_interrupted_extractor_resumes_to_the_same_result(tmp_path):
    x, _ = _blobs(32)
    kw = dict(dim=8, epochs=2, seed=1, batch_size=16)
    full = features.train_extractor(x, **kw)
    ckpt = tmp_path / "partial.pt"

    class Stop(Exception):
        pass

    def stop(epoch, epochs, loss):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        features.train_extractor(x, checkpoint_path=ckpt, progress=stop, **kw)
    resumed = features.train_extractor(x, checkpoint_path=ckpt, **kw)
    assert torch.allclose(features.embed(resumed, x[:10]), features.embed(full, x[:10]), atol=1e-5)


def test_augment_keeps_shape_and_varies():
    x, _ = _blobs(8)
    gen = torch.Generator().manual_seed(0)
    v1, v2 = contrastive_view(x, gen), contrastive_view(x, gen)
    assert v1.shape == x.shape and torch.isfinite(v1).all() and not torch.equal(v1, v2)


def test_heads_see_only_their_own_shard_and_vote_once():
    k, m = 5, 4
    feats, labels = torch.randn(200, 12), torch.randint(0, m, (200,))
    teacher_of = np.repeat(np.arange(k), 40)
    heads = features.train_heads(feats, labels, teacher_of, range(k), m, steps=50)
    assert heads["weight"].shape == (k, 12, m) and heads["bias"].shape == (k, m)
    # Perturb teacher 3's shard (features and labels): every other head is unchanged.
    feats2, labels2 = feats.clone(), labels.clone()
    feats2[teacher_of == 3] += torch.randn(40, 12)
    labels2[teacher_of == 3] = (labels2[teacher_of == 3] + 1) % m
    heads2 = features.train_heads(feats2, labels2, teacher_of, range(k), m, steps=50)
    for t in range(k):
        same = torch.allclose(heads["weight"][t], heads2["weight"][t], atol=1e-6, rtol=0)
        assert same == (t != 3)
    # Training a subset of teachers gives the same heads (nothing is shared between teachers).
    sub = features.train_heads(feats, labels, teacher_of, [1, 4], m, steps=50)
    assert torch.allclose(sub["weight"], heads["weight"][[1, 4]], atol=1e-6)
    preds = features.predict_heads(heads, torch.randn(30, 12))
    assert preds.shape == (k, 30) and preds.dtype == torch.int64
    votes = ensemble.votes_from_predictions(preds, m)
    assert (votes.sum(1) == k).all()
    # Ties go to the first class.
    tie = {"weight": torch.zeros(2, 12, m), "bias": torch.zeros(2, m)}
    assert (features.predict_heads(tie, torch.randn(3, 12)) == 0).all()


def test_heads_trained_in_blocks_equal_heads_trained_at_once():
    """Blocks of teachers train one after the other (to bound memory); with uneven shards, every
    block padded to the largest shard, the heads are the ones all K teachers get at once."""
    k, m, d = 7, 3, 10
    gen = torch.Generator().manual_seed(0)
    sizes = [30, 12, 25, 30, 7, 18, 22]
    teacher_of = np.repeat(np.arange(k), sizes)[np.random.default_rng(0).permutation(sum(sizes))]
    feats = torch.randn(len(teacher_of), d, generator=gen)
    labels = torch.randint(0, m, (len(teacher_of),), generator=gen)
    row = 30 * d * 4  # one padded shard's rows
    whole = features.train_heads(feats, labels, teacher_of, range(k), m, steps=40, block_bytes=k * row)
    for block_bytes in (row, 3 * row):
        done = []
        blocks = features.train_heads(feats, labels, teacher_of, range(k), m, steps=40, block_bytes=block_bytes,
                                      progress=lambda step, total: done.append((step, total)))
        assert blocks["teacher_ids"] == whole["teacher_ids"]
        torch.testing.assert_close(blocks["weight"], whole["weight"], rtol=0, atol=1e-6)
        torch.testing.assert_close(blocks["bias"], whole["bias"], rtol=0, atol=1e-6)
        # One progress bar over every block: it only goes up, to (steps, steps).
        assert done[-1] == (40, 40) and all(a <= b for a, b in zip(done, done[1:]))


def test_embed_fills_one_tensor_in_batches():
    x, _ = _blobs(10)
    ext = {"kind": "scattering", "J": 2, "L": 4, "in_channels": 1}
    raw = features.embed(ext, x, batch_size=3, standardise=False)
    torch.testing.assert_close(raw, scattering.scatter(x, J=2, L=4).flatten(1), rtol=0, atol=0)
    ext |= {"mean": raw.mean(0), "std": raw.std(0).clamp_min(1e-6)}
    torch.testing.assert_close(features.embed(ext, x, batch_size=4), (raw - ext["mean"]) / ext["std"])


def test_extractor_never_sees_private_images(tmp_path, fake_data_root, monkeypatch):
    """The extractor depends only on the public pool: changing private images leaves it unchanged,
    and the heads' inputs come from the private shards only after the extractor is frozen."""
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(_tiny_features())
    seen = []
    real = features.train_extractor

    def spy(images, **kw):
        seen.append(images.clone())
        return real(images, **kw)

    monkeypatch.setattr(features, "train_extractor", spy)
    runs = []
    real_load = data_mod.load
    for scramble in (False, True):
        def load(name, root, _scramble=scramble, **kw):
            ds = real_load(name, root, **kw)
            return dataclasses.replace(ds, private_x=255 - ds.private_x) if _scramble else ds  # every private image

        monkeypatch.setattr(data_mod, "load", load)
        base = ["--run-dir", str(tmp_path / f"run{int(scramble)}"), "--data-root", str(fake_data_root), "-q"]
        assert CliRunner().invoke(main, ["partition", str(pipeline), *base]).exit_code == 0
        result = CliRunner().invoke(main, ["train-teachers", str(pipeline), *base])
        assert result.exit_code == 0, result.output
        blob = torch.load(tmp_path / f"run{int(scramble)}" / "teachers" / "extractor.pt", weights_only=True)
        runs.append(blob["extractor"]["state"])
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def _tiny_features(kind: str = "simclr") -> str:
    return textwrap.dedent(TINY_PIPELINE).replace(
        'name = "tiny"', 'name = "tiny-features"').replace(
        "batch_size = 16\n\n[aggregator]", f'batch_size = 16\nfeatures = "{kind}"\nfeature_epochs = 1\n'
                                          "feature_dim = 32\n\n[aggregator]")


@pytest.mark.parametrize("kind", ["simclr", "scattering"])
def test_tiny_pipeline_with_public_features(tmp_path, fake_data_root, kind):
    text = _tiny_features(kind)
    assert f'features = "{kind}"' in text
    pipeline = tmp_path / "tiny-features.toml"
    pipeline.write_text(text)
    run_dir = tmp_path / "run"
    args = ["run", str(pipeline), "--run-dir", str(run_dir), "--data-root", str(fake_data_root), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (run_dir / "teachers" / "extractor.pt").exists() and (run_dir / "teachers" / "heads-0-of-1.pt").exists()
    with np.load(run_dir / "votes.npz") as v:
        assert v["votes"].shape == (40, 10) and (v["votes"].sum(1) == 6).all()
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert np.isfinite(privacy["private"]["epsilon"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["student_accuracy"] <= 1 and (run_dir / "student" / "model.pt").exists()
    teachers = json.loads((run_dir / "teachers_eval.json").read_text())
    assert len(teachers["teacher_accuracy"]) == 6
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and json.loads((run_dir / "privacy.json").read_text()) == privacy


def test_scattering_statistics_come_from_the_public_pool_only(tmp_path, fake_data_root, monkeypatch):
    """Scattering has no training; its standardisation uses public pool images only, so scrambling
    every private image leaves the saved extractor bit-identical (and the heads do change)."""
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(_tiny_features("scattering"))
    real_load = data_mod.load
    blobs = []
    for scramble in (False, True):
        def load(name, root, _scramble=scramble, **kw):
            ds = real_load(name, root, **kw)
            return dataclasses.replace(ds, private_x=255 - ds.private_x) if _scramble else ds

        monkeypatch.setattr(data_mod, "load", load)
        run_dir = tmp_path / f"run{int(scramble)}"
        base = ["--run-dir", str(run_dir), "--data-root", str(fake_data_root), "-q"]
        assert CliRunner().invoke(main, ["partition", str(pipeline), *base]).exit_code == 0
        result = CliRunner().invoke(main, ["train-teachers", str(pipeline), *base])
        assert result.exit_code == 0, result.output
        blobs.append([torch.load(run_dir / "teachers" / name, weights_only=True)
                      for name in ("extractor.pt", "heads-0-of-1.pt")])
    (ext0, heads0), (ext1, heads1) = blobs
    assert ext0["extractor"]["kind"] == "scattering"
    assert all(torch.equal(ext0["extractor"][k], ext1["extractor"][k]) for k in ("mean", "std"))
    assert not torch.equal(heads0["weight"], heads1["weight"])


def test_scattering_extractor_is_saved_and_reused(tmp_path):
    x, _ = _blobs(8)
    path = tmp_path / "extractor.pt"
    first = features.scattering_extractor(x, J=2, L=4, checkpoint_path=path, fingerprint="f")
    assert first["dim"] == (1 + 2 * 4 + 4 * 4) * 7 * 7 and torch.isfinite(features.embed(first, x)).all()
    cached = features.scattering_extractor(x, J=2, L=4, checkpoint_path=path, fingerprint="f",
                                           progress=lambda *_: 1 / 0)
    assert torch.equal(cached["mean"], first["mean"])
    # Another run's file (other fingerprint) is refused, never reused nor silently overwritten.
    with pytest.raises(CheckpointMismatch, match="different configuration"):
        features.scattering_extractor(x, J=2, L=4, checkpoint_path=path, fingerprint="g", progress=lambda *_: 1 / 0)


def test_scattering_extractor_of_an_earlier_definition_is_refused(tmp_path, monkeypatch):
    """Statistics saved by another scattering variant would standardise these coefficients wrongly."""
    x, _ = _blobs(8)
    path = tmp_path / "extractor.pt"
    monkeypatch.setattr(features.scattering, "DEFINITION", "full-resolution-wide-phi")
    features.scattering_extractor(x, J=2, L=4, checkpoint_path=path, fingerprint="f")
    monkeypatch.undo()
    with pytest.raises(CheckpointMismatch):
        features.scattering_extractor(x, J=2, L=4, checkpoint_path=path, fingerprint="f", progress=lambda *_: 1 / 0)


def test_embed_converts_batch_by_batch_to_the_same_features():
    """uint8 images with ``prepare`` give exactly the features of the float images converted at once."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (37, 1, 16, 16), dtype=np.uint8)
    extractor = {"kind": "scattering", "J": 2, "L": 4, "in_channels": 1}
    convert = lambda b: torch.from_numpy(b).float().div_(255).sub_(0.3)  # noqa: E731
    whole = features.embed(extractor, convert(raw), batch_size=8, standardise=False)
    batched = features.embed(extractor, raw, batch_size=8, standardise=False, prepare=convert)
    assert torch.equal(whole, batched)
