"""Where a command may write: one rule for every output path, checked before anything is computed.

Every path a command writes to, whether the user named it (``--out``, ``--plot``, ``--run-dir``,
``--data-root``, ``PATE_SPEND_DIR``) or it is a default, goes through ``check_output`` with its
``Purpose`` (those here; the spend directory's is ``pate.run.spend_log.SPEND_DIR``, which knows its files):

1. pate replaces only what it wrote for this same purpose: a plot over its own earlier plot of
   the same kind (a marker inside the PNG says which), an export over the export of the same run,
   a report over a report. Anything else that exists (the pipeline file, an image, a ledger, a
   model, a user's own file) is refused, and so is anything that is not a regular file or folder
   (a device node, a FIFO, a socket; a link where a file is expected);
2. nothing goes inside a run directory other than the command's own, nor inside a release other
   than the command's own (``pate export`` of that same run), nor inside the data a run reads;
3. a private view (the audit's plot, the report, the decode cache) never goes inside a release,
   the public folder; a public output never goes inside a run directory, the private one.

The rule is one function so every command gets all of it; each refusal is one line saying what
to do instead. It reads only names, file types and the first bytes of the markers.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import PateError
from ..io import InputError, read_json_limited
from .directory import CONFIG, MANIFEST, RunDir, run_directory_holding

RELEASE_MARKER, RELEASE_FORMAT = "student.json", "pate.student.training/1"  # an export's description of its student
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MARKER_KEY = "Software"  # the PNG text chunk naming what wrote the figure
REPORT_HTML, REPORT_GENERATOR = "report.html", '<meta name="generator" content="pate report">'
PREDICT_HEADER = "path,label,class,confidence"
_MARKER_BYTES = 1 << 16  # markers sit in the first bytes: never read more to recognise a file
MAX_RELEASE_MARKER_BYTES = 32 << 20  # student.json: 10 000 class names of 200 characters fit many times over


class OutputRefused(PateError):
    """An output path breaks the output rule; nothing was written."""


@dataclass(frozen=True)
class Purpose:
    """What an output is for: ``name`` in messages, whether it is a ``private`` view of the data,
    whether it is a ``folder`` of files, and ``ours(path, run)``: whether an existing file (or
    folder) is one pate wrote for this same purpose (and, for a release, for this run)."""
    name: str
    private: bool
    folder: bool
    ours: Callable[[Path, Optional[RunDir]], bool]
    hint: str = "give a new name, or remove it yourself if it is no longer needed"
    data_nearby: bool = False  # may hold the run's data folders (a dataset cache root may)


# ----------------------------------------------------------------------------- markers


def png_marker(purpose: str) -> str:
    """The text pate writes in a PNG's ``Software`` chunk for figures of ``purpose``."""
    return f"pate {purpose}"


def _head(path: Path) -> bytes:
    """The first bytes of ``path`` if it is a regular file (opened non-blocking: a FIFO named like a
    marker never blocks the check), else nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, _MARKER_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _png_written_for(purpose: str) -> Callable[[Path, Optional[RunDir]], bool]:
    wanted = PNG_MARKER_KEY.encode() + b"\x00" + png_marker(purpose).encode()

    def ours(path: Path, run: Optional[RunDir]) -> bool:
        head = _head(path)
        before_pixels = head.split(b"IDAT", 1)[0]
        return head.startswith(PNG_SIGNATURE) and wanted in before_pixels

    return ours


def _predict_csv(path: Path, run: Optional[RunDir]) -> bool:
    first = _head(path).split(b"\n", 1)[0].rstrip(b"\r")
    return first == PREDICT_HEADER.encode()


def release_tag(run: RunDir) -> str:
    """A public tag naming the run an export belongs to: a hash of the run's random id (nothing
    about the data), written in ``student.json`` so an export never replaces another run's."""
    return hashlib.sha256(f"pate release of {run.run_id}".encode()).hexdigest()[:16]


