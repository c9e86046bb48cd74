"""DP-SGD (Opacus) on the same private set and held-out images as a pate pipeline: the baseline a
PATE result is compared with at the same worst-case ε.

    pip install -e ".[baselines]"     # opacus>=1.5, a benchmark extra, not a runtime dependency
    python benchmarks/dpsgd_baseline.py --pipeline pipelines/mnist-knn.toml --split-seed seed \\
        --models linear cnn --epsilons 1 2 3 --seeds 1 2 3

The models are Tramèr & Boneh's (2021, "Differentially Private Learning Needs Better Features (or
Much More Data)", arXiv:2011.11660) ScatterNet + linear and ScatterNet + CNN: a fixed (untrained,
data-independent) scattering transform, J = 2, L = 8, of the [0, 1] images (pate's Kymatio-exact
``pate.nets.wavelets``: 81 channels of 7×7), normalised by GroupNorm with 27 groups and no
affine parameters (a per-example normalisation: it reads no statistic of the data set and costs no
privacy), then a linear layer, or their small CNN (conv 3×3/2 to 16 channels, conv 3×3 to 32,
tanh, a 32-unit tanh layer, 10 logits). They are trained with DP-SGD as Opacus does it: Poisson
sampling (``make_private_with_epsilon``'s default; the sampling rate is 1/ceil(N/B), so the
*expected* batch is N/ceil(N/B)), per-example clipping at C = 0.1, SGD with momentum 0.9, and the
noise multiplier σ that Opacus's own accountant (PRV by default, ``--accountant rdp`` for RDP)
calibrates so that the target (ε, δ) is spent after the given epochs; the ε printed is the one
that accountant reports after training (``get_epsilon``), a worst-case guarantee like pate's.

Hyperparameters are the paper's, not tuned here (its repository's commands for ε = 3): batch size
and learning rate per (dataset, model) in ``RECIPES``, and 40 epochs for all four. The README
there gives σ, not epochs, for the ScatterNet models; it states 40 epochs for its MNIST and
Fashion-MNIST end-to-end CNNs, and its Fashion-MNIST ScatterNet + CNN has the end-to-end CNN's
batch and σ, hence the same 40 epochs. σ itself is Opacus's (recalibrated for these epochs and
Poisson rate), not the paper's number. ε = 1 and 2 keep every setting and let Opacus raise σ.
Clipping uses Opacus's fast ("ghost") gradient clipping by default (the same clipped sums as
per-example gradients, ``--grad-sample-mode hooks``, without materialising them), and the
parameter-free GroupNorm is applied once to the cached features (the same map as in the model). One departure: for MNIST the paper normalised by "batch norm" with statistics
released under DP (σ_norm = 8, composed with DP-SGD by hand); here both datasets use GroupNorm,
which the paper used for Fashion-MNIST, so the whole budget goes through Opacus's accountant.

The scattering, the GroupNorm, the linear model and the DP-SGD loop are ``pate.teachers.dpsgd``'s
(``scattering_features``, ``normalise``, ``linear_model``, ``fit``), the ones pate's DP-SGD teacher
trains with; what stays here is the baseline's own part: σ calibrated by Opacus's accountant
(``get_noise_multiplier``, what ``make_private_with_epsilon`` calls) and the ε that accountant
reports for the steps taken, where the teacher calibrates with pate's ``dp_accounting`` composition.

Data as the pipeline reads it (``pate.data``): the private set is the training split (all 60 000
records for MNIST / Fashion-MNIST); the score is the accuracy on the pipeline's held-out images,
``test_index`` of pate's public split (``pate.data.partition.split_public`` with the pipeline's sizes,
``pate.run.artifacts.partition_sizes``) for ``--split-seed`` (an integer, the pipeline's
``[data] split_seed`` by default, or ``seed``: the training seed, as ``benchmarks/seeds.py`` sets
it). Nothing is chosen on those images. Scattering features are computed once per image set and
cached under ``--cache`` (default ``runs/dpsgd/features``, ignored by git). Finished runs are kept in
``<out>/<pipeline>.json`` and read, not rerun, so an interrupted benchmark resumes.

Prints one line per (dataset, model, ε, seed) and a mean ± sd line per (dataset, model, ε).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pate import config as config_mod, data as data_mod
from pate.data.partition import split_public
from pate.run.artifacts import partition_sizes
from pate.teachers import dpsgd
from pate.teachers.dpsgd import GROUPS, J, L, MAX_GRAD_NORM, MOMENTUM  # noqa: F401 (the models' constants)

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 40


@dataclass(frozen=True)
class Recipe:
    batch_size: int
    lr: float
    epochs: int = EPOCHS


# Tramèr & Boneh's settings (their repository's README commands, ε = 3, δ = 1e-5).
RECIPES = {
    ("mnist", "linear"): Recipe(batch_size=4096, lr=8.0),
    ("fashion-mnist", "linear"): Recipe(batch_size=8192, lr=16.0),
    ("mnist", "cnn"): Recipe(batch_size=1024, lr=1.0),
    ("fashion-mnist", "cnn"): Recipe(batch_size=2048, lr=4.0),
}


# The models' GroupNorm (no affine parameters) applied once to cached features: a fixed map of each
# example alone, so applying it before training is the same as applying it in the model
# (``prenormalised=True``), without recomputing it and its backward pass at every step.
group_norm = dpsgd.normalise


def scatter_linear(channels: int = 81, size: int = 7, classes: int = 10, groups: int = GROUPS,
                   prenormalised: bool = False) -> nn.Module:
    """GroupNorm (no affine parameters) on the scattering channels, then one linear layer: the DP-SGD
    teacher's model (``pate.teachers.dpsgd.linear_model``), without its GroupNorm when ``prenormalised``."""
    model = dpsgd.linear_model(channels, size, classes, groups)
    return model[1:] if prenormalised else model


