"""Experiment tracking with MLflow (``[tracking] enabled = true``): public fields only.

One MLflow run per pate run directory: its id is kept in the run directory (``tracking.json``), so
a resumed ``pate run`` (or any stage command on the same directory) continues the same MLflow run.
What is logged is what may be published, and nothing else:

- params: the settings (every config key; the data's paths and a per-record budgets file are left
  out, ``data.public_name`` names the data; any other file setting is logged by its file name);
- metrics: each stage's seconds, the public statement (privacy.json's ``public`` section: the
  worst-case guarantee, delta, mechanism settings, queries asked and answered, the
  smooth-sensitivity release if one was made), and the student's accuracy on held-out public
  images (one step per student attempt); strings and flags of the statement become tags;
- artifacts: the files of the public release (``pate run`` writes it beside the run directory).

Never: the votes, the ledger, the data-dependent figures (privacy.json's ``private`` section), the
teachers' accuracies, the number of private records, any hash of private files, the run
directory's path. MLflow is imported only when tracking is enabled (``pip install 'pate[tracking]'``);
its telemetry is off unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise.

An HTTP store is probed before anything is written (a TCP connection, ``PROBE_SECONDS`` at most):
one that cannot be reached is one line at once, not MLflow's own 7 retries with exponential
backoff (about four minutes). MLflow's requests then run with ``HTTP_LIMITS`` (fewer retries, a
shorter timeout) unless its environment variables say otherwise, so a server that stops answering
during a run is reported within about a minute and a half per request.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import socket
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable, Iterator, NamedTuple

from . import __version__
from .config import EXCLUDED_SECTIONS, NAMED_WEIGHTS, PATH_KEYS, PipelineConfig
from .errors import PateError
from .io import InputError, atomic_write_json, read_text_limited
from .progress import say

STATEMENT = "statement.json"  # the release's statement: when it was made, and which files it holds
STUDENT_METRICS = ("student_accuracy", "test_size")  # of metrics.json: on held-out public images
STATE = "tracking.json"  # in the run directory: the MLflow run it continues, and what was logged to it
HIDDEN = {"data": PATH_KEYS, "privacy": ("record_budgets",)}  # settings that name private files
MAX_VALUE = 5000  # below MLflow's limits on param (6000) and tag (8000) values
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per batch
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PROBE_SECONDS = 5.0  # the longest the reachability probe of an HTTP store waits for a connection
# MLflow's request limits unless set in the environment (its defaults: 7 retries, 120 s timeout):
# at most 3 tries of 30 s with 2 + 4 s of backoff between them
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MAX_JSON_BYTES = 16 << 20  # tracking.json and the release's statement.json are a few KiB


class RunSnapshot(NamedTuple):
    """What a run directory holds that may be logged (read, hash-checked, by ``pate.stages``)."""
    names: tuple[str, ...]  # the stages, in order
    manifest: dict  # their records (status, finished, seconds) and the student attempts
    public: dict | None  # privacy.json's "public" section, once aggregation is done
    student: dict | None  # STUDENT_METRICS of metrics.json, once the student is evaluated


def release_folder(run_path: Path) -> Path:
    """Where ``pate run`` writes the release: beside the run directory (``pate.export.release.default_out``)."""
    return run_path.parent / f"{run_path.name}-release"


class TrackingError(PateError):
    """Tracking is enabled but MLflow is missing, or its store refused what pate logged."""


def check(config: PipelineConfig) -> None:
    """Refuse enabled tracking without MLflow, or with an HTTP store that cannot be reached, before
    anything is written."""
    if not config.tracking.enabled:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError("[tracking] enabled = true needs MLflow, which is not installed: "
                            "pip install 'pate[tracking]' (or set enabled = false)")
    check_reachable(tracking_uri(config.tracking.tracking_uri))


def check_reachable(uri: str) -> None:
    """An ``http``/``https`` store must accept a TCP connection within ``PROBE_SECONDS`` (through
    no proxy: where one is set for the store, MLflow's own bounded requests find out)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies_environment().get(parts.scheme) \
            and not urllib.request.proxy_bypass_environment(parts.hostname):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TrackingError(f"[tracking] tracking_uri = {uri!r} has no usable port") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_SECONDS).close()
    except (OSError, UnicodeError) as exc:
        reason = f"no answer within {PROBE_SECONDS:g} s" if isinstance(exc, TimeoutError) else \
            getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TrackingError(f"[tracking] MLflow at {uri} cannot be reached ({reason}); start the server, fix "
                            "[tracking] tracking_uri or set enabled = false") from None


def _environment(uri: str) -> None:
    """MLflow's settings for pate's use, each unless the environment already sets it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves for MLflow's own servers
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store needs no database
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def tracking_uri(setting: str) -> str:
    """The store: ``[tracking] tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``; a
    plain path is made an absolute ``file:`` URI (relative to the current directory, like ``runs/``)."""
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI", "") or "mlruns"
    if uri == "databricks" or SCHEME.match(uri):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value), ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def public_params(config: PipelineConfig) -> dict[str, str]:
    """The settings as ``section.key`` params, without the paths of the private run's files."""
    out = {"name": config.name, "data.public_name": config.data.public_name}
    for section, values in config.to_dict().items():
        if section == "name" or section in EXCLUDED_SECTIONS:
            continue
        for key, value in values.items():
            if key in HIDDEN.get(section, ()):
                continue
            if isinstance(value, str) and value and os.path.isabs(value) and not NAMED_WEIGHTS.match(value):
                value = Path(value).name  # a file setting (a weights file): its name, not where it lives
            out[f"{section}.{key}"] = _text(value)
    return out


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(f"{prefix}.{key}", value, out)
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for i, value in enumerate(obj):
            _flatten(f"{prefix}.{i}", value, out)
    else:
        out[prefix] = obj
    return out


def statement_fields(public: dict) -> tuple[dict[str, float], dict[str, str]]:
    """privacy.json's ``public`` section as (metrics, tags): numbers are metrics, the rest tags."""
    metrics, tags = {}, {}
    for key, value in _flatten("privacy", public, {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[key] = float(value)
        else:
            tags[key] = _text(value)
    return metrics, tags


@contextlib.contextmanager
def _guard(uri: str) -> Iterator[None]:
    try:
        yield
    except PateError:
        raise
    except Exception as exc:  # MLflow's errors (a refused value, an unreachable server) as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrackingError(f"[tracking] MLflow at {uri}: {first[:300]}") from None


class Tracker:
    """The MLflow run of one pate run directory."""

    def __init__(self, run, client, uri: str, run_id: str, state: dict):
        self.run, self.client, self.uri, self.run_id, self.state = run, client, uri, run_id, state

    @classmethod
    def start(cls, run, quiet: bool = True) -> "Tracker":
        """Continue the MLflow run recorded in ``run`` (same store and experiment), or start one."""
        config = run.config
        uri, experiment = tracking_uri(config.tracking.tracking_uri), config.tracking.experiment or config.name
        _environment(uri)
        check_reachable(uri)
        with _guard(uri):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            state = _read_state(run)
            run_id = state.get("run_id") if (state.get("tracking_uri"), state.get("experiment")) == (uri, experiment) \
                else None
            if run_id and _live(client, run_id):
                client.update_run(run_id, status="RUNNING")
                verb = "continuing"
            else:
                found = client.get_experiment_by_name(experiment)
                if found is not None and found.lifecycle_stage == "deleted":
                    raise TrackingError(f"[tracking] MLflow experiment {experiment!r} is deleted at {uri}: restore "
                                        "it or set another [tracking] experiment")
                experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
                run_id = client.create_run(experiment_id, run_name=config.name, tags={
                    "pate.version": __version__, "pate.pipeline": config.name,
                    "pate.dataset": config.data.public_name}).info.run_id
                state = {"tracking_uri": uri, "experiment": experiment, "run_id": run_id,
                         "logged": {"stages": {}, "student": []}}
                atomic_write_json(run.file(STATE), state)
                verb = "started"
        say(f"tracking: {verb} MLflow run {run_id} (experiment {experiment!r}, {uri})", quiet)
        tracker = cls(run, client, uri, run_id, state)
        tracker.log_config()
        return tracker

    def _batch(self, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None,
               tags: dict[str, str] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag

        stamp = int(time.time() * 1000)
        items = ([Metric(k, v, stamp, step) for k, v in (metrics or {}).items()],
                 [Param(k, v) for k, v in (params or {}).items()], [RunTag(k, v) for k, v in (tags or {}).items()])
        with _guard(self.uri):
            for kind, entries in zip(("metrics", "params", "tags"), items):
                for i in range(0, len(entries), BATCH):
                    self.client.log_batch(self.run_id, **{kind: entries[i:i + BATCH]})

    def log_config(self) -> None:
        """The settings as params; a setting changed since it was logged (the student's, which a run
        directory accepts) as a ``config.KEY`` tag, params being immutable in MLflow."""
        params = public_params(self.run.config)
        with _guard(self.uri):
            logged = self.client.get_run(self.run_id).data.params
            self.client.log_dict(self.run_id, params, "public-config.json")
        self._batch(params={k: v for k, v in params.items() if k not in logged},
                    tags={f"config.{k}": v for k, v in params.items() if k in logged and logged[k] != v})

    def log_snapshot(self, snapshot: RunSnapshot) -> None:
        """What finished since the last call: stage seconds, the public statement, the student's
        accuracy, and a release written after the student was last evaluated. Each is recorded in
        the run directory once logged, so a rerun logs only what is missing."""
        logged, manifest = self.state["logged"], snapshot.manifest
        attempt = len(manifest.get("attempts", []))
        records = manifest.get("stages", {})
        done = [s for s in snapshot.names if records.get(s, {}).get("status") == "done"]
        timed = logged["stages"]
        fresh = {s: records[s] for s in done if records[s].get("seconds") is not None
                 and timed.get(s) != records[s].get("finished")}
        self._batch(metrics={f"seconds/{s}": float(r["seconds"]) for s, r in fresh.items()},
                    tags={"pate.stages_done": f"{len(done)}/{len(snapshot.names)}"}, step=attempt)
        timed.update({s: r.get("finished") for s, r in fresh.items()})
        self._save()
        if snapshot.public is not None and not logged.get("privacy"):
            metrics, tags = statement_fields(snapshot.public)
            self._batch(metrics=metrics, tags=tags)
            logged["privacy"] = True
            self._save()
        if snapshot.student is not None and attempt not in logged.get("student", []):
            self._batch(metrics={k: float(snapshot.student[k]) for k in STUDENT_METRICS
                                 if isinstance(snapshot.student.get(k), (int, float))}, step=attempt)
            logged["student"] = [*logged.get("student", []), attempt]
            self._save()
        if done and len(done) == len(snapshot.names):
            self._log_release(records[done[-1]].get("finished") or "")

    def _log_release(self, finished: str) -> None:
        """The files the release's own statement lists, if it was written after the last stage
        finished (``pate run`` writes it; a stage command alone leaves an older one)."""
        folder = release_folder(self.run.path)
        try:
            doc = json.loads(read_text_limited(folder / STATEMENT, MAX_JSON_BYTES, "release statement"))
            generated, files = str(doc["generated"]), [str(name) for name in doc["files"]]
        except (OSError, ValueError, KeyError, TypeError, RecursionError, InputError):
            return  # no release (yet), or not one pate wrote (a FIFO, nested too deep)
        logged = self.state["logged"]
        if doc.get("pipeline") != self.run.config.name or generated < finished or logged.get("release") == generated:
            return  # another pipeline's, older than the student, or logged already
        with _guard(self.uri):
            for name in files:
                if Path(name).name == name and (folder / name).is_file():
                    self.client.log_artifact(self.run_id, str(folder / name), "release")
        logged["release"] = generated
        self._save()

    def close(self, status: str) -> None:
        with _guard(self.uri):
            self.client.set_terminated(self.run_id, status)

    def _save(self) -> None:
        atomic_write_json(self.run.file(STATE), self.state)


def _read_state(run) -> dict:
    """tracking.json, or {} (then a new MLflow run) when it is missing or not pate's."""
    try:
        state = json.loads(read_text_limited(run.file(STATE), MAX_JSON_BYTES, "tracking state"))
    except (OSError, ValueError, RecursionError, InputError):  # missing, damaged, nested too deep, not a file
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("logged", {}), dict):
        return {}
    logged = state.setdefault("logged", {})
    for key, kind in (("stages", dict), ("student", list)):
        if not isinstance(logged.get(key), kind):
            logged[key] = kind()
    return state


def _live(client, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except Exception:  # gone from the store (or never in it): a new MLflow run
        return False


@contextlib.contextmanager
def track(run, snapshot: Callable[[], RunSnapshot], quiet: bool = True) -> Iterator[None]:
    """Around a stage command: start (or continue) the MLflow run, then log what ``snapshot()``
    gives (the stage runner reads it from the run directory), also when the command failed (the
    run is then marked FAILED; a rerun resumes and logs the rest). Under torchrun only rank 0 tracks."""
    if not run.config.tracking.enabled or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    tracker = Tracker.start(run, quiet)
    try:
        yield
    except BaseException as exc:
        try:
            tracker.log_snapshot(snapshot())
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception as inner:  # the command's own error is the one to report
            say(f"tracking: {inner}", quiet)
        raise
    try:
        tracker.log_snapshot(snapshot())
    except TrackingError as exc:
        raise TrackingError(f"{exc} (the pate run itself is saved; rerun the command to log the rest)") from None
    finally:
        tracker.close("FINISHED")
