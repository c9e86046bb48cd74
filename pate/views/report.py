"""`pate report`: PNG figures and one self-contained HTML page of a run directory.

The page embeds every figure as a base64 data URI (it opens alone, offline, e-mailed) and the
same PNGs are written next to it. Each view says who may see it: the ledger and votes are
functions of the private data, so every view derived from them is PRIVATE; the
smooth-sensitivity released ε and the data-independent ε are safe to publish.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import data as data_mod
from ..io import atomic_write_text, private_mkdir
from ..run.outputs import REPORT, REPORT_GENERATOR, check_output
from ..privacy import rdp
from ..run.directory import RunDir, RunError
from ..aggregation.ledger_files import ledger_order
from ..aggregation.settings import orders
from ..run.artifacts import METRICS, PRIVACY, STUDENT_HISTORY, TEACHERS_EVAL, mechanism
from ..export.release import spend_log_claim
from . import audit, figures, summary
from .summary import NOT_COVERED, PRIVATE, PUBLIC

HTML_NAME = "report.html"
BADGES = summary.LABELS
CURVE_POINTS = 150  # prefixes at which each ε curve of the report is plotted


@dataclass
class Section:
    key: str
    title: str
    privacy: str
    caption: str = ""
    file: str | None = None  # PNG name in the output directory, None when skipped
    skipped: str | None = None  # why, when skipped


@dataclass
class Report:
    out: Path
    html: Path
    sections: list[Section] = field(default_factory=list)

    @property
    def figures(self) -> list[Path]:
        return [self.out / s.file for s in self.sections if s.file]

    @property
    def skipped(self) -> list[Section]:
        return [s for s in self.sections if s.skipped]


# ----------------------------------------------------------------------------- privacy curves


def _prefix_points(n: int, max_points: int = CURVE_POINTS) -> np.ndarray:
    """Prefix lengths 1..n at which to convert, at most ``max_points``, always including n."""
    return np.unique(np.linspace(1, n, min(n, max_points)).round().astype(int))


def _eps(curves: np.ndarray, config) -> np.ndarray:
    return rdp.eps_from_rdp_rows(curves, orders(config), config.privacy.delta, config.privacy.conversion)


def epsilon_curves(config, votes: np.ndarray, answered: np.ndarray,
                   max_points: int = CURVE_POINTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(queries asked, ε) curves of the expected data-dependent cost (PRIVATE), for mechanisms with a
    threshold step (the others' expected cost is the realized one), at up to ``max_points`` prefixes."""
    mech, order_list = mechanism(config), orders(config)
    if not mech.thresholded:
        return {}
    points = _prefix_points(len(answered), max_points)
    return {"expected": (points, _eps(np.array([mech.expected_rdp(votes[:k], order_list) for k in points]),
                                      config))}


def consensus_bins(rows: list[dict], num_teachers: int, truth: np.ndarray, edges=None) -> list[dict]:
    """Accuracy against ``truth`` (the true public label of each row's public_index) by bin of
    top-vote fraction: released labels of answered queries and the plurality label of all."""
    edges = np.linspace(0.0, 1.0, 11) if edges is None else np.asarray(edges, dtype=float)
    frac = np.array([r["top_count"] / num_teachers for r in rows])
    which = np.clip(np.searchsorted(edges, frac + 1e-9, side="right") - 1, 0, len(edges) - 2)  # 6/10 is in 0.6-0.7
    answered = np.array([r["answered"] for r in rows])
    released_ok = np.array([r["answered"] and r["label"] == truth[i] for i, r in enumerate(rows)])
    plurality_ok = np.array([r["top_label"] == truth[i] for i, r in enumerate(rows)])
    bins = []
    for b in range(len(edges) - 1):
        inside = which == b
        if not inside.any():
            continue
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                     "released_n": int((inside & answered).sum()), "released_correct": int((inside & released_ok).sum()),
                     "plurality_n": int(inside.sum()), "plurality_correct": int((inside & plurality_ok).sum())})
    return bins


# ----------------------------------------------------------------------------- building