class ScatterCNN(nn.Module):
    """Tramèr & Boneh's CNN on (81, 7, 7) scattering features: GroupNorm, conv 3×3 stride 2 to 16
    channels (4×4), conv 3×3 to 32, tanh after each, a 32-unit tanh layer, the logits."""

    def __init__(self, channels: int = 81, size: int = 7, classes: int = 10, groups: int = GROUPS,
                 prenormalised: bool = False):
        super().__init__()
        out = (size + 2 - 3) // 2 + 1
        self.norm = nn.Identity() if prenormalised else nn.GroupNorm(groups, channels, affine=False)
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.Tanh(),
                                      nn.Conv2d(16, 32, 3, stride=1, padding=1), nn.Tanh())
        self.classifier = nn.Sequential(nn.Linear(32 * out * out, 32), nn.Tanh(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.norm(x)).flatten(1))


MODELS = {"linear": scatter_linear, "cnn": ScatterCNN}


# ---------------------------------------------------------------------------------------- data

def load_split(pipeline: Path, split_seed: int | None = None, data_root: Path = data_mod.DEFAULT_ROOT) -> dict:
    """The pipeline's private set (uint8 images, labels) and its held-out test images and labels
    for ``split_seed`` (None: the pipeline's ``[data] split_seed``), read as the pipeline reads them."""
    config = config_mod.load(pipeline)
    if config.data.private_size:
        raise SystemExit(f"{pipeline}: private_size = {config.data.private_size}; this baseline trains on the "
                         "whole private set (pate's draw of a subset is keyed by a secret it does not share)")
    dataset = data_mod.load(config.data, Path(data_root))
    config.check_data(dataset.spec)
    sizes = partition_sizes(config, dataset.spec)
    seed = config.data.split_seed if split_seed is None else split_seed
    split = split_public(seed=seed, **{k: sizes[k] for k in ("num_public", "student_pool", "test_size",
                                                              "num_queries", "num_pool")})
    test = split["test_index"]
    if (dataset.public_y[test] < 0).any():
        raise SystemExit("the held-out test images have no labels to score with")
    return {"name": config.name, "dataset": config.data.dataset or config.data.public_name,
            "classes": dataset.num_classes, "split_seed": seed, "delta": config.privacy.delta,
            "train_x": dataset.private_x, "train_y": dataset.private_y,
            "test_x": dataset.public_x[test], "test_y": dataset.public_y[test]}


