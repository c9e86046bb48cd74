"""The `pate` command: one thin command per stage, generated from the stage registry, and the views.

Commands only parse arguments, call, and print; every ``PateError`` becomes one line and exit 2.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import sys
from pathlib import Path

import click

from . import config as config_mod
from . import data as data_mod
from . import stages
from .export import release as release_view
from .export import student as export_student
from .run import outputs
from .errors import PateError
from .io import atomic_write_bytes
from .privacy import mechanisms
from .progress import Progress, say
from .views import audit as audit_view
from .views import plan as plan_view
from .views import planning
from .views import report as report_view
from .views import status as status_view
from .views import summary


class UserError(click.ClickException):
    exit_code = 2


# What only an input can cause (a file nested too deep, sizes beyond memory, numbers beyond a
# float, bytes that are no text): each has a limit checked where the input is read; this is the
# boundary behind those checks, so one that is missed is still one line.
BAD_INPUT = (RecursionError, MemoryError, OverflowError, UnicodeError)


def bad_input_line(exc: BaseException) -> str:
    what = next(says for kind, says in ((RecursionError, "an input is nested too deeply to read"),
                                        (MemoryError, "an input asks for more memory than this machine has"),
                                        (OverflowError, "a number in the input is too large"),
                                        (UnicodeError, "an input holds bytes that are not text in its encoding"))
                if isinstance(exc, kind))  # subclasses too: numpy's _ArrayMemoryError is a MemoryError
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"{what} ({detail}); check the files and settings given, or lower the sizes in the pipeline"


def user_errors(func):
    """Turn errors a user can cause into one clear line (exit 2) instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PateError as exc:
            raise UserError(str(exc)) from None
        except KeyboardInterrupt:
            raise UserError("interrupted; rerun the same command to resume") from None
        except OSError as exc:  # disk full, permissions: nothing half-written, so a rerun resumes
            where = f"{exc.filename}: " if exc.filename else ""
            raise UserError(f"{where}{exc.strerror or exc}; fix it and rerun the same command to resume") from None
        except BAD_INPUT as exc:  # a limit an input passed that no check caught first: one line, never a traceback
            raise UserError(bad_input_line(exc)) from None

    return wrapper


