"""Where the images come from: built-in datasets, your own image folders, or ``.npz`` arrays.

``load(data_config, root)`` gives a ``Dataset`` from any source; ``describe`` its sizes, classes
and image shape (for a built-in dataset without reading it). The classes and the image shape are
published, so for your own data they come from the config or the public images only, and the data
is named by ``DataConfig.public_name``, never a path. ``root`` (``--data-root``) holds the
built-in datasets and the decoded-image cache of the folder source (DICOM files among the folders:
``pate.data.dicom``).
"""
from __future__ import annotations

from pathlib import Path

from ..config import DATASETS, DataConfig, DatasetSpec
from ..progress import Progress
from . import arrays, builtin, folders
from .builtin import prepare
from .dataset import DEFAULT_ROOT, DataError, Dataset, to_float

__all__ = ["DEFAULT_ROOT", "DataError", "Dataset", "describe", "load", "prepare", "to_float"]


def load(config: DataConfig, root: Path = DEFAULT_ROOT, quiet: bool = True, auto_prepare: bool = True) -> Dataset:
    """The configured data as arrays (built-in datasets prepared offline first where possible,
    unless ``auto_prepare`` is False)."""
    root = Path(root)
    if config.source == "builtin":
        return builtin.load(config.dataset, root, auto_prepare=auto_prepare)
    if config.source == "arrays":
        return arrays.load(config.public_name, Path(config.private_file), Path(config.public_file),
                           Path(config.test_file) if config.test_file else None, classes=config.classes,
                           channels=config.channels, image_size=config.image_size)
    bars: dict[str, Progress] = {}

    def progress(what: str, done: int, total: int) -> None:
        bar = bars.setdefault(what, Progress(total, f"data[{what} images]", quiet))
        bar.update_to(done)

    return folders.load(config.public_name, Path(config.private_dir), Path(config.public_dir),
                        Path(config.test_dir) if config.test_dir else None, root=root,
                        image_size=config.image_size, channels=config.channels, classes=config.classes,
                        dicom_window=config.dicom_window, dicom_frames=config.dicom_frames, progress=progress)


def describe(config: DataConfig, root: Path = DEFAULT_ROOT) -> DatasetSpec:
    """Sizes, classes and image shape of the configured data: a built-in dataset's from its table,
    other sources' from their (cached) images."""
    if config.source == "builtin":
        return DATASETS[config.dataset]
    return load(config, root).spec
