"""What every stage reads: the artifacts' names, the run directory, the partition, the dataset, the device.

A stage is a plain function of a ``Context``. It reads earlier stages' artifacts through the
loaders here, which check each artifact (recorded hash, invariants) before it is trusted. What only
aggregation and its views read (privacy settings, the ledger's files) is in ``pate.aggregation``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import data as data_mod
from . import spend_log
from ..config import DatasetSpec, PipelineConfig
from ..io import CheckpointError, load_checkpoint
from ..nets.models import build_student
from ..data.partition import PartitionError, verify_partition
from ..privacy.mechanisms import Mechanism, build
from ..progress import say
from .directory import RunDir, RunError

# The run directory's artifacts (the stage registry says which stage writes each).
PARTITION = "partition.npz"
DATA = "data.json"  # the data's description, and for image folders every file with its sha256 (PRIVATE)
TEACHERS_DIR = "teachers"
EXTRACTOR = "teachers/extractor.pt"
VOTES = "votes.npz"
NEIGHBOURS = "neighbours.npz"  # private-knn: each query's private records within its radius (PRIVATE)
KNN_PRIVATE = "teachers/knn-private.pt"  # private-knn: the private records in the public feature space (PRIVATE)
KNN_PUBLIC = "teachers/knn-public.pt"  # private-knn: the public pool and test images in that space
DPSGD_POOL = "teachers/dpsgd-pool.npz"  # the DP-SGD teacher's probabilities on the pool (PRIVATE until aggregated)
RECORD_BUDGETS = "record_budgets.npz"  # every private record's budget, resolved once (reverse-knn: and its anchors) (PRIVATE)
TEACHERS_EVAL = "teachers_eval.json"
LEDGER = "ledger.jsonl"
LEDGER_KEY = "ledger.key"
LABELS = "labels.npz"
PRIVACY = "privacy.json"
STUDENT_MODEL = "student/model.pt"
STUDENT_HISTORY = "student/history.json"
METRICS = "metrics.json"


TEACHER_PART_PREFIX = "teachers/part-"


HEADS_PREFIX = "teachers/heads-"
PUBLIC_FEATURES_PREFIX = "teachers/public-features-"


def teacher_part(rank: int, world: int) -> str:
    """The file of the teachers trained by torchrun rank ``rank`` of ``world``."""
    return f"{TEACHER_PART_PREFIX}{rank}-of-{world}.pt"


def heads_part(rank: int, world: int) -> str:
    """The logistic heads (public-features teachers) trained by rank ``rank`` of ``world``."""
    return f"{HEADS_PREFIX}{rank}-of-{world}.pt"


def public_features_part(rank: int, world: int) -> str:
    """Pretrained-backbone features of rank ``rank``'s slice of the public pool and test split."""
    return f"{PUBLIC_FEATURES_PREFIX}{rank}-of-{world}.pt"


def private_features_part(rank: int, world: int) -> str:
    """Pretrained-backbone features of the private records of rank ``rank``'s teachers (PRIVATE)."""
    return f"teachers/private-features-{rank}-of-{world}.pt"


@dataclass
class Context:
    run: RunDir
    data_root: Path = data_mod.DEFAULT_ROOT
    device: str = "auto"
    quiet: bool = False
    _spec: DatasetSpec | None = field(default=None, repr=False)

    @property
    def config(self) -> PipelineConfig:
        return self.run.config

    @property
    def spec(self) -> DatasetSpec:
        """The data's sizes, classes and image shape (as recorded when the partition was made)."""
        if self._spec is None:
            self._spec = data_spec(self.run, self.data_root)
        return self._spec

    def say(self, message: str) -> None:
        say(message, self.quiet)


def data_spec(run: RunDir, data_root: Path = data_mod.DEFAULT_ROOT) -> DatasetSpec:
    """The run's data description: from data.json once the partition is made; before that a built-in
    dataset's table entry, or the (cached) images of the other sources."""
    if run.has(DATA):
        return spec_from_json(run.read_json(DATA))
    return run.config.data.spec or data_mod.describe(run.config.data, data_root)


def spec_from_json(doc: dict) -> DatasetSpec:
    try:
        return DatasetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc["spec"].items()})
    except (KeyError, TypeError) as exc:
        raise RunError(f"{DATA} does not describe the data ({exc}); it cannot be trusted") from None


def data_json(dataset: data_mod.Dataset, source: str) -> dict:
    """What data.json records: the description, and each source file with its content hash."""
    return {"source": source, "name": dataset.name, "spec": dataset.spec._asdict(), "files": dataset.files}


def partition_sizes(config: PipelineConfig, spec: DatasetSpec) -> dict:
    """The sizes a partition is made and checked with. A ``private_size`` draw keeps each record with
    probability private_size / N, N a built-in dataset's public size (``pate.data.records.assign``)."""
    _, pool, test = config.data.sizes(spec)
    keep_rate = config.data.private_size / spec.num_private if config.data.private_size else 1.0
    return dict(num_train=spec.num_private, keep_rate=keep_rate, num_public=spec.num_public,
                num_teachers=config.teachers.count, student_pool=pool, test_size=test,
                num_queries=config.aggregator.max_queries, num_pool=None if spec.shared_split else spec.num_pool)


