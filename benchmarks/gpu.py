"""GPU figures of the teacher ensemble, voting, the student and the whole pipeline, in one command.

    python benchmarks/gpu.py [--smoke] [--out FILE.json] [--device auto|cuda|cpu] [--skip-e2e]
                             [--budget-s S] [--pipeline P.toml] [--data-root DIR] [--threads N]

On the GPU machine (an H100/H200; the timeout leaves room for one rerun in the device time):

    timeout 480 python benchmarks/gpu.py --out $OUT/gpu.json

``--smoke`` runs every section at toy sizes, so the CPU test (tests/test_gpu_benchmark.py) can check
the whole script; smoke figures measure nothing worth comparing.

Sections, in this order (the issue's targets first, so that a run cut by ``--budget-s`` loses the rest):
  matmul          dense matmul rate measured in this run: fp32 (IEEE), TF32, bf16.
  teachers_small  250 x cnn-small on 240 synthetic MNIST-shaped images each, 15 epochs, the pipeline's
                  teacher recipe (``TeachersConfig``: Adam 2e-3, batch 32, +-2 px shifts): the batched
                  ensemble vs a per-teacher loop of the same networks (same initial weights, batches and
                  shifts; a few teachers timed and scaled linearly to all of them), images/s, and the
                  fraction of the matmul rate of the same precision.
  voting          250 trained cnn-small teachers on 10 000 queries: queries/s.
  student         FixMatch steps/s, cnn-small (1x28x28) and cnn-deep (3x32x32), the pipeline's recipe.
  e2e             ``pate run pipelines/mnist.toml --device D`` as a subprocess: wall time per stage.
  teachers_deep   as teachers_small, 250 x cnn-deep on 200 synthetic CIFAR-10-shaped images each
                  (CIFAR-10's 50 000 training images over 250 teachers).

A student this CPU cannot train within a pipeline's 15 minutes, on the release of a pipeline, alone:

    timeout 540 python benchmarks/gpu.py --only e2e --pipeline pipelines/fashion-mnist-rknn.toml \
        --student-method fixmatch --student-steps 20000 --budget-s 500 --out $OUT/gpu-fashion.json

(``--student-arch/-method/-steps`` replace the pipeline's ``[student]`` settings in a copy; the
other stages run as the pipeline says, the DP-SGD teacher on the CPU.)

Every in-process section runs in two modes, reported separately:
  fp32  IEEE fp32 everywhere (cuDNN's default TF32 convolutions switched off): the mode in which each
        teacher of the ensemble equals its separately trained network to rounding
        (``loop_relative_diff``, ``loop_prediction_agreement``).
  fast  TF32 matmuls and convolutions, the cuDNN autotuner, and where pate offers them bf16 autocast
        (teachers, voting), channels-last inputs for the loop's plain networks and pinned query memory.
        On the CPU these knobs do nothing (pate's autocast is CUDA-only): both modes measure the same.
``e2e`` runs pate as it is (bf16 teachers on CUDA, default precision flags). ``torch.compile`` and CUDA
graphs are not used: ``train_ensemble`` and ``train_student`` build and step their modules inside pate,
and no knob there should change before the first GPU figures show where the time goes.

Each measurement follows a warm-up of the same shapes and is bracketed by ``torch.cuda.synchronize``.
The JSON at ``--out`` is rewritten after every section, so a run cut by its timeout keeps what it
measured. The last line printed is the summary.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout this file is in, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.seeds import pipeline_text, with_settings  # noqa: E402
from benchmarks.teachers import training_flops_per_image  # noqa: E402
from pate import config as config_mod  # noqa: E402
from pate import data as data_mod  # noqa: E402
from pate import stages  # noqa: E402
from pate import teachers as E  # noqa: E402
from pate.nets.augment import shift_images  # noqa: E402
from pate.student.training import predict, train_student  # noqa: E402

CLASSES = 10
MODES = ("fp32", "fast")
SMALL, DEEP = ("cnn-small", 1, 28), ("cnn-deep", 3, 32)  # (arch, channels, image size)
PATE_VOTE_CHUNK = inspect.signature(E.predict).parameters["chunk_size"].default  # what the vote stage uses


@dataclass(frozen=True)
class Sizes:
    """How much work each section does: FULL for the GPU run (the issue's sizes), SMOKE for the CPU test."""
    teachers: int
    per_teacher: dict  # arch -> images per teacher
    epochs: int
    batch_size: int
    loop_teachers: int  # teachers of the per-teacher loop actually timed
    heldout: int  # synthetic held-out images for teacher accuracy
    queries: int
    vote_chunk: int  # queries per forward pass in fast mode (fp32 uses pate's default)
    student_labeled: int
    student_unlabeled: int
    student_batch: int
    student_warmup: int
    student_steps: int
    matmul_n: int
    matmul_repeats: int


FULL = Sizes(teachers=250, per_teacher={"cnn-small": 240, "cnn-deep": 200}, epochs=15,
             batch_size=config_mod.TeachersConfig().batch_size, loop_teachers=4, heldout=1000, queries=10_000,
             vote_chunk=1000, student_labeled=400, student_unlabeled=8600,
             student_batch=config_mod.StudentConfig().batch_size, student_warmup=20,
             student_steps=300, matmul_n=8192, matmul_repeats=10)
SMOKE = Sizes(teachers=4, per_teacher={"cnn-small": 32, "cnn-deep": 32}, epochs=2, batch_size=16, loop_teachers=2,
              heldout=64, queries=300, vote_chunk=100, student_labeled=32, student_unlabeled=64, student_batch=8,
              student_warmup=2, student_steps=4, matmul_n=256, matmul_repeats=3)

# Every stage of a pipeline at toy size (fake or real MNIST), for --smoke without --pipeline.
SMOKE_PIPELINE = """\
name = "gpu-smoke"

[data]
dataset = "mnist"
private_size = 600
student_pool = 300
test_size = 100
split_seed = 0

[teachers]
count = 6
epochs = 1
batch_size = 16

[aggregator]
mechanism = "confident-gnmax"
max_queries = 40
threshold = 4
sigma1 = 1.0
sigma2 = 1.0
seed = 7

[privacy]
delta = 1e-4

[student]
method = "fixmatch"
steps = 20
batch_size = 16
"""


# ----------------------------------------------------------------------------- bookkeeping


class Report:
    """Every figure in a nested dict, printed as a readable line when recorded and saved to the JSON
    after every section (so a run killed by its timeout keeps what it measured)."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.figures = out, {"meta": meta, "skipped": {}}
        out.parent.mkdir(parents=True, exist_ok=True)

    def put(self, path: str, value, line: str | None = None) -> None:
        *parents, key = path.split(".")
        node = self.figures
        for name in parents:
            node = node.setdefault(name, {})
        node[key] = value
        if line:
            print(line, flush=True)

    def get(self, path: str):
        node = self.figures
        for name in path.split("."):
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        return node

    def skip(self, what: str, why: str) -> None:
        self.figures["skipped"][what] = why
        print(f"{what}: skipped ({why})", flush=True)

    def save(self) -> None:
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.figures, indent=2) + "\n")
        tmp.replace(self.out)


class Budget:
    """Wall-clock guard: a section (or mode) starts only if its estimate fits in what is left."""

    def __init__(self, seconds: float | None):
        self.seconds, self.began = seconds, time.monotonic()

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.monotonic() - self.began)

    def fits(self, estimate_s: float) -> bool:
        return estimate_s < self.left()


@dataclass
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    report: Report
    budget: Budget
    trained: dict = field(default_factory=dict)  # (arch, mode) -> ensemble, for the voting section

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable):
        """(seconds, result) of ``fn()``, the device idle before and after."""
        self.sync()
        start = time.perf_counter()
        result = fn()
        self.sync()
        return time.perf_counter() - start, result


@contextmanager
def precision(mode: str, device: torch.device):
    """The knobs of ``mode`` for the block (see the module docstring); yields whether bf16 autocast applies."""
    fast = mode == "fast"
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.fp32_precision = "tf32" if fast else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if fast else "ieee"
    torch.backends.cudnn.benchmark = fast
    try:
        yield fast and device.type == "cuda"
    finally:
        (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
         torch.backends.cudnn.benchmark) = saved


def synthetic(n: int, channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable images: a smooth template per class (the same for every seed, so training and
    held-out sets agree; smooth so that +-2 px shifts keep it recognisable) at 0.2 of unit noise, where
    cnn-small teachers reach about 90% (measured on the CPU), like MNIST teachers: a broken precision
    mode shows in their accuracy."""
    templates = F.interpolate(torch.randn(CLASSES, channels, 4, 4, generator=torch.Generator().manual_seed(0)),
                              size=(size, size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return 0.2 * templates[labels] + torch.randn(n, channels, size, size, generator=g), labels


# ----------------------------------------------------------------------------- matmul


def matmul_rate(bench: Bench, dtype: torch.dtype) -> float:
    """FLOP/s of ``repeats`` back-to-back n x n matmuls after two warm-up products."""
    n, repeats = bench.sizes.matmul_n, bench.sizes.matmul_repeats
    a, b = (torch.randn(n, n, device=bench.device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    seconds, _ = bench.timed(lambda: [torch.matmul(a, b, out=out) for _ in range(repeats)])
    return 2 * n ** 3 * repeats / seconds


def matmul_section(bench: Bench) -> None:
    n = bench.sizes.matmul_n
    for name, mode, dtype in (("fp32", "fp32", torch.float32), ("tf32", "fast", torch.float32),
                              ("bf16", "fast", torch.bfloat16)):
        with precision(mode, bench.device):
            rate = matmul_rate(bench, dtype)
        bench.report.put(f"matmul.{name}_tflops", rate / 1e12, f"matmul {name} {n}x{n}: {rate / 1e12:.2f} TFLOP/s")


def reference_rate(bench: Bench, amp: bool) -> tuple[str, float]:
    """The matmul rate that work is compared with: bf16 when it ran under bf16 autocast (fast mode on
    CUDA), else IEEE fp32 (fp32 mode; fast mode on the CPU, which computes in fp32)."""
    name = "bf16" if amp else "fp32"
    return name, bench.report.get(f"matmul.{name}_tflops") * 1e12


# ----------------------------------------------------------------------------- teachers


def teacher_recipe(sizes: Sizes) -> dict:
    """The pipeline's teacher hyper-parameters (``[teachers]`` defaults), at this run's batch size."""
    t = config_mod.TeachersConfig()
    return dict(batch_size=sizes.batch_size, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                weight_decay=t.weight_decay, seed=t.seed, augment=t.augment)


@dataclass(frozen=True)
class TeacherData:
    """The synthetic private data of one teachers section: ``images[i]`` belongs to teacher ``teacher_of[i]``."""
    spec: tuple  # (arch, channels, image size)
    images: torch.Tensor
    labels: torch.Tensor
    teacher_of: torch.Tensor
    teachers: int

    @property
    def key(self) -> str:
        return f"teachers_{self.spec[0].split('-')[1]}"


def train_ensemble(bench: Bench, data: TeacherData, epochs: int, amp: bool) -> E.TeacherEnsemble:
    return E.train_ensemble(data.images, data.labels, data.teacher_of, data.teachers, arch=data.spec[0],
                            num_classes=CLASSES, epochs=epochs, device=bench.device, amp=amp,
                            **teacher_recipe(bench.sizes))[0]


def train_alone(data: TeacherData, t: int, on_device, shards, epochs: int, recipe: dict, device, amp: bool):
    """Teacher ``t`` as an ordinary network with ``torch.optim``, one step per batch of its shard: the
    naive loop the ensemble replaces, with the ensemble's initial weights, batches and shifts, so the
    two must agree (to rounding in fp32). ``on_device``: the images and labels, already on ``device``."""
    arch, channels, size = data.spec
    images, labels = on_device
    seed, bs, augment = recipe["seed"], recipe["batch_size"], recipe["augment"]
    init = E.init_teachers(E.TeacherEnsemble(arch, channels, CLASSES, size, [t]), seed)
    layout = torch.channels_last if amp else torch.contiguous_format  # fast mode on CUDA
    model = E.extract_teacher(init, 0).to(device, memory_format=layout)
    opt = (torch.optim.Adam(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
           if recipe["optimizer"] == "adam" else
           torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                           weight_decay=recipe["weight_decay"]))
    for epoch in range(epochs):
        index, mask, shifts = E.epoch_batches(shards, [t], seed=seed, epoch=epoch, batch_size=bs, augment=augment)
        real = mask[:, 0].sum(1).tolist()  # padding slots come last in each step
        index = index[:, 0].to(device)
        shifts = shifts[:, 0].to(device) if augment else None
        for s, n in enumerate(real):
            x = images[index[s, :n]]
            if augment:
                x = shift_images(x, shifts[s, :n])
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(x.contiguous(memory_format=layout))
            loss = F.cross_entropy(logits.float(), labels[index[s, :n]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def time_loop(bench: Bench, data: TeacherData, amp: bool) -> tuple[float, list]:
    """Seconds the per-teacher loop would take for all teachers, timed on the first ``loop_teachers``
    after a one-epoch warm-up and scaled linearly, and the networks it trained."""
    device, epochs, recipe = bench.device, bench.sizes.epochs, teacher_recipe(bench.sizes)
    on_device = (data.images.to(device), data.labels.to(device))
    shards = E.shards_of(data.teacher_of, data.teachers)
    train_alone(data, 0, on_device, shards, 1, recipe, device, amp)
    m = min(bench.sizes.loop_teachers, data.teachers)
    seconds, models = bench.timed(lambda: [train_alone(data, t, on_device, shards, epochs, recipe, device, amp)
                                           for t in range(m)])
    return seconds * data.teachers / m, models


def relative_diff(model, ensemble: E.TeacherEnsemble, position: int) -> float:
    """max over parameters of |loop - ensemble| / |ensemble| (L2). Not the largest element: Adam turns
    rounding on a near-zero gradient into an lr-sized step of that one weight (measured on the CPU:
    SGD teachers agree to 1e-8, Adam ones to 3e-4 in norm with a handful of weights 2e-3 apart)."""
    theirs = E.extract_teacher(ensemble, position).parameters()
    return max(float((a.detach() - b.detach()).norm() / b.detach().norm()) for a, b in zip(model.parameters(), theirs))


def report_rate(bench: Bench, key: str, flop_per_s: float, amp: bool) -> None:
    ref_name, ref_rate = reference_rate(bench, amp)
    bench.report.put(f"{key}.achieved_tflops", flop_per_s / 1e12, f"{key}: {flop_per_s / 1e12:.2f} TFLOP/s")
    bench.report.put(f"{key}.peak_reference", ref_name)
    bench.report.put(f"{key}.peak_fraction", flop_per_s / ref_rate,
                     f"{key}: {flop_per_s / ref_rate:.3f} of the {ref_name} matmul rate measured above")


def report_correctness(bench: Bench, key: str, ensemble: E.TeacherEnsemble, models: list, heldout) -> None:
    """How far the loop's networks are from the same teachers in the ensemble, and how good the teachers are."""
    votes = E.predict(ensemble, heldout[0], device=bench.device)
    mine = torch.stack([predict(model, heldout[0], device=bench.device) for model in models])
    same = float(mine.eq(votes[:len(models)]).double().mean())
    diff = max(relative_diff(model, ensemble, t) for t, model in enumerate(models))
    accuracy = float(E.teacher_accuracies(votes, heldout[1]).mean())
    bench.report.put(f"{key}.loop_relative_diff", diff, f"{key}: loop teachers vs the same ensemble teachers: "
                     f"weights {diff:.1e} apart (relative), held-out predictions {same:.4f} equal")
    bench.report.put(f"{key}.loop_prediction_agreement", same)
    bench.report.put(f"{key}.teacher_accuracy_mean", accuracy,
                     f"{key}: mean teacher accuracy on {len(heldout[1])} held-out synthetic images {accuracy:.3f}")


def teachers_mode(bench: Bench, data: TeacherData, mode: str, heldout, flops: float) -> None:
    """One precision mode of a teachers section: warm-up epoch (also the budget's estimate), the
    ensemble, the sampled per-teacher loop."""
    key, epochs, k = f"{data.key}.{mode}", bench.sizes.epochs, data.teachers
    with precision(mode, bench.device) as amp:
        warm_s, _ = bench.timed(lambda: train_ensemble(bench, data, 1, amp))
        if not bench.budget.fits(warm_s * epochs):
            return bench.report.skip(key, f"{epochs} epochs at the warm-up's {warm_s:.1f} s each exceed the budget")
        seconds, ensemble = bench.timed(lambda: train_ensemble(bench, data, epochs, amp))
        loop_s, models = time_loop(bench, data, amp)
    put = bench.report.put
    put(f"{key}.ensemble_s", seconds, f"{key}: ensemble {k} x {data.spec[0]}, {epochs} epochs: {seconds:.2f} s "
        f"(warm-up epoch {warm_s:.2f} s, not counted)")
    images_per_s = len(data.images) * epochs / seconds
    put(f"{key}.images_per_s", images_per_s, f"{key}: {images_per_s:,.0f} training images/s")
    report_rate(bench, key, flops / seconds, amp)
    put(f"{key}.loop_s", loop_s, f"{key}: per-teacher loop {loop_s:.2f} s (timed on {len(models)} of {k} "
        f"teachers, scaled linearly)")
    put(f"{key}.loop_teachers_timed", len(models))
    put(f"{key}.ensemble_over_loop", loop_s / seconds, f"{key}: ensemble {loop_s / seconds:.1f}x faster than the loop")
    report_correctness(bench, key, ensemble, models, heldout)
    bench.trained[data.spec[0], mode] = ensemble


def teachers_section(bench: Bench, spec) -> None:
    arch, channels, size = spec
    k, n, epochs = bench.sizes.teachers, bench.sizes.per_teacher[arch], bench.sizes.epochs
    images, labels = synthetic(k * n, channels, size, seed=1)
    data = TeacherData(spec, images, labels, torch.arange(k * n) % k, k)
    heldout = synthetic(bench.sizes.heldout, channels, size, seed=2)
    flops = training_flops_per_image(arch, channels, CLASSES, size) * k * n * epochs
    bench.report.put(f"{data.key}.setup", dict(teachers=k, images_per_teacher=n, epochs=epochs,
                                               training_tflop=flops / 1e12, **teacher_recipe(bench.sizes)),
                     f"teachers {arch}: {k} teachers x {n} synthetic {channels}x{size}x{size} images, "
                     f"{epochs} epochs, {flops / 1e12:.2f} TFLOP of training")
    for mode in MODES:
        teachers_mode(bench, data, mode, heldout, flops)


# ----------------------------------------------------------------------------- voting


def voting_section(bench: Bench) -> None:
    """Throughput of ``pate.teachers.predict``: fp32 at pate's default chunk, fast with bf16, larger
    chunks and pinned queries; both give each teacher's vote, so they are compared vote by vote."""
    arch, channels, size = SMALL
    k, device = bench.sizes.teachers, bench.device
    ensemble = bench.trained.get((arch, "fp32"))
    if ensemble is None:  # the teachers section was cut by the budget: untrained teachers vote as fast
        ensemble = E.init_teachers(E.TeacherEnsemble(arch, channels, CLASSES, size, k), seed=0)
    queries, labels = synthetic(bench.sizes.queries, channels, size, seed=3)
    preds = {}
    for mode in MODES:
        with precision(mode, device) as amp:
            chunk = bench.sizes.vote_chunk if mode == "fast" else PATE_VOTE_CHUNK
            x = queries.pin_memory() if mode == "fast" and device.type == "cuda" else queries
            E.predict(ensemble, x[:chunk], chunk_size=chunk, device=device, amp=amp)  # warm-up
            seconds, preds[mode] = bench.timed(lambda: E.predict(ensemble, x, chunk_size=chunk, device=device,
                                                                 amp=amp))
        bench.report.put(f"voting.{mode}.wall_s", seconds)
        bench.report.put(f"voting.{mode}.queries_per_s", len(queries) / seconds,
                         f"voting {mode}: {k} teachers x {len(queries)} queries (chunk {chunk}) in {seconds:.2f} s, "
                         f"{len(queries) / seconds:,.0f} queries/s")
    agreement = float((preds["fp32"] == preds["fast"]).double().mean())
    plurality = float((E.votes_from_predictions(preds["fp32"], CLASSES).argmax(1) == labels).double().mean())
    bench.report.put("voting.fp32_fast_agreement", agreement,
                     f"voting: fast votes equal to fp32 votes: {agreement:.4f}")
    bench.report.put("voting.plurality_accuracy", plurality, f"voting: plurality accuracy (fp32) {plurality:.3f}")


# ----------------------------------------------------------------------------- student


def student_section(bench: Bench) -> None:
    """FixMatch steps/s with the pipeline's student recipe (``[student]`` defaults); fast mode is TF32
    and the autotuner only (``train_student`` has no autocast)."""
    s, cfg = bench.sizes, config_mod.StudentConfig()
    recipe = dict(method="fixmatch", batch_size=s.student_batch, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr,
                  weight_decay=cfg.weight_decay, threshold=cfg.threshold, seed=cfg.seed)
    for arch, channels, size in (SMALL, DEEP):
        lx, ly = synthetic(s.student_labeled, channels, size, seed=4)
        ux, _ = synthetic(s.student_unlabeled, channels, size, seed=5)

        def run(steps):  # horizontal flips for colour (CIFAR-like) images only, as for real ones
            return train_student(lx, ly, ux, arch=arch, steps=steps, hflip=channels == 3, device=bench.device,
                                 **recipe)

        for mode in MODES:
            with precision(mode, bench.device):
                run(s.student_warmup)
                seconds, _ = bench.timed(lambda: run(s.student_steps))
            bench.report.put(f"student.{arch}.{mode}_steps_per_s", s.student_steps / seconds,
                             f"student {arch} {mode}: FixMatch {s.student_steps / seconds:.1f} steps/s (batch "
                             f"{s.student_batch} labelled + {cfg.unlabeled_ratio * s.student_batch} unlabelled)")


# ----------------------------------------------------------------------------- end to end


def e2e_section(bench: Bench) -> None:
    """``pate run`` in a subprocess, in a temporary run directory with its own spend log (a benchmark
    must not add to the privacy spent on the user's data); cut at the budget."""
    with tempfile.TemporaryDirectory(prefix="pate-gpu-bench-") as tmp:
        tmp = Path(tmp)
        pipeline = e2e_pipeline(bench, tmp)
        root = prepared_root(pipeline, bench.args.data_root, tmp)
        run_dir = tmp / "run"
        cmd = [sys.executable, "-m", "pate", "run", str(pipeline), "--run-dir", str(run_dir),
               "--data-root", str(root), "--device", bench.device.type, "-q"]
        env = {**os.environ, "PATE_SPEND_DIR": str(tmp / "spend")}
        if bench.args.threads:
            env["OMP_NUM_THREADS"] = str(bench.args.threads)
        left = bench.budget.left()
        try:
            seconds, proc = bench.timed(lambda: subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                                               timeout=None if left == math.inf else left))
        except subprocess.TimeoutExpired:
            return bench.report.skip("e2e", f"`pate run` cut at the budget after {left:.0f} s")
        if proc.returncode:  # say why and go on: the other sections' figures still count
            print(proc.stderr[-4000:], file=sys.stderr)
            return bench.report.skip("e2e", f"`pate run` failed with exit code {proc.returncode}")
        manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
    put = bench.report.put
    put("e2e.pipeline", str(pipeline.relative_to(REPO) if pipeline.is_relative_to(REPO) else pipeline.name))
    put("e2e.wall_s", seconds, f"e2e: `pate run {pipeline.name} --device {bench.device.type}` {seconds:.1f} s wall")
    for name in stages.NAMES:
        stage_s = manifest[name]["seconds"]
        put(f"e2e.stages.{name}_s", stage_s, f"e2e:   {name} {stage_s:.1f} s")
    put("e2e.student_accuracy", metrics["student_accuracy"],
        f"e2e: student accuracy {metrics['student_accuracy']:.4f} on {metrics['test_size']} held-out images")


def e2e_pipeline(bench: Bench, tmp: Path) -> Path:
    args = bench.args
    if args.pipeline:
        path = args.pipeline.resolve()
    elif not args.smoke:
        path = REPO / "pipelines" / "mnist.toml"
    else:
        path = tmp / "gpu-smoke.toml"
        path.write_text(SMOKE_PIPELINE)
    student = {key: value for key, value in (("arch", args.student_arch and f'"{args.student_arch}"'),
                                              ("method", args.student_method and f'"{args.student_method}"'),
                                              ("steps", args.student_steps and str(args.student_steps))) if value}
    if not student:
        return path
    copy = tmp / f"{path.stem}-student.toml"  # the student the CPU cannot train in time, on the same release
    copy.write_text(with_settings(pipeline_text(path), {"student": student}))  # its paths absolute
    bench.report.put("e2e.student", " ".join(f"{key}={value}" for key, value in student.items()))
    return copy


def prepared_root(pipeline: Path, root: Path, tmp: Path) -> Path:
    """``root`` if it holds the pipeline's dataset, else a temporary one prepared now (offline for MNIST)."""
    data = config_mod.load(pipeline).data
    if data.source != "builtin":
        return root.resolve()  # the pipeline's own files; nothing to prepare
    name = data.dataset
    if data_mod.builtin.is_prepared(name, root):
        return root.resolve()
    print(f"e2e: {name} is not prepared in {root}; preparing it in a temporary folder", flush=True)
    data_mod.prepare(name, tmp / "data")
    return tmp / "data"


# ----------------------------------------------------------------------------- main


def summary(report: Report) -> str:
    """The one last line: fast-mode figures first (what a GPU run would use), then fp32."""
    def fmt(path, spec):
        value = report.get(path)
        return "skipped" if value is None else format(value, spec)

    fields = [("teachers_small_s", "teachers_small.fast.ensemble_s", ".2f"),
             ("ensemble/loop", "teachers_small.fast.ensemble_over_loop", ".1f"),
             ("peak_fraction", "teachers_small.fast.peak_fraction", ".3f"),
             ("teachers_small_fp32_s", "teachers_small.fp32.ensemble_s", ".2f"),
             ("ensemble/loop_fp32", "teachers_small.fp32.ensemble_over_loop", ".1f"),
             ("peak_fraction_fp32", "teachers_small.fp32.peak_fraction", ".3f"),
             ("teachers_deep_s", "teachers_deep.fast.ensemble_s", ".2f"),
             ("ensemble/loop_deep", "teachers_deep.fast.ensemble_over_loop", ".1f"),
             ("vote_queries_per_s", "voting.fast.queries_per_s", ".0f"),
             ("fixmatch_small_steps_per_s", "student.cnn-small.fast_steps_per_s", ".1f"),
             ("fixmatch_deep_steps_per_s", "student.cnn-deep.fast_steps_per_s", ".1f"),
             ("e2e_s", "e2e.wall_s", ".1f")]
    return " ".join(f"{name}={fmt(path, spec)}" for name, path, spec in fields)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def meta(args, sizes: Sizes, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                              platform.machine())
    print(f"device: {device} ({name}), torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads{', SMOKE sizes' if args.smoke else ''}",
          flush=True)
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "smoke": args.smoke,
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            "budget_s": args.budget_s, "sizes": asdict(sizes)}


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the script, measures nothing")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-benchmark.json"), help="JSON of every figure")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--skip-e2e", action="store_true", help="leave out `pate run`")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip what would not finish in this many seconds (default: 420, none with --smoke)")
    p.add_argument("--pipeline", type=Path, default=None,
                   help="pipeline of the e2e section (default: pipelines/mnist.toml; a toy one with --smoke)")
    p.add_argument("--data-root", type=Path, default=data_mod.DEFAULT_ROOT,
                   help="dataset cache for e2e; if the pipeline's dataset is not there it is prepared in a "
                        "temporary folder")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (and OMP_NUM_THREADS of e2e)")
    p.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    p.add_argument("--student-arch", default=None, help="e2e: the pipeline's [student] arch replaced")
    p.add_argument("--student-method", default=None, help="e2e: the pipeline's [student] method replaced")
    p.add_argument("--student-steps", type=int, default=None, help="e2e: the pipeline's [student] steps replaced")
    args = p.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(SECTIONS):
        p.error(f"--only: sections are {', '.join(SECTIONS)}")
    if args.budget_s is None and not args.smoke:
        args.budget_s = 420.0
    return args


SECTIONS = {"matmul": matmul_section, "teachers_small": lambda b: teachers_section(b, SMALL),
            "voting": voting_section, "student": student_section, "e2e": e2e_section,
            "teachers_deep": lambda b: teachers_section(b, DEEP)}  # in the order they run


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, device = (SMOKE if args.smoke else FULL), pick_device(args.device)
    report = Report(args.out, meta(args, sizes, device))
    bench = Bench(args, sizes, device, report, Budget(args.budget_s))
    for name, section in SECTIONS.items():
        if name == "e2e" and args.skip_e2e:
            report.skip(name, "--skip-e2e")
        elif args.only and name not in args.only.split(","):
            report.skip(name, "--only")
        elif bench.budget.left() <= 0:
            report.skip(name, f"budget of {args.budget_s:.0f} s spent")
        else:
            section(bench)
        report.save()
    line = summary(report)
    report.put("summary", line)
    report.save()
    print(line, flush=True)


if __name__ == "__main__":
    main()
