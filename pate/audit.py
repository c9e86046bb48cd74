"""`pate audit`: what each query cost, read from the ledger and the votes. PRIVATE output.

Everything here except the data-independent figure and the smooth-sensitivity release is a
function of the private data; the header of every format says so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from . import accounting
from .privacy import ledger, rdp
from .run import RunDir, RunError, sha256_file

PRIVATE = ("PRIVATE: derived from the private data (votes and ledger). Do not publish. "
           "Safe to publish: the smooth-sensitivity released epsilon or the data-independent epsilon.")


def _load(run: RunDir):
    votes_data = run.load_npz("vote", "votes.npz")
    path = run.file("ledger.jsonl")
    try:
        header, records = ledger.read(path)
        ledger.check_against_votes(header, records, config_sha256=run.config.fingerprint(),
                                   votes_sha256=sha256_file(run.verified("vote", "votes.npz")),
                                   votes=votes_data["votes"], query_index=votes_data["query_index"])
    except ledger.LedgerError as exc:
        raise RunError(f"{path}: {exc}") from None
    if not records:
        raise RunError(f"{path} records no query yet; run `pate aggregate` first")
    return votes_data["votes"][:len(records)], records


def _cumulative_epsilon(costs: np.ndarray, orders: np.ndarray, delta: float, conversion: str) -> np.ndarray:
    """ε after each query: the conversion of each prefix's cumulative RDP curve."""
    return rdp.eps_from_rdp_rows(np.cumsum(costs, axis=0), orders, delta, conversion)


def query_table(run: RunDir) -> tuple[list[dict], dict]:
    """Per-query rows and the run's totals."""
    config = run.config
    votes, records = _load(run)
    answered = np.array([r.answered for r in records])
    orders = accounting.orders(config)
    costs = accounting.per_query_rdp(config, votes, answered)
    report = json.loads(run.verified("aggregate", "privacy.json").read_text())
    order = report.get("order") or float(orders[0])
    at = int(np.argmin(np.abs(orders - order)))
    cum = _cumulative_epsilon(costs, orders, config.privacy.delta, config.privacy.conversion)
    rows = [{"query": r.query, "public_index": r.public_index, "answered": r.answered, "label": r.label,
             "top_label": r.top_label, "top_count": r.top_count, "gap": r.gap,
             "cost_at_order": float(costs[i, at]), "cumulative_epsilon": float(cum[i])}
            for i, r in enumerate(records)]
    return rows, report


def query_detail(run: RunDir, index: int) -> dict:
    config = run.config
    votes, records = _load(run)
    if not 0 <= index < len(records):
        raise RunError(f"--query must be between 0 and {len(records) - 1}")
    record, row = records[index], votes[index:index + 1]
    agg, orders = config.aggregator, accounting.orders(config)
    detail = {"query": index, "public_index": record.public_index, "votes": row[0].tolist(),
              "answered": record.answered, "label": record.label, "top_label": record.top_label,
              "gap": record.gap}
    if agg.mechanism == "lnmax":
        detail["explanation"] = "LNMax is accounted data-independently: every answered query costs the same"
        return detail
    logq = rdp.logq_gnmax(row, agg.sigma2)
    cost, used = rdp.rdp_gnmax(logq, agg.sigma2, orders, return_used=True)
    mu1 = agg.sigma2 * math.sqrt(-logq[0]) + 1 if logq[0] < 0 else float("inf")
    detail.update(log_q=float(logq[0]), q=float(np.exp(logq[0])), gnmax_mu1=mu1)
    if agg.mechanism == "confident-gnmax":
        logpr = rdp.logpr_answered(row, agg.threshold, agg.sigma1)
        thr = rdp.rdp_threshold(logpr, agg.sigma1, orders)
        detail.update(log_pr_answered=float(logpr[0]), pr_answered=float(np.exp(logpr[0])))
    picks = np.unique(np.linspace(0, len(orders) - 1, 12).astype(int))
    detail["per_order"] = [{"order": float(orders[j]), "gnmax_cost": float(cost[0, j]),
                            "gnmax_data_dependent": bool(used[0, j]),
                            "gnmax_data_independent": float(orders[j] / agg.sigma2 ** 2),
                            **({"threshold_cost": float(thr[0, j])} if agg.mechanism == "confident-gnmax" else {}),
                            "charged": float((cost[0, j] if record.answered else 0.0)
                                             + (thr[0, j] if agg.mechanism == "confident-gnmax" else 0.0))}
                           for j in picks]
    if not record.answered:
        why = "not answered: only the threshold step was paid"
    elif used[0].any():
        lo, hi = orders[used[0]].min(), orders[used[0]].max()
        why = (f"data-dependent bound (Thm 6 + Prop 10) used at orders {lo:g}..{hi:g}: q~ = {np.exp(logq[0]):.3g} "
               f"is small enough and the order is below mu1 = {mu1:.3g}; elsewhere lambda/sigma^2")
    else:
        why = (f"data-independent lambda/sigma^2 at every order: q~ = {np.exp(logq[0]):.3g} is too large for "
               "Theorem 6's conditions (or every order is at least mu1), so the vote margin buys nothing")
    detail["explanation"] = why
    return detail


