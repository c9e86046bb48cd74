"""The teachers: K models, each trained on its own shard of the private data only.

``ensemble``: the batched K-teacher module and voting; ``optim``: per-teacher SGD/Adam;
``training``: the training loop and its checkpoints; ``distributed``: torchrun ranks. The public
feature spaces every teacher may share (one logistic head per teacher on them) are in
``pate.features``. The names below are the package's public API.
"""
from .distributed import all_gather_ensemble, teachers_for_rank
from .ensemble import (TeacherEnsemble, extract_teacher, init_teachers, load_teachers, merge_ensembles, predict,
                       teacher_accuracies, votes_from_predictions)
from .optim import BatchedOptimizer
from .training import (CHECKPOINT_FORMAT, default_group_size, ensemble_from_checkpoint, epoch_batches, shards_of,
                       train_ensemble)

__all__ = ["TeacherEnsemble", "BatchedOptimizer", "train_ensemble", "predict", "votes_from_predictions",
           "teacher_accuracies", "extract_teacher", "init_teachers", "load_teachers", "merge_ensembles",
           "all_gather_ensemble", "teachers_for_rank", "ensemble_from_checkpoint", "epoch_batches", "shards_of",
           "default_group_size", "CHECKPOINT_FORMAT"]
