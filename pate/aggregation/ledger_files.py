"""The ledger of a run directory: its key, its header, its checks against the votes (or, for
Private-kNN, against the neighbourhoods it rebuilds them from), and which vote row each ledger
position was asked about (``Candidates``: with ``query_selection = "uncertainty"`` the rounds of
Interactive-GNMax choose them, and their files say which)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import selection
from ..config import PipelineConfig
from ..io import create_exclusive, sha256_file
from ..privacy import individual, ledger
from ..run.directory import RunDir, RunError
from ..run.artifacts import LEDGER, LEDGER_KEY, NEIGHBOURS, VOTES, mechanism

ROUNDS_DIR = "interactive"  # Interactive-GNMax: each round's student probabilities (and chosen queries)


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


def round_file(number: int) -> str:
    return f"{ROUNDS_DIR}/round-{number}.npz"


def round_positions(config: PipelineConfig) -> list[np.ndarray]:
    """The ledger positions each Interactive-GNMax round asks: max_queries in interactive_rounds parts."""
    return np.array_split(np.arange(config.aggregator.max_queries), config.aggregator.interactive_rounds)


def chosen_between_rounds(config: PipelineConfig) -> bool:
    """Whether the rounds choose which candidates are asked (``query_selection = "uncertainty"``)."""
    return config.aggregator.query_selection in selection.CHOSEN_BETWEEN_ROUNDS


@dataclass(frozen=True)
class Candidates:
    """What an aggregation decides from, in the ledger's order: ``votes`` (P, m) and ``index`` (P,)
    are votes.npz (the candidates, as voted), ``asked[i]`` the candidate asked at ledger position i
    (-1 while no round has chosen it; a round fills its positions in place before deciding them).
    Without a choice between rounds P = Q and ``asked`` is 0..Q-1."""
    votes: np.ndarray
    index: np.ndarray
    asked: np.ndarray

    @property
    def ledger_votes(self) -> np.ndarray:
        """(Q, m) the vote row asked at each ledger position (zeros where none is chosen yet)."""
        chosen = self.asked >= 0
        return np.where(chosen[:, None], self.votes[np.where(chosen, self.asked, 0)], 0)

    @property
    def query_index(self) -> np.ndarray:
        """(Q,) the public image asked at each ledger position (-1 where none is chosen yet)."""
        chosen = self.asked >= 0
        return np.where(chosen, self.index[np.where(chosen, self.asked, 0)], -1)


def read_round(run: RunDir, number: int, positions: np.ndarray, num_candidates: int) -> dict | None:
    """Round ``number``'s saved choice (``chosen``: its candidates in asked order, ``probabilities``
    on them, ``candidate_probabilities`` on every candidate), None if not saved yet. A damaged one
    is refused: the round's decisions may already be in the ledger, so it is never chosen again."""
    path = run.file(round_file(number))
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = {k: data[k] for k in ("queries", "chosen", "probabilities", "candidate_probabilities")}
        chosen = saved["chosen"]
        if not (np.array_equal(saved["queries"], positions) and chosen.shape == positions.shape
                and chosen.dtype.kind == "i" and ((chosen >= 0) & (chosen < num_candidates)).all()
                and len(saved["probabilities"]) == len(chosen)
                and len(saved["candidate_probabilities"]) == num_candidates):
            raise ValueError("it does not describe this round's queries")
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path} is damaged ({exc}); it says which images round {number} asks, which the ledger may "
                       "already record: restore it from a backup or start a new run directory") from None
    return saved


def candidates_of(run: RunDir, votes: np.ndarray, index: np.ndarray) -> Candidates:
    """``votes``/``index`` (votes.npz) in the ledger's order: as they are, or with a choice between
    rounds, each saved round's candidates at its positions."""
    config = run.config
    if not chosen_between_rounds(config):
        return Candidates(votes, index, np.arange(len(index)))
    asked = np.full(config.aggregator.max_queries, -1, np.int64)
    for number, positions in enumerate(round_positions(config)):
        saved = read_round(run, number, positions, len(index)) if len(positions) else None
        if saved is not None:
            asked[positions] = saved["chosen"]
    taken = asked[asked >= 0]
    if np.unique(taken).size != taken.size:
        raise RunError(f"{run.file(ROUNDS_DIR)} names an image asked twice: its round files are damaged; restore "
                       "them from a backup or start a new run directory")
    return Candidates(votes, index, asked)


def ledger_order(run: RunDir) -> Candidates:
    """votes.npz in the ledger's order (what ``pate audit`` and ``pate report`` read the asked
    queries' votes from)."""
    data = run.load_npz(VOTES)
    return candidates_of(run, data["votes"], data["query_index"])


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

