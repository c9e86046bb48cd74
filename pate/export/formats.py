"""The student's exported formats, the writing side: ONNX (onnxruntime alone runs it, no torch), a
``torch.export`` program, safetensors weights (and TorchScript on request, while torch ships it).

Every exported form takes float32 images (N, C, H, W) with pixels in [0, 1] at the training size,
any N, and returns logits; the normalisation the student was trained with is inside it, so a user
never has to know the data's mean and std (the safetensors file holds the bare network's weights;
its ``mean`` and ``std`` are in the metadata). What it needs to be used (classes, channels, image
size, the format version) is stored in the file itself, as ``pate.json``: the ONNX model's
``metadata_props``, the ``.pt2`` / TorchScript archive's extra files, the safetensors header's
metadata; and in ``student.json`` beside it. ``pate.export.student`` reads them back.

The student is post-processing of the privately released labels on public images, so it is as
private as the release: it may be shared with the privacy statement. This module imports torch
only to export.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import warnings
from typing import Any, Sequence

from ..errors import PateError
from ..run.outputs import RELEASE_FORMAT
from ..nets.models import has_scattering

META = "pate.json"  # the student's description, inside every exported file
STUDENT_ONNX, STUDENT_PT2, STUDENT_SAFETENSORS = "student.onnx", "student.pt2", "student.safetensors"
STUDENT_TS, STUDENT_JSON = "student.ts", "student.json"
FORMAT = RELEASE_FORMAT  # student.json marks a folder as a pate export (pate.run.outputs)
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # of the ONNX graph
EXPORT_TOOLS = ("onnx", "onnxscript", "safetensors")  # what `pate export` needs beside torch (the export extra)


def normalised(model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``model`` behind the per-channel normalisation it was trained with ([0, 1] pixels in, logits
    out): ``(x - mean) / std`` as a fixed depthwise 1x1 convolution, so the whole is a plain
    ``nn.Sequential`` that every exporter handles without custom code."""
    import torch
    from torch import nn

    channels = len(mean)
    norm = nn.Conv2d(channels, channels, kernel_size=1, groups=channels)
    with torch.no_grad():
        norm.weight.copy_((1.0 / torch.tensor(std, dtype=torch.float32)).view(channels, 1, 1, 1))
        norm.bias.copy_(-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32))
    for p in norm.parameters():
        p.requires_grad_(False)
    layers = list(model.children()) if isinstance(model, nn.Sequential) else [model]  # an averaged student: whole
    return nn.Sequential(norm, *layers).eval()


def describe(arch: str, classes: Sequence[str], channels: int, image_size: int, mean, std, **about) -> dict:
    """What a user of the exported student needs (stored in every exported file and in student.json)."""
    return {"format": FORMAT, "arch": arch, "classes": list(classes), "channels": int(channels),
            "image_size": int(image_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "input": "float32 (N, C, H, W), pixels in [0, 1]; the normalisation is inside the model",
            "output": "logits (N, classes)", **about}


def averaging(student) -> dict:
    """What a ``[student]`` section adds to the description of an averaged student (``members``,
    ``flip_average``, and ``teacher_weight`` where the DP-SGD teacher is weighted in; nothing for one
    network, so earlier files read as they always did)."""
    if student.members == 1 and not student.flip_average and not student.teacher_weight:
        return {}
    return {"members": int(student.members), "flip_average": bool(student.flip_average),
            **({"teacher_weight": float(student.teacher_weight)} if student.teacher_weight else {})}


def check_export_tools(torchscript: bool = False, arch: str | None = None, teacher_weight: float = 0.0) -> None:
    """Refuse, before anything is written, an export this installation (or this student: its ``arch``, and
    a DP-SGD teacher weighted in, ``[student] teacher_weight``) cannot finish."""
    missing = [name for name in EXPORT_TOOLS if not _importable(name)]
    if missing:
        raise PateError(f"exporting the student (ONNX, safetensors) needs {', '.join(missing)}: "
                        "pip install pate (they are among its requirements), then `pate export RUN_DIR`")
    if torchscript and not _torchscript_available():
        raise PateError("this torch no longer ships TorchScript: export without --torchscript "
                        f"({STUDENT_ONNX} and {STUDENT_PT2} are written either way)")
    scattering = arch is not None and has_scattering(arch)
    if torchscript and (scattering or teacher_weight):
        what = f"the {arch} student" if scattering else "a student that carries the DP-SGD teacher"
        raise PateError(f"TorchScript is not offered for {what} (its scattering layer is written for "
                        f"torch.export): export without --torchscript; {STUDENT_ONNX} and {STUDENT_PT2} hold it")


def _example(meta: dict) -> Any:
    import torch

    size = meta["image_size"]
    return torch.rand(2, meta["channels"], size, size, generator=torch.Generator().manual_seed(0))


def _batch_dim() -> Any:
    import torch

    return ({0: torch.export.Dim("batch")},)


def onnx_bytes(model: Any, meta: dict) -> bytes:
    """``model`` (a trained student) with its normalisation as an ONNX model (the dynamo exporter),
    input ``images`` float32 (N, C, H, W) in [0, 1] with a dynamic N, output ``logits``, and
    ``meta`` in its ``metadata_props`` (``pate.json``, and the format, classes, channels and image
    size as keys of their own for tools that show them)."""
    import torch

    module = normalised(model.cpu().eval(), meta["mean"], meta["std"])
    program = torch.onnx.export(module, (_example(meta),), dynamo=True, dynamic_shapes=_batch_dim(),
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    proto = program.model_proto
    props = {META: json.dumps(meta), "pate.format": meta["format"], "pate.classes": json.dumps(meta["classes"]),
             "pate.channels": str(meta["channels"]), "pate.image_size": str(meta["image_size"])}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"pate student ({meta['arch']}, {len(meta['classes'])} classes): float32 images "
                        f"(N, {meta['channels']}, {meta['image_size']}, {meta['image_size']}) in [0, 1] -> logits")
    return proto.SerializeToString()


def program_bytes(model: Any, meta: dict) -> bytes:
    """``model`` with its normalisation as a ``torch.export`` program (``torch.export.save``; a
    dynamic batch dimension), ``meta`` as the archive's extra file ``pate.json``."""
    import torch

    module = normalised(model.cpu().eval(), meta["mean"], meta["std"])
    program = torch.export.export(module, (_example(meta),), dynamic_shapes=_batch_dim())
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={META: json.dumps(meta)})
    return buffer.getvalue()


def safetensors_bytes(model: Any, meta: dict) -> bytes:
    """The bare network's weights (no normalisation: rebuild it with ``pate.nets.models.build_student``
    and normalise inputs with ``mean``/``std``) as safetensors, ``meta`` in the header's metadata."""
    from safetensors.torch import save

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    return save(state, metadata={META: json.dumps(meta)})


def torchscript_bytes(model: Any, meta: dict) -> bytes:
    """``model`` with its normalisation, scripted, ``meta`` inside the archive (only on request:
    TorchScript is deprecated in favour of torch.export)."""
    import torch

    buffer = io.BytesIO()
    with _quiet_deprecation():
        scripted = torch.jit.script(normalised(model.cpu().eval(), meta["mean"], meta["std"]))
        torch.jit.save(scripted, buffer, _extra_files={META: json.dumps(meta)})
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_deprecation():
    """TorchScript is deprecated in favour of torch.export; pate writes or reads it only when a user
    asks for it by name (``--torchscript``, a ``.ts`` file), so without the warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _torchscript_available() -> bool:
    import torch

    jit = getattr(torch, "jit", None)
    return all(callable(getattr(jit, name, None)) for name in ("script", "save", "load"))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