def scatter_images(images: np.ndarray, cache: Path | None = None, batch: int = 2048) -> torch.Tensor:
    """(N, C, 28, 28) uint8 -> (N, 81·C, 7, 7) float32 scattering coefficients of the [0, 1] images,
    computed once per image set (keyed by the images' sha256) and kept in ``cache``."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:20]
    path = None if cache is None else Path(cache) / f"scattering-J{J}L{L}-{len(images)}-{digest}.pt"
    if path is not None and path.exists():
        return torch.load(path)
    out = dpsgd.scattering_features(images, batch)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        tmp.replace(path)
    return out


# ------------------------------------------------------------------------------------ training

def _quiet() -> None:
    """Opacus's notices that change nothing here: the non-cryptographic RNG (a benchmark, not a
    release), and RDP's 'optimal order is the largest alpha' (the bound stays valid, only looser)."""
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*[Oo]ptimal order is the largest alpha.*")
    warnings.filterwarnings("ignore", message=".*full backward hook.*")


def train_dpsgd(model_name: str, train_x: torch.Tensor, train_y: torch.Tensor, *, target_epsilon: float,
                delta: float, epochs: int, batch_size: int, lr: float, seed: int, classes: int = 10,
                accountant: str = "prv", max_grad_norm: float = MAX_GRAD_NORM, momentum: float = MOMENTUM,
                physical_batch: int = 8192, grad_sample_mode: str = "ghost", prenormalised: bool = False) -> dict:
    """Train ``model_name`` with Opacus's DP-SGD at (target_epsilon, delta) over ``epochs``; the
    model, the noise multiplier, the ε the accountant reports, the expected batch size, the steps.
    σ is what ``make_private_with_epsilon`` would pick (Opacus's ``get_noise_multiplier`` with
    ``accountant`` at the loader's Poisson rate); the loop is ``pate.teachers.dpsgd.fit`` on torch's
    global generator seeded with ``seed``; the ε is ``accountant``'s for the steps taken.
    ``grad_sample_mode`` "ghost" is Opacus's fast gradient clipping (the same clipped sums as
    "hooks", without materialising per-example gradients); ``physical_batch`` bounds memory only.
    ``prenormalised``: ``train_x`` already went through ``group_norm``."""
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier

    torch.manual_seed(seed)
    model = MODELS[model_name](channels=train_x.shape[1], size=train_x.shape[-1], classes=classes,
                               prenormalised=prenormalised)
    sample_rate, _ = dpsgd.schedule(len(train_y), batch_size, epochs)
    with warnings.catch_warnings():
        _quiet()
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                     epochs=epochs, accountant=accountant)
    model, info = dpsgd.fit(model, train_x, train_y, noise_multiplier=sigma, batch_size=batch_size, epochs=epochs,
                            lr=lr, max_grad_norm=max_grad_norm, momentum=momentum, grad_sample_mode=grad_sample_mode,
                            physical_batch=physical_batch)
    spent = create_accountant(mechanism=accountant)
    for _ in range(info["steps"]):  # what make_private's step hook records, one step at a time
        spent.step(noise_multiplier=info["noise_multiplier"], sample_rate=info["sample_rate"])
    with warnings.catch_warnings():
        _quiet()
        epsilon = float(spent.get_epsilon(delta))
    return {"model": model, "epsilon": epsilon, "sigma": info["noise_multiplier"],
            "expected_batch": info["expected_batch"], "sample_rate": info["sample_rate"], "steps": info["steps"]}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return right / max(len(y), 1)


def run_one(data: dict, feats: dict, model_name: str, epsilon: float, seed: int, *, delta: float,
            recipe: Recipe, accountant: str, physical_batch: int, grad_sample_mode: str) -> dict:
    t0 = time.monotonic()
    out = train_dpsgd(model_name, feats["train"], feats["train_y"], target_epsilon=epsilon, delta=delta,
                      epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                      classes=data["classes"], accountant=accountant, physical_batch=physical_batch,
                      grad_sample_mode=grad_sample_mode, prenormalised=True)
    acc = accuracy(out.pop("model"), feats["test"], feats["test_y"])
    return {"dataset": data["dataset"], "model": model_name, "target_epsilon": epsilon, "seed": seed,
            "split_seed": data["split_seed"], "accuracy": acc, **out, "epochs": recipe.epochs,
            "batch_size": recipe.batch_size, "lr": recipe.lr, "accountant": accountant, "delta": delta,
            "grad_sample_mode": grad_sample_mode,
            "test_images": len(feats["test_y"]), "minutes": (time.monotonic() - t0) / 60}


