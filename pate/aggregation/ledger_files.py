"""The ledger of a run directory: its key, its header, its checks against the votes (or, for
Private-kNN, against the neighbourhoods it rebuilds them from)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..config import PipelineConfig
from ..io import create_exclusive, sha256_file
from ..privacy import individual, ledger
from ..run import RunDir, RunError
from ..stages.context import LEDGER, LEDGER_KEY, NEIGHBOURS, VOTES, mechanism


def votes_file(config: PipelineConfig) -> str:
    """What the aggregator decides from: the vote histograms, or (private-knn) the neighbourhoods."""
    return NEIGHBOURS if mechanism(config).individual else VOTES


def expected_ledger_header(run: RunDir, num_queries: int) -> ledger.LedgerHeader:
    config = run.config  # bound to the settings up to aggregation: the student may be retrained
    return ledger.LedgerHeader(config_sha256=config.upstream_fingerprint(),
                               votes_sha256=sha256_file(run.verified(votes_file(config))),
                               mechanism=config.aggregator.mechanism, seeded=config.seeded, num_queries=num_queries)


def ledger_key(run: RunDir, create: bool = False) -> bytes:
    """The ledger's HMAC key (``ledger.key``, 0600, random), created with the ledger."""
    path = run.file(LEDGER_KEY)
    if create and not path.exists():
        create_exclusive(path, os.urandom(ledger.KEY_BYTES))
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the ledger cannot be checked, so it cannot be trusted; restore it "
                       "from a backup, or start a new run directory (which aggregates, and spends, again)") from None
    if len(key) != ledger.KEY_BYTES:
        raise RunError(f"{path} is damaged; restore it from a backup")
    return key


def decided(run: RunDir) -> int:
    """How many queries the manifest says were decided (the ledger may hold more, never fewer)."""
    count = run.record("aggregate").get("decided", 0)
    return count if isinstance(count, int) and count >= 0 else 0


@dataclass(frozen=True)
class KnnInputs:
    """What private-knn's aggregator decides from (PRIVATE): each query's neighbourhood, the labels
    and budgets of the run's private records, and what a member pays."""
    hoods: individual.Neighbourhoods
    records: np.ndarray  # (N,) index of each of the run's private records in the private set
    labels: np.ndarray  # (N,)
    query_index: np.ndarray
    charges: individual.Charges
    num_classes: int

    def replay(self, gaussian_budget: np.ndarray, answered: np.ndarray):
        """(filter state, vote rows, query after which each record retired) after ``answered``."""
        return individual.replay(self.hoods, self.labels, gaussian_budget, self.charges, answered, self.num_classes)

    def votes_of(self, gaussian_budget: np.ndarray):
        """For ``load_ledger``: the (Q, m) votes the recorded decisions were made on (0 after them)."""
        def rebuild(book_records) -> np.ndarray:
            answered = np.array([r.answered for r in book_records], dtype=bool)
            _, votes, _ = self.replay(gaussian_budget, answered)
            pad = np.zeros((len(self.query_index) - len(votes), self.num_classes), np.int64)
            return np.concatenate([votes, pad])
        return rebuild


def knn_inputs(run: RunDir, num_classes: int) -> KnnInputs:
    data = run.load_npz(NEIGHBOURS)
    try:
        hoods = individual.Neighbourhoods(data["indptr"], data["members"])
        if len(data["labels"]) != len(data["records"]) or (len(hoods.members) and (
                hoods.members.min() < 0 or hoods.members.max() >= len(data["records"]))):
            raise ValueError("members name records outside the run's private set")
    except (KeyError, ValueError) as exc:
        raise RunError(f"{run.file(NEIGHBOURS)} is invalid ({exc}); refusing to spend privacy on it") from None
    mech = mechanism(run.config)
    return KnnInputs(hoods, data["records"], data["labels"], data["query_index"],
                     individual.Charges.of(mech.sigma1, mech.sigma2), num_classes)


def load_ledger(run: RunDir, votes, query_index: np.ndarray) -> ledger.Ledger:
    """The ledger, after checking its chain, that it belongs to this run, agrees with the votes and
    holds every query the manifest counts as decided. ``votes`` is the vote matrix, or (private-knn,
    whose votes depend on earlier answers) a function of the parsed records that rebuilds it."""
    path = run.file(LEDGER)
    try:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            count = decided(run)
            raise ledger.LedgerError(f"no ledger at {path}" + (
                f", though {count} queries were decided: it was deleted, and they must not be decided again; "
                "restore it from a backup" if count else "")) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ledger.LedgerError(f"{path} is unreadable: {exc}") from None
        book = ledger.parse(text, ledger_key(run), str(path))
        expected = expected_ledger_header(run, len(query_index))
        if callable(votes):
            if book.header.num_queries != len(query_index) or len(book.records) > len(query_index):
                raise ledger.LedgerError("the ledger was written for other queries")
            votes = votes(book.records)
        ledger.check_against_votes(book.header, book.records, config_sha256=expected.config_sha256,
                                   votes_sha256=expected.votes_sha256, votes=votes, query_index=query_index)
        if len(book.records) < decided(run):
            raise ledger.LedgerError(
                f"{path} records {len(book.records)} queries but {decided(run)} were decided: it was cut, and the "
                "missing queries must not be decided again; restore it from a backup")
    except ledger.LedgerError as exc:
        raise RunError(f"{path}: {exc}") from None
    return book

