"""The exported student, the reading side: loading any of the formats ``pate.export.formats``
writes (or a finished run directory's student), and predictions for image files.

``student.onnx`` needs only onnxruntime, numpy and Pillow to label images: this module imports
torch only to run a ``.pt2``, ``.ts`` or ``.safetensors`` student or a run directory.

An ONNX file is read whole (at most ``MAX_ONNX_BYTES``) and its graph checked before onnxruntime
sees it (``pate.export.onnx_graph``). Each batch the session runs has a time limit as well
(``INFER_SECONDS`` and a little per input value), past which onnxruntime is told to stop.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..data import images as image_files
from ..errors import PateError
from ..io import read_bytes_limited
from ..nets.models import MAX_MEMBERS, MAX_TEACHER_WEIGHT, build_student
from ..stages import existing_run
from ..run.artifacts import data_spec, student_model
from .formats import (FORMAT, INPUT_NAME, META, STUDENT_ONNX, STUDENT_PT2, STUDENT_SAFETENSORS, STUDENT_TS,
                      _importable, _quiet_deprecation, _torchscript_available, averaging, describe, normalised)
from .onnx_graph import check_onnx_graph

# What a student file may claim, checked before anything is allocated for its images: pate trains
# on grey or colour images of at most 1024 pixels ([data] image_size; arrays of any size), so a
# file claiming more is damaged or hostile.
CHANNELS, MAX_IMAGE_SIZE, MAX_CLASSES = (1, 3), 4096, 100_000
MAX_META_BYTES = 16 << 20  # a pate.json larger than this (100,000 long class names) is not pate's
DECODE_BYTES = 256 << 20  # images decoded (and labelled) at once by ``predict_files``: about this many bytes
MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit: pate's students are a few MB
INFER_SECONDS, INFER_SECONDS_PER_VALUE = 60.0, 2e-6  # one batch's time limit: 61 s for 512 MNIST images


@dataclass
class Student:
    """A trained student ready to label images: ``predict`` on arrays, ``predict_files`` on files.

    ``runner`` maps a float32 numpy batch (N, C, H, W) in [0, 1] to the model's raw answer; ``backend``
    names what runs it (``onnxruntime`` or ``torch``); ``module`` is the onnxruntime session or
    torch module itself."""
    module: Any
    meta: dict
    runner: Callable[[np.ndarray], Any] | None = None
    backend: str = "torch"

    def __post_init__(self):
        if self.runner is None:  # a torch module (a run directory's student, or one built by hand)
            self.runner = _torch_runner(self.module)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def logits(self, images: Any, batch_size: int = 512) -> np.ndarray:
        """(N, classes) float32 logits for uint8 images (N, C, H, W) (or floats in [0, 1]) at the
        model's size, as a numpy array or a torch tensor."""
        x = _as_array(images)
        expected = (self.meta["channels"], self.meta["image_size"], self.meta["image_size"])
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise PateError(f"images must be (N, {', '.join(map(str, expected))}); found {tuple(x.shape)}")
        out = [self._logits(_to_float(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.meta["classes"])), np.float32)

    def predict(self, images: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidences) for uint8 images (N, C, H, W) (or floats in [0, 1]) at the model's size,
        as numpy arrays or tensors: the arg max of the logits and its softmax probability."""
        logits = self.logits(images, batch_size).astype(np.float64)
        if not len(logits):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        labels = logits.argmax(axis=1)
        shifted = logits - logits.max(axis=1, keepdims=True)
        confidence = 1.0 / np.exp(shifted).sum(axis=1)  # exp(0) over the sum: the top class's probability
        return labels.astype(np.int64), confidence.astype(np.float32)

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        """The backend's (N, classes) logits for ``batch``; an answer in another shape (a foreign or
        damaged file) is one clear error."""
        logits = self.runner(batch)
        expected = (len(batch), len(self.meta["classes"]))
        if not isinstance(logits, np.ndarray) or logits.shape != expected:
            found = logits.shape if isinstance(logits, np.ndarray) else type(logits).__name__
            raise PateError(f"the student answered {found}, not logits of shape {expected} (one per class its "
                            f"{META} names); the file is damaged or not a pate student")
        return logits.astype(np.float32, copy=False)

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


def _as_array(images: Any) -> np.ndarray:
    if type(images).__module__.startswith("torch"):  # a tensor, without importing torch for numpy input
        images = images.detach().cpu().numpy()
    return np.asarray(images)


def _to_float(batch: np.ndarray) -> np.ndarray:
    if batch.dtype == np.uint8:
        return np.ascontiguousarray(batch, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(batch, dtype=np.float32)


def _failed(batch: np.ndarray, why: str) -> PateError:
    return PateError(f"the student failed on images of shape {tuple(batch.shape)} ({why[:200]})")


def _torch_runner(module: Any) -> Callable[[np.ndarray], Any]:
    import torch

    jit_error = getattr(getattr(torch, "jit", None), "Error", RuntimeError)  # TorchScript's, while torch has it

    def run(batch: np.ndarray) -> Any:
        try:
            with torch.no_grad():
                logits = module(torch.from_numpy(batch))
        except (RuntimeError, TypeError, ValueError, AssertionError, jit_error) as exc:  # a .pt2's guard asserts
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            # TorchScript's message ends with the cause; the others start with it
            why = lines[-1] if isinstance(exc, jit_error) and jit_error is not RuntimeError else lines[0]
            raise _failed(batch, why) from None
        return logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else logits

    return run


def _onnx_runner(session: Any) -> Callable[[np.ndarray], Any]:
    """Runs ``session`` on a batch within ``INFER_SECONDS`` (and ``INFER_SECONDS_PER_VALUE`` per
    input value): past it onnxruntime is told to stop (its run options' ``terminate``)."""
    import onnxruntime as ort

    def run(batch: np.ndarray) -> Any:
        options = ort.RunOptions()
        options.log_severity_level = 4  # its errors come back as exceptions, made one line below
        limit = INFER_SECONDS + INFER_SECONDS_PER_VALUE * batch.size
        timer = threading.Timer(limit, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
        try:
            return session.run(None, {INPUT_NAME: batch}, options)[0]
        except Exception as exc:  # onnxruntime's errors share no public base class beyond Exception
            if options.terminate:
                raise PateError(f"the student took longer than {limit:.0f} s on images of shape {tuple(batch.shape)} "
                                "and was stopped; the file is damaged or not a pate student") from None
            raise _failed(batch, (str(exc).strip().splitlines() or [type(exc).__name__])[0]) from None
        finally:
            timer.cancel()

    return run


def load_student(path: str | Path) -> Student:
    """A student from an exported file (``student.onnx``, ``student.pt2``, ``student.ts`` or
    ``student.safetensors``), a folder holding them (an export or release folder: ONNX when
    onnxruntime is installed, else the ``torch.export`` program), or a finished run directory."""
    path = Path(path)
    if path.is_dir():
        chosen = _in_folder(path)
        if chosen is None:
            return _from_run(path)
        path = chosen
    if not path.is_file():
        raise PateError(f"{path}: no such file or folder (give an exported {STUDENT_ONNX}, {STUDENT_PT2}, "
                        f"{STUDENT_TS} or {STUDENT_SAFETENSORS}, their folder, or a run directory)")
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise PateError(f"{path} is not a student exported by pate (give a .onnx, .pt2, .ts or .safetensors "
                        "file, an export folder, or a run directory)")
    return loader(path)


def _in_folder(folder: Path) -> Path | None:
    """The student file to run in an export folder: None for another folder (a run directory)."""
    names = (STUDENT_ONNX, STUDENT_PT2, STUDENT_TS, STUDENT_SAFETENSORS)
    present = [name for name in names if (folder / name).is_file()]
    if not present:
        return None
    if STUDENT_ONNX in present and _importable("onnxruntime"):
        return folder / STUDENT_ONNX
    if _importable("torch"):
        for name in (STUDENT_PT2, STUDENT_TS, STUDENT_SAFETENSORS):
            if name in present:
                return folder / name
    return folder / present[0]  # its loader names what to install


def _load_onnx(path: Path) -> Student:
    try:
        import onnxruntime as ort
    except ImportError:
        raise PateError(f"{path}: running an ONNX student needs onnxruntime: pip install 'pate[onnx]'") from None
    try:
        data = read_bytes_limited(path, MAX_ONNX_BYTES, "ONNX student")
    except OSError as exc:
        raise PateError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    check_onnx_graph(data, path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: they come back as exceptions, made one line below
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        raw = session.get_modelmeta().custom_metadata_map.get(META, "")
    except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, InvalidArgument, Fail, ...) share no base
        raise PateError(f"{path} is not an ONNX student exported by pate ({_first_line(exc)})") from None
    meta = checked_meta(raw, path, "an ONNX model")
    channels, size = meta["channels"], meta["image_size"]
    inputs, outputs = session.get_inputs(), session.get_outputs()
    want = f"one input {INPUT_NAME!r}, float32 (N, {channels}, {size}, {size}) with any N"
    if len(inputs) != 1 or len(outputs) < 1:
        raise PateError(f"{path}: the ONNX model has {len(inputs)} inputs and {len(outputs)} outputs, not the "
                        f"{want} its {META} describes; it is not a pate student")
    shape, kind = list(inputs[0].shape), inputs[0].type
    if inputs[0].name != INPUT_NAME or kind != "tensor(float)" or len(shape) != 4 \
            or shape[1:] != [channels, size, size] or isinstance(shape[0], int):
        dims = ", ".join("N" if isinstance(d, str) or d is None else str(d) for d in shape)
        found = f"{inputs[0].name!r}, {kind} ({dims})"
        raise PateError(f"{path}: the ONNX model's input is {found}, not the {want} its {META} describes; "
                        "it is not a pate student")
    return Student(session, meta, _onnx_runner(session), "onnxruntime")


def _load_program(path: Path) -> Student:
    """A ``torch.export`` program, its ``pate.json`` read (and checked) from the archive before
    torch deserializes anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            formats = [n for n in names if n.count("/") == 1 and n.endswith("/archive_format")]
            if len(formats) != 1 or archive.read(formats[0]).strip() != b"pt2":
                raise PateError(f"{path} is not a torch.export program (.pt2) exported by pate")
            entry = formats[0].split("/")[0] + f"/extra/{META}"
            info = archive.getinfo(entry) if entry in names else None
            if info is not None and info.file_size > MAX_META_BYTES:
                raise PateError(f"{path}: its {META} is {info.file_size} bytes; the file is damaged or not pate's")
            raw = archive.read(entry) if info is not None else b""
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise PateError(f"{path} is not a torch.export program (.pt2) exported by pate ({_first_line(exc)})") from None
    meta = checked_meta(raw, path, "a torch.export program")
    import torch

    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # its loader logs a traceback before falling back to an older format
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:  # a damaged archive fails anywhere in torch's deserializer
        raise PateError(f"{path} is not a torch.export program (.pt2) exported by pate ({_first_line(exc)})") from None
    finally:
        export_log.setLevel(level)
    channels, size = meta["channels"], meta["image_size"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user = [placeholders.get(name) for name in program.graph_signature.user_inputs]
    shape = tuple(getattr(user[0].meta.get("val"), "shape", ())) if len(user) == 1 and user[0] is not None else None
    if shape is None or len(shape) != 4 or [_int(d) for d in shape[1:]] != [channels, size, size] \
            or _int(shape[0]) is not None:
        found = "several inputs" if shape is None else f"input ({', '.join(str(d) for d in shape)})"
        raise PateError(f"{path}: the program has {found}, not float32 (N, {channels}, {size}, {size}) with any N "
                        f"as its {META} describes; it is not a pate student")
    return Student(module, meta, _torch_runner(module), "torch")


def _int(dim: Any) -> int | None:
    """A static dimension as an int; None for a symbolic one (a ``torch.SymInt``)."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _load_torchscript(path: Path) -> Student:
    import torch

    if not _torchscript_available():
        raise PateError(f"{path}: this torch no longer runs TorchScript; use the export's {STUDENT_ONNX} or "
                        f"{STUDENT_PT2}")
    extra = {META: ""}
    try:
        with _quiet_deprecation():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise PateError(f"{path} is not a TorchScript student exported by pate ({_first_line(exc)})") from None
    return Student(module.eval(), checked_meta(extra[META], path, "a TorchScript file"))


def _load_safetensors(path: Path) -> Student:
    """The bare network rebuilt from its architecture and weights, behind its mean/std; every
    tensor's shape checked against the architecture before any weight is allocated."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise PateError(f"{path}: reading safetensors weights needs safetensors: pip install safetensors") from None
    import torch

    try:
        with safe_open(str(path), framework="pt") as weights:
            raw = (weights.metadata() or {}).get(META, "")
            meta = checked_meta(raw, path, "a safetensors file")
            shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
            channels = meta["channels"]
            for key in ("mean", "std"):
                values = meta.get(key)
                if not isinstance(values, list) or len(values) != channels \
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in values) or (key == "std" and not all(v > 0 for v in values)):
                    must = f"a list of {channels} finite numbers" + (" > 0" if key == "std" else "")
                    raise _bad(path, meta, key, must)
            try:
                with torch.device("meta"):  # shapes only: nothing allocated for a bad file's claims
                    skeleton = _skeleton(meta, channels)
            except (ValueError, KeyError, TypeError) as exc:
                raise _bad(path, meta, "arch", f"an architecture pate builds ({_first_line(exc)})") from None
            expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
            if shapes != expected:
                differ = sorted(set(shapes) ^ set(expected)) or sorted(k for k in shapes if shapes[k] != expected[k])
                raise PateError(f"{path}: its weights do not fit a {meta['arch']} of {len(meta['classes'])} classes "
                                f"on {channels}x{meta['image_size']}x{meta['image_size']} images "
                                f"({', '.join(differ[:3])}); the file is damaged or not pate's")
            state = {name: weights.get_tensor(name) for name in shapes}
    except SafetensorError as exc:
        raise PateError(f"{path} is not a safetensors student exported by pate ({_first_line(exc)})") from None
    model = _skeleton(meta, channels)
    model.load_state_dict({name: t.float() for name, t in state.items()})
    return Student(normalised(model, meta["mean"], meta["std"]), meta)


def _skeleton(meta: dict, channels: int):
    """The network(s) ``meta`` describes (``members``, ``flip_average`` and ``teacher_weight`` as checked
    by ``checked_meta``)."""
    return build_student(str(meta.get("arch")), channels, len(meta["classes"]), meta["image_size"],
                         members=meta.get("members", 1), flip_average=meta.get("flip_average", False),
                         teacher_weight=meta.get("teacher_weight", 0.0))


LOADERS = {".onnx": _load_onnx, ".pt2": _load_program, ".ts": _load_torchscript,
           ".safetensors": _load_safetensors}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _bad(path: Path, meta: dict, key: str, must: str) -> PateError:
    return PateError(f"{path}: its {META} is damaged or not pate's: {key!r} must be {must}; "
                     f"found {str(meta.get(key, 'nothing'))[:80]}")


def checked_meta(raw: str | bytes, path: Path, kind: str = "a TorchScript file") -> dict:
    """The student's description (``pate.json`` in the file), checked before it is trusted:
    numbers where numbers belong, and within what pate trains, so nothing is sized by a bad file."""
    missing = PateError(f"{path} is {kind} without pate's description of the student ({META})")
    if not raw:
        raise missing
    if len(raw) > MAX_META_BYTES:
        raise PateError(f"{path}: its {META} is {len(raw)} bytes; the file is damaged or not pate's")
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # bad JSON or UTF-8
        raise PateError(f"{path}: its {META} is not valid JSON ({str(exc)[:200]}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise missing

    def integer(key: str, low: int, high: int) -> int:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _bad(path, meta, key, f"an integer in [{low}, {high}]")
        return value

    if type(meta.get("channels")) is not int or meta["channels"] not in CHANNELS:
        raise _bad(path, meta, "channels", " or ".join(map(str, CHANNELS)))
    integer("image_size", 1, MAX_IMAGE_SIZE)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES \
            or not all(isinstance(c, str) for c in classes):
        raise _bad(path, meta, "classes", f"a list of 1 to {MAX_CLASSES} class names")
    if "members" in meta:
        integer("members", 1, MAX_MEMBERS)
    if not isinstance(meta.get("flip_average", False), bool):
        raise _bad(path, meta, "flip_average", "true or false")
    weight = meta.get("teacher_weight", 0.0)
    if type(weight) not in (int, float) or not 0 <= weight <= MAX_TEACHER_WEIGHT:
        raise _bad(path, meta, "teacher_weight", f"a number in [0, {MAX_TEACHER_WEIGHT}]")
    return meta


def _from_run(run_path: Path) -> Student:
    run = existing_run(run_path)
    run.require("train-student")
    spec, config = data_spec(run), run.config
    model = student_model(run)
    classes = list(spec.classes) or [str(c) for c in range(spec.num_classes)]
    meta = describe(config.student.arch, classes, spec.channels, spec.image_size, spec.mean, spec.std,
                    pipeline=config.name, **averaging(config.student))
    return Student(normalised(model, spec.mean, spec.std), meta)


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
