"""`pate export`: the public folder, apart from the private run directory.

It holds exactly what may be shared: the released labels (``labels.csv`` with each public image's
index, file and class name), the student (ONNX and a ``torch.export`` program with its normalisation
inside, its weights as safetensors, ``student.json`` saying how to use and rebuild it; TorchScript
only on request), a model card, and the public privacy
statement (JSON and text): the worst-case guarantee and δ, the accountant, the mechanism and
every fixed setting, queries asked and answered, the smooth-sensitivity figure if one was
released, whether noise was seeded, and with ``[privacy] total_budget`` that budget's promise. What
earlier releases spent on the same records is never in it: that total depends on which records are
in the data (whether one record is in it is readable from two runs' totals), so it stays in the
private views (``pate status``, the summary). Nothing in it is computed from the votes except
through a mechanism's noise (the labels, what was answered, the noisy release) and post-processing
of those on public data (the student, its accuracy on the public test split).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..data import source_of
from ..io import atomic_write_bytes, atomic_write_json
from ..run.outputs import EXPORT, check_output, release_tag
from ..run.directory import RunDir, RunError, now
from ..stages import NAMES
from ..run.artifacts import DATA, LABELS, data_spec, read_metrics, read_privacy, student_model
from . import formats, model_card

STATEMENT_JSON, STATEMENT_TEXT = "statement.json", "statement.txt"
LABELS_CSV, LABELS_NPZ, MODEL_CARD = "labels.csv", "labels.npz", "model-card.md"
STUDENT_ONNX, STUDENT_PT2, STUDENT_SAFETENSORS = formats.STUDENT_ONNX, formats.STUDENT_PT2, formats.STUDENT_SAFETENSORS
STUDENT_TS, STUDENT_JSON = formats.STUDENT_TS, formats.STUDENT_JSON
FILES = (LABELS_CSV, LABELS_NPZ, STUDENT_ONNX, STUDENT_PT2, STUDENT_SAFETENSORS, STUDENT_JSON, MODEL_CARD,
         STATEMENT_JSON, STATEMENT_TEXT)  # what an export writes (and ``student.ts`` with --torchscript)
FORMER = ("student.pt",)  # written by earlier exports (the state dict, now student.safetensors): removed on re-export


def files(torchscript: bool = False) -> tuple[str, ...]:
    """The files of an export (with or without the TorchScript student)."""
    return FILES[:5] + (STUDENT_TS,) + FILES[5:] if torchscript else FILES


def default_out(run: RunDir) -> Path:
    """Beside the run directory, never inside it: ``runs/NAME`` -> ``runs/NAME-release``."""
    return run.path.parent / f"{run.path.name}-release"


def spend_log_claim(total_budget: float, delta: float) -> dict:
    """What the statement says about earlier releases on the same records: only what holds for
    every dataset (the settings alone). The composed total a record has spent is PRIVATE: runs over
    records r300-r599 and over those plus r0 would show 1 and 2 releases once r0 was in an earlier
    run, so publishing it (or refusing the run for it) would tell whether r0 is in the data."""
    if total_budget:
        budget = f"{total_budget:g}" if float(f"{total_budget:g}") == total_budget else repr(float(total_budget))
        return {"total_budget": total_budget, "delta": delta, "statement": (
            f"Every record this release used has spent at most epsilon {budget} at delta {delta:g} over all "
            "releases recorded in its spend log, this one included ([privacy] total_budget, composed in Renyi DP): "
            "records that this run would have taken past it were left out of the run; how many is not published.")}
    return {"total_budget": None, "delta": delta, "statement": (
        "What earlier releases spent on the same records is not published: it depends on which records are in "
        "the data. The data holder's spend log composes it.")}


def statement(run: RunDir, written: tuple[str, ...] = FILES) -> dict:
    """The public statement of a finished run (JSON-ready); ``written``: the export's files."""
    config = run.config
    public = read_privacy(run)["public"]
    metrics = read_metrics(run)
    spec = data_spec(run)
    return {
        "pipeline": config.name, "dataset": config.data.public_name, "classes": list(spec.classes) or None,
        "generated": now(), "pate_version": __version__,
        "privacy": public,
        "spend_log": spend_log_claim(config.privacy.total_budget, public["delta"]),
        "student": {"arch": config.student.arch, "method": config.student.method, "classes": spec.num_classes,
                    **formats.averaging(config.student),
                    "input": [spec.channels, spec.image_size, spec.image_size], "mean": list(spec.mean),
                    "std": list(spec.std), "accuracy": metrics.get("student_accuracy"),
                    "test_size": metrics.get("test_size"),
                    "accuracy_note": "on held-out PUBLIC images; the student saw only public images and released "
                                     "labels, so it is covered by the guarantee"},
        "label_accuracy": metrics.get("label_accuracy"),
        # Post-processing of the release on public data (free): what the student was trained on besides the labels.
        "post_processing": ["label-spreading on a kNN graph of the public pool"]
        if config.student.propagation != "none" else [],
        "files": list(written),
    }


