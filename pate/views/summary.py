"""The one summary of a run: what it produced, and who may see each figure.

``rows`` gives (name, value, privacy class) rows from the run directory's verified artifacts; the
CLI prints them as text after ``pate run`` and ``pate report`` puts them in its HTML table.
"""
from __future__ import annotations

from ..run import spend_log
from ..run.directory import RunDir
from ..stages import NAMES
from ..aggregation.settings import WARN_EPSILON
from ..run.artifacts import METRICS, PRIVACY, TEACHERS_EVAL, mechanism, read_metrics, read_privacy

PRIVATE, PUBLIC, NOT_COVERED = "private", "public", "not-covered"
LABELS = {PRIVATE: "PRIVATE", PUBLIC: "safe to publish", NOT_COVERED: "not covered by the DP guarantee"}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _optional(run: RunDir, name: str) -> dict | None:
    return run.read_json(name) if run.has(name) else None


def rows(run: RunDir) -> list[tuple[str, str, str]]:
    """(name, value, privacy class or '') rows of ``run``, for whatever stages have finished."""
    config, manifest = run.config, run.manifest()
    privacy = read_privacy(run) if run.has(PRIVACY) else None
    metrics = read_metrics(run) if run.has(METRICS) else None
    teachers_eval = _optional(run, TEACHERS_EVAL)
    mech = mechanism(config)
    out = [("pipeline", config.name, ""), ("run directory", str(run.path), ""),
           ("config sha256", config.fingerprint()[:16], ""),
           ("data", config.data.public_name, ""),
           ("teachers", "the private records near each query (private-knn)" if mech.individual
            else f"each private record, for its {config.aggregator.knn_k} nearest anchors ({mech.name})"
            if mech.reads_records and mech.casts_votes else "a DP-SGD teacher alone (no votes)"
            if mech.reads_records else str(config.teachers.count), ""),
           ("mechanism", f"{mech.name} ({mech.describe()})", "")]
    if privacy:
        out += privacy_rows(run, privacy)
    if teachers_eval and mech.individual:
        out += [("neighbourhood plurality accuracy", _pct(teachers_eval.get("ensemble_accuracy"))
                 + f" (median {teachers_eval.get('neighbours_median', 0):.0f} private records per query)", NOT_COVERED)]
    elif teachers_eval and mech.reads_records:
        if mech.casts_votes:  # knn_k = 0: no vote to count
            out += [("anchor plurality accuracy", _pct(teachers_eval.get("query_plurality_accuracy"))
                     + f" (noiseless; median {teachers_eval.get('votes_per_anchor_median', 0):.0f} votes per anchor)",
                     NOT_COVERED)]
    elif teachers_eval:
        spread = ""
        if teachers_eval.get("teacher_accuracy_min") is not None:
            spread = (f" (min {_pct(teachers_eval['teacher_accuracy_min'])}, "
                      f"max {_pct(teachers_eval.get('teacher_accuracy_max'))})")
        out += [("teacher accuracy mean", _pct(teachers_eval.get("teacher_accuracy_mean")) + spread, NOT_COVERED),
                ("ensemble (plurality) accuracy", _pct(teachers_eval.get("ensemble_accuracy")), NOT_COVERED)]
    if metrics:
        out += [("label accuracy (released labels)", _pct(metrics.get("label_accuracy")), PUBLIC),
                ("student accuracy", f"{_pct(metrics.get('student_accuracy'))} on {metrics.get('test_size')} "
                                     "held-out public images", PUBLIC)]
    stages = []
    for stage in NAMES:
        record = manifest["stages"].get(stage, {})
        seconds = record.get("seconds")
        stages.append(f"{stage} {record.get('status', 'pending')}" + (f" {seconds:.1f} s" if seconds is not None else ""))
    out.append(("stages", " · ".join(stages), ""))
    return out


