"""Per-record privacy budgets (individualized privacy; Boenisch et al. 2023, "Individualized PATE"):
some data holders may spend more on records whose owners consented to more, or less.

A CSV file names the records that differ from ``[privacy] record_epsilon``::

    record,epsilon
    scans/benign/0001.png,2.0      # image folders: the file, relative to private_dir
    patient-0042,0.5               # arrays: the record's entry in the private file's 'ids' array
    1234,0.5                        # built-in datasets: the record's index (their records never move)

Each value is an ε at the run's δ. Private-kNN retires each record at its own budget; reverse-kNN
lets a record with a smaller budget vote for fewer anchors (its default is the run's guarantee).
The public statement gives the guarantee of each budget level in the file (the levels are public
policy; which record holds which is not). The file is PRIVATE (which records have which budget is
a fact about the private data); the run keeps the resolved budgets and the digest of the bytes
they came from, and refuses to spend on a file changed since.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data import records as records_mod, source_of
from ..errors import PateError
from ..io import InputError, read_bytes_limited
from ..run.artifacts import DATA
from ..run.directory import RunError

# A budgets file has one short row per record whose budget differs from the default: 256 MiB holds
# millions of them. It is read only if it is a regular file (a FIFO or /dev/zero is refused, never
# blocked on or read without end), and a field longer than the csv module's limit (131 072
# characters; no record name is that long) is one line naming where, like every other bad row.
MAX_BUDGETS_BYTES = 256 << 20


class BudgetError(PateError, ValueError):
    """The budgets file is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Policy:
    """The budgets file as read once: its rows and the sha256 of the very bytes they were parsed
    from, so a run's resolved budgets, its levels and the digest it keeps agree even if the file
    changes while it is read."""
    rows: tuple[tuple[int, str, float], ...] = ()  # (line number, record, epsilon)
    sha256: str = ""  # "" = no file configured
    path: str = ""


def read(path: str) -> Policy:
    """``[privacy] record_budgets`` (``""``: none), every row checked. A UTF-8 byte-order mark
    (spreadsheets on Windows write one) is dropped before the header is read."""
    if not path:
        return Policy()
    where = f"[privacy] record_budgets = {str(path)!r}"
    try:
        raw = read_bytes_limited(path, MAX_BUDGETS_BYTES, "budgets file")
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise BudgetError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise BudgetError(f"{where} is a folder, not a CSV file") from None
    except InputError as exc:  # a FIFO, a device, an oversize file
        raise BudgetError(f"{where}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise BudgetError(f"{where}: not UTF-8 text (byte {exc.start}); save the budgets file as UTF-8") from None
    except OSError as exc:
        raise BudgetError(f"{where} is unreadable ({exc.strerror or exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = tuple(_checked(Path(path), reader))
    except csv.Error as exc:  # a field over the csv module's limit, a NUL byte, a stray quote
        raise BudgetError(f"{path} line {reader.line_num}: not a CSV row ({exc})") from None
    return Policy(rows, hashlib.sha256(raw).hexdigest(), str(path))


def _checked(path: Path, reader) -> Iterator[tuple[int, str, float]]:
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["record", "epsilon"]:
        raise BudgetError(f"{path}: the first line must be the header 'record,epsilon'")
    for row in reader:
        number = reader.line_num
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise BudgetError(f"{path} line {number}: expected 'record,epsilon', found {','.join(row)!r}")
        try:
            eps = float(row[1])
        except ValueError:
            raise BudgetError(f"{path} line {number}: epsilon {row[1]!r} is not a number") from None
        if not (math.isfinite(eps) and 0 < eps <= 1e4):
            raise BudgetError(f"{path} line {number}: epsilon must be in (0, 1e4]; found {row[1].strip()}")
        yield number, row[0].strip(), eps


def levels(policy: Policy | str, default: float) -> list[float]:
    """Every budget a record may have: the default and each value in the file (sorted, distinct)."""
    policy = read(policy) if isinstance(policy, str) else policy
    return sorted({float(default)} | {eps for _, _, eps in policy.rows})


def resolve(policy: Policy | str, default: float, num_records: int, names: list[str] | None = None,
            by_index: bool = False) -> np.ndarray:
    """(num_records,) ε budget of each private record, matched by the record's identity, never by
    its position in a set that may gain or lose records: ``names`` are the records' stable names
    (image folders: the file relative to ``private_dir``; arrays: the ``ids`` array). Rows name
    records by index only where ``by_index`` (a built-in dataset, fixed and checked against pinned
    hashes, whose indices never move). A row naming a record the data does not hold is no error:
    the same file serves every version of a dataset that gains or loses records."""
    policy = read(policy) if isinstance(policy, str) else policy
    path = policy.path
    budgets = np.full(num_records, float(default))
    position = {name: i for i, name in enumerate(names)} if names is not None else None
    seen: dict[int, int] = {}
    for number, record, eps in policy.rows:
        if position is not None:
            if record not in position:
                continue  # a record this version of the data does not hold (the file is a policy over ids)
            i = position[record]
        elif not by_index:
            raise BudgetError(f"{path} line {number}: records must be named by a stable id, not by position (a "
                              "record removed would move every budget after it): give the private .npz an 'ids' "
                              "array and name records by it")
        else:
            try:
                i = int(record)
            except ValueError:
                raise BudgetError(f"{path} line {number}: no private record {record!r}") from None
            if not 0 <= i < num_records:
                raise BudgetError(f"{path} line {number}: record index {i} is outside 0..{num_records - 1}")
        if i in seen:
            raise BudgetError(f"{path} line {number}: record {record!r} already has a budget (line {seen[i]})")
        seen[i] = number
        budgets[i] = eps
    return budgets


def of_records(ctx, policy: Policy, records: np.ndarray, default: float) -> np.ndarray:
    """(len(records),) the budget of each of a run's private records (positions in the private set),
    resolved by identity from the budgets file as read (PRIVATE); a bad record name is one
    ``RunError`` line."""
    config = ctx.config
    source = source_of(config.data)  # records named by their file, their id, or (built-in data) their index
    try:
        names = source.record_names(config.data, lambda: ctx.run.read_json(DATA)["files"])
        every = resolve(policy, default, ctx.spec.num_private, names, by_index=source.by_index)
    except (BudgetError, records_mod.RecordError) as exc:
        raise RunError(str(exc)) from None
    return every[records]
