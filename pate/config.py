"""Pipeline configuration: TOML -> frozen dataclasses, validated before any data is touched.

Every hyperparameter that touches privacy (T, sigma1, sigma2, orders, beta grid, query count)
is fixed here, before the private data is seen. A config's fingerprint (sha256 of
its canonical JSON) ties a run directory to the exact settings it was started with.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union, get_args, get_origin, get_type_hints

from .errors import PateError
from .io import InputError, read_text_limited
from .privacy.mechanisms import MECHANISMS as MECHANISM_CLASSES
from .privacy.discrete import MAX_TABLE_SIGMA
from .privacy.smooth_sensitivity import MAX_WALK_CELLS, check_conditions, walk_fits
from .nets.models import ARCHITECTURES, TEACHER_ARCHITECTURES
from .selection import SELECTIONS


class DatasetSpec(NamedTuple):
    """What pate needs to know of the data: sizes, classes, image shape (a built-in dataset's before
    reading it; other sources' from their images)."""
    num_private: int  # the private set (a built-in dataset's train split)
    num_public: int  # every public image: the pool candidates, then (separate split) the test candidates
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per-channel mean and std of [0, 1] pixels (public information)
    std: tuple[float, ...]
    num_pool: int = 0  # public images that may join the student pool (0 = all of them)
    num_test: int = 0  # labelled test candidates (0 with a shared split: the pool's own images)
    classes: tuple[str, ...] = ()
    shared_split: bool = True  # the held-out test split is drawn from the same public images as the pool


_DIGITS = tuple(str(d) for d in range(10))
DATASETS = {  # class names as torchvision's dataset classes give them (the digits as digits)
    "mnist": DatasetSpec(60000, 10000, 10, 1, 28, (0.1307,), (0.3081,), classes=_DIGITS),
    "fashion-mnist": DatasetSpec(60000, 10000, 10, 1, 28, (0.2860,), (0.3530,), classes=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "svhn": DatasetSpec(73257, 26032, 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        classes=_DIGITS),
    "cifar10": DatasetSpec(50000, 10000, 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), classes=(
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}
ARCHS = tuple(ARCHITECTURES)  # a student's; teachers take TEACHER_ARCHITECTURES (no scattering layer)
# Bounds where every computation stays in memory and finishes in seconds: the worst-case guarantee
# looks at every possible top vote count (0..K), planning at every class.
MAX_TEACHERS = 100_000
MAX_CLASSES = 10_000
MAX_SEED = 2**63 - 1
# Every other integer setting has an upper bound too, checked at load: a value past it (2**62 as a batch
# size) would otherwise pass the config and fail later inside torch or numpy with a traceback. Each
# bound is far beyond any sensible run and keeps sizes and loop counts representable and allocatable.
MAX_RECORDS = 100_000_000  # private_size, student_pool, test_size: more than any file pate reads holds
MAX_QUERIES = 1_000_000  # [aggregator] max_queries (and interactive_rounds): planned and accounted in seconds
MAX_EPOCHS = 10_000  # [teachers] epochs, feature_epochs
MAX_STEPS = 10_000_000  # [student] steps, [aggregator] interactive_steps
MAX_BATCH = 8192  # [teachers] and [student] batch_size
MAX_UNLABELED_RATIO = 64  # [student] unlabeled_ratio (FixMatch uses 7): unlabelled images per labelled one
MAX_KNN_K = 100_000  # [aggregator] knn_k
MAX_ORDER, MAX_ORDERS = 1e4, 1000  # Rényi orders: beyond these every conversion is uninformative or overflows
NOISE_RANGE = (1e-6, 1e9)  # noise scales where every bound is finite and representable
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FEATURES = ("none", "simclr", "scattering", "pretrained")


class SourceKeys(NamedTuple):
    """What the config checks of a data source before any data is read; the rest of the source
    (loading it, naming its records) is its module in ``pate.data`` (``pate.data.sources``)."""
    needs: tuple[str, ...] = ()  # [data] keys it must be given
    only: tuple[str, ...] = ()  # [data] keys left at their defaults with every other source
    datasets: bool = False  # a built-in dataset ([data] dataset): sizes and classes public before reading it


# The accepted [data] source names. The config validates before pate.data (which imports it) is
# imported, so the built-in sources' keys are declared here; a new source brings its own through
# ``pate.data.sources.register_source``, which adds them, and pate.data refuses a name here without a
# module there (``pate.data.sources.check_registry``).
SOURCES: dict[str, SourceKeys] = {
    "builtin": SourceKeys(datasets=True),
    "folders": SourceKeys(needs=("private_dir", "public_dir"), only=("dicom_window", "dicom_frames")),
    "arrays": SourceKeys(needs=("private_file", "public_file")),
}
DICOM_FRAMES = ("refuse", "split")  # [data] dicom_frames: what a multi-frame DICOM file is
NAMED_WEIGHTS = re.compile(r"^[A-Z][A-Z0-9_]*$")  # DEFAULT, IMAGENET1K_V1: a library's weights, not a file
PATH_KEYS = ("private_dir", "public_dir", "test_dir", "private_file", "public_file", "test_file")
DATA_NAME_PATTERN = re.compile(r"[^/\\\x00-\x1f\x7f]{1,100}")  # [data] name: a name, never a path
CLASS_NAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
STUDENT_METHODS = ("supervised", "fixmatch", "pseudo-label")
PROPAGATION = ("none", "label-spreading")  # [student] propagation (pate.student.propagation)


class ConfigError(PateError, ValueError):
    """A config a user wrote is unusable; the message names the key and says why."""


def _check(section: str, name: str, ok: bool, must: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"[{section}] {name} must be {must}; found {value!r}")


@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin"  # "builtin" (dataset), "folders" (*_dir) or "arrays" (*_file)
    dataset: str = "mnist"  # builtin: one of DATASETS
    private_dir: str = ""  # folders: ImageFolder layout, one subfolder per class
    public_dir: str = ""  # folders: unlabelled images, any layout
    test_dir: str = ""  # folders: optional ImageFolder of labelled public images, evaluation only
    private_file: str = ""  # arrays: .npz with images and labels
    public_file: str = ""
    test_file: str = ""
    # The image shape and the classes are PUBLISHED (statement, model card, the student's input), so
    # they come from this config or from the public images only, never from the private ones.
    channels: int = 0  # 0 = 3 if any public image has colour, else 1
    image_size: int = 0  # folders: 0 = the median size of the public images, rounded to a multiple of 4
    private_size: int = 0  # built-in data: keep about this many records (each by its own keyed hash); 0 = all
    student_pool: int = 0  # 0 = every public image not held out (built-in: 9 000)
    test_size: int = 0  # 0 = built-in: 1 000 held out; other sources: the whole test set
    split_seed: int = 0
    # Class names, label 0 first; () = the built-in dataset's, or those of the labelled public test
    # set (folders: the test_dir class folders; arrays: 0..the largest public label). Private class
    # folders (labels) must each be one of them.
    classes: tuple[str, ...] = ()
    name: str = ""  # what the data is called in public outputs; "" = the built-in dataset's name, else the source
    # folders, DICOM files (pate.data.dicom): the VOI window [center, width] every monochrome file is
    # shown through, after its Rescale Slope/Intercept ([] = each file's own Window Center/Width, else
    # its pixel range); a multi-frame file "refuse"d or "split" into one image per frame (a private
    # file's frames stay one record for privacy: one teacher, one spend; refused with private-knn).
    dicom_window: tuple[float, ...] = ()
    dicom_frames: str = "refuse"

    def validate(self) -> None:
        _check("data", "source", self.source in SOURCES, f"one of {list(SOURCES)}", self.source)
        keys = SOURCES[self.source]
        for key in PATH_KEYS:
            _check("data", key, "\0" not in getattr(self, key), "a path without NUL bytes", getattr(self, key))
        _check("data", "name", self.name == "" or DATA_NAME_PATTERN.fullmatch(self.name) is not None,
               "a name, not a path: at most 100 characters, no '/', '\\' or control characters", self.name)
        _check("data", "classes", not self.classes or 2 <= len(self.classes) <= MAX_CLASSES,
               f"a list of 2 to {MAX_CLASSES} class names, or [] (from the public test set)", len(self.classes))
        bad = [c for c in self.classes if CLASS_NAME_PATTERN.fullmatch(c) is None]
        _check("data", "classes", not bad, "names of 1 to 200 characters without control characters", bad[:1])
        seen: set[str] = set()
        duplicate = [c for c in map(lambda c: unicodedata.normalize("NFC", c), self.classes)
                     if c in seen or seen.add(c)]
        _check("data", "classes", not duplicate, "distinct names", duplicate[:1])
        for key in keys.needs:
            _check("data", key, bool(getattr(self, key)), f"given with source = {self.source!r}", getattr(self, key))
        if keys.datasets:
            _check("data", "dataset", self.dataset in DATASETS, f"one of {sorted(DATASETS)}", self.dataset)
            _check("data", "classes", not self.classes or self.classes == DATASETS[self.dataset].classes,
                   f"[] with a built-in dataset (its classes are {list(DATASETS[self.dataset].classes)})",
                   list(self.classes))
        _check("data", "channels", self.channels in (0, 1, 3), "0 (from the images), 1 or 3", self.channels)
        _check("data", "image_size", self.image_size == 0 or 8 <= self.image_size <= 1024,
               "0 (the median image size) or in [8, 1024]", self.image_size)
        for key in ("private_size", "student_pool", "test_size"):
            _check("data", key, 0 <= getattr(self, key) <= MAX_RECORDS, f"in [0, {MAX_RECORDS}] (0 = all)",
                   getattr(self, key))
        _check("data", "split_seed", 0 <= self.split_seed <= MAX_SEED, f"in [0, {MAX_SEED}]", self.split_seed)
        # A draw keeps each record with probability private_size / N; N must be public (a built-in
        # dataset's size), or the threshold itself would depend on the private set.
        _check("data", "private_size", self.private_size == 0 or keys.datasets,
               "0 with your own data (choose the records in the files themselves)", self.private_size)
        _check("data", "dicom_window", not self.dicom_window or (len(self.dicom_window) == 2
                                                                  and self.dicom_window[1] >= 1),
               "[] (each file's own window) or [center, width] with width >= 1", list(self.dicom_window))
        _check("data", "dicom_frames", self.dicom_frames in DICOM_FRAMES, f"one of {list(DICOM_FRAMES)}",
               self.dicom_frames)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in dict.fromkeys(k for other in SOURCES.values() for k in other.only if k not in keys.only):
            takers = " or ".join(repr(name) for name, other in SOURCES.items() if key in other.only)
            _check("data", key, getattr(self, key) == defaults[key], f"left out unless source = {takers}",
                   getattr(self, key))
        if self.spec is not None:
            self.check_sizes(self.spec)

    @property
    def public_name(self) -> str:
        """What the data is called in summaries, statements and model cards: ``[data] name``, or the
        built-in dataset's name, or the source ("folders", "arrays"); never a path."""
        return self.name or (self.dataset if self._builtin_dataset else self.source)

    @property
    def spec(self) -> Optional[DatasetSpec]:
        """A built-in dataset's spec; None for sources known only from their images."""
        return DATASETS[self.dataset] if self._builtin_dataset else None

    @property
    def _builtin_dataset(self) -> bool:
        return self.source in SOURCES and SOURCES[self.source].datasets

    def sizes(self, spec: DatasetSpec) -> tuple[int, int, int]:
        """(private records, student pool, held-out test) for data of this ``spec`` (0s resolved)."""
        private = self.private_size or spec.num_private
        if spec.shared_split:
            test = self.test_size or min(1000, spec.num_public // 10)
            return private, self.student_pool or spec.num_public - test, test
        return private, self.student_pool or spec.num_pool, self.test_size if self.test_size else spec.num_test

    def check_sizes(self, spec: DatasetSpec) -> None:
        """The sizes against the data: called for built-in datasets when the config loads, and for
        other sources once their images are known, before anything is written."""
        private, pool, test = self.sizes(spec)
        _check("data", "private_size", private <= spec.num_private,
               f"between 0 (all) and the {spec.num_private} private records", self.private_size)
        if spec.shared_split:
            _check("data", "student_pool + test_size", pool >= 1 and test >= 1 and pool + test <= spec.num_public,
                   f"at most the {spec.num_public} public images (each at least 1)", pool + test)
        else:
            _check("data", "student_pool", 1 <= pool <= spec.num_pool,
                   f"between 1 and the {spec.num_pool} public pool images (0 = all)", self.student_pool)
            _check("data", "test_size", test <= spec.num_test,
                   f"at most the {spec.num_test} labelled test images (0 = all)", self.test_size)


@dataclass(frozen=True)
class TeachersConfig:
    count: int = 250
    arch: str = "cnn-small"
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    augment: bool = True
    seed: int = 0
    # Public features (pate.features): "simclr" = a frozen contrastive extractor trained on the
    # unlabelled public pool + one logistic head per teacher; "scattering" = a fixed wavelet
    # scattering transform (J=2, L=8; nothing trained, feature_epochs/feature_dim unused) + one
    # logistic head per teacher; "none" = CNN teachers from scratch.
    features: str = "none"
    feature_epochs: int = 30
    feature_dim: int = 128
    # features = "pretrained" (pate.features.pretrained): a frozen torchvision backbone, or
    # "timm:<name>"; weights "DEFAULT" (downloaded as the library does), a torchvision weights name,
    # or a local weights file (relative to the pipeline file); backbone_size = the input size the
    # images are resized to (0 = the weights' own, 224 for ImageNet models).
    backbone: str = "resnet18"
    weights: str = "DEFAULT"
    backbone_size: int = 0

    def validate(self) -> None:
        _check("teachers", "count", 1 <= self.count <= MAX_TEACHERS, f"between 1 and {MAX_TEACHERS}", self.count)
        _check("teachers", "features", self.features in FEATURES, f"one of {list(FEATURES)}", self.features)
        _check("teachers", "feature_epochs", 1 <= self.feature_epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}",
               self.feature_epochs)
        _check("teachers", "feature_dim", 2 <= self.feature_dim <= 4096, "between 2 and 4096", self.feature_dim)
        _check("teachers", "backbone", bool(self.backbone.strip()), "a torchvision model name or 'timm:<name>'",
               self.backbone)
        _check("teachers", "weights", bool(self.weights.strip()), "'DEFAULT', a weights name or a file",
               self.weights)
        _check("teachers", "backbone_size", self.backbone_size == 0 or 16 <= self.backbone_size <= 1024,
               "0 (the weights' own) or between 16 and 1024", self.backbone_size)
        _check("teachers", "optimizer", self.optimizer in ("adam", "sgd"), "'adam' or 'sgd'", self.optimizer)
        _check("teachers", "arch", self.arch in TEACHER_ARCHITECTURES, f"one of {list(TEACHER_ARCHITECTURES)} "
               "(the scattering students' feature map is [teachers] features = \"scattering\")", self.arch)
        _check("teachers", "epochs", 1 <= self.epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}", self.epochs)
        _check("teachers", "batch_size", 1 <= self.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH}",
               self.batch_size)
        _check("teachers", "lr", self.lr > 0, "> 0", self.lr)
        _check("teachers", "momentum", 0 <= self.momentum < 1, "in [0, 1)", self.momentum)
        _check("teachers", "weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay)
        _check("teachers", "seed", 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]", self.seed)


@dataclass(frozen=True)
class AggregatorConfig:
    mechanism: str = "confident-gnmax"
    max_queries: int = 640
    threshold: float = 200.0
    sigma1: float = 150.0
    sigma2: float = 40.0
    gamma: float = 0.05  # LNMax: Laplace noise of scale 1/gamma
    epsilon_budget: float = 0.0  # 0 = no budget; else stop before data-independent eps exceeds it
    seed: Optional[int] = None  # None = OS cryptographic noise; a seed is NOT a production guarantee
    # private-knn (pate.features.knn): a query's radius is the distance to its knn_k-th nearest public pool
    # image, in the [teachers] features space projected on knn_dim principal axes of the pool (0 = all)
    knn_k: int = 30
    knn_dim: int = 64
    # interactive-gnmax: the queries are asked in interactive_rounds rounds; before each round a
    # student ([student] settings, interactive_steps steps) is trained on the labels released so far,
    # and its label is accepted where the teachers agree with it and its confidence exceeds
    # student_confidence
    student_confidence: float = 0.9
    interactive_rounds: int = 3
    interactive_steps: int = 1500
    # Release, beside each answered label, the noisy count vector it is the argmax of (soft labels
    # for the student): covered by every mechanism's worst-case guarantee; the papers'
    # data-dependent analysis is about the argmax only, so it does not apply then.
    soft_labels: bool = False
    # Which pool images are asked, on public information only (pate.selection): "random" (the first
    # of the shuffled pool), "k-center" (a greedy cover of the pool in its own pixel PCA space) or,
    # with interactive-gnmax only, "uncertainty" (the teachers vote on the whole pool; each round asks
    # the images its student, trained on released labels, is least certain of: smallest top-1 minus
    # top-2 margin; round 0 the first of the shuffled pool). Each asked query is charged its worst case.
    query_selection: str = "random"

    def validate(self) -> None:
        _check("aggregator", "mechanism", self.mechanism in MECHANISM_CLASSES, f"one of {list(MECHANISM_CLASSES)}",
               self.mechanism)
        _check("aggregator", "max_queries", 1 <= self.max_queries <= MAX_QUERIES, f"between 1 and {MAX_QUERIES}",
               self.max_queries)
        _check("aggregator", "threshold", self.threshold >= 0, ">= 0", self.threshold)
        lo, hi = NOISE_RANGE
        # sigma1's noise is compared with a threshold: its discrete tails are summed exactly, up to MAX_TABLE_SIGMA
        _check("aggregator", "sigma1", lo <= self.sigma1 <= MAX_TABLE_SIGMA, f"in [{lo:g}, {MAX_TABLE_SIGMA:g}]",
               self.sigma1)
        _check("aggregator", "sigma2", lo <= self.sigma2 <= hi, f"in [{lo:g}, {hi:g}]", self.sigma2)
        _check("aggregator", "gamma", 1 / hi <= self.gamma <= 1 / lo, f"in [{1 / hi:g}, {1 / lo:g}]", self.gamma)
        _check("aggregator", "seed", self.seed is None or 0 <= self.seed <= MAX_SEED,
               f"absent (OS noise) or in [0, {MAX_SEED}]", self.seed)
        _check("aggregator", "epsilon_budget", self.epsilon_budget >= 0, ">= 0 (0 = none)",
               self.epsilon_budget)
        _check("aggregator", "knn_k", 1 <= self.knn_k <= MAX_KNN_K, f"between 1 and {MAX_KNN_K}", self.knn_k)
        _check("aggregator", "student_confidence", 0 < self.student_confidence < 1, "in (0, 1)",
               self.student_confidence)
        # Each mechanism's settings are checked against the others only where it is the one configured
        # (interactive_rounds against max_queries for interactive-gnmax): the defaults of a mechanism
        # not in use never refuse a config (max_queries = 2 with confident-gnmax).
        rounds_bound = self.max_queries if MECHANISM_CLASSES[self.mechanism].interactive else MAX_QUERIES
        _check("aggregator", "interactive_rounds", 1 <= self.interactive_rounds <= rounds_bound,
               f"between 1 and max_queries ({self.max_queries})" if rounds_bound == self.max_queries
               else f"between 1 and {MAX_QUERIES}", self.interactive_rounds)
        _check("aggregator", "interactive_steps", 1 <= self.interactive_steps <= MAX_STEPS,
               f"between 1 and {MAX_STEPS}", self.interactive_steps)
        _check("aggregator", "knn_dim", 0 <= self.knn_dim <= 65536, "between 0 (all) and 65536", self.knn_dim)
        _check("aggregator", "query_selection", self.query_selection in SELECTIONS, f"one of {list(SELECTIONS)}",
               self.query_selection)
        _check("aggregator", "query_selection", self.query_selection != "uncertainty"
               or MECHANISM_CLASSES[self.mechanism].interactive,
               f"'random' or 'k-center' with mechanism {self.mechanism!r} ('uncertainty' needs a student between "
               "rounds: mechanism = \"interactive-gnmax\")", self.query_selection)


@dataclass(frozen=True)
class PrivacyConfig:
    delta: float = 1e-5
    orders: tuple[float, ...] = ()  # empty = the paper's default list (pate.privacy.rdp.DEFAULT_ORDERS)
    conversion: str = "improved"
    # Release the data-dependent cost through smooth sensitivity (the papers' convention; it costs
    # its own, data-independent epsilon, added to the guarantee). Order, beta and sigma_ss are fixed
    # here, before any vote is seen; 0 = the values `pate plan` proposes from the settings alone.
    data_dependent_release: bool = False
    ss_order: float = 0.0
    ss_beta: float = 0.0
    ss_sigma: float = 0.0
    # Each record's epsilon over every release in the spend log: an individual filter (the partition leaves
    # out a record this run would take past it; a run whose own worst case passes it is refused); 0 = none.
    total_budget: float = 0.0
    # Individual mechanisms (private-knn): each private record's budget, epsilon at delta; a CSV of
    # `record,epsilon` rows (record = file path under private_dir, or index) sets it per record.
    record_epsilon: float = 1.0
    record_budgets: str = ""

    def validate(self) -> None:
        _check("privacy", "delta", 0 < self.delta < 1, "in (0, 1)", self.delta)
        _check("privacy", "orders", all(1 < o <= MAX_ORDER for o in self.orders) and len(self.orders) <= MAX_ORDERS,
               f"a list of at most {MAX_ORDERS} orders in (1, {MAX_ORDER:g}]", list(self.orders))
        _check("privacy", "conversion", self.conversion in ("improved", "classic"),
               "'improved' or 'classic'", self.conversion)
        given = [v for v in (self.ss_order, self.ss_beta, self.ss_sigma) if v != 0]
        _check("privacy", "ss_order, ss_beta, ss_sigma", len(given) in (0, 3),
               "all three given, or all 0 (proposed from the settings)", [self.ss_order, self.ss_beta, self.ss_sigma])
        if given:
            _check("privacy", "ss_order", self.ss_order > 1, "> 1", self.ss_order)
            _check("privacy", "ss_beta", 0 < self.ss_beta < 1 / (2 * self.ss_order),
                   f"in (0, 1/(2*ss_order)) = (0, {1 / (2 * self.ss_order):.4g})", self.ss_beta)
            _check("privacy", "ss_order", self.ss_order <= MAX_ORDER, f"at most {MAX_ORDER:g}", self.ss_order)
            _check("privacy", "ss_sigma", NOISE_RANGE[0] <= self.ss_sigma <= NOISE_RANGE[1],
                   f"in [{NOISE_RANGE[0]:g}, {NOISE_RANGE[1]:g}]", self.ss_sigma)
        _check("privacy", "total_budget", self.total_budget >= 0, ">= 0 (0 = none)", self.total_budget)
        _check("privacy", "record_epsilon", 0 < self.record_epsilon <= 1e4, "in (0, 1e4]", self.record_epsilon)


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "cnn-small"
    method: str = "fixmatch"
    steps: int = 4500
    batch_size: int = 32
    unlabeled_ratio: int = 4
    lr: float = 0.03
    weight_decay: float = 5e-4
    threshold: float = 0.95
    seed: int = 0
    # With [aggregator] soft_labels: the targets are softmax(noisy count vector / soft_temperature);
    # 0 = the standard deviation of the answer noise (sigma2; sqrt(2)/gamma for LNMax).
    soft_temperature: float = 0.0
    # Post-processing over the public pool (pate.student.propagation): "label-spreading" fills in the
    # unlabelled pool images from the released labels on a propagation_k-NN graph of public features
    # (clamping propagation_alpha); those at least propagation_confidence sure join the labelled set.
    propagation: str = "none"
    propagation_k: int = 10
    propagation_alpha: float = 0.8
    propagation_confidence: float = 0.9

    def validate(self) -> None:
        _check("student", "arch", self.arch in ARCHS, f"one of {list(ARCHS)}", self.arch)
        _check("student", "propagation", self.propagation in PROPAGATION, f"one of {list(PROPAGATION)}",
               self.propagation)
        _check("student", "propagation_k", 1 <= self.propagation_k <= 1000, "between 1 and 1000", self.propagation_k)
        _check("student", "propagation_alpha", 0 < self.propagation_alpha < 1, "in (0, 1)", self.propagation_alpha)
        _check("student", "propagation_confidence", 0 <= self.propagation_confidence <= 1, "in [0, 1]",
               self.propagation_confidence)
        _check("student", "soft_temperature", 0 <= self.soft_temperature <= 1e6, "in [0, 1e6] (0 = the noise's std)",
               self.soft_temperature)
        _check("student", "method", self.method in STUDENT_METHODS, f"one of {list(STUDENT_METHODS)}",
               self.method)
        _check("student", "steps", 1 <= self.steps <= MAX_STEPS, f"between 1 and {MAX_STEPS}", self.steps)
        _check("student", "batch_size", 1 <= self.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH}",
               self.batch_size)
        _check("student", "unlabeled_ratio", 0 <= self.unlabeled_ratio <= MAX_UNLABELED_RATIO,
               f"between 0 and {MAX_UNLABELED_RATIO}", self.unlabeled_ratio)
        _check("student", "lr", self.lr > 0, "> 0", self.lr)
        _check("student", "weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay)
        _check("student", "threshold", 0 < self.threshold <= 1, "in (0, 1]", self.threshold)
        _check("student", "seed", 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]", self.seed)


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (``pate.tracking``, MLflow): public fields only. No artifact depends on
    it, so it is outside the fingerprint and may change in a run directory at any time."""
    enabled: bool = False
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else ./mlruns (a local file store); a path or a URI
    experiment: str = ""  # "" = the pipeline name

    def validate(self) -> None:
        _check("tracking", "tracking_uri", re.fullmatch(r"[^\x00-\x1f\x7f]{0,1000}", self.tracking_uri) is not None,
               "a path or URI of at most 1000 characters without control characters", self.tracking_uri)
        _check("tracking", "experiment", re.fullmatch(r"[^\x00-\x1f\x7f]{0,200}", self.experiment) is not None,
               "a name of at most 200 characters without control characters ('' = the pipeline name)",
               self.experiment)


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        _check("top level", "name", NAME_PATTERN.fullmatch(self.name) is not None,
               "a safe directory name: letters, digits, '.', '_', '-', starting with a letter or digit, "
               "at most 100 characters", self.name)
        for section in (self.data, self.teachers, self.aggregator, self.privacy, self.student, self.tracking):
            section.validate()
        mech = MECHANISM_CLASSES[self.aggregator.mechanism]
        if mech.thresholded and not mech.individual:
            _check("aggregator", "threshold", self.aggregator.threshold <= self.teachers.count,
                   f"in [0, {self.teachers.count}] (the number of teachers)", self.aggregator.threshold)
        if mech.individual:
            _check("data", "dicom_frames", self.data.dicom_frames != "split",
                   f"'refuse' with mechanism {self.aggregator.mechanism!r} (each frame would vote and be charged "
                   "as a record of its own; with teachers a split file's frames share one teacher)",
                   self.data.dicom_frames)
            _check("teachers", "features", self.teachers.features != "none",
                   f"set for mechanism {self.aggregator.mechanism!r} (simclr, scattering or pretrained): the "
                   "neighbours are found in a public feature space", self.teachers.features)
            _check("aggregator", "epsilon_budget", self.aggregator.epsilon_budget == 0,
                   f"0 with mechanism {self.aggregator.mechanism!r} (each record has its own budget: "
                   "[privacy] record_epsilon)", self.aggregator.epsilon_budget)
        # A setting that bounds privacy is honoured by the mechanism's driver or refused here: the
        # interactive driver runs no Renyi filter; only individual mechanisms have per-record budgets.
        bound = ("[aggregator] max_queries or [privacy] total_budget" if mech.interactive
                 else "[aggregator] epsilon_budget, max_queries or [privacy] total_budget")
        if mech.interactive:
            _check("aggregator", "epsilon_budget", self.aggregator.epsilon_budget == 0,
                   f"0 with mechanism {self.aggregator.mechanism!r} (its driver runs no Renyi filter and asks "
                   f"every query: bound the run with {bound})", self.aggregator.epsilon_budget)
        if not mech.individual:
            individual = [name for name, cls in MECHANISM_CLASSES.items() if cls.individual]
            _check("privacy", "record_epsilon", self.privacy.record_epsilon == PrivacyConfig.record_epsilon,
                   f"{PrivacyConfig.record_epsilon:g} (its default) with mechanism {self.aggregator.mechanism!r} "
                   f"(per-record budgets are for {', '.join(individual)} only: bound the run with {bound})",
                   self.privacy.record_epsilon)
            _check("privacy", "record_budgets", not self.privacy.record_budgets,
                   f"empty with mechanism {self.aggregator.mechanism!r} (per-record budgets are for "
                   f"{', '.join(individual)} only: bound the run with {bound})", self.privacy.record_budgets)
        _check("privacy", "data_dependent_release", not (self.privacy.data_dependent_release
                                                         and self.aggregator.soft_labels),
               "false with [aggregator] soft_labels = true (the data-dependent analysis bounds the released "
               "argmax only, not the noisy vectors soft labels release)", True)
        _check("privacy", "data_dependent_release", not self.privacy.data_dependent_release
               or MECHANISM_CLASSES[self.aggregator.mechanism].data_dependent,
               f"false with mechanism {self.aggregator.mechanism!r} (no data-dependent analysis)", True)
        if self.data.spec is not None:
            self.check_data(self.data.spec)

    def check_data(self, spec: DatasetSpec) -> None:
        """Every check that needs the data's sizes and classes: at load time for a built-in dataset,
        before anything is written for the other sources (``pate.stages.session``)."""
        self.data.check_sizes(spec)
        n, pool, _ = self.data.sizes(spec)
        # delta must be below 1/N for N private records: a larger delta allows releasing one record outright.
        _check("privacy", "delta", self.privacy.delta < 1 / n, f"below 1/N = {1 / n:.3g} (N = {n} private records)",
               self.privacy.delta)
        _check("teachers", "count", self.teachers.count <= n, f"at most the {n} private records",
               self.teachers.count)
        _check("aggregator", "max_queries", self.aggregator.max_queries <= pool,
               f"at most the student pool ({pool})", self.aggregator.max_queries)
        if MECHANISM_CLASSES[self.aggregator.mechanism].individual:
            _check("aggregator", "knn_k", self.aggregator.knn_k <= min(n, pool - 1),
                   f"at most the {n} private records and the {pool - 1} other pool images", self.aggregator.knn_k)
        _check("data", "classes", 2 <= spec.num_classes <= MAX_CLASSES, f"between 2 and {MAX_CLASSES}",
               spec.num_classes)
        priv = self.privacy
        if priv.data_dependent_release:  # its analysis walks a (teachers x (classes - 1)) table per query
            _check("privacy", "data_dependent_release", walk_fits(self.teachers.count, spec.num_classes),
                   f"false with {self.teachers.count} teachers and {spec.num_classes} classes (the smooth-sensitivity "
                   f"analysis walks teachers x (classes - 1) cells per query, at most {MAX_WALK_CELLS})", True)
        if priv.data_dependent_release and priv.ss_order:
            # The smooth-sensitivity release needs fixed parameters where conditions C5/C6 hold
            # (Papernot et al. 2018, App. B.4).
            _check("privacy", "ss_order", check_conditions(self.aggregator.sigma2, spec.num_classes, priv.ss_order),
                   f"an order where the smooth-sensitivity conditions C5/C6 hold for sigma2 = "
                   f"{self.aggregator.sigma2:g} (see `pate plan`)", priv.ss_order)

    @property
    def seeded(self) -> bool:
        return self.aggregator.seed is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def canonical_dict(self) -> dict:
        """``to_dict`` without the keys added by later versions of pate while they hold their default
        (``ADDED_LATER``): a run started before a key existed keeps its fingerprint, so upgrading pate
        does not orphan it. A key that is set, or whose default changes, is part of it as usual.
        The ``EXCLUDED_SECTIONS`` (no artifact depends on them) are never part of it."""
        out = {k: v for k, v in self.to_dict().items() if k not in EXCLUDED_SECTIONS}
        for section, keys in ADDED_LATER.items():
            defaults = {f.name: f.default for f in dataclasses.fields(type(getattr(self, section)))}
            for key in keys:
                if out[section].get(key) == defaults[key]:
                    del out[section][key]
        return out

    def fingerprint(self, exclude: tuple[str, ...] = ()) -> str:
        """sha256 of the canonical JSON of the config, without the sections in ``exclude``."""
        data = {k: v for k, v in self.canonical_dict().items() if k not in exclude}
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def upstream_fingerprint(self) -> str:
        """The settings every stage up to aggregation depends on (all but ``[student]``): what the
        teachers, the votes and the ledger are bound to, so the student can be retrained alone."""
        return self.fingerprint(exclude=DOWNSTREAM_SECTIONS)


# Keys added after the first release of the run-directory format (image sources, pretrained backbones,
# private-knn, interactive-gnmax), left out of the fingerprint at their defaults.
ADDED_LATER = {
    "data": ("source", "private_dir", "public_dir", "test_dir", "private_file", "public_file", "test_file",
             "channels", "image_size", "classes", "name", "dicom_window", "dicom_frames"),
    "teachers": ("backbone", "weights", "backbone_size"),
    "aggregator": ("knn_k", "knn_dim", "student_confidence", "interactive_rounds", "interactive_steps",
                   "soft_labels", "query_selection"),
    "privacy": ("record_epsilon", "record_budgets"),
    "student": ("soft_temperature", "propagation", "propagation_k", "propagation_alpha", "propagation_confidence"),
}
DOWNSTREAM_SECTIONS = ("student",)  # changing only these retrains the student, with no new aggregation
# Settings no artifact depends on: outside the fingerprint and the manifest's config, so they may change
# in a run directory (and a run started before they existed keeps its fingerprint).
EXCLUDED_SECTIONS = ("tracking",)


def differences(old: dict, new: dict) -> list[str]:
    """``[section] key: old -> new`` for every setting that differs between two config dicts (as
    ``canonical_dict`` makes them, or as a manifest holds one).

    A key one side does not hold is never shown as ``None`` (a value some settings really take):
    a known setting missing from a canonical dict is at its default (``canonical_dict`` leaves out
    the ``ADDED_LATER`` keys there), so the default is shown, marked ``(default)``; a key this
    version of pate does not know is ``removed (was ...)`` or ``added (...)``."""
    out = []
    for section in sorted(set(old) | set(new), key=str):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"[{section}] {k}: {_change(a, b, section, k)}" for k in sorted(set(a) | set(b), key=str)
                    if (k in a, a.get(k)) != (k in b, b.get(k))]
        elif (section in old, a) != (section in new, b):
            out.append(f"{section}: {_change(old, new, None, section)}")
    return out


def _change(old: dict, new: dict, section: str | None, key: str) -> str:
    default = _default(section, key)
    if key not in old and default is _UNKNOWN:
        return f"added ({new[key]!r})"
    if key not in new and default is _UNKNOWN:
        return f"removed (was {old[key]!r})"
    return " -> ".join(repr(side[key]) if key in side else f"{default!r} (default)" for side in (old, new))


_UNKNOWN = object()


def _default(section: str | None, key: str) -> Any:
    """The default of ``[section] key`` as a canonical dict holds it (tuples as lists), or _UNKNOWN
    for a key this version of pate does not know (a whole section is never left out)."""
    cls = get_type_hints(PipelineConfig).get(section) if section is not None else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return _UNKNOWN
    for f in dataclasses.fields(cls):
        if f.name == key:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            return list(value) if isinstance(value, tuple) else value
    return _UNKNOWN


SECTIONS = {f.name: f.type for f in dataclasses.fields(PipelineConfig) if f.name != "name"}


def _coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """Check a TOML value against a field's type hint; ints are accepted where floats are."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:  # Optional[int]
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else _coerce(section, key, value, inner)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"[{section}] {key} must be a list; found {value!r}")
        return tuple(_coerce(section, key, v, args[0]) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"[{section}] {key} must be of type {hint.__name__}; found {value!r}")
    return value


def _build_section(section: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table; found {table!r}")
    hints = get_type_hints(cls)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}; allowed: {', '.join(sorted(hints))}")
    return cls(**{k: _coerce(section, k, v, hints[k]) for k, v in table.items()})


def _resolve_paths(raw: dict, base: Path) -> dict:
    """Data paths, a weights file and a budgets file relative to the pipeline file's folder, made
    absolute (so the frozen config.toml of a run names the same files from anywhere)."""
    def absolute(section: str, key: str, value):
        if not (isinstance(value, str) and value):
            return value  # a wrong type is named by the section's own checks
        if "\0" in value:  # the OS cannot name such a file; refused here, before any path call
            raise ConfigError(f"[{section}] {key} must be a path without NUL bytes; found {value!r}")
        try:
            return str((base / value).resolve())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[{section}] {key} = {value!r} is not a usable path ({exc})") from None

    out = dict(raw)
    if isinstance(raw.get("data"), dict):
        out["data"] = {k: absolute("data", k, v) if k in PATH_KEYS else v for k, v in raw["data"].items()}
    privacy = raw.get("privacy")
    if isinstance(privacy, dict) and privacy.get("record_budgets"):
        out["privacy"] = {**privacy, "record_budgets": absolute("privacy", "record_budgets", privacy["record_budgets"])}
    teachers = raw.get("teachers")
    if isinstance(teachers, dict) and isinstance(teachers.get("weights"), str) \
            and not NAMED_WEIGHTS.match(teachers["weights"]):
        out["teachers"] = {**teachers, "weights": absolute("teachers", "weights", teachers["weights"])}
    return out


def from_dict(raw: dict, default_name: str = "pipeline") -> PipelineConfig:
    unknown = sorted(set(raw) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r}; allowed: name, {', '.join(SECTIONS)}")
    name = raw.get("name", default_name)
    if not isinstance(name, str):
        raise ConfigError(f"[top level] name must be a string; found {name!r}")
    sections = {s: _build_section(s, get_type_hints(PipelineConfig)[s], raw.get(s, {})) for s in SECTIONS}
    config = PipelineConfig(name=name, **sections)
    config.validate()
    return config


# A pipeline file is a few KiB; the largest valid one (10 000 class names of 200 characters, 4 bytes
# each in UTF-8) is under 8 MiB, which tomllib parses in a fraction of a second.
MAX_PIPELINE_BYTES = 8 << 20


def load(path: str | Path) -> PipelineConfig:
    """The pipeline file at ``path``, parsed and validated. Whatever the file, the outcome is a
    config or one ``ConfigError`` line: a FIFO or a device is refused without blocking on it (it
    is opened non-blocking and must be a regular file), a file over ``MAX_PIPELINE_BYTES`` is
    refused before it is parsed, a UTF-8 byte-order mark is dropped, and TOML nested deeper than
    the parser's recursion allows is named as such."""
    path = Path(path)
    try:
        raw = tomllib.loads(read_text_limited(path, MAX_PIPELINE_BYTES, "pipeline file"))
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a pipeline file") from None
    except InputError as exc:  # a FIFO, a device, an oversize file, bytes that are not UTF-8
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{path} is not a usable pipeline file: its arrays or tables are nested too deep") from None
    try:
        return from_dict(_resolve_paths(raw, path.parent.resolve()),
                         default_name=re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip(".-_") or "pipeline")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(config: PipelineConfig) -> str:
    """The resolved config as TOML (defaults written out); None values are omitted."""
    lines = [f"name = {_toml_value(config.name)}"]
    for section, values in config.to_dict().items():
        if section == "name":
            continue
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
