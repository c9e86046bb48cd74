"""The whole pipeline: the sections together, their cross-checks and fingerprint, TOML in and out,
and the differences between two configs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from ..io import InputError, read_text_limited
from ..privacy.mechanisms import MECHANISMS as MECHANISM_CLASSES
from ..privacy.smooth_sensitivity import MAX_WALK_CELLS, check_conditions, walk_fits
from .aggregator import AggregatorConfig
from .checks import ConfigError, MAX_CLASSES, NAME_PATTERN, _check
from .data import DataConfig, DatasetSpec, PATH_KEYS
from .privacy import PrivacyConfig
from .student import StudentConfig
from .teachers import NAMED_WEIGHTS, TeachersConfig
from .tracking import TrackingConfig


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
        if mech.reads_records:
            _check("data", "dicom_frames", self.data.dicom_frames != "split",
                   f"'refuse' with mechanism {self.aggregator.mechanism!r} (each frame would vote and be charged "
                   "as a record of its own; with teachers a split file's frames share one teacher)",
                   self.data.dicom_frames)
            _check("teachers", "features", self.teachers.features != "none",
                   f"set for mechanism {self.aggregator.mechanism!r} (simclr, scattering or pretrained): the "
                   "neighbours are found in a public feature space", self.teachers.features)
            _check("aggregator", "epsilon_budget", self.aggregator.epsilon_budget == 0,
                   f"0 with mechanism {self.aggregator.mechanism!r} (" + (
                       "each record has its own budget: [privacy] record_epsilon)" if mech.individual else
                       "one release over every anchor: its cost is fixed by sigma2 and knn_k)"),
                   self.aggregator.epsilon_budget)
        _check("teachers", "dpsgd_dim", self.teachers.dpsgd_dim == 0 or bool(self.teachers.dpsgd_noise),
               "0 without a DP-SGD teacher ([teachers] dpsgd_noise)", self.teachers.dpsgd_dim)
        _check("student", "teacher_weight", self.student.teacher_weight == 0 or bool(self.teachers.dpsgd_noise),
               "0 without a DP-SGD teacher ([teachers] dpsgd_noise)", self.student.teacher_weight)
        if self.teachers.dpsgd_noise:
            _check("teachers", "dpsgd_noise", mech.reads_records and not mech.individual,
                   f"0 with mechanism {self.aggregator.mechanism!r} (the DP-SGD teacher stands beside reverse-knn's "
                   "votes)", self.teachers.dpsgd_noise)
            _check("data", "private_size", self.data.private_size == 0,
                   "0 with a DP-SGD teacher (its sampling rate 1/ceil(N/dpsgd_batch) is accounted as public; a "
                   "private_size draw keeps a number of records that is not)", self.data.private_size)
            _check("privacy", "total_budget", not self.privacy.total_budget,
                   "0 with a DP-SGD teacher (its sampling rate is accounted from the number of records, which the "
                   "total_budget filter would make depend on the spend log)", self.privacy.total_budget)
        _check("aggregator", "knn_k", self.aggregator.knn_k >= 1 or (
                   mech.reads_records and not mech.individual and bool(self.teachers.dpsgd_noise)),
               "at least 1 (0, no votes, only with mechanism 'reverse-knn' and a DP-SGD teacher to label the anchors: "
               "[teachers] dpsgd_noise)", self.aggregator.knn_k)
        if self.aggregator.knn_k == 0:
            _check("aggregator", "soft_labels", not self.aggregator.soft_labels,
                   "false with knn_k = 0 (no votes, so no noisy vectors: the student learns the DP-SGD teacher's "
                   "probabilities)", self.aggregator.soft_labels)
        if mech.reads_records and not mech.individual:  # each record votes for knn_k of the anchors (the queries)
            _check("aggregator", "knn_k", self.aggregator.knn_k <= self.aggregator.max_queries,
                   f"at most the {self.aggregator.max_queries} anchors (max_queries)", self.aggregator.knn_k)
        # A setting that bounds privacy is honoured by the mechanism's driver or refused here: the
        # interactive driver runs no Renyi filter; only individual mechanisms have per-record budgets.
        bound = ("[aggregator] max_queries or [privacy] total_budget" if mech.interactive
                 else "[aggregator] epsilon_budget, max_queries or [privacy] total_budget")
        if mech.interactive:
            _check("aggregator", "epsilon_budget", self.aggregator.epsilon_budget == 0,
                   f"0 with mechanism {self.aggregator.mechanism!r} (its driver runs no Renyi filter and asks "
                   f"every query: bound the run with {bound})", self.aggregator.epsilon_budget)
        if not mech.individual:
            budgeted = [name for name, cls in MECHANISM_CLASSES.items() if cls.reads_records]
            _check("privacy", "record_epsilon", self.privacy.record_epsilon == PrivacyConfig.record_epsilon,
                   f"{PrivacyConfig.record_epsilon:g} (its default) with mechanism {self.aggregator.mechanism!r} (" + (
                       "a record's default budget is the run's guarantee: give the records that must spend less "
                       "their budgets in [privacy] record_budgets)" if mech.reads_records else
                       f"per-record budgets are for {', '.join(budgeted)} only: bound the run with {bound})"),
                   self.privacy.record_epsilon)
            _check("privacy", "record_budgets", not self.privacy.record_budgets or mech.reads_records,
                   f"empty with mechanism {self.aggregator.mechanism!r} (per-record budgets are for "
                   f"{', '.join(budgeted)} only: bound the run with {bound})", self.privacy.record_budgets)
        _check("student", "keep_widest", self.student.keep_widest == 1 or self.aggregator.soft_labels
               or bool(self.teachers.dpsgd_noise), "1 without [aggregator] soft_labels = true or a DP-SGD teacher "
               "(the margins are read from the released noisy vectors or probabilities)", self.student.keep_widest)
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
        if self.teachers.dpsgd_dim:  # whitened axes of the pool's scattering coefficients: at most either count
            coefficients = SCATTERING_CHANNELS * spec.channels * (spec.image_size // 4) ** 2
            _check("teachers", "dpsgd_dim", self.teachers.dpsgd_dim <= min(pool - 1, coefficients),
                   f"at most {pool - 1} (the pool's images less one: the axes its centred images span) and the "
                   f"{coefficients} scattering coefficients of an image",
                   self.teachers.dpsgd_dim)
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


# Scattering channels per image channel of the DP-SGD teacher's transform (J = 2, L = 8: 1 + JL + L²J(J-1)/2;
# pate.nets.wavelets.num_channels, which needs torch, agrees: tests/teachers/test_dpsgd.py).
SCATTERING_CHANNELS = 81


# Keys added after the first release of the run-directory format (image sources, pretrained backbones,
# private-knn, interactive-gnmax), left out of the fingerprint at their defaults.
ADDED_LATER = {
    "data": ("source", "private_dir", "public_dir", "test_dir", "private_file", "public_file", "test_file",
             "channels", "image_size", "classes", "name", "dicom_window", "dicom_frames"),
    "teachers": ("backbone", "weights", "backbone_size", "dpsgd_noise", "dpsgd_batch", "dpsgd_epochs", "dpsgd_lr",
                 "dpsgd_dim"),
    "aggregator": ("knn_k", "knn_dim", "student_confidence", "interactive_rounds", "interactive_steps",
                   "soft_labels", "query_selection"),
    "privacy": ("record_epsilon", "record_budgets"),
    "student": ("soft_temperature", "propagation", "propagation_k", "propagation_alpha", "propagation_confidence",
                "keep_widest", "hflip", "erase", "prior_temperature", "mixup", "members", "flip_average",
                "teacher_weight", "precision"),
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