def privacy_rows(run: RunDir, privacy: dict) -> list[tuple[str, str, str]]:
    """The guarantee first; the papers' data-dependent figures after it, each with who may see it."""
    public, private = privacy["public"], privacy["private"]
    g = public["guarantee"]
    out = [("queries asked / answered", f"{public['queries_asked']} / {public['queries_answered']}", PUBLIC),
           ("ε guarantee (worst case, settings alone)",
            f"{g['epsilon']:.3f} at δ {g['delta']:g} ({g['accountant']} accountant)"
            + (f"; above {WARN_EPSILON:g}: it promises little" if g["epsilon"] > WARN_EPSILON else ""), PUBLIC)]
    if public.get("answered_by_student") is not None:
        out.append(("labels from the teachers / the student", f"{public['answered_by_teachers']} / "
                                                            f"{public['answered_by_student']}", PUBLIC))
    for level in public.get("per_budget_level", []):
        out.append((f"ε guarantee of records with budget {level['budget_epsilon']:g}",
                    f"{level['epsilon']:.3f} at δ {level['delta']:g}"
                    + (f" (voting for {level['anchors']} anchors)" if "anchors" in level else ""), PUBLIC))
    release = public.get("data_dependent_release")
    if release:
        out.append(("ε data-dependent, smooth-sensitivity release (papers' convention, not a guarantee)",
                    f"{release['epsilon']:.3f} at order {release['order']:g}", PUBLIC))
    if "spent_epsilon_max" in private:
        out += [("records charged / retired", f"{private['records_charged']} / {private['records_retired']} of "
                                              f"{private['records']}", PRIVATE),
                ("ε spent by the most charged record", f"{private['spent_epsilon_max']:.3f} (median "
                                                       f"{private['spent_epsilon_median']:.3f})", PRIVATE)]
    elif "epsilon" in private:
        out += [("ε data-dependent realized (papers' convention)",
                 f"{private['epsilon']:.3f} (order {private.get('order')})", PRIVATE),
                ("ε data-dependent expected (papers' convention)", f"{private['epsilon_expected']:.3f}", PRIVATE)]
    else:
        out.append(("ε data-dependent (papers' convention)",
                    private.get("error") or private.get("explanation") or "unavailable", PRIVATE))
    total = spent(run, g["delta"])
    if total is not None:  # which records two runs share is a fact about the data: never published
        out.append(("ε spent on this private data (worst record, all runs composed)",
                    f"{total.epsilon:.3f} at δ {total.delta:g} over {total.releases} release(s)", PRIVATE))
    if public.get("seeded"):
        out.append(("noise", "SEEDED: reproducible, not a production privacy guarantee", ""))
    return out


def spent(run: RunDir, delta: float):
    """The composed spend of the worst-off record of this run's private data, over every release
    that charged it in any run (``pate.run.spend_log``), or None before partition. PRIVATE: it depends
    on which records are in the data, so no release, model card, public report or MLflow holds it."""
    if not run.is_done("partition"):
        return None
    parts = run.load_npz("partition.npz")
    if "record_fingerprint" not in parts:
        return None  # a partition of an earlier version: refused by every stage that reads it
    return spend_log.total(parts["record_fingerprint"], delta, run.config.privacy.conversion)


def left_out(run: RunDir) -> int | None:
    """How many records ``[privacy] total_budget``'s filter left out of the run (PRIVATE), or None
    before partition or without a budget."""
    if not run.is_done("partition") or not run.config.privacy.total_budget:
        return None
    parts = run.load_npz("partition.npz")
    return int(parts["left_out"].sum()) if "left_out" in parts else 0


def render_text(run: RunDir) -> str:
    """The summary as aligned text, each figure followed by who may see it."""
    table = rows(run)
    width = max(len(name) for name, _, _ in table)
    return "\n".join(f"{name:<{width}}  {value}" + (f"  [{LABELS[kind]}]" if kind else "")
                     for name, value, kind in table)
