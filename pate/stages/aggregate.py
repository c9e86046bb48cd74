"""Answer queries with the noisy aggregator, writing the ledger before each label; account privacy.

Before the first query the run's worst-case guarantee is charged to each of its records in the spend
log (the partition left out those it would take past ``[privacy] total_budget``; a release logged on
the others since then is refused). Queries are decided in fixed chunks; a
chunk's decisions go to the ledger in one fsynced write before anything else happens, and
``labels.npz`` (the release) is written from the ledger only at the end, so a rerun continues after
the ledger's last line and never re-decides a recorded query. The protocol and each mechanism
family's module are in ``pate.aggregation``.
"""
from __future__ import annotations

from .. import aggregation
from ..aggregation import protocol
from . import finish
from ..run.artifacts import Context, mechanism

NAME = protocol.STAGE


def run(ctx: Context) -> None:
    family = aggregation.family(mechanism(ctx.config).family)  # the registry: no test of mechanism flags here
    summary = protocol.run(ctx, load=family.load, decide=family.decide, conclude=family.conclude)
    finish(ctx, NAME)  # the stage records its outputs; the aggregation below it only returns
    ctx.say(summary)
