"""`pate audit`: what each query cost, read from the ledger and the votes. PRIVATE output.

Everything here except the data-independent figure and the smooth-sensitivity release is a
function of the private data; the header of every format says so.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..data import source_of
from ..data.records import RecordError
from ..privacy import individual, rdp
from ..run.directory import RunDir, RunError
from ..aggregation.ledger_files import knn_inputs, ledger_order, load_ledger
from ..aggregation.settings import gaussian_budgets, orders
from ..run.artifacts import DATA, RECORD_BUDGETS, data_spec, mechanism, read_privacy
from ..run.outputs import AUDIT_PLOT, check_output
from . import figures

PRIVATE = ("PRIVATE: derived from the private data (votes and ledger). Do not publish. "
           "What may be published is the statement of `pate release` (the worst-case guarantee).")


def _load(run: RunDir):
    asked = ledger_order(run)  # votes.npz in the ledger's order (uncertainty: as the rounds chose)
    votes = asked.ledger_votes
    records = load_ledger(run, votes, asked.query_index).records
    if not records:
        raise RunError(f"{run.path} records no query yet; run `pate aggregate` first")
    return votes[:len(records)], records


def _cumulative_epsilon(costs: np.ndarray, orders: np.ndarray, delta: float, conversion: str) -> np.ndarray:
    """ε after each query: the conversion of each prefix's cumulative RDP curve."""
    return rdp.eps_from_rdp_rows(np.cumsum(costs, axis=0), orders, delta, conversion)


def query_table(run: RunDir) -> tuple[list[dict], dict]:
    """Per-query rows and the run's totals."""
    config = run.config
    votes, records = _load(run)
    answered = np.array([r.answered for r in records])
    order_list = orders(config)
    costs = mechanism(config).per_query_rdp(votes, answered, order_list)
    report = read_privacy(run)
    order = report["private"].get("order") or float(order_list[0])
    at = int(np.argmin(np.abs(order_list - order)))
    cum = _cumulative_epsilon(costs, order_list, config.privacy.delta, config.privacy.conversion)
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
    order_list = orders(config)
    picks = np.unique(np.linspace(0, len(order_list) - 1, 12).astype(int))
    detail = {"query": index, "public_index": record.public_index, "votes": row[0].tolist(),
              "answered": record.answered, "label": record.label, "top_label": record.top_label,
              "gap": record.gap}
    explained = mechanism(config).explain(row, record.answered, order_list)
    if "per_order" in explained:  # twelve orders across the list are enough to read
        explained["per_order"] = [explained["per_order"][j] for j in picks]
    return {**detail, **explained}


def _totals_lines(report: dict) -> list[str]:
    public, private = report["public"], report["private"]
    g = public["guarantee"]
    lines = [f"queries asked {public['queries_asked']}, answered {public['queries_answered']}, "
             f"mechanism {public['mechanism']}",
             f"GUARANTEE (safe to publish, from the settings alone): epsilon {g['epsilon']:.4f} at delta "
             f"{g['delta']:g} ({g['accountant']} accountant, {g['queries']} queries at most)",
             (f"epsilon data-dependent (PRIVATE, the papers' convention): {private['epsilon']:.4f} at order "
              f"{private.get('order')} [{public['conversion']}; classic {private['epsilon_classic']:.4f}; expected "
              f"{private['epsilon_expected']:.4f}]" if "epsilon" in private else
              f"records: most spent epsilon {private['spent_epsilon_max']:.4f}, median {private['spent_epsilon_median']:.4f}"
              f" (PRIVATE)" if "spent_epsilon_max" in private else
              f"epsilon data-dependent (PRIVATE): {private.get('error') or private.get('explanation') or 'unavailable'}")]
    for level in public.get("per_budget_level", []):
        lines.append(f"records with budget {level['budget_epsilon']:g}: guarantee epsilon {level['epsilon']:.4f} at "
                     f"delta {level['delta']:g}" + (f" (voting for {level['anchors']} anchors)" if "anchors" in level else ""))
    release = public.get("data_dependent_release")
    if release:
        lines.append(f"epsilon data-dependent, released with smooth-sensitivity noise (publishable as the papers' "
                     f"convention, not a guarantee): {release['epsilon']:.4f} at order {release['order']:g}")
    if public.get("seeded"):
        lines.append("noise was SEEDED: reproducible, not a production privacy guarantee")
    return lines


def record_table(run: RunDir, top: int = 10) -> dict:
    """Private-kNN: what each private record spent, rebuilt from the ledger (PRIVATE): a histogram of
    spend as a fraction of budget, the most charged records, how many retired and when."""
    config = run.config
    inputs = knn_inputs(run, data_spec(run).num_classes)
    with np.load(run.file(RECORD_BUDGETS), allow_pickle=False) as kept:
        eps_budget = kept["epsilon"]
    gaussian = gaussian_budgets(eps_budget, config)
    records = load_ledger(run, inputs.votes_of(gaussian), inputs.query_index).records
    answered = np.array([r.answered for r in records], dtype=bool)
    state, votes, retired_after = inputs.replay(gaussian, answered)
    fraction = state.spent / gaussian
    counts, edges = np.histogram(fraction, bins=10, range=(0.0, 1.0))
    priv = config.privacy
    order_list = orders(config)

    def eps(value: float) -> float:
        return individual.epsilon_of_budget(float(value), order_list, priv.delta, priv.conversion)[0]

    names = _record_names(run, inputs.records)
    heaviest = np.argsort(-fraction, kind="stable")[:top]
    return {
        "records": int(len(fraction)), "charged": int((state.spent > 0).sum()),
        "retired": int((retired_after >= 0).sum()),
        "histogram": [{"spent_fraction": f"{edges[i]:.1f}-{edges[i + 1]:.1f}", "records": int(c)}
                      for i, c in enumerate(counts)],
        "most_charged": [{"record": names[i], "spent_epsilon": eps(state.spent[i]),
                          "budget_epsilon": float(eps_budget[i]), "spent_fraction": float(fraction[i]),
                          "retired_after_query": int(retired_after[i])} for i in heaviest],
        "queries": [{"query": r.query, "public_index": r.public_index, "answered": r.answered, "label": r.label,
                     "voters": int(votes[t].sum()), "top_count": r.top_count, "gap": r.gap,
                     "retired_so_far": int(((retired_after >= 0) & (retired_after < t)).sum())}
                    for t, r in enumerate(records)],
    }


