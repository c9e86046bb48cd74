"""``[student] members`` trained side by side (one process each, ``pate.student.members``) against one
after the other in one process: wall time of the same students, rounds alternating, and the ratio.

    python benchmarks/members.py [--members 2] [--steps 400] [--arch cnn-deep] [--rounds 3] [--precision bf16]

The data have the shape of ``fashion-mnist-dpsgd-teacher``'s student (9 000 pool images 1x28x28 with
soft targets over 10 classes; random values: a step's time does not depend on them), trained with its
settings (supervised, batch 32, mirrors and random erasing). "One after the other" uses torch's
threads (``OMP_NUM_THREADS``, else one per core); "side by side" shares them out as train-student
does. Both write the checkpoints train-student would, in a temporary folder. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `benchmarks` is this folder

import torch  # noqa: E402

from pate.config.student import PRECISIONS  # noqa: E402
from pate.student import members  # noqa: E402
from pate.student.training import train_student  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--arch", default="cnn-deep")
    parser.add_argument("--images", type=int, default=9000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    args = parser.parse_args()
    plan = members.side_by_side(args.members, torch.device("cpu"))
    if plan is None:
        parser.error(f"{torch.get_num_threads()} thread(s) and {args.members} member(s): nothing to train side by side")
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(args.images, 1, 28, 28, generator=g),
            torch.softmax(torch.randn(args.images, 10, generator=g), 1), None)
    print(f"{args.members} {args.arch} students ({args.precision}), {args.steps} steps each; one after the other on "
          f"{torch.get_num_threads()} threads, side by side in {plan[0]} processes of {plan[1]} thread(s)")
    times = {"one after the other": [], "side by side": []}
    for round_ in range(args.rounds):
        for mode in times:
            with tempfile.TemporaryDirectory() as folder:
                settings = [dict(arch=args.arch, num_classes=10, method="supervised", steps=args.steps, batch_size=32,
                                 lr=0.03, hflip=True, erase=0.5, precision=args.precision, seed=m, checkpoint_path=Path(folder) / f"m{m}.pt",
                                 checkpoint_every=max(1, min(200, args.steps // 5))) for m in range(args.members)]
                start = time.perf_counter()
                if mode == "side by side":
                    members.train_side_by_side(data, settings, *plan)
                else:
                    for member_settings in settings:
                        train_student(*data, **member_settings)
                times[mode].append(time.perf_counter() - start)
        ratio = times["one after the other"][-1] / times["side by side"][-1]
        print(f"round {round_ + 1}: one after the other {times['one after the other'][-1]:.1f} s, "
              f"side by side {times['side by side'][-1]:.1f} s, ratio {ratio:.2f}")
    ratios = [a / b for a, b in zip(times["one after the other"], times["side by side"])]
    print(f"median: one after the other {statistics.median(times['one after the other']):.1f} s, side by side "
          f"{statistics.median(times['side by side']):.1f} s; ratio {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
