"""[student]: the student's architecture, method and training on the released labels."""
from __future__ import annotations

from dataclasses import dataclass

from ..nets.models import ARCHITECTURES, MAX_MEMBERS, MAX_TEACHER_WEIGHT
from .checks import MAX_BATCH, MAX_SEED, MAX_STEPS, MAX_UNLABELED_RATIO, _check


ARCHS = tuple(ARCHITECTURES)  # a student's; teachers take TEACHER_ARCHITECTURES (no scattering layer)


STUDENT_METHODS = ("supervised", "fixmatch", "pseudo-label")


PROPAGATION = ("none", "label-spreading")  # [student] propagation (pate.student.propagation)


PRECISIONS = ("fp32", "bf16")  # [student] precision (pate.student.training checks its argument against it)


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "cnn-small"
    method: str = "fixmatch"
    steps: int = 4500
    batch_size: int = 32
    unlabeled_ratio: int = 4
    lr: float = 0.03
    weight_decay: float = 5e-4
    threshold: float = 0.95
    seed: int = 0
    # With [aggregator] soft_labels: the targets are softmax(noisy count vector / soft_temperature);
    # 0 = the standard deviation of the answer noise (sigma2; sqrt(2)/gamma for LNMax).
    soft_temperature: float = 0.0
    # Post-processing over the public pool (pate.student.propagation): "label-spreading" fills in the
    # unlabelled pool images from the released labels on a propagation_k-NN graph of public features
    # (clamping propagation_alpha); those at least propagation_confidence sure join the labelled set.
    propagation: str = "none"
    propagation_k: int = 10
    propagation_alpha: float = 0.8
    propagation_confidence: float = 0.9
    # With [aggregator] soft_labels: train on this fraction of the released labels, those whose noisy
    # vector's top-two margin is widest (the surest); the others join the unlabelled pool. Post-processing
    # of the release (reverse-knn labels every anchor, and the narrow margins are the noisy ones).
    keep_widest: float = 1.0
    # A DP-SGD teacher's released probabilities are tempered before the student learns them:
    # p^(1/prior_temperature), renormalised (above 1 softens an overconfident model; 1 = as released).
    prior_temperature: float = 1.0
    # Horizontal flips in the student's augmentations (clothes, not digits or text).
    hflip: bool = False
    # Random erasing of the labelled batches: the probability that an image has a rectangle erased
    # (Zhong et al. 2020; 0 = none).
    erase: float = 0.0
    # Mixup of the labelled batches (Zhang et al. 2018): each image and its target blended with another
    # of the batch, the weight drawn from Beta(mixup, mixup) (0 = none).
    mixup: float = 0.0
    # Students trained on the same targets from seeds seed, seed + 1, ...; the model that is evaluated
    # and exported averages their logits (pate.nets.models.build_student). Each costs a full training.
    members: int = 1
    # The exported model also averages the logits of each image and its left-right mirror (for data
    # whose mirror is the same class: clothes, not digits or text; pairs with hflip).
    flip_average: bool = False
    # With a DP-SGD teacher ([teachers] dpsgd_noise): the model evaluated and exported adds this weight
    # times the teacher's logits to the students' averaged logits (0 = the students alone). The teacher
    # is the DP-SGD mechanism's own output, released with its probabilities: no privacy cost beside it.
    teacher_weight: float = 0.0
    # The students' training arithmetic: "bf16" runs their forward passes in bfloat16 mixed precision
    # (weights, optimiser and EMA stay float32; the model evaluated and exported is float32), about
    # twice as fast where the CPU or GPU computes bfloat16 natively, slower where it does not.
    precision: str = "fp32"

    def validate(self) -> None:
        _check("student", "arch", self.arch in ARCHS, f"one of {list(ARCHS)}", self.arch)
        _check("student", "propagation", self.propagation in PROPAGATION, f"one of {list(PROPAGATION)}",
               self.propagation)
        _check("student", "propagation_k", 1 <= self.propagation_k <= 1000, "between 1 and 1000", self.propagation_k)
        _check("student", "propagation_alpha", 0 < self.propagation_alpha < 1, "in (0, 1)", self.propagation_alpha)
        _check("student", "propagation_confidence", 0 <= self.propagation_confidence <= 1, "in [0, 1]",
               self.propagation_confidence)
        _check("student", "keep_widest", 0 < self.keep_widest <= 1, "in (0, 1] (1 = every released label)",
               self.keep_widest)
        _check("student", "erase", 0 <= self.erase <= 1, "in [0, 1] (the probability an image is erased)", self.erase)
        _check("student", "mixup", self.mixup == 0 or 0.01 <= self.mixup <= 100,
               "0 (none) or in [0.01, 100] (Beta(mixup, mixup) weights)", self.mixup)
        _check("student", "members", type(self.members) is int and 1 <= self.members <= MAX_MEMBERS,
               f"an integer between 1 and {MAX_MEMBERS} (students averaged)", self.members)
        _check("student", "flip_average", isinstance(self.flip_average, bool), "true or false", self.flip_average)
        _check("student", "precision", self.precision in PRECISIONS,
               f"one of {list(PRECISIONS)} (bf16: mixed precision, for CPUs and GPUs with native bfloat16)",
               self.precision)
        _check("student", "teacher_weight", 0 <= self.teacher_weight <= MAX_TEACHER_WEIGHT,
               f"in [0, {MAX_TEACHER_WEIGHT:g}] (the DP-SGD teacher's logits' weight; 0 = the students alone)",
               self.teacher_weight)
        _check("student", "prior_temperature", 0.01 <= self.prior_temperature <= 100, "in [0.01, 100] (1 = as released)",
               self.prior_temperature)
        _check("student", "soft_temperature", 0 <= self.soft_temperature <= 1e6, "in [0, 1e6] (0 = the noise's std)",
               self.soft_temperature)
        _check("student", "method", self.method in STUDENT_METHODS, f"one of {list(STUDENT_METHODS)}",
               self.method)
        _check("student", "steps", 1 <= self.steps <= MAX_STEPS, f"between 1 and {MAX_STEPS}", self.steps)
        _check("student", "batch_size", 1 <= self.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH}",
               self.batch_size)
        _check("student", "unlabeled_ratio", 0 <= self.unlabeled_ratio <= MAX_UNLABELED_RATIO,
               f"between 0 and {MAX_UNLABELED_RATIO}", self.unlabeled_ratio)
        _check("student", "lr", self.lr > 0, "> 0", self.lr)
        _check("student", "weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay)
        _check("student", "threshold", 0 < self.threshold <= 1, "in (0, 1]", self.threshold)
        _check("student", "seed", 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]", self.seed)