def _record_names(run: RunDir, records: np.ndarray) -> list[str]:
    """A private record as the user knows it, by the name a budget file gives it: its file
    (relative to ``private_dir``), its id (arrays with ``ids``), else its index."""
    data = run.config.data
    try:
        names = source_of(data).record_names(data, lambda: run.read_json(DATA).get("files", {}))
    except RecordError as exc:
        raise RunError(str(exc)) from None
    return [str(names[i]) if names is not None else str(int(i)) for i in records]


def _render_records(run: RunDir, fmt: str) -> str:
    table = record_table(run)
    report = read_privacy(run)
    if fmt == "json":
        return json.dumps({"private": PRIVATE, "totals": report, **table}, indent=2) + "\n"
    if fmt == "csv":
        return _csv(table["queries"])
    lines = [f"# {PRIVATE}", f"{'query':>6} {'public':>7} {'answered':>8} {'label':>5} {'voters':>6} {'top':>4} "
                             f"{'gap':>4} {'retired':>7}"]
    lines += [f"{q['query']:>6} {q['public_index']:>7} {str(q['answered']):>8} {q['label']:>5} {q['voters']:>6} "
              f"{q['top_count']:>4} {q['gap']:>4} {q['retired_so_far']:>7}" for q in table["queries"]]
    lines += ["", f"private records: {table['records']}, charged {table['charged']}, retired {table['retired']} "
                  "(each retired before its own budget would be passed)", "spent / budget   records"]
    widest = max(1, max(h["records"] for h in table["histogram"]))
    lines += [f"{h['spent_fraction']:>13} {h['records']:>9}  {'#' * round(40 * h['records'] / widest)}"
              for h in table["histogram"]]
    lines += ["most charged records (spent epsilon / budget epsilon, retired after query):"]
    lines += [f"  {r['record']}: {r['spent_epsilon']:.4f} / {r['budget_epsilon']:g}"
              + (f", retired after {r['retired_after_query']}" if r["retired_after_query"] >= 0 else "")
              for r in table["most_charged"]]
    return "\n".join(lines + [""] + _totals_lines(report)) + "\n"


def render(run: RunDir, *, query: int | None = None, fmt: str = "table", plot: Path | None = None) -> str:
    if mechanism(run.config).individual:
        if query is not None or plot is not None:
            raise RunError("private-knn audits per record: --query and --plot apply to teacher mechanisms")
        return _render_records(run, fmt)
    if query is not None:
        detail = query_detail(run, query)
        if fmt == "json":
            return json.dumps({"private": PRIVATE, **detail}, indent=2) + "\n"
        if fmt == "csv":  # one row per order, the query's facts repeated on each
            facts = {k: v for k, v in detail.items() if k not in ("per_order", "votes", "explanation")}
            rows = [{**facts, **entry} for entry in detail.get("per_order", [{}])]
            return _csv(rows)
        lines = [f"# {PRIVATE}"] + [f"{k}: {v}" for k, v in detail.items() if k != "per_order"]
        if "per_order" in detail:
            keys = list(detail["per_order"][0])
            lines.append("  ".join(f"{k:>22}" for k in keys))
            lines += ["  ".join(f"{v:>22.6g}" if isinstance(v, float) else f"{str(v):>22}" for v in d.values())
                      for d in detail["per_order"]]
        return "\n".join(lines) + "\n"
    if plot is not None:
        check_output(plot, AUDIT_PLOT, run)  # before anything is computed
        figures.require_matplotlib("pate audit --plot")
    rows, report = query_table(run)
    if plot is not None:
        figures.cumulative_epsilon_png(rows, report, plot, made_for=AUDIT_PLOT.name)
    if fmt == "json":
        return json.dumps({"private": PRIVATE, "totals": report, "queries": rows}, indent=2) + "\n"
    if fmt == "csv":
        return _csv(rows)
    head = f"{'query':>6} {'public':>7} {'answered':>8} {'label':>5} {'top':>4} {'gap':>4} {'cost@order':>11} {'cum_eps':>8}"
    lines = [f"# {PRIVATE}", head]
    lines += [f"{r['query']:>6} {r['public_index']:>7} {str(r['answered']):>8} {r['label']:>5} {r['top_count']:>4} "
              f"{r['gap']:>4} {r['cost_at_order']:>11.5f} {r['cumulative_epsilon']:>8.4f}" for r in rows]
    return "\n".join(lines + [""] + _totals_lines(report)) + "\n"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    buffer.write(f"# {PRIVATE}\n")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