def _optional(run: RunDir, name: str) -> dict | None:
    """A finished stage's JSON artifact, or None when that stage has not run (its section is skipped)."""
    return run.read_json(name) if run.has(name) else None


def _public_labels(run: RunDir, data_root: Path) -> tuple[np.ndarray | None, str | None]:
    """True labels of the public set (evaluation only), or None and why not."""
    name = run.config.data.public_name
    try:
        labels = data_mod.load(run.config.data, Path(data_root), auto_prepare=False).public_y
    except (data_mod.DataError, OSError, ValueError) as exc:
        return None, (f"the {name} data is not available under {data_root} ({exc}); "
                      "pass --data-root DIR to include this figure")
    if (labels < 0).any():
        return None, f"the public pool of {name} is unlabelled"
    return labels, None


def build(run: RunDir, out: Path | None = None, data_root: Path = data_mod.DEFAULT_ROOT) -> Report:
    """Write the figures and the HTML page of ``run`` into ``out`` (default RUN_DIR/report)."""
    figures.require_matplotlib("pate report's figures")
    if not run.has(PRIVACY):
        raise RunError(f"nothing to report yet: aggregation has not finished in {run.path}; "
                       f"run `pate aggregate PIPELINE.toml --run-dir {run.path}` first")
    out = Path(out) if out is not None else run.path / "report"
    check_output(out, REPORT, run)  # private figures: never in a release, another run or over others' files
    private_mkdir(out)  # the report shows private figures too
    rows, privacy = audit.query_table(run)
    votes = ledger_order(run).ledger_votes[:len(rows)]  # the asked queries' votes, in the ledger's order
    answered = np.array([r["answered"] for r in rows], dtype=bool)
    teachers_eval = _optional(run, TEACHERS_EVAL)
    report = Report(out=out, html=out / HTML_NAME)
    report.sections += [_epsilon_section(run, rows, privacy, votes, answered, out),
                        _gap_section(run, rows, answered, out),
                        _consensus_section(run, rows, data_root, out),
                        _teacher_section(teachers_eval, out),
                        _student_section(run, _optional(run, METRICS), out)]
    atomic_write_text(report.html, render_html(run, report, privacy))
    return report


def _epsilon_section(run, rows, privacy, votes, answered, out) -> Section:
    config = run.config
    curves = epsilon_curves(config, votes, answered)
    figures.cumulative_epsilon_png(rows, privacy, out / "cumulative_epsilon.png", expected=curves.get("expected"))
    expected_note = ("The dotted curve is the paper's expected cost Σ[thr + Pr(answered)·GNMax] (PRIVATE)."
                     if "expected" in curves else
                     f"With {config.aggregator.mechanism} the expected cost equals the realized one.")
    return Section("cumulative_epsilon", "Cumulative ε against queries", PRIVATE, file="cumulative_epsilon.png",
                   caption=("Solid: data-dependent ε after each query, from the ledger (PRIVATE); green dots mark "
                            f"answered queries. {expected_note} Dashed: the run's worst-case guarantee, from the "
                            "settings alone (safe to publish). Dash-dotted, when released: the data-dependent cost "
                            "with smooth-sensitivity noise, the papers' convention (not a guarantee)."))


def _gap_section(run, rows, answered, out) -> Section:
    figures.vote_gap_png(np.array([r["gap"] for r in rows]), answered, run.config.teachers.count,
                         out / "vote_gaps.png")
    return Section("vote_gaps", "Top-two vote gaps", PRIVATE, file="vote_gaps.png",
                   caption=("Histogram of the gap between the two largest vote counts of each query, split by "
                            "whether the aggregator answered it. Large gaps make cheap answers; read from the votes "
                            "(PRIVATE)."))


