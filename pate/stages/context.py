"""What every stage reads: the run directory, the partition, the dataset, the ledger, the device.

A stage is a plain function of a ``Context``. It reads earlier stages' artifacts through the
loaders here, which check each artifact (recorded hash, invariants) before it is trusted.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import budgets
from .. import data as data_mod
from ..config import ConfigError, DatasetSpec, PipelineConfig
from ..io import CheckpointError, create_exclusive, load_checkpoint, sha256_file
from ..models import build_model
from ..partition import PartitionError, verify_partition
from ..privacy import accounting, individual, ledger
from ..privacy.accounting import resolve_orders
from ..privacy.mechanisms import Mechanism, build
from ..progress import say
from ..run import RunDir, RunError

# The run directory's artifacts (the stage registry says which stage writes each).
PARTITION = "partition.npz"
DATA = "data.json"  # the data's description, and for image folders every file with its sha256 (PRIVATE)
TEACHERS_DIR = "teachers"
EXTRACTOR = "teachers/extractor.pt"
VOTES = "votes.npz"
NEIGHBOURS = "neighbours.npz"  # private-knn: each query's private records within its radius (PRIVATE)
KNN_PRIVATE = "teachers/knn-private.pt"  # private-knn: the private records in the public feature space (PRIVATE)
KNN_PUBLIC = "teachers/knn-public.pt"  # private-knn: the public pool and test images in that space
RECORD_BUDGETS = "record_budgets.npz"  # private-knn: every private record's budget, resolved once (PRIVATE)
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
    probability private_size / N, N a built-in dataset's public size (``pate.records.assign``)."""
    _, pool, test = config.data.sizes(spec)
    keep_rate = config.data.private_size / spec.num_private if config.data.private_size else 1.0
    return dict(num_train=spec.num_private, keep_rate=keep_rate, num_public=spec.num_public,
                num_teachers=config.teachers.count, student_pool=pool, test_size=test,
                num_queries=config.aggregator.max_queries, num_pool=None if spec.shared_split else spec.num_pool)


def load_partition(ctx: Context) -> dict[str, np.ndarray]:
    arrays = ctx.run.load_npz(PARTITION)
    try:
        verify_partition(arrays, **partition_sizes(ctx.config, ctx.spec))
    except PartitionError as exc:
        raise RunError(f"{ctx.run.file(PARTITION)} is invalid: {exc}") from None
    return arrays


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
    spec, arch = data_spec(run), run.config.student.arch
    model = build_model(arch, spec.channels, spec.num_classes, spec.image_size)
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


def orders(config: PipelineConfig) -> np.ndarray:
    return resolve_orders(config.privacy.orders)


def release_parameters(config: PipelineConfig, num_classes: int) -> accounting.ReleaseParameters | None:
    """The smooth-sensitivity release's λ, β, σ_ss: as configured, or proposed from the settings
    alone (``accounting.propose_release``); None when the run releases no data-dependent figure."""
    priv = config.privacy
    if not priv.data_dependent_release:
        return None
    if priv.ss_order:
        return accounting.ReleaseParameters(priv.ss_order, priv.ss_beta, priv.ss_sigma)
    return accounting.propose_release(mechanism(config), config.teachers.count, num_classes,
                                      config.aggregator.max_queries, tuple(orders(config)), priv.delta,
                                      priv.conversion)


def privacy_settings(config: PipelineConfig, num_classes: int,
                     order_list: np.ndarray | None = None) -> accounting.Settings:
    """Everything the run's public statement is computed from (``order_list`` overrides the orders)."""
    return accounting.Settings(
        mechanism=mechanism(config), num_teachers=config.teachers.count, num_classes=num_classes,
        max_queries=config.aggregator.max_queries, delta=config.privacy.delta,
        orders=tuple(orders(config) if order_list is None else order_list), conversion=config.privacy.conversion,
        epsilon_budget=config.aggregator.epsilon_budget, release=release_parameters(config, num_classes),
        record_epsilon=max(budgets.levels(config.privacy.record_budgets, config.privacy.record_epsilon))
        if mechanism(config).individual else 0.0)


WARN_EPSILON = 10.0  # a guarantee above this promises little: say so
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


def check_accountable(config: PipelineConfig, num_classes: int) -> accounting.Guarantee:
    """The run's worst-case guarantee, computed before anything else happens; settings whose
    privacy cannot be accounted (no finite guarantee) are refused here, before anything is written."""
    try:
        guarantee = accounting.guarantee(privacy_settings(config, num_classes))
    except (ValueError, ArithmeticError) as exc:
        raise ConfigError(f"the privacy settings cannot be accounted ({exc}); check [aggregator] and [privacy]") from None
    if not math.isfinite(guarantee.epsilon):
        raise ConfigError("the privacy settings give no finite guarantee (epsilon is infinite at every order); "
                          "check [aggregator] sigma1, sigma2, gamma and [privacy] orders")
    return guarantee


def votes_file(config: PipelineConfig) -> str:
    """What the aggregator decides from: the vote histograms, or (private-knn) the neighbourhoods."""
    return NEIGHBOURS if mechanism(config).individual else VOTES


