"""The batched teacher ensemble: equality with K separate networks, shard isolation, resume,
distributed ranks, atomic checkpoints and one-vote-per-teacher voting."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from pate import teachers as E
from pate.nets.augment import shift_images
from pate.io import CheckpointMismatch, load_checkpoint

torch.set_num_threads(1)

K, CLASSES, BATCH = 3, 4, 8
SIZES = (21, 13, 6)  # unequal shards: 3, 2 and 1 steps per epoch, so padding and idle steps occur


def make_data(seed=0, sizes=SIZES, channels=1, image_size=28):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    images = torch.randn(n, channels, image_size, image_size, generator=g)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    owner = torch.cat([torch.full((s,), t) for t, s in enumerate(sizes)])
    owner = owner[torch.randperm(n, generator=g)]  # shards interleaved in record order
    return images, labels, owner


def train(images, labels, owner, **overrides):
    kw = dict(arch="cnn-small", num_classes=CLASSES, epochs=2, batch_size=BATCH, lr=0.05, momentum=0.9,
              weight_decay=1e-3, seed=11, augment=True)
    kw.update(overrides)
    return E.train_ensemble(images, labels, owner, K, **kw)


def params_of(ensemble, k):
    return [t.detach() for t in extract_params(ensemble, k)]


def extract_params(ensemble, k):
    return list(E.extract_teacher(ensemble, k).parameters())


def assert_teacher_equal(a, ka, b, kb, atol=1e-6):
    for pa, pb in zip(params_of(a, ka), params_of(b, kb)):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def trained(data):
    return train(*data)


def test_teachers_for_rank_contiguous_blocks_cover_all():
    for k, world in ((250, 2), (250, 3), (7, 4), (3, 3)):
        blocks = [E.teachers_for_rank(k, r, world) for r in range(world)]
        assert sum(blocks, []) == list(range(k))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError):
        E.teachers_for_rank(10, 2, 2)


@pytest.mark.parametrize("arch,channels,size", [("cnn-small", 1, 28), ("cnn-deep", 3, 32)])
def test_forward_equals_extracted_single_models(arch, channels, size):
    ens = E.init_teachers(E.TeacherEnsemble(arch, channels, 10, size, [4, 0, 2]), seed=1)
    x = torch.randn(3, 5, channels, size, size)
    out = ens(x)
    shared = ens(x[0])
    assert out.shape == (3, 5, 10)
    for k in range(3):
        single = E.extract_teacher(ens, k)
        torch.testing.assert_close(out[k], single(x[k]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared[k], single(x[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ens(x[1:], teachers=slice(1, 3)), out[1:], atol=1e-6, rtol=0)
    # load_teachers is the inverse of extract_teacher
    models = [E.extract_teacher(ens, k) for k in (2, 1, 0)]
    other = E.load_teachers(E.TeacherEnsemble(arch, channels, 10, size, 3), models)
    torch.testing.assert_close(other(x), ens(x.flip(0)).flip(0), atol=1e-6, rtol=0)


def test_init_depends_on_teacher_id_not_position():
    a = E.init_teachers(E.TeacherEnsemble("cnn-small", 1, 10, 28, [0, 1, 2]), seed=5)
    b = E.init_teachers(E.TeacherEnsemble("cnn-small", 1, 10, 28, [2]), seed=5)
    assert_teacher_equal(a, 2, b, 0, atol=0)
    assert not torch.equal(a.weights[0][0], a.weights[0][1])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_training_equals_separately_trained_networks(data, optimizer):
    images, labels, owner = data
    hp = dict(lr=0.05 if optimizer == "sgd" else 1e-3, momentum=0.9, weight_decay=1e-3, seed=11)
    ens, _ = train(images, labels, owner, optimizer=optimizer, **hp)
    init = E.init_teachers(E.TeacherEnsemble("cnn-small", 1, CLASSES, 28, K), seed=hp["seed"])
    shards = E.shards_of(owner, K)
    for t in range(K):
        model = E.extract_teacher(init, t)
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9, weight_decay=1e-3)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], weight_decay=1e-3)
        for epoch in range(2):
            index, mask, shifts = E.epoch_batches(shards, [t], seed=hp["seed"], epoch=epoch, batch_size=BATCH,
                                                  augment=True)
            for s in range(index.shape[0]):
                keep = mask[s, 0]
                x = shift_images(images[index[s, 0][keep]], shifts[s, 0][keep])
                loss = F.cross_entropy(model(x), labels[index[s, 0][keep]])
                opt.zero_grad()
                loss.backward()
                opt.step()
        for p_batched, p_single in zip(params_of(ens, t), model.parameters()):
            torch.testing.assert_close(p_batched, p_single.detach(), atol=2e-5, rtol=1e-4)


def test_teacher_depends_only_on_its_own_shard(data, trained):
    images, labels, owner = data
    images, labels = images.clone(), labels.clone()
    other = owner == 1
    images[other] = torch.randn_like(images[other]) * 3
    labels[other] = (labels[other] + 1) % CLASSES
    perturbed, _ = train(images, labels, owner)
    for t in (0, 2):
        assert_teacher_equal(trained[0], t, perturbed, t)
    assert not torch.allclose(trained[0].weights[0][1], perturbed.weights[0][1])


def test_subset_and_grouping_give_the_same_teachers(data, trained):
    subset, info = train(*data, teacher_ids=[2, 0], group_size=1)
    assert info["teacher_ids"] == [2, 0] and subset.teacher_ids == (2, 0)
    assert_teacher_equal(trained[0], 2, subset, 0)
    assert_teacher_equal(trained[0], 0, subset, 1)


def test_resume_after_a_crash_equals_uninterrupted(data, trained, tmp_path):
    path = tmp_path / "teachers" / "ensemble.pt"
    seen = []

    def crash(epoch, epochs, step, steps, loss, images_per_s):
        seen.append((epoch, step, steps))
        if epoch == 2 and step == 2:
            raise KeyboardInterrupt  # killed mid-epoch, after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(*data, checkpoint_path=path, fingerprint="abc", progress=crash)
    assert seen[0] == (1, 1, 3) and load_checkpoint(path)["epoch"] == 1
    resumed, info = train(*data, checkpoint_path=path, fingerprint="abc")
    assert info["start_epoch"] == 1
    for t in range(K):
        assert_teacher_equal(trained[0], t, resumed, t, atol=0)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 2 and ckpt["teacher_ids"] == [0, 1, 2]
    assert set(ckpt) >= {"model", "optimizer", "epoch", "rng", "fingerprint", "teacher_ids"}
    assert set(ckpt["rng"]) == {"torch", "numpy"}
    again = E.ensemble_from_checkpoint(path)
    assert_teacher_equal(trained[0], 1, again, 1, atol=0)
    # a finished run resumes to the same result without training
    _, done = train(*data, checkpoint_path=path, fingerprint="abc")
    assert done["start_epoch"] == 2 and done["images"] == 0
    with pytest.raises(CheckpointMismatch, match="different configuration"):
        train(*data, checkpoint_path=path, fingerprint="other")
    with pytest.raises(CheckpointMismatch, match="lr"):
        train(*data, checkpoint_path=path, fingerprint="abc", lr=0.1)


def test_votes_rows_sum_to_k_and_chunking_is_exact(data, trained):
    images, labels, _ = data
    ens = trained[0]
    whole = E.predict(ens, images, chunk_size=10_000)
    chunked = E.predict(ens, images, chunk_size=7, teacher_chunk=2)
    tiny_budget = E.predict(ens, images, chunk_size=5, max_activation_bytes=1)
    assert whole.dtype == torch.int64 and whole.shape == (K, len(images))
    assert torch.equal(whole, chunked) and torch.equal(whole, tiny_budget)
    for k in range(K):
        assert torch.equal(whole[k], E.extract_teacher(ens, k)(images).argmax(1))
    votes = E.votes_from_predictions(whole, CLASSES)
    assert votes.dtype == torch.int64 and votes.shape == (len(images), CLASSES)
    assert torch.equal(votes.sum(1), torch.full((len(images),), K))
    acc = E.teacher_accuracies(whole, labels)
    assert acc.shape == (K,) and torch.allclose(acc, (whole == labels).double().mean(1))


def test_tied_logits_give_exactly_one_vote_for_the_first_class():
    ens = E.init_teachers(E.TeacherEnsemble("cnn-small", 1, 5, 28, 4), seed=0)
    with torch.no_grad():
        ens.weights[-1].zero_()
        ens.biases[-1].zero_()
        ens.biases[-1][:, 2:4] = 1.0  # classes 2 and 3 tie for every teacher
    preds = E.predict(ens, torch.randn(6, 1, 28, 28), chunk_size=4)
    assert torch.equal(preds, torch.full((4, 6), 2))
    votes = E.votes_from_predictions(preds, 5)
    assert torch.equal(votes, torch.tensor([[0, 0, 4, 0, 0]] * 6))
    with pytest.raises(ValueError):
        E.votes_from_predictions(torch.tensor([[5]]), 5)


def _rank_main(rank, world, store_path, out_path, data):
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        ids = E.teachers_for_rank(K, rank, world)
        part, _ = train(*data, teacher_ids=ids)
        full = E.all_gather_ensemble(part, K)
        if rank == 0:
            torch.save(full.state_dict(), out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_equal_the_single_process_run(data, trained, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "gathered.pt"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(out), data), nprocs=2, join=True)
    gathered = E.TeacherEnsemble("cnn-small", 1, CLASSES, 28, K)
    gathered.load_state_dict(torch.load(out, weights_only=True))
    for t in range(K):
        assert_teacher_equal(trained[0], t, gathered, t)
    parts = [train(*data, teacher_ids=E.teachers_for_rank(K, r, 2), epochs=1)[0] for r in (1, 0)]
    merged = E.merge_ensembles(parts)
    assert merged.teacher_ids == (0, 1, 2)
    assert_teacher_equal(parts[0], 0, merged, E.teachers_for_rank(K, 1, 2)[0], atol=0)
