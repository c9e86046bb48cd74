"""Private-kNN: the queries in order, each private record near a query voting while it can afford
a whole query (the individual Rényi filter, ``pate.privacy.individual``), each record at its own
budget; the spend is rebuilt from the ledger on resume."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import budgets
from ..io import atomic_save_npz
from ..privacy import accounting, individual
from ..privacy.noise import noise_source
from ..progress import Progress
from ..run.directory import RunError
from ..run.artifacts import NEIGHBOURS, RECORD_BUDGETS, Context, load_partition
from . import protocol
from .ledger_files import KnnInputs, knn_inputs
from .settings import gaussian_budgets


@dataclass(frozen=True)
class Neighbourhoods:
    knn: KnnInputs
    epsilon: np.ndarray  # (N,) each of the run's records' budget, ε at δ
    gaussian: np.ndarray  # the same as Gaussian budgets
    budgets_digest: str  # sha256 of the budgets file ("" = none), kept with the resolved budgets

    @property
    def query_index(self) -> np.ndarray:
        return self.knn.query_index

    @property
    def ledger_votes(self):
        """For ``load_ledger``: the votes the recorded decisions were made on, rebuilt from them."""
        return self.knn.votes_of(self.gaussian)


def load(ctx: Context, settings: accounting.Settings) -> Neighbourhoods:
    inputs = knn_inputs(ctx.run, ctx.spec.num_classes)
    if not np.array_equal(inputs.query_index, load_partition(ctx)["query_index"]):
        raise RunError(f"{ctx.run.file(NEIGHBOURS)} is for other queries; refusing to spend privacy on it")
    epsilon, digest = _record_budgets(ctx, inputs.records)
    return Neighbourhoods(inputs, epsilon, gaussian_budgets(epsilon, ctx.config), digest)


def _record_budgets(ctx: Context, records: np.ndarray) -> tuple[np.ndarray, str]:
    """(N,) every private record's budget (ε at δ), resolved from ``[privacy] record_budgets`` by
    record identity (``pate.aggregation.budgets``), or as kept in the run when aggregation began (PRIVATE); a
    resumed run refuses a changed file."""
    path = ctx.config.privacy.record_budgets
    try:
        policy = budgets.read(path)
    except budgets.BudgetError as exc:
        raise RunError(str(exc)) from None
    saved = ctx.run.file(RECORD_BUDGETS)
    if saved.exists():
        with np.load(saved, allow_pickle=False) as kept:
            if str(kept["source_sha256"]) != policy.sha256:
                raise RunError(f"[privacy] record_budgets changed since aggregation began ({path or 'none'}); the "
                               "run continues only with the budgets it started with")
            return kept["epsilon"], policy.sha256
    return budgets.of_records(ctx, policy, records, ctx.config.privacy.record_epsilon), policy.sha256


def decide(run: protocol.Aggregation, inputs: Neighbourhoods) -> None:
    ctx, config, knn = run.ctx, run.ctx.config, inputs.knn
    saved = ctx.run.file(RECORD_BUDGETS)
    if not saved.exists():  # kept from the first decision on, so a resumed run uses the same budgets
        atomic_save_npz(saved, private=True, epsilon=inputs.epsilon, source_sha256=np.array(inputs.budgets_digest))
    mech, m = run.settings.mechanism, ctx.spec.num_classes
    answered = np.array([r.answered for r in run.book.records], dtype=bool)
    state, _, _ = knn.replay(inputs.gaussian, answered)
    done, mac, total = len(run.book.records), run.book.last_mac, len(knn.query_index)
    progress = Progress(total, protocol.STAGE, ctx.quiet, start=done)
    answered_count = int(answered.sum())
    while done < total:
        chunk = done // protocol.CHUNK
        first, end = chunk * protocol.CHUNK, min((chunk + 1) * protocol.CHUNK, total)
        z1, z2 = individual.draw_noise(noise_source(config.aggregator.seed, stream=chunk), end - first, m,
                                       mech.sigma1, mech.sigma2)
        out, votes = individual.decide(knn.hoods, knn.labels, state, knn.charges, start=done,
                                       threshold=mech.threshold, z1=z1[done - first:], z2=z2[done - first:])
        noisy = votes + z2[done - first:] if run.soft_labels else None
        mac = run.write(protocol.records_of(mech, votes, done, out, knn.query_index, noisy=noisy), mac)
        done = end
        answered_count += int((out >= 0).sum())
        protocol.progress_note(ctx, done, total, f"{answered_count} answered")
        progress.update(len(out), status=f"answered {answered_count}")
    progress.close()


def conclude(run: protocol.Aggregation, inputs: Neighbourhoods, records: list, state, report: dict | None):
    ctx, settings, config = run.ctx, run.settings, run.ctx.config
    released = protocol.save_labels(ctx, records)
    fresh = report is None
    if fresh:
        flags = np.array([r.answered for r in records], dtype=bool)
        final, votes, retired_after = inputs.knn.replay(inputs.gaussian, flags)
        levels = budgets.levels(config.privacy.record_budgets, config.privacy.record_epsilon)  # public policy
        report = accounting.individual_report(settings, budget_levels=levels, spent=final.spent,
                                              budget=inputs.gaussian, votes=votes, answered=flags,
                                              retired=retired_after >= 0, seeded=config.seeded,
                                              soft_labels=config.aggregator.soft_labels)
    guarantee = accounting.guarantee(settings)
    summary = (f"aggregate: {len(records)} queries asked, {released} answered; guarantee epsilon "
               f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} for every private record (individual Rényi "
               "filter: each record retired at its own budget)")
    return protocol.Outcome(report if fresh else None, summary)
