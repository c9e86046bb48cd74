"""Choosing the DP-SGD teacher's input space on the public pool alone (never the private set, never
the held-out test split).

    python benchmarks/dpsgd_choice.py pipelines/fashion-mnist-rknn.toml [--dims 0,256,512,1024] [--draws 3]

The pipeline's student pool is split in two at random: one half (its public labels, read only here)
stands in for the private records, the other half scores the model. DP-SGD runs on the stand-in half
with the pipeline's steps, learning rate and clipping, in full batches, with the noise multiplier
scaled so that the noise on the averaged clipped gradient is what the pipeline's expected batch of
the private set gets: σ·|half|/(q·N). What differs between the settings compared is only the input:
``dim`` 0 is the scattering coefficients after GroupNorm (Tramèr & Boneh's ScatterNet + linear); a
positive ``dim`` projects them on that many whitened principal axes first
(``pate.teachers.dpsgd.public_projection``), those of the scored half's images (their labels
unread), as the pipeline's are those of the pool it labels and not of the records it learns from. Printed per setting: the share of the scoring
half labelled right (mean ± sd over draws). The figures rank settings; they are not what the
pipeline reaches with 60 000 private records.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: `benchmarks` is this folder

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.knn_choice import pool_of  # noqa: E402
from pate import config as config_mod  # noqa: E402
from pate.teachers import dpsgd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--dims", default="0,256,512,1024")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--average", default="0", help="comma-separated EMA decays of the DP-SGD iterates (0: the last)")
    parser.add_argument("--private-size", type=int, default=None, help="N of the private set (default: the data's)")
    args = parser.parse_args()
    config = config_mod.load(args.pipeline)
    tcfg = config.teachers
    if not tcfg.dpsgd_noise:
        parser.error(f"{args.pipeline} has no DP-SGD teacher ([teachers] dpsgd_noise)")
    t0 = time.perf_counter()
    images, labels, dataset = pool_of(config)
    num_private = args.private_size or len(dataset.private_y)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    half = len(order) // 2
    stand_in, scored = order[:half], order[half:]
    feats = dpsgd.normalise(dpsgd.scattering_features(images))
    q, steps = dpsgd.schedule(num_private, tcfg.dpsgd_batch, tcfg.dpsgd_epochs)
    noise = tcfg.dpsgd_noise * len(stand_in) / (q * num_private)
    print(f"{config.name}: {len(stand_in)} stand-in records, {len(scored)} scored; {steps} full-batch steps, "
          f"noise multiplier {noise:.3g} (the pipeline's {tcfg.dpsgd_noise:g} on an expected batch of "
          f"{q * num_private:.0f}); features {time.perf_counter() - t0:.0f} s")
    y = torch.as_tensor(labels[stand_in], dtype=torch.long)
    for dim in (int(d) for d in args.dims.split(",")):
        if dim:  # the axes of the scored half's images (no labels), as the pipeline's are the pool's: images
            project = dpsgd.public_projection(feats[scored], dim)  # the model is applied to, none it learns from
            with torch.no_grad():
                x_in, x_out = project(feats[stand_in].flatten(1)), project(feats[scored].flatten(1))
        else:
            x_in, x_out = feats[stand_in].flatten(1), feats[scored].flatten(1)
        for average in (float(a) for a in args.average.split(",")):
            right = []
            for draw in range(args.draws):
                generator = torch.Generator().manual_seed(draw)
                model = dpsgd.initialised_linear(x_in.shape[1], dataset.num_classes, generator)
                dpsgd.fit(model, x_in.contiguous(), y, noise_multiplier=noise, batch_size=len(stand_in),
                          epochs=steps, lr=tcfg.dpsgd_lr, generator=generator, average=average)
                with torch.no_grad():
                    right.append(float((model(x_out).argmax(1).numpy() == labels[scored]).mean()))
            sd = statistics.stdev(right) if len(right) > 1 else 0.0
            print(f"dim {dim or 'all (' + str(x_in.shape[1]) + ')'}, average {average:g}: {100 * statistics.mean(right):.2f} "
                  f"± {100 * sd:.2f}% of the scoring half right ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