def read_release_marker(folder: Path) -> dict | None:
    """The ``student.json`` of a pate export in ``folder``, or None when ``folder`` is not one."""
    try:  # whole: student.json lists every class name, which may pass the markers' first bytes
        meta = read_json_limited(folder / RELEASE_MARKER, MAX_RELEASE_MARKER_BYTES, "release's student.json")
    except (OSError, InputError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == RELEASE_FORMAT else None


def is_release(folder: Path) -> bool:
    """Whether ``folder`` holds a pate export (its ``student.json``) or its privacy statement."""
    return read_release_marker(folder) is not None or (folder / "statement.json").is_file() \
        and (folder / "statement.txt").is_file()


def release_holding(path: Path) -> Path | None:
    """The release folder that ``path`` is, or is inside, or None."""
    for folder in (path, *path.parents):
        if folder.is_dir() and is_release(folder):
            return folder
    return None


def _own_export(folder: Path, run: Optional[RunDir]) -> bool:
    """An export of this same run (its tag), or an untagged export (written before the tag existed)
    at this run's default place."""
    if run is None:
        return False
    meta = read_release_marker(folder)
    if meta is None:
        return False
    if "release_of" in meta:
        return meta["release_of"] == release_tag(run)
    return folder == (run.path.parent / f"{run.path.name}-release").resolve()


def _report_folder(folder: Path, run: Optional[RunDir]) -> bool:
    """A report pate wrote (its page's generator line), or the report folder of this run's own
    directory (reports written before the line existed sat there)."""
    if run is not None and folder == run.path.resolve() / "report":
        return True
    try:
        return REPORT_GENERATOR.encode() in _head(folder / REPORT_HTML)
    except OSError:
        return False


def _run_folder(folder: Path, run: Optional[RunDir]) -> bool:
    """A pate run directory, or one whose creation a crash cut short (only its config.toml)."""
    if (folder / MANIFEST).is_file():
        return True
    return [p.name for p in folder.iterdir() if not p.name.startswith(".")] in ([], [CONFIG])


def _any_folder(folder: Path, run: Optional[RunDir]) -> bool:
    return True


# ----------------------------------------------------------------------------- purposes

PLAN_PLOT = Purpose("plan plot", private=False, folder=False, ours=_png_written_for("plan plot"))
AUDIT_PLOT = Purpose("audit plot", private=True, folder=False, ours=_png_written_for("audit plot"))
PREDICT_CSV = Purpose("predict CSV", private=False, folder=False, ours=_predict_csv)
EXPORT = Purpose("release", private=False, folder=True, ours=_own_export,
                 hint="give an empty or new folder (each run has a release of its own)")
REPORT = Purpose("report", private=True, folder=True, ours=_report_folder, hint="give an empty or new folder")
RUN_DIRECTORY = Purpose("run directory", private=True, folder=True, ours=_run_folder,
                        hint="give --run-dir a new folder")
DATA_ROOT = Purpose("dataset cache", private=True, folder=True, ours=_any_folder,  # holds decoded private images
                    data_nearby=True)

PURPOSES = {p.name: p for p in (PLAN_PLOT, AUDIT_PLOT, PREDICT_CSV, EXPORT, REPORT, RUN_DIRECTORY, DATA_ROOT)}


# ----------------------------------------------------------------------------- the rule


def check_output(path: str | Path, purpose: Purpose, run: Optional[RunDir] = None) -> Path:
    """Refuse ``path`` as the ``purpose`` output of a command working on ``run`` (None: no run)
    unless the output rule allows it; returns the path. Nothing is written here."""
    path = Path(path)
    what = f"the {purpose.name}"
    _check_kind(path, purpose, what)
    real = path.resolve()
    own = run.path.resolve() if run is not None else None

    holder = run_directory_holding(real)
    if purpose is RUN_DIRECTORY:
        if holder is not None and holder != real:
            raise OutputRefused(f"{path} is inside the pate run directory {holder}; a run directory never "
                                "holds another: give --run-dir a folder outside it")
    elif holder is not None and holder != own:
        whose = "another run's private folder" if own is not None else "a private folder"
        raise OutputRefused(f"{path} is {_in(holder, real)}the pate run directory {holder}, {whose}; "
                            f"write {what} elsewhere")
    elif holder is not None and not purpose.private:
        raise OutputRefused(f"{path} is {_in(holder, real)}the private run directory {holder}; {what} is public: "
                            "write it in a folder of its own")

    release = release_holding(real)
    if release is not None:
        if purpose.private:
            raise OutputRefused(f"{path} is {_in(release, real)}the public release {release}; {what} is a PRIVATE "
                                "view and never goes in one: write it elsewhere")
        if not (purpose is EXPORT and release == real and purpose.ours(real, run)):
            raise OutputRefused(f"{path} is {_in(release, real)}the release {release}, "
                                f"{'another run' if purpose is EXPORT else 'a `pate export`'}'s; "
                                f"{purpose.hint if purpose is EXPORT else f'write {what} elsewhere'}")

    if run is not None:
        _check_data(real, path, run, what, purpose.data_nearby)

    if path.exists() or path.is_symlink():
        _check_existing(path, real, purpose, run, what)
    return path


def _in(release: Path, real: Path) -> str:
    return "" if release == real else "inside "


def _check_kind(path: Path, purpose: Purpose, what: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputRefused(f"{path}: {exc.strerror}; write {what} elsewhere") from None
    if stat.S_ISLNK(mode):
        if purpose.folder and path.is_dir():
            return  # a folder reached through a link: the checks below follow it
        raise OutputRefused(f"{path} is a symbolic link; name the file itself for {what}")
    if purpose.folder and not stat.S_ISDIR(mode):
        raise OutputRefused(f"{path} exists and is not a folder; {what} is a folder: give a new one")
    if not purpose.folder and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) \
            else "not a regular file"
        raise OutputRefused(f"{path} is {kind}; {what} is written to a regular file: give a file name")


def _check_data(real: Path, path: Path, run: RunDir, what: str, may_hold: bool) -> None:
    """Never inside (nor over, nor holding, unless ``may_hold``) the data the run reads: its
    private or public images (a release beside private images would ship them)."""
    data = run.config.data
    for key in ("private_dir", "private_file", "public_dir", "public_file", "test_dir", "test_file"):
        value = getattr(data, key, "")
        if not value:
            continue
        place = Path(value).resolve()
        if real == place or place in real.parents or (real in place.parents and not may_hold):
            raise OutputRefused(f"{path} is, holds or is inside the run's data ([data] {key} = {value!r}); "
                                f"write {what} in a folder of its own")


def _check_existing(path: Path, real: Path, purpose: Purpose, run: Optional[RunDir], what: str) -> None:
    if not purpose.folder:
        if not purpose.ours(real, run):
            raise OutputRefused(f"{path} exists and is not {_article(purpose.name)} pate wrote: pate never replaces "
                                f"a file it did not write for this purpose; {purpose.hint}")
        return
    try:
        empty = not any(real.iterdir())
    except OSError as exc:
        raise OutputRefused(f"{path}: {exc.strerror}; write {what} elsewhere") from None
    if not empty and not purpose.ours(real, run):
        raise OutputRefused(f"{path} holds files and is not a pate {purpose.name}"
                            f"{' of this run' if purpose is EXPORT else ''}; {purpose.hint}")


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name
