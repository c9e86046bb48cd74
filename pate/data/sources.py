"""The data-source registry: one module per source (``builtin``, ``folders``, ``arrays``), each a
``Source`` registered here by ``[data] source``.

A source says everything the rest of pate needs to know of it, so nothing outside ``pate.data``
tells sources apart by name (``tests/test_layout.py``): it asks ``source_of(config.data)``.

- ``load`` (and ``describe``, the spec without reading the data, where the source can): the data;
- ``description``: what the model card says the data is (PUBLIC: never a path);
- ``identities``: who each private record is, for its teacher and its spend (``pate.data.records``);
- ``record_names``: each private record's stable name in a per-record budget file and the audit
  (None: by position, allowed only where ``by_index``, a fixed built-in dataset);
- ``public_files``: each public image's file, relative to the public folder (``labels.csv``).

What the config checks of a source before any data is read (the keys it needs, those only it
takes, whether it is a built-in dataset) is a ``pate.config.SourceKeys``: the config validates
before ``pate.data`` is imported, so the built-in sources' keys are declared there and a new source
brings its own (``register_source`` adds them to ``pate.config.SOURCES``). ``check_registry``
(run when ``pate.data`` is imported) refuses a config source without a module, or the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .. import config as config_mod
from ..config import DataConfig, DatasetSpec, SourceKeys
from . import records
from .dataset import Dataset

# The run's record of the data's files (data.json's "files": {"private": [[path, sha256], ...],
# "public": [...], "test": [...]}), read on demand: only sources that name records by file read it.
Files = Callable[[], dict]


def _no_names(config: DataConfig, files: Files) -> Optional[list[str]]:
    return None


def _no_public_files(config: DataConfig, files: Files) -> list[str]:
    return []


def _content(config: DataConfig, dataset: Dataset) -> list[bytes]:
    return records.identities(dataset.private_x, dataset.private_y)


@dataclass(frozen=True)
class Source:
    name: str  # [data] source
    load: Callable[[DataConfig, Path, bool, bool], Dataset]  # (config, root, quiet, auto_prepare)
    description: Callable[[DataConfig], str]  # PUBLIC: the model card's "Source:" line
    describe: Optional[Callable[[DataConfig, Path], DatasetSpec]] = None  # None: the loaded data's spec
    identities: Callable[[DataConfig, Dataset], list[bytes]] = _content  # each private record (records.py)
    record_names: Callable[[DataConfig, Files], Optional[list[str]]] = _no_names  # budgets, audit
    by_index: bool = False  # budget files may name records by position (a fixed built-in dataset only)
    public_files: Callable[[DataConfig, Files], list[str]] = _no_public_files  # labels.csv's public_file
    keys: Optional[SourceKeys] = None  # what the config checks; None: declared in pate.config.SOURCES


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add ``source`` (and its config keys) under its name; a name is registered once."""
    if source.name in SOURCES:
        raise ValueError(f"the data source {source.name!r} is taken")
    declared = config_mod.SOURCES.get(source.name)
    if source.keys is None and declared is None:
        raise ValueError(f"the data source {source.name!r} needs its config keys (Source.keys)")
    if source.keys is not None and declared is not None and declared != source.keys:
        raise ValueError(f"the data source {source.name!r}: its keys differ from pate.config.SOURCES")
    if declared is None:
        config_mod.SOURCES[source.name] = source.keys
    SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    """Remove a source registered with its own keys (the tests' sources)."""
    if SOURCES.pop(name).keys is not None:
        config_mod.SOURCES.pop(name, None)


def check_registry() -> None:
    """Every source the config accepts has a module here, and every module's source is accepted."""
    if set(SOURCES) != set(config_mod.SOURCES):
        raise RuntimeError(f"data sources without a module: {sorted(set(config_mod.SOURCES) - set(SOURCES))}; "
                           f"without config keys: {sorted(set(SOURCES) - set(config_mod.SOURCES))}")


def source_of(config: DataConfig) -> Source:
    """The source ``[data] source`` names (the config has checked it is registered)."""
    try:
        return SOURCES[config.source]
    except KeyError:
        raise ValueError(f"no data source {config.source!r}: one of {sorted(SOURCES)}") from None
