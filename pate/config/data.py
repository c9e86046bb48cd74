"""[data]: where the images come from and their sizes; the built-in datasets' table and the keys each source takes."""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple, Optional

from .checks import MAX_CLASSES, MAX_RECORDS, MAX_SEED, _check


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


PATH_KEYS = ("private_dir", "public_dir", "test_dir", "private_file", "public_file", "test_file")


DATA_NAME_PATTERN = re.compile(r"[^/\\\x00-\x1f\x7f]{1,100}")  # [data] name: a name, never a path


CLASS_NAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


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