class PipelineOrder(click.Group):
    """Lists commands as a user meets them: set-up, the stages in pipeline order, then the views;
    a usage error (unknown option, bad value, missing argument) is one line, naming the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `pate`: the help, as usual
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "pate"
            click.echo(f"Error: {exc.format_message()} (see `{command} -h`)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Error: interrupted; rerun the same command to resume", err=True)
            sys.exit(2)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(0)

    def list_commands(self, ctx) -> list[str]:
        first = ["data", "plan", "run", *stages.NAMES, "status", "audit", "report", "export", "predict"]
        return [c for c in first if c in self.commands] + sorted(set(self.commands) - set(first))


@click.group(cls=PipelineOrder, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pate")
def main() -> None:
    """PATE: label public data privately with a teacher ensemble.

    Stages, in order: partition, train-teachers, vote, aggregate, train-student, evaluate.
    `pate run PIPELINE.toml` runs them all, skipping finished ones and resuming a partial one.
    """


@main.group()
def data() -> None:
    """Built-in datasets: prepare them offline where possible."""


@data.command("prepare")
@click.argument("name", type=click.Choice(sorted(config_mod.DATASETS)))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=data_mod.DEFAULT_ROOT,
              show_default=True, help="Dataset cache directory.")
@user_errors
def data_prepare(name: str, root: Path) -> None:
    """Fetch or convert dataset NAME into ROOT (offline for mnist and fashion-mnist)."""
    outputs.check_output(root, outputs.DATA_ROOT)
    data_mod.prepare(name, root)
    dataset = data_mod.builtin.load(name, root, auto_prepare=False)
    click.echo(f"{name}: {len(dataset.private_y)} train (private) / {len(dataset.public_y)} test (public) "
               f"images of shape {tuple(dataset.private_x.shape[1:])} in {root}")


def stage_options(func):
    options = [
        click.argument("pipeline_file", metavar="PIPELINE.toml",
                       type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Run directory [default: runs/<pipeline name>]."),
        click.option("--data-root", type=click.Path(file_okay=False, path_type=Path),
                     default=data_mod.DEFAULT_ROOT, show_default=True, help="Dataset cache directory."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command("run")
@stage_options
@click.option("--until", type=click.Choice(stages.NAMES), default=None, help="Stop after this stage.")
@user_errors
def run_all(pipeline_file, run_dir, data_root, device, quiet, until) -> None:
    """Run every stage of PIPELINE.toml in order, then print a summary."""
    with stages.session(pipeline_file, run_dir, data_root, device, quiet) as ctx:
        stages.run_stages(ctx, until=until)
        if until is None or until == stages.NAMES[-1]:
            out = release_view.build(ctx.run)
            click.echo(summary.render_text(ctx.run))
            click.echo(f"public release (labels, student, privacy statement): {out}")


def _stage_command(stage: stages.Stage):
    @stage_options
    @user_errors
    def command(pipeline_file, run_dir, data_root, device, quiet) -> None:
        with stages.session(pipeline_file, run_dir, data_root, device, quiet) as ctx:
            stages.run_stage(ctx, stage.name)

    command.__doc__ = stage.help
    return main.command(stage.name)(command)


for _stage in stages.STAGES:
    _stage_command(_stage)


@main.command("status")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@user_errors
def status(run_dir: Path) -> None:
    """Each stage of RUN_DIR: pending / partial (how far) / done."""
    click.echo(status_view.render(stages.existing_run(run_dir)), nl=False)


def _export(run_dir: Path, out: Path | None, torchscript: bool = False) -> None:
    folder = release_view.build(stages.existing_run(run_dir), out, torchscript=torchscript)
    click.echo((folder / release_view.STATEMENT_TEXT).read_text(encoding="utf-8"), nl=False)
    click.echo(f"wrote {folder}: {', '.join(release_view.files(torchscript))}")


_OUT_HELP = ("Output folder: new, empty or this run's previous export [default: RUN_DIR-release, beside the "
             "run directory]; never a run directory, another run's release or the data.")  # pate.run.outputs
_TORCHSCRIPT_HELP = "Also write the student as TorchScript (student.ts; deprecated by PyTorch, not the default)."


@main.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help=_OUT_HELP)
@click.option("--torchscript", is_flag=True, help=_TORCHSCRIPT_HELP)
@user_errors
def export(run_dir: Path, out: Path | None, torchscript: bool) -> None:
    """The public folder of RUN_DIR: labels.csv (index, file, label, class), the student as ONNX
    (student.onnx: onnxruntime alone runs it), a torch.export program (student.pt2) and safetensors
    weights (student.safetensors; student.json describes them), model-card.md and the privacy
    statement. `pate run` writes it too."""
    _export(run_dir, out, torchscript)


@main.command("release", hidden=True)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help=_OUT_HELP)
@click.option("--torchscript", is_flag=True, help=_TORCHSCRIPT_HELP)
@user_errors
def release(run_dir: Path, out: Path | None, torchscript: bool) -> None:
    """Same as `pate export` (its earlier name)."""
    _export(run_dir, out, torchscript)


@main.command("predict")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the CSV here instead of printing it: a new file or an earlier predict CSV, "
                   "never inside a run directory or a release.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@user_errors
def predict(model: Path, images: tuple[Path, ...], out: Path | None, quiet: bool) -> None:
    """Label IMAGES (files, or folders searched recursively) with MODEL: an exported student.onnx
    (needs only onnxruntime, no torch), student.pt2, student.ts or student.safetensors, their
    folder, or a finished run directory. Prints path,label,class,confidence as CSV."""
    if out is not None:
        outputs.check_output(out, outputs.PREDICT_CSV)
    student = export_student.load_student(model)
    paths, skipped = export_student.image_paths(images)
    if not paths:
        raise UserError("no image files among " + ", ".join(map(str, images)))
    bar = Progress(len(paths), "predict", quiet, unit="images")  # on stderr: the CSV alone goes to stdout
    rows = student.predict_files(paths, progress=bar.update_to)
    bar.close()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(outputs.PREDICT_HEADER.split(","))  # the header marks the file as pate's (pate.run.outputs)
    writer.writerows((path, label, name, f"{confidence:.4f}") for path, label, name, confidence in rows)
    csv_bytes = text.getvalue().encode("utf-8", "surrogateescape")  # a file name's undecodable bytes, as they are
    if out is None:
        click.echo(csv_bytes, nl=False)
    else:
        atomic_write_bytes(out, csv_bytes, private=False)  # the user's own file: normal mode
        say(f"predict: {len(rows)} images labelled -> {out}", quiet)
    if skipped:
        say(f"predict: {skipped} file(s) that are not images were skipped", quiet)


@main.command("audit")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--query", "query", type=int, default=None, help="Show one query in depth.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write cumulative epsilon against queries to this PNG (needs the plot extra).")
@user_errors
def audit(run_dir: Path, query: int | None, fmt: str, plot: Path | None) -> None:
    """The per-query privacy ledger of RUN_DIR (PRIVATE: derived from the private data)."""
    click.echo(audit_view.render(stages.existing_run(run_dir), query=query, fmt=fmt, plot=plot), nl=False)


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated numbers, e.g. 0.9,0.7. Found {text!r}") from None


@main.command("plan")
@click.argument("pipeline_file", metavar="[PIPELINE.toml]", required=False,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mechanism", type=click.Choice(planning.MECHANISMS), default=None,
              help="Default: the pipeline's; without one, confident-gnmax if --threshold/--sigma1 are given.")
@click.option("--teachers", type=int, default=None, help="K, the number of teachers.")
@click.option("--classes", type=int, default=None, help="m [default: the dataset's, else 10].")
@click.option("--queries", type=int, default=None, help="Q, the number of queries asked.")
@click.option("--threshold", type=float, default=None, help="T of Confident-GNMax.")
@click.option("--sigma1", type=float, default=None, help="Threshold-step noise std.")
@click.option("--sigma2", type=float, default=None, help="GNMax noise std.")
@click.option("--delta", type=float, default=None)
@click.option("--consensus", default=None, help="Top-class vote fractions, e.g. 0.9,0.7,0.5 [default: 0.9].")
@click.option("--consensus-weights", default=None, help="Weights of the --consensus levels [default: equal].")
@click.option("--target-epsilon", type=float, default=None,
              help="Search the fixed grid (T, sigma1, sigma2, Q) for a worst-case guarantee within this.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write answer probability and epsilon against queries to this PNG (plot extra).")
@user_errors
def plan(pipeline_file, mechanism, teachers, classes, queries, threshold, sigma1, sigma2, delta, consensus,
         consensus_weights, target_epsilon, fmt, plot) -> None:
    """Plan the privacy of PIPELINE.toml (or of explicit options) from public settings only."""
    if plot is not None:
        outputs.check_output(plot, outputs.PLAN_PLOT)  # before anything is computed
    config = config_mod.load(pipeline_file) if pipeline_file is not None else None
    chosen = mechanisms.MECHANISMS[config.aggregator.mechanism] if config is not None else None
    if chosen is not None and chosen.reads_records:  # no teachers: planned from the record counts
        result = planning.knn_plan(config) if chosen.individual else planning.reverse_plan(config, target_epsilon)
        text = (plan_view.render_knn if chosen.individual else plan_view.render_reverse)(result)
        click.echo(json.dumps(result, indent=2) if fmt == "json" else text, nl=fmt == "json")
        return
    params = planning.params_from(config, mechanism=mechanism, teachers=teachers, classes=classes,
                                   queries=queries, threshold=threshold, sigma1=sigma1, sigma2=sigma2, delta=delta)
    profile = planning.Profile.of(_floats(consensus), _floats(consensus_weights))
    result = planning.make_plan(params, profile, target_epsilon)
    if plot is not None:
        plan_view.plot(params, profile, plot)
    click.echo(json.dumps(result, indent=2) if fmt == "json" else plan_view.render_table(result), nl=fmt == "json")


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory: new, empty or an earlier report, never inside a release (the report is "
                   "PRIVATE) [default: RUN_DIR/report].")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=data_mod.DEFAULT_ROOT,
              show_default=True, help="Dataset cache, for label accuracy against vote consensus (evaluation only).")
@user_errors
def report(run_dir: Path, out: Path | None, data_root: Path) -> None:
    """PNG figures and one self-contained HTML page of RUN_DIR (needs the plot extra; PRIVATE views marked)."""
    result = report_view.build(stages.existing_run(run_dir), out=out, data_root=data_root)
    click.echo(f"wrote {result.html} and {len(result.figures)} figures in {result.out}")
    for section in result.skipped:
        click.echo(f"skipped {section.title.lower()}: {section.skipped}")


if __name__ == "__main__":
    main()