def _consensus_section(run, rows, data_root, out) -> Section:
    """Label accuracy against consensus (evaluation only: the true public labels)."""
    title = "Label accuracy against vote consensus"
    truth, why_not = _public_labels(run, data_root)
    if truth is None:
        return Section("label_accuracy_consensus", title, PRIVATE, skipped=why_not)
    public_truth = truth[np.array([r["public_index"] for r in rows], dtype=int)]
    bins = consensus_bins(rows, run.config.teachers.count, public_truth)
    figures.label_accuracy_consensus_png(bins, out / "label_accuracy_consensus.png")
    return Section("label_accuracy_consensus", title, PRIVATE, file="label_accuracy_consensus.png",
                   caption=("Queries binned by the fraction of teachers voting for the top class; bars give the "
                            "accuracy of the released labels (answered queries) and of the plurality label (all "
                            "queries) against the true public labels, which PATE never uses except to evaluate. "
                            "The binning reads the votes (PRIVATE)."))


def _teacher_section(teachers_eval, out) -> Section:
    per_teacher = (teachers_eval or {}).get("teacher_accuracy")
    if not per_teacher:
        return Section("teacher_accuracy", "Per-teacher accuracy", NOT_COVERED,
                       skipped="teachers_eval.json (written by `pate vote`) is missing or has no per-teacher "
                               "accuracies")
    figures.teacher_accuracy_png(per_teacher, out / "teacher_accuracy.png",
                                 ensemble_accuracy=teachers_eval.get("ensemble_accuracy"))
    return Section("teacher_accuracy", "Per-teacher accuracy", NOT_COVERED, file="teacher_accuracy.png",
                   caption=("Accuracy of each teacher on the held-out public test split (evaluation only), with "
                            "the mean and the accuracy of the teachers' plurality vote. Teachers saw the private "
                            "data directly, so these figures are not covered by the DP guarantee."))


