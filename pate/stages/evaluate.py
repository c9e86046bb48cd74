"""Evaluate the student on the held-out public test split -> metrics.json.

The true public labels are read here for evaluation only: the accuracy of the student and of the
released labels. Nothing in pate reads metrics.json to choose a setting.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import atomic_write_json
from ..student.training import accuracy
from . import finish
from ..run.artifacts import (LABELS, METRICS, TEACHERS_EVAL, Context, load_dataset, load_partition, public_images,
                             resolve_device, student_model)

NAME = "evaluate"


def run(ctx: Context) -> None:
    run_dir = ctx.run
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    model = student_model(run_dir)
    run_dir.begin(NAME)
    test_index = parts["test_index"]
    device = resolve_device(ctx.device)
    student_accuracy = (accuracy(model.to(device), public_images(dataset, test_index),
                                 torch.from_numpy(dataset.public_y[test_index].astype(np.int64)), device=device)
                        if len(test_index) else None)
    released = run_dir.load_npz(LABELS)
    # Evaluation only: compares released labels with the true public labels (where the data has
    # them), which PATE never uses otherwise.
    truth = dataset.public_y[released["query_index"]]
    label_accuracy = (float((released["label"] == truth).mean()) if len(truth) and (truth >= 0).all() else None)
    teacher_stats = run_dir.read_json(TEACHERS_EVAL)
    metrics = {"student_accuracy": student_accuracy, "label_accuracy": label_accuracy,
               "label_accuracy_note": "evaluation only: uses the true public labels, never used in training",
               "teacher_accuracy_mean": teacher_stats["teacher_accuracy_mean"],
               "ensemble_accuracy": teacher_stats["ensemble_accuracy"], "test_size": int(len(test_index))}
    atomic_write_json(run_dir.file(METRICS), metrics)
    finish(ctx, NAME)
    ctx.say(f"{NAME}: student accuracy {100 * student_accuracy:.2f}% on {len(test_index)} held-out images"
            if student_accuracy is not None else f"{NAME}: no held-out test split: the student's accuracy is unknown")
