"""Choosing student settings on a split of the public pool (never the held-out test split): retrain
a finished run's student without ``--validate`` pool images and score it on them.

    python benchmarks/student_split.py RUN_DIR --keep-widest 0.67,1 [--erase 0,0.5] [--prior-temperature 1,2] [--mixup 0,0.2]
        [--validate 1000] [--steps 4500] [--members 2] [--teacher-weight 0,0.25,0.5,1] [--precision bf16]
        [--save DIR]

The run's release (``labels.npz``: labels, noisy vectors, a DP-SGD teacher's probabilities) becomes
targets exactly as ``pate.stages.train_student`` makes them (``released_targets``, ``widest``); a
fixed random ``--validate`` of the student pool (seed 0: public, the same for every setting) is taken
out of the labelled and the unlabelled images alike, and each setting's student (the run's
``[student]`` section with ``keep_widest`` replaced) is scored on them against the pool's public
labels (and, beside, on the held-out test split, which is never read to choose). With ``--members N``
each setting trains N students (seeds seed .. seed + N - 1, as ``[student] members`` does) and scores
each alone, then the average of the first 1 .. N, each without and with ``flip_average`` (the logits of
every image and its mirror averaged). With ``--teacher-weight`` each of those is scored again with the
run's released DP-SGD teacher's logits added at each weight (``[student] teacher_weight``). ``--precision``
is the students' arithmetic (the run's ``[student] precision`` by default). With ``--save DIR`` each
student's weights go to ``DIR/<setting>-member<m>.pt`` (DIR must not exist), to score other averages later
without retraining. Nothing is written to the run directory. Costs no privacy: the release and public images only.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `benchmarks` is this folder

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pate import config as config_mod, data  # noqa: E402
from pate.config.checks import ConfigError  # noqa: E402
from pate.config.student import PRECISIONS  # noqa: E402
from pate.nets.models import averaged  # noqa: E402
from pate.run.directory import RunError  # noqa: E402
from pate.run.artifacts import mechanism  # noqa: E402
from pate.stages.train_student import released_targets, released_teacher, widest  # noqa: E402
from pate.student import training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--keep-widest", default="0.67,1")
    parser.add_argument("--validate", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="the run's [student] steps by default")
    parser.add_argument("--arch", default=None, help="the run's [student] arch by default")
    parser.add_argument("--method", default=None, help="the run's [student] method by default")
    parser.add_argument("--erase", default=None, help="comma-separated [student] erase values (the run's by default)")
    parser.add_argument("--prior-temperature", default=None,
                        help="comma-separated [student] prior_temperature values (the run's by default)")
    parser.add_argument("--mixup", default=None, help="comma-separated [student] mixup values (the run's by default)")
    parser.add_argument("--members", type=int, default=1,
                        help="students trained per setting; their averages of 1..N scored without and with mirrors")
    parser.add_argument("--teacher-weight", default=None,
                        help="comma-separated weights of the released DP-SGD teacher's logits added to each student's")
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="the run's [student] precision by default")
    parser.add_argument("--save", type=Path, default=None, help="a new folder for each student's weights")
    parser.add_argument("--data-root", type=Path, default=data.DEFAULT_ROOT)
    args = parser.parse_args()
    if not 1 <= args.members <= 16:
        parser.error("--members must be between 1 and 16")
    if args.save is not None and args.save.exists():
        parser.error(f"--save {args.save} already exists: name a new folder")
    try:
        config = config_mod.load(args.run_dir / "config.toml")
    except ConfigError as exc:
        raise SystemExit(f"{args.run_dir}: not a finished run ({exc})") from None
    missing = [name for name in ("partition.npz", "labels.npz") if not (args.run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{args.run_dir}: no {' or '.join(missing)}: run the pipeline through its aggregate stage first")
    if config.student.propagation != "none":
        raise SystemExit("this run spreads its labels over the pool ([student] propagation), which this benchmark "
                         "does not: use benchmarks/student_on_run.py --propagation")
    ds = data.load(config.data, args.data_root)
    parts = np.load(args.run_dir / "partition.npz")
    pool = parts["student_pool_index"]
    if (ds.public_y[pool] < 0).any():
        raise SystemExit("the public pool has no labels to score settings with")
    held = np.sort(np.random.default_rng(0).choice(pool, size=args.validate, replace=False))
    with np.load(args.run_dir / "labels.npz") as npz:
        released = {k: npz[k] for k in npz.files}
    images = lambda index: data.to_float(ds.public_x[index], ds.mean, ds.std)  # noqa: E731
    truth = torch.from_numpy(ds.public_y[held].astype(np.int64))
    rows_held = np.flatnonzero(np.isin(released["query_index"], held))
    targets, _ = released_targets(released, config.student, mechanism(config))
    for name, rows in (("the student's targets (the release as the stage reads it)", targets), ("the DP-SGD teacher's released probabilities",
                                                          torch.from_numpy(released["prior"]) if "prior" in released else None)):
        if rows is not None and rows.ndim == 2:  # free: they were released for these very images
            right = (rows[torch.from_numpy(rows_held)].argmax(1).numpy() == ds.public_y[released["query_index"][rows_held]])
            print(f"{name}: {100 * right.mean():.2f}% of the {len(rows_held)} held-out pool images they label right")
    teacher_weights = _values(args.teacher_weight, config.student.teacher_weight)
    try:
        teacher = released_teacher(released, ds.spec).eval() if any(teacher_weights) else None
    except RunError as exc:
        raise SystemExit(f"--teacher-weight: {exc}") from None
    erases = _values(args.erase, config.student.erase)
    temperatures = _values(args.prior_temperature, config.student.prior_temperature)
    mixups = _values(args.mixup, config.student.mixup)
    if args.save is not None:
        args.save.mkdir(parents=True)  # once every input has been read: no empty folder left by a refusal
    for fraction, erase, temperature, mixup in ((float(f), e, t, x) for f in args.keep_widest.split(",") for e in erases
                                                for t in temperatures for x in mixups):
        cfg = dataclasses.replace(config.student, keep_widest=fraction, steps=args.steps or config.student.steps,
                                  arch=args.arch or config.student.arch, method=args.method or config.student.method,
                                  erase=erase, prior_temperature=temperature, mixup=mixup,
                                  precision=args.precision or config.student.precision)
        targets, margins = released_targets(released, cfg, mechanism(config))
        kept = widest(margins, fraction) if fraction < 1 and margins is not None else np.arange(len(targets))
        labeled, rows = released["query_index"][kept], targets[torch.from_numpy(kept)]
        train = ~np.isin(labeled, held)
        unlabeled = np.setdiff1d(np.setdiff1d(pool, labeled), held)
        test = parts["test_index"]  # reported beside, as the ablation does; never read to choose
        scored = len(test) and (ds.public_y[test] >= 0).all()
        networks = []
        for member in range(args.members):
            t0 = time.time()
            model, _ = training.train_student(
                images(labeled[train]), rows[torch.from_numpy(train)],
                images(unlabeled if len(unlabeled) else labeled[train]) if cfg.method != "supervised" else None,
                arch=cfg.arch, num_classes=ds.num_classes, method=cfg.method, steps=cfg.steps, batch_size=cfg.batch_size,
                unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay, threshold=cfg.threshold,
                hflip=cfg.hflip, erase=cfg.erase, mixup=cfg.mixup, precision=cfg.precision, seed=cfg.seed + member)
            networks.append(model)
            if args.save is not None:
                torch.save(model.state_dict(), args.save / (f"{cfg.arch}-{cfg.steps}-keep{fraction:g}-erase{erase:g}-"
                                                            f"temp{temperature:g}-mixup{mixup:g}-member{member}.pt"))
            seconds = time.time() - t0
            students = [(f"student {member}" if args.members > 1 else "", [model], False)]
            if args.members > 1:
                students += [(f"mirrors averaged, student {member}", [model], True)]
            if member:
                students += [(f"average of students 0-{member}{', mirrors averaged' if flips else ''}", networks[:], flips)
                             for flips in (False, True)]
            for (what, members, flips), weight in ((s, w) for s in students for w in teacher_weights):
                student = averaged(members, flips, teacher, weight)
                if teacher is not None:
                    what = ", ".join(filter(None, (what, f"teacher weight {weight:g}")))
                right = training.accuracy(student, images(held), truth)
                tested = (f"; {100 * training.accuracy(student, images(test), torch.from_numpy(ds.public_y[test].astype(np.int64))):.2f}%"
                          f" of the {len(test)} held-out test images" if scored else "")
                print(f"{config.name} {cfg.arch} {cfg.method} {cfg.steps} steps {cfg.precision}, keep_widest {fraction:g}, erase {erase:g}, "
                      f"prior_temperature {temperature:g}, mixup {mixup:g}{', ' + what if what else ''}: "
                      f"{int(train.sum())} labelled + {len(unlabeled)} unlabelled, {100 * right:.2f}% of the {len(held)} "
                      f"held-out pool images right{tested} ({seconds:.0f} s)", flush=True)


def _values(text: str | None, default: float) -> list[float]:
    return [float(v) for v in text.split(",")] if text else [default]


if __name__ == "__main__":
    main()
