"""Where the images come from: built-in datasets, your own image folders, or ``.npz`` arrays.

Each source is one module registered in ``sources`` (``builtin``, ``folders``, ``arrays``);
``source_of(data_config)`` is how the rest of pate asks a source what it is (its records' names and
identities, its public files and description). ``load(data_config, root)`` gives a ``Dataset``
from any source; ``describe`` its sizes, classes and image shape (for a built-in dataset without
reading it). The classes and the image shape are published, so for your own data they come from
the config or the public images only, and the data is named by ``DataConfig.public_name``, never a
path. ``root`` (``--data-root``) holds the built-in datasets and the decoded-image cache of the
folder source (DICOM files among the folders: ``pate.data.dicom``).
"""
from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, DatasetSpec
from . import arrays, builtin, folders  # noqa: F401  (each registers its source)
from .builtin import prepare
from .dataset import DEFAULT_ROOT, DataError, Dataset, to_float
from .sources import SOURCES, Source, check_registry, register_source, source_of

__all__ = ["DEFAULT_ROOT", "DataError", "Dataset", "SOURCES", "Source", "describe", "load", "prepare",
           "register_source", "source_of", "to_float"]
check_registry()


def load(config: DataConfig, root: Path = DEFAULT_ROOT, quiet: bool = True, auto_prepare: bool = True) -> Dataset:
    """The configured data as arrays (built-in datasets prepared offline first where possible,
    unless ``auto_prepare`` is False)."""
    return source_of(config).load(config, Path(root), quiet, auto_prepare)


def describe(config: DataConfig, root: Path = DEFAULT_ROOT) -> DatasetSpec:
    """Sizes, classes and image shape of the configured data: a built-in dataset's from its table,
    other sources' from their (cached) images."""
    source = source_of(config)
    return source.describe(config, Path(root)) if source.describe else load(config, root).spec
