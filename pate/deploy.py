"""The student outside pate: a TorchScript file that plain ``torch.jit.load`` runs, and predictions
for image files.

The exported module takes float32 images (N, C, H, W) with pixels in [0, 1] at the training size
and returns logits; the normalisation the student was trained with is inside it, so a user never
has to know the data's mean and std. What it needs to be used (classes, channels, image size) is
stored in the archive itself (``torch.jit.load(path, _extra_files={"pate.json": ""})``) and in
``student.json`` beside it.

The student is post-processing of the privately released labels on public images, so it is as
private as the release: it may be shared with the privacy statement.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .data import images as image_files
from .errors import PateError
from .run import run_directory_holding
from .stages import existing_run
from .stages.context import data_spec, student_model

META = "pate.json"  # the extra file in a TorchScript archive that describes the student
STUDENT_TS, STUDENT_PT, STUDENT_JSON = "student.ts", "student.pt", "student.json"
FORMAT = "pate.student/1"
# What a student file may claim, checked before anything is allocated for its images: pate trains
# on grey or colour images of at most 1024 pixels ([data] image_size; arrays of any size), so a
# file claiming more is damaged or hostile.
CHANNELS, MAX_IMAGE_SIZE, MAX_CLASSES = (1, 3), 4096, 100_000
DECODE_BYTES = 256 << 20  # images decoded (and labelled) at once by ``predict_files``: about this many bytes


def normalised(model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``model`` behind the per-channel normalisation it was trained with ([0, 1] pixels in, logits
    out): ``(x - mean) / std`` as a fixed depthwise 1x1 convolution, so the whole is a plain
    ``nn.Sequential`` that TorchScript handles without custom code."""
    import torch
    from torch import nn

    channels = len(mean)
    norm = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)
    with torch.no_grad():
        norm.weight.copy_((1.0 / torch.tensor(std, dtype=torch.float32)).view(channels, 1, 1, 1))
        norm.bias.copy_(-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32))
    for p in norm.parameters():
        p.requires_grad_(False)
    return nn.Sequential(norm, *model.children()).eval()