def _totals_lines(report: dict) -> list[str]:
    ss = report["smooth_sensitivity"]
    lines = [f"queries asked {report['queries_asked']}, answered {report['queries_answered']}, "
             f"delta {report['delta']:g}, mechanism {report['mechanism']}",
             f"epsilon data-dependent (PRIVATE): {report['epsilon']:.4f} at order {report.get('order')} "
             f"[{report['conversion']}; classic {report['epsilon_classic']:.4f}; expected "
             f"{report['epsilon_expected']:.4f}]",
             f"epsilon smooth-sensitivity released (SAFE TO PUBLISH): {ss['released_epsilon']:.4f} "
             f"(noise std {ss['noise_std']:.4f}, beta {ss['beta']})",
             f"epsilon data-independent (SAFE TO PUBLISH): {report['epsilon_data_independent']:.4f}"]
    if report.get("seeded"):
        lines.append("noise was SEEDED: reproducible, not a production privacy guarantee")
    return lines


def render(run: RunDir, *, query: int | None = None, fmt: str = "table", plot: Path | None = None) -> str:
    if query is not None:
        detail = query_detail(run, query)
        if fmt == "json":
            return json.dumps({"private": PRIVATE, **detail}, indent=2) + "\n"
        lines = [f"# {PRIVATE}"] + [f"{k}: {v}" for k, v in detail.items() if k != "per_order"]
        if "per_order" in detail:
            keys = list(detail["per_order"][0])
            lines.append("  ".join(f"{k:>22}" for k in keys))
            lines += ["  ".join(f"{v:>22.6g}" if isinstance(v, float) else f"{str(v):>22}" for v in d.values())
                      for d in detail["per_order"]]
        return "\n".join(lines) + "\n"
    rows, report = query_table(run)
    if plot is not None:
        from . import figures

        figures.cumulative_epsilon_png(rows, report, plot)
    if fmt == "json":
        return json.dumps({"private": PRIVATE, "totals": report, "queries": rows}, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        buffer.write(f"# {PRIVATE}\n")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    head = f"{'query':>6} {'public':>7} {'answered':>8} {'label':>5} {'top':>4} {'gap':>4} {'cost@order':>11} {'cum_eps':>8}"
    lines = [f"# {PRIVATE}", head]
    lines += [f"{r['query']:>6} {r['public_index']:>7} {str(r['answered']):>8} {r['label']:>5} {r['top_count']:>4} "
              f"{r['gap']:>4} {r['cost_at_order']:>11.5f} {r['cumulative_epsilon']:>8.4f}" for r in rows]
    return "\n".join(lines + [""] + _totals_lines(report)) + "\n"