def statement_text(doc: dict) -> str:
    p = doc["privacy"]
    g, release, claim = p["guarantee"], p.get("data_dependent_release"), doc["spend_log"]
    settings = ", ".join(f"{k} {v}" for k, v in p["settings"].items() if v is not None)
    lines = [f"Privacy statement: {doc['pipeline']} ({doc['dataset']}), pate {doc['pate_version']}",
             "",
             f"Guarantee: ({g['epsilon']:.3f}, {g['delta']:g})-differential privacy for every private record, "
             f"computed from the settings alone ({g['accountant']} accountant, at most {g['queries']} queries).",
             f"Mechanism: {p['mechanism']} ({settings}).",
             f"Queries asked {p['queries_asked']}, answered {p['queries_answered']}"
             + (" (stopped by the epsilon budget)." if p.get("stopped_by_budget") else ".")]
    if release:
        lines.append(f"Data-dependent cost, released with smooth-sensitivity noise (the PATE papers' convention, "
                     f"not a guarantee): epsilon {release['epsilon']:.3f} at order {release['order']:g} "
                     f"(beta {release['beta']:g}, sigma_ss {release['sigma_ss']:g}, fixed in advance).")
    lines.append(claim["statement"])
    if p.get("seeded"):
        lines.append("Noise was SEEDED for reproducibility: this is not a production privacy guarantee.")
    student = doc["student"]
    if student.get("accuracy") is not None:
        lines.append(f"Student ({student['arch']}, {student['method']}): {100 * student['accuracy']:.2f}% accuracy "
                     f"on {student['test_size']} held-out public images.")
    lines += ["", "Files: " + ", ".join(doc["files"]) + "."]
    return "\n".join(lines) + "\n"


def build(run: RunDir, out: Path | None = None, torchscript: bool = False) -> Path:
    """Write the public folder of a finished run (``student.ts`` too with ``torchscript``); returns its path."""
    run.require(*NAMES)
    out = Path(out) if out is not None else default_out(run)
    check_out(run, out)  # before anything is written
    formats.check_export_tools(torchscript, run.config.student.arch, run.config.student.teacher_weight)
    written = files(torchscript)
    spec, config = data_spec(run), run.config
    classes = list(spec.classes) or [str(c) for c in range(spec.num_classes)]
    labels = run.load_npz(LABELS)
    doc = statement(run, written)
    meta = formats.describe(config.student.arch, classes, spec.channels, spec.image_size, spec.mean, spec.std,
                            pipeline=config.name, pate_version=__version__,
                            guarantee={"epsilon": doc["privacy"]["guarantee"]["epsilon"],
                                       "delta": doc["privacy"]["guarantee"]["delta"]},
                            seeded=bool(doc["privacy"].get("seeded")), release_of=release_tag(run),
                            **formats.averaging(config.student),
                            rebuild="pate.nets.models.build_student(arch, channels, len(classes), image_size, "
                                    "members=members (1 if absent), flip_average=flip_average (false if absent), "
                                    "teacher_weight=teacher_weight (0 if absent))"
                                    ".load_state_dict(safetensors.torch.load_file('student.safetensors')) on "
                                    "inputs normalised with mean/std")
    model = student_model(run)  # its weights verified
    made = {  # everything made (and every artifact verified) before the first write
        LABELS_NPZ: _npz(public_index=labels["query_index"], label=labels["label"],  # soft: the noisy vectors
                         **{key: labels[key] for key in ("soft", "prior") if key in labels}),  # prior: DP-SGD's
        LABELS_CSV: _labels_csv(run, labels["query_index"], labels["label"], classes).encode(),
        STUDENT_ONNX: formats.onnx_bytes(model, meta),
        STUDENT_PT2: formats.program_bytes(model, meta),
        STUDENT_SAFETENSORS: formats.safetensors_bytes(model, meta),
        **({STUDENT_TS: formats.torchscript_bytes(model, meta)} if torchscript else {}),
        STATEMENT_JSON: (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(),
        STATEMENT_TEXT: statement_text(doc).encode(),
        MODEL_CARD: model_card.render(run, doc, classes).encode(),
    }
    # Public files, normal modes (the run directory's are 0600). student.json first: it marks the
    # folder as a pate export, so a rerun after a crash here may write into it again.
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STUDENT_JSON, meta, private=False)
    for name, data in made.items():
        atomic_write_bytes(out / name, data, private=False)
    for name in (*FORMER, *(() if torchscript else (STUDENT_TS,))):  # a previous export's, not of this student
        (out / name).unlink(missing_ok=True)
    return out


def check_out(run: RunDir, out: Path) -> None:
    """Refuse an output folder the public release must not be written to, before writing anything:
    the output rule (``pate.run.outputs``: no run directory, no other run's release, not the data, not
    over what pate did not write), and a previous export of this run holding other files."""
    check_output(out, EXPORT, run)
    if not out.exists():
        return
    others = sorted(p.name for p in out.iterdir() if not _ours(p.name))
    if others:
        raise RunError(f"{out} holds files that are not part of a pate export ({', '.join(others[:3])}"
                       f"{', ...' if len(others) > 3 else ''}); give an empty or new folder")


def _ours(name: str) -> bool:
    """A file an export writes, or a temporary file of one cut short (``.NAME.XXXX.tmp``)."""
    known = (*files(torchscript=True), *FORMER)
    return name in known or (name.startswith(".") and name.endswith(".tmp")
                             and any(name.startswith(f".{f}.") for f in known))


def _labels_csv(run: RunDir, public_index: np.ndarray, label: np.ndarray, classes: list[str]) -> str:
    """One row per released label: the public image's index (and its file, for image folders), the
    label and its class name. Public file names are public, relative to ``public_dir`` (the folders
    above it may name the private data's place); the private ones never appear."""
    data = run.config.data
    public_files = source_of(data).public_files(data, lambda: run.read_json(DATA).get("files", {}))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["public_index", "public_file", "label", "class"])
    for index, y in zip(public_index.tolist(), label.tolist()):
        writer.writerow([index, public_files[index] if public_files else "", y, classes[y]])
    return rows.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