def load_partition(ctx: Context) -> dict[str, np.ndarray]:
    """The run's partition, checked, and only under the spend directory whose key named its records."""
    arrays = ctx.run.load_npz(PARTITION)
    try:
        verify_partition(arrays, **partition_sizes(ctx.config, ctx.spec))
    except PartitionError as exc:
        raise RunError(f"{ctx.run.file(PARTITION)} is invalid: {exc}") from None
    check_record_key(ctx.run, str(arrays["key_id"]))
    return arrays


def check_record_key(run: RunDir, recorded: str) -> None:
    """Refuse a run partitioned under another spend directory's record key: its fingerprints would
    never meet this directory's, so its spend would compose with nothing (and ``total_budget`` would
    not see it). Makes no spend directory where there is none."""
    current = spend_log.key_id(create=False)
    if current != recorded:
        where = spend_log.directory()
        this = f"this one is {where} (key id {current})" if current else f"this one, {where}, has no key yet"
        raise RunError(f"{run.path} was partitioned under the record key of another spend directory (key id "
                       f"{recorded}); {this}: run it with PATE_SPEND_DIR set to the one it was partitioned under, or "
                       "start a new run directory")


def load_dataset(ctx: Context) -> data_mod.Dataset:
    """The run's data; once the partition is made, only if its files are those recorded then."""
    dataset = data_mod.load(ctx.config.data, ctx.data_root, quiet=ctx.quiet)
    if ctx.run.has(DATA):
        recorded = ctx.run.read_json(DATA).get("files", {})
        current = json.loads(json.dumps(dataset.files))
        if recorded != current:
            raise RunError(f"the data changed since this run started: {_first_change(recorded, current)}; the run "
                           "continues only on the data it was started with (start a new run directory for new data)")
    return dataset


def _first_change(recorded: dict, current: dict) -> str:
    for part in ("private", "public", "test"):
        old, new = dict(map(tuple, recorded.get(part, []))), dict(map(tuple, current.get(part, [])))
        for path in sorted(set(old) | set(new)):
            if path not in new:
                return f"{path} was removed"
            if path not in old:
                return f"{path} was added"
            if old[path] != new[path]:
                return f"{path} changed"
    return "the files differ"


def public_images(dataset: data_mod.Dataset, index: np.ndarray):
    """Normalised float images of the public set at ``index``."""
    return data_mod.to_float(dataset.public_x[index], dataset.mean, dataset.std)


def private_images(dataset: data_mod.Dataset, index: np.ndarray):
    """Normalised float images of the private set at ``index``."""
    return data_mod.to_float(dataset.private_x[index], dataset.mean, dataset.std)


def normaliser(dataset: data_mod.Dataset):
    """uint8 images -> normalised float images, for converting a batch at a time."""
    return lambda batch: data_mod.to_float(batch, dataset.mean, dataset.std)


def student_model(run: RunDir):
    """The trained student of ``run`` (a torch module on normalised inputs), its weights verified."""
    spec, cfg = data_spec(run), run.config.student
    model = build_student(cfg.arch, spec.channels, spec.num_classes, spec.image_size, members=cfg.members,
                          flip_average=cfg.flip_average, teacher_weight=cfg.teacher_weight)
    try:
        model.load_state_dict(load_checkpoint(run.verified(STUDENT_MODEL)))
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    return model


def resolve_device(name: str) -> str:
    import torch  # not at import time: `pate --help` and the privacy views never need torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for, but no CUDA device is available")
    return name


def mechanism(config: PipelineConfig) -> Mechanism:
    """The configured aggregator as a mechanism object (``pate.privacy.mechanisms``)."""
    return build(config.aggregator.mechanism, config.aggregator)


PUBLIC_KEYS = ("guarantee", "mechanism", "settings", "delta", "queries_asked", "queries_answered", "seeded",
               "data_dependent_release")
METRICS_KEYS = ("student_accuracy", "label_accuracy", "teacher_accuracy_mean", "ensemble_accuracy", "test_size")


def read_privacy(run: RunDir) -> dict:
    """privacy.json, checked against its recorded hash and for the sections every view reads."""
    report = run.read_json(PRIVACY)
    public, private = report.get("public"), report.get("private")
    if not isinstance(public, dict) or not isinstance(private, dict) or any(k not in public for k in PUBLIC_KEYS) \
            or not isinstance(public["guarantee"], dict) or "epsilon" not in public["guarantee"]:
        raise RunError(f"{run.file(PRIVACY)} lacks the public statement or the private figures (written by another "
                       "version of pate?); it cannot be shown")
    return report


def read_metrics(run: RunDir) -> dict:
    metrics = run.read_json(METRICS)
    missing = [k for k in METRICS_KEYS if k not in metrics]
    if missing:
        raise RunError(f"{run.file(METRICS)} lacks {', '.join(missing)}; rerun `pate evaluate` on a new attempt")
    return metrics