def line(r: dict) -> str:
    return (f"{r['dataset']} scatternet+{r['model']} eps {r['target_epsilon']:g} seed {r['seed']} "
            f"(split {r['split_seed']}): accuracy {r['accuracy']:.2%} on {r['test_images']} held out, "
            f"epsilon reported {r['epsilon']:.3f} ({r['accountant']}, delta {r['delta']:g}), epochs {r['epochs']}, "
            f"batch {r['batch_size']} (expected {r['expected_batch']:.0f}, q {r['sample_rate']:.4f}), "
            f"sigma {r['sigma']:.3f}, lr {r['lr']:g}, {r['steps']} steps, {r['minutes']:.1f} min")


def summarise(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["target_epsilon"]), []).append(r)
    out = []
    for (dataset, model, eps), rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        out.append(f"{dataset} scatternet+{model} eps {eps:g} over seeds {','.join(str(r['seed']) for r in rs)}: "
                   f"accuracy {statistics.fmean(acc):.2%} ± {sd:.2%}, epsilon reported "
                   f"{max(r['epsilon'] for r in rs):.3f} at most, sigma {statistics.fmean(r['sigma'] for r in rs):.3f}, "
                   f"{statistics.fmean(r['minutes'] for r in rs):.1f} min per run")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, required=True)
    parser.add_argument("--split-seed", default=None,
                        help="an integer, or 'seed' for each training seed's own (default: the pipeline's)")
    parser.add_argument("--models", nargs="+", default=["linear"], choices=sorted(MODELS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--delta", type=float, default=None, help="default: the pipeline's [privacy] delta")
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's (smoke tests)")
    parser.add_argument("--max-private", type=int, default=None,
                        help="train on the first N private records only (smoke tests; not a comparison)")
    parser.add_argument("--physical-batch", type=int, default=8192, help="memory only: never changes the result")
    parser.add_argument("--grad-sample-mode", choices=["ghost", "hooks"], default="ghost",
                        help="Opacus's per-example clipping: fast (ghost) clipping or materialised per-example gradients")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=data_mod.DEFAULT_ROOT)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "dpsgd" / "features")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dpsgd")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_seed = args.split_seed == "seed"
    fixed_split = None if per_seed or args.split_seed is None else int(args.split_seed)

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / f"{args.pipeline.stem}.json"
    done = json.loads(store.read_text())["runs"] if store.exists() else []
    rows = []
    private = None
    for seed in args.seeds:
        data = load_split(args.pipeline, seed if per_seed else fixed_split, args.data_root)
        if private is None:  # the private set and its features are the same for every split seed
            t0 = time.monotonic()
            n = args.max_private or len(data["train_y"])
            private = {"train": group_norm(scatter_images(data["train_x"][:n], args.cache)),
                       "train_y": torch.from_numpy(np.asarray(data["train_y"][:n], dtype=np.int64))}
            print(f"{data['name']}: {n} private records scattered ({tuple(private['train'].shape[1:])}) "
                  f"in {time.monotonic() - t0:.0f} s", flush=True)
        feats = {**private, "test": group_norm(scatter_images(data["test_x"], args.cache)),
                 "test_y": torch.from_numpy(np.asarray(data["test_y"], dtype=np.int64))}
        delta = args.delta or data["delta"]
        for model_name in args.models:
            base = RECIPES.get((data["dataset"], model_name), RECIPES[("fashion-mnist", model_name)])
            recipe = Recipe(batch_size=args.batch_size or base.batch_size, lr=base.lr,
                            epochs=args.epochs or base.epochs)
            for eps in args.epsilons:
                key = dict(dataset=data["dataset"], model=model_name, target_epsilon=eps, seed=seed,
                           split_seed=data["split_seed"], epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, accountant=args.accountant, delta=delta,
                           private=len(private["train_y"]))
                previous = [r for r in done if all(r.get(k) == v for k, v in key.items())]
                if previous:
                    r = previous[0]
                else:
                    r = run_one(data, feats, model_name, eps, seed, delta=delta, recipe=recipe,
                                accountant=args.accountant, physical_batch=args.physical_batch,
                                grad_sample_mode=args.grad_sample_mode)
                    r["private"] = len(private["train_y"])
                    done.append(r)
                    store.write_text(json.dumps({"runs": done}, indent=1))
                rows.append(r)
                print(line(r), flush=True)
    for s in summarise(rows):
        print(s, flush=True)
    return rows


if __name__ == "__main__":
    main()