def describe(arch: str, classes: Sequence[str], channels: int, image_size: int, mean, std, **about) -> dict:
    """What a user of the exported student needs (stored in the archive and in student.json)."""
    return {"format": FORMAT, "arch": arch, "classes": list(classes), "channels": int(channels),
            "image_size": int(image_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "input": "float32 (N, C, H, W), pixels in [0, 1]; the normalisation is inside the model",
            "output": "logits (N, classes)", **about}


def torchscript_bytes(model: Any, meta: dict) -> bytes:
    """``model`` (a trained student) with its normalisation, scripted, ``meta`` inside the archive."""
    import torch

    buffer = io.BytesIO()
    with _quiet_deprecation():
        scripted = torch.jit.script(normalised(model.cpu().eval(), meta["mean"], meta["std"]))
        torch.jit.save(scripted, buffer, _extra_files={META: json.dumps(meta)})
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_deprecation():
    """TorchScript is deprecated in favour of torch.export, but it is the format that a plain
    ``torch.jit.load`` (C++, mobile, older torch) runs without pate: keep it, without the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


@dataclass
class Student:
    """A trained student ready to label images: ``predict`` on arrays, ``predict_files`` on files."""
    module: Any  # a torch module: [0, 1] float (N, C, H, W) -> logits
    meta: dict

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def predict(self, images: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidences) for uint8 images (N, C, H, W) (or floats in [0, 1]) at the model's size,
        as numpy arrays or tensors."""
        import torch

        x = torch.as_tensor(images)
        expected = (self.meta["channels"], self.meta["image_size"], self.meta["image_size"])
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise PateError(f"images must be (N, {', '.join(map(str, expected))}); found {tuple(x.shape)}")
        labels, confidence = [], []
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch.float()
            p = torch.softmax(self._logits(batch), dim=1)
            top = p.max(dim=1)
            labels.append(top.indices.numpy())
            confidence.append(top.values.numpy())
        if not labels:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(labels), np.concatenate(confidence)

    def _logits(self, batch: Any) -> Any:
        """The module's (N, classes) logits for ``batch``; a module that fails or answers in another
        shape (a foreign or damaged file) is one clear error."""
        import torch

        try:
            with torch.no_grad():
                logits = self.module(batch)
        except (RuntimeError, TypeError, ValueError, torch.jit.Error) as exc:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            why = lines[-1] if isinstance(exc, torch.jit.Error) else lines[0]  # TorchScript's ends with the cause
            raise PateError(f"the student failed on images of shape {tuple(batch.shape)} ({why[:200]})") from None
        expected = (len(batch), len(self.meta["classes"]))
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise PateError(f"the student answered {found}, not logits of shape {expected} (one per class its "
                            f"{META} names); the file is damaged or not a pate student")
        return logits

    def predict_files(self, paths: Sequence[Path], progress=None) -> list[tuple[str, int, str, float]]:
        """``(path, label, class, confidence)`` for each image file, decoded to the model's input a
        chunk at a time (about ``DECODE_BYTES`` of pixels), so any number of files fits in memory."""
        channels, size = self.meta["channels"], self.meta["image_size"]
        if channels not in CHANNELS:
            raise PateError(f"this student takes {channels}-channel images; image files decode to 1 or 3 channels")
        paths = list(paths)
        chunk = max(1, DECODE_BYTES // (channels * size * size))
        rows = []
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            arrays, _ = image_files.decode(part, channels, size,
                                           progress=None if progress is None else lambda done: progress(start + done))
            labels, confidence = self.predict(arrays)
            rows += [(str(p), int(y), self.classes[int(y)], float(c)) for p, y, c in zip(part, labels, confidence)]
        return rows


def load_student(path: str | Path) -> Student:
    """A student from an exported ``student.ts`` (or a folder holding one: an export or release
    folder), or from a finished run directory."""
    path = Path(path)
    if path.is_dir() and (path / STUDENT_TS).is_file():
        path = path / STUDENT_TS
    if path.is_dir():
        return _from_run(path)
    if not path.is_file():
        raise PateError(f"{path}: no such file or folder (give an exported student.ts, its folder, or a run directory)")
    import torch

    extra = {META: ""}
    try:
        with _quiet_deprecation():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PateError(f"{path} is not a TorchScript student exported by pate ({first[:200]})") from None
    return Student(module.eval(), checked_meta(extra[META], path))


def checked_meta(raw: str | bytes, path: Path) -> dict:
    """The student's description (``pate.json`` in the archive), checked before it is trusted:
    numbers where numbers belong, and within what pate trains, so nothing is sized by a bad file."""
    if not raw:
        raise PateError(f"{path} is a TorchScript file without pate's description of the student ({META})")
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # bad JSON or UTF-8
        raise PateError(f"{path}: its {META} is not valid JSON ({str(exc)[:200]}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PateError(f"{path} is a TorchScript file without pate's description of the student ({META})")

    def bad(key: str, must: str):
        return PateError(f"{path}: its {META} is damaged or not pate's: {key!r} must be {must}; "
                         f"found {str(meta.get(key, 'nothing'))[:80]}")

    def integer(key: str, low: int, high: int) -> int:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad(key, f"an integer in [{low}, {high}]")
        return value

    if type(meta.get("channels")) is not int or meta["channels"] not in CHANNELS:
        raise bad("channels", " or ".join(map(str, CHANNELS)))
    integer("image_size", 1, MAX_IMAGE_SIZE)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES \
            or not all(isinstance(c, str) for c in classes):
        raise bad("classes", f"a list of 1 to {MAX_CLASSES} class names")
    return meta


def _from_run(run_path: Path) -> Student:
    run = existing_run(run_path)
    run.require("train-student")
    spec, config = data_spec(run), run.config
    model = student_model(run)
    classes = list(spec.classes) or [str(c) for c in range(spec.num_classes)]
    meta = describe(config.student.arch, classes, spec.channels, spec.image_size, spec.mean, spec.std,
                    pipeline=config.name)
    return Student(normalised(model, spec.mean, spec.std), meta)


def check_csv_out(out: str | Path) -> None:
    """Refuse a CSV destination inside a pate run directory (it would overwrite or sit among the
    private artifacts), before anything is computed."""
    run = run_directory_holding(Path(out).parent)
    if run is not None:
        raise PateError(f"{out} is inside the pate run directory {run} (private); write the labels elsewhere")
    if Path(out).is_dir():
        raise PateError(f"{out} is a folder; give a file name for the CSV")


def image_paths(arguments: Iterable[str | Path]) -> tuple[list[Path], int]:
    """The image files named by ``arguments`` (files, or folders searched recursively) and how
    many other files were skipped."""
    found, skipped = [], 0
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            listing = image_files.list_images(path)
            found += listing.files
            skipped += len(listing.skipped)
        elif path.is_file():
            if path.suffix.lower() in image_files.IMAGE_SUFFIXES:
                found.append(path)
            else:
                skipped += 1
        else:
            raise PateError(f"{path}: no such file or folder")
    return found, skipped