def _student_section(run, metrics, out) -> Section:
    config = run.config
    history = _optional(run, STUDENT_HISTORY)
    if not (history and history.get("loss")):
        return Section("student_learning_curve", "Student learning curve", PUBLIC,
                       skipped=(f"the student has not been trained yet; run `pate train-student PIPELINE.toml "
                                f"--run-dir {run.path}`"))
    figures.learning_curve_png(history, out / "student_learning_curve.png",
                               student_accuracy=(metrics or {}).get("student_accuracy"))
    return Section("student_learning_curve", "Student learning curve", PUBLIC, file="student_learning_curve.png",
                   caption=(f"Training of the student ({config.student.method}, {config.student.arch}) on the "
                            "released labels and the unlabelled public pool: running losses, accuracy on its "
                            "labelled batches and, for semi-supervised training, the pseudo-label mask rate. "
                            "Post-processing of the released labels, so covered by the DP guarantee."))


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1140px;
padding:16px 24px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.15em;margin:.2em 0 .4em}
.meta{color:#555;font-size:.9em}
.privacy{border:2px solid #b00020;background:#fff4f4;border-radius:6px;padding:10px 16px;margin:14px 0}
.privacy p{margin:.35em 0}
.publish{border:2px solid #1b7f3b;background:#f1fbf4;border-radius:6px;padding:10px 16px;margin:14px 0}
.publish .eps{font-size:1.25em;font-weight:600}
.seeded{color:#8a5300;font-weight:600}
table{border-collapse:collapse;font-size:.92em;margin:6px 0 14px}
th{white-space:nowrap}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
.badge{display:inline-block;font-size:.75em;font-weight:600;padding:1px 7px;border-radius:9px;white-space:nowrap}
.badge.private{background:#b00020;color:#fff}.badge.public{background:#1b7f3b;color:#fff}
.badge.not-covered{background:#8a5300;color:#fff}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:10px}
figure.wide{grid-column:1 / span 2}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:.86em;color:#333;margin-top:6px}
.skipped{border:1px dashed #999;border-radius:6px;padding:10px;color:#555}
.file{font-family:ui-monospace,monospace;font-size:.9em}
"""


def _badge(kind: str) -> str:
    return f'<span class="badge {kind}">{html.escape(BADGES[kind])}</span>' if kind else ""


def _figure_html(out: Path, section: Section, wide: bool) -> str:
    title = f"<h2>{html.escape(section.title)} {_badge(section.privacy)}</h2>"
    if section.skipped:
        return (f'<section class="skipped" id="{section.key}">{title}'
                f"<p>Skipped: {html.escape(section.skipped)}.</p></section>")
    data = base64.b64encode((out / section.file).read_bytes()).decode("ascii")
    name = html.escape(section.file)
    return (f'<figure id="{section.key}"{" class=wide" if wide else ""}>{title}'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(section.title)} ({name})" '
            f'data-file="{name}">'
            f'<figcaption>{html.escape(section.caption)} File: <a class="file" href="{name}">{name}</a></figcaption>'
            "</figure>")


def publishable_html(privacy: dict, claim: dict | None = None) -> str:
    """The statement box: the guarantee first; the papers' data-dependent figure, if released, beside it;
    ``claim`` (``pate.export.release.spend_log_claim``): what it says of earlier releases, the same for every
    dataset (a record's composed total is PRIVATE: it is in the summary table, marked so)."""
    public, esc = privacy["public"], html.escape
    g, release = public["guarantee"], public.get("data_dependent_release")
    parts = [f"<p><b>The guarantee (safe to publish).</b> ε = {g['epsilon']:.3f} at δ = {g['delta']:g}, "
             f"({esc(g['accountant'])} accountant), for at most {g['queries']} queries, computed from the settings "
             "alone: it holds for every private dataset, whatever the votes were.</p>",
             f'<p class="eps">ε = {g["epsilon"]:.3f} · δ = {g["delta"]:g}</p>']
    if release:
        parts.append(f"<p>Data-dependent cost released with smooth-sensitivity noise (Papernot et al. 2018, App. B; "
                     f"order {release['order']:g}, β {release['beta']:g}, σ_ss {release['sigma_ss']:g}, fixed in "
                     f"advance): ε = {release['epsilon']:.3f}. This is the convention of the PATE papers, for "
                     "comparison with them; it is not a guarantee.</p>")
    if claim is not None:
        parts.append(f"<p>{esc(claim['statement'])}</p>")
    if public.get("seeded"):
        parts.append('<p class="seeded">Noise was SEEDED: the run is reproducible, which is not a production '
                     "privacy guarantee.</p>")
    return "\n".join(parts)


def _dd(private: dict) -> str:
    if "epsilon" not in private:
        return private.get("error", "unavailable")
    return f"{private['epsilon']:.3f} realized, {private['epsilon_expected']:.3f} expected"


def render_html(run: RunDir, report: Report, privacy: dict) -> str:
    config = run.config
    esc = html.escape
    generated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td><td>{_badge(kind)}</td></tr>"
                    for k, v, kind in summary.rows(run))
    private = privacy["private"]
    figs = "".join(_figure_html(report.out, s, wide=(s.key == "cumulative_epsilon"))
                   for s in report.sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{REPORT_GENERATOR}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>PATE report: {esc(config.name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>PATE report: {esc(config.name)}</h1>
<p class="meta">Run directory {esc(str(run.path))} · config {esc(config.fingerprint()[:16])} · {esc(config.data.public_name)},
{config.teachers.count} teachers, {esc(config.aggregator.mechanism)} · generated {esc(generated)} by <code>pate report</code></p>
<div class="publish">
{publishable_html(privacy, spend_log_claim(config.privacy.total_budget, privacy["public"]["delta"]))}
</div>
<div class="privacy">
<p><b>PRIVATE page: do not publish it as a whole.</b> Views marked {_badge(PRIVATE)} are derived from the ledger
(<code>ledger.jsonl</code>) and the teachers' votes, which are functions of the private data. That includes the
data-dependent ε ({_dd(private)}), the convention of the
PATE papers: it must not be published itself. {_badge(NOT_COVERED)} marks figures about the teachers, which saw the
private data directly. {_badge(PUBLIC)} marks what the guarantee covers: the statement above and post-processing of
the released labels. <code>pate release</code> writes the public statement on its own.</p>
</div>
<h2>Summary</h2>
<table>{table}</table>
<div class="grid">
{figs}
</div>
</body></html>
"""
