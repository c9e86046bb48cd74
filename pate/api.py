"""A small Python API for notebooks: a finished run's settings, results and student, without the CLI.

    import pate
    run = pate.load_run("runs/mnist")
    run.guarantee            # {'epsilon': ..., 'delta': ..., 'accountant': ...}: publishable
    run.metrics              # student and label accuracy on the held-out public test split
    labels = run.labels      # (public_index, label) of every released label
    student = run.student()  # or pate.load_student("runs/mnist-release/student.onnx")
    student.predict(images)  # uint8 (N, C, H, W) -> (labels, confidences)

``pate.load_student`` on a ``student.onnx`` runs it with onnxruntime and never imports torch.

Everything here reads the run directory's verified artifacts and writes nothing. The private
figures (``run.private_privacy``, the audit ledger) stay private: show them to no one outside the
data holder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .export import student as exported
from .config import PipelineConfig
from .run.directory import RunDir
from .stages import NAMES, existing_run
from .run.artifacts import LABELS, data_spec, read_metrics, read_privacy


@dataclass(frozen=True)
class Run:
    """A run directory, read-only."""
    directory: RunDir

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def config(self) -> PipelineConfig:
        return self.directory.config

    @property
    def status(self) -> dict[str, str]:
        """Each stage: pending, partial or done."""
        return {name: self.directory.status(name) for name in NAMES}

    @property
    def privacy(self) -> dict:
        """The public privacy figures (safe to publish): guarantee, mechanism, settings, answered count."""
        return read_privacy(self.directory)["public"]

    @property
    def guarantee(self) -> dict:
        return self.privacy["guarantee"]

    @property
    def private_privacy(self) -> dict:
        """The data-dependent figures: PRIVATE, computed from the votes; never publish them."""
        return read_privacy(self.directory)["private"]

    @property
    def metrics(self) -> dict:
        """Accuracy of the student and the released labels on held-out public images (evaluation only)."""
        return read_metrics(self.directory)

    @property
    def classes(self) -> list[str]:
        spec = data_spec(self.directory)
        return list(spec.classes) or [str(c) for c in range(spec.num_classes)]

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The released labels: ``public_index`` (into the public set) and ``label``."""
        released = self.directory.load_npz(LABELS)
        return {"public_index": released["query_index"], "label": released["label"]}

    def student(self):
        """The trained student (``pate.export.student.Student``), with its normalisation."""
        return exported.load_student(self.path)


def load_run(path: str | Path) -> Run:
    """The run directory at ``path`` (as `pate run` left it), read-only."""
    return Run(existing_run(path))


def load_student(path: str | Path):
    """A student to label images with: an exported ``student.onnx`` (onnxruntime, no torch),
    ``student.pt2``, ``student.ts`` or ``student.safetensors``, their folder, or a run directory."""
    return exported.load_student(path)
