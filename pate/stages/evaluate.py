"""Evaluate the student on the held-out public test split -> metrics.json.

The true public labels are read here for evaluation only: the accuracy of the student and of the
released labels. Nothing in pate reads metrics.json to choose a setting.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import atomic_write_json
from ..nets.averaged import students_alone
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
    test_x, test_y = public_images(dataset, test_index), torch.from_numpy(dataset.public_y[test_index].astype(np.int64))
    student_accuracy = accuracy(model.to(device), test_x, test_y, device=device) if len(test_index) else None
    alone = students_alone(model)  # with [student] teacher_weight: what the teacher's logits added, reported beside
    alone_accuracy = (accuracy(alone, test_x, test_y, device=device)
                      if alone is not model and student_accuracy is not None else None)
    released = run_dir.load_npz(LABELS)
    # Evaluation only: compares released labels with the true public labels (where the data has
    # them), which PATE never uses otherwise.
    truth = dataset.public_y[released["query_index"]]
    label_accuracy = (float((released["label"] == truth).mean()) if len(truth) and (truth >= 0).all() else None)
    teacher_stats = run_dir.read_json(TEACHERS_EVAL)
    metrics = {"student_accuracy": student_accuracy, "label_accuracy": label_accuracy,
               "label_accuracy_note": "evaluation only: uses the true public labels, never used in training",
               "teacher_accuracy_mean": teacher_stats["teacher_accuracy_mean"],
               "ensemble_accuracy": teacher_stats["ensemble_accuracy"], "test_size": int(len(test_index)),
               **({} if alone_accuracy is None else {"students_alone_accuracy": alone_accuracy})}
    atomic_write_json(run_dir.file(METRICS), metrics)
    finish(ctx, NAME)
    ctx.say(f"{NAME}: student accuracy {100 * student_accuracy:.2f}% on {len(test_index)} held-out images"
            + ("" if alone_accuracy is None else f" (the students alone, without the DP-SGD teacher's logits: "
                                                 f"{100 * alone_accuracy:.2f}%)")
            if student_accuracy is not None else f"{NAME}: no held-out test split: the student's accuracy is unknown")