def expected_ledger_header(run: RunDir, num_queries: int) -> ledger.LedgerHeader:
    config = run.config  # bound to the settings up to aggregation: the student may be retrained
    return ledger.LedgerHeader(config_sha256=config.upstream_fingerprint(),
                               votes_sha256=sha256_file(run.verified(votes_file(config))),
                               mechanism=config.aggregator.mechanism, seeded=config.seeded, num_queries=num_queries)


def ledger_key(run: RunDir, create: bool = False) -> bytes:
    """The ledger's HMAC key (``ledger.key``, 0600, random), created with the ledger."""
    path = run.file(LEDGER_KEY)
    if create and not path.exists():
        create_exclusive(path, os.urandom(ledger.KEY_BYTES))
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the ledger cannot be checked, so it cannot be trusted; restore it "
                       "from a backup, or start a new run directory (which aggregates, and spends, again)") from None
    if len(key) != ledger.KEY_BYTES:
        raise RunError(f"{path} is damaged; restore it from a backup")
    return key


def decided(run: RunDir) -> int:
    """How many queries the manifest says were decided (the ledger may hold more, never fewer)."""
    count = run.record("aggregate").get("decided", 0)
    return count if isinstance(count, int) and count >= 0 else 0


@dataclass(frozen=True)
class KnnInputs:
    """What private-knn's aggregator decides from (PRIVATE): each query's neighbourhood, the labels
    and budgets of the run's private records, and what a member pays."""
    hoods: individual.Neighbourhoods
    records: np.ndarray  # (N,) index of each of the run's private records in the private set
    labels: np.ndarray  # (N,)
    query_index: np.ndarray
    charges: individual.Charges
    num_classes: int

    def replay(self, gaussian_budget: np.ndarray, answered: np.ndarray):
        """(filter state, vote rows, query after which each record retired) after ``answered``."""
        return individual.replay(self.hoods, self.labels, gaussian_budget, self.charges, answered, self.num_classes)

    def votes_of(self, gaussian_budget: np.ndarray):
        """For ``load_ledger``: the (Q, m) votes the recorded decisions were made on (0 after them)."""
        def rebuild(book_records) -> np.ndarray:
            answered = np.array([r.answered for r in book_records], dtype=bool)
            _, votes, _ = self.replay(gaussian_budget, answered)
            pad = np.zeros((len(self.query_index) - len(votes), self.num_classes), np.int64)
            return np.concatenate([votes, pad])
        return rebuild


def knn_inputs(run: RunDir, num_classes: int) -> KnnInputs:
    data = run.load_npz(NEIGHBOURS)
    try:
        hoods = individual.Neighbourhoods(data["indptr"], data["members"])
        if len(data["labels"]) != len(data["records"]) or (len(hoods.members) and (
                hoods.members.min() < 0 or hoods.members.max() >= len(data["records"]))):
            raise ValueError("members name records outside the run's private set")
    except (KeyError, ValueError) as exc:
        raise RunError(f"{run.file(NEIGHBOURS)} is invalid ({exc}); refusing to spend privacy on it") from None
    mech = mechanism(run.config)
    return KnnInputs(hoods, data["records"], data["labels"], data["query_index"],
                     individual.Charges.of(mech.sigma1, mech.sigma2), num_classes)


def gaussian_budgets(epsilon: np.ndarray, config: PipelineConfig) -> np.ndarray:
    """Each record's Gaussian budget (``pate.privacy.individual``) from its ε budget at δ."""
    levels, inverse = np.unique(np.asarray(epsilon, dtype=float), return_inverse=True)
    order_list, priv = orders(config), config.privacy
    converted = np.array([individual.gaussian_budget(float(e), order_list, priv.delta, priv.conversion)
                          for e in levels])
    return converted[inverse]


def load_ledger(run: RunDir, votes, query_index: np.ndarray) -> ledger.Ledger:
    """The ledger, after checking its chain, that it belongs to this run, agrees with the votes and
    holds every query the manifest counts as decided. ``votes`` is the vote matrix, or (private-knn,
    whose votes depend on earlier answers) a function of the parsed records that rebuilds it."""
    path = run.file(LEDGER)
    try:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            count = decided(run)
            raise ledger.LedgerError(f"no ledger at {path}" + (
                f", though {count} queries were decided: it was deleted, and they must not be decided again; "
                "restore it from a backup" if count else "")) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ledger.LedgerError(f"{path} is unreadable: {exc}") from None
        book = ledger.parse(text, ledger_key(run), str(path))
        expected = expected_ledger_header(run, len(query_index))
        if callable(votes):
            if book.header.num_queries != len(query_index) or len(book.records) > len(query_index):
                raise ledger.LedgerError("the ledger was written for other queries")
            votes = votes(book.records)
        ledger.check_against_votes(book.header, book.records, config_sha256=expected.config_sha256,
                                   votes_sha256=expected.votes_sha256, votes=votes, query_index=query_index)
        if len(book.records) < decided(run):
            raise ledger.LedgerError(
                f"{path} records {len(book.records)} queries but {decided(run)} were decided: it was cut, and the "
                "missing queries must not be decided again; restore it from a backup")
    except ledger.LedgerError as exc:
        raise RunError(f"{path}: {exc}") from None
    return book
